"""Installing an encodings file into a sim: one implementation behind AIMET's
``load_encodings_to_sim(sim, path)`` and ``sim.load_encodings(path)``.

Everything is validated before anything is installed (encodings as strictly as calibration's
own, per-channel counts and axes against the quantizer's tensor, bit widths against the
quantizer kind, integer vs float16 entries), so a refused file leaves the sim as it was. Files
keyed by torch names (``<prefix>_torch.encodings``), also as aimet-torch writes them (its
preparer's layer names, a tensor listed both as a layer's output and as the next layer's input),
and ONNX-named files (1.0.0, 0.6.1, 2.0.0) are accepted.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from fxquant import _meta
from fxquant.core.encoding import FloatEncoding, QuantEncoding
from fxquant.core.layers import aimet_layer_names, iter_layers
from fxquant.export.encodings_file import EncodingsFileError, target_layouts, torch_names
from fxquant.export.encodings_reader import read_encodings
from fxquant.quantsim.quantizer import BITWIDTH_RANGES, AffineQuantizer, FloatQuantizer

__all__ = ["install_encodings"]

logger = logging.getLogger(__name__)


def install_encodings(sim: Any, path: str | os.PathLike[str] | Mapping[str, Any], *,
                      strict: bool = True, partial: bool = False,
                      freeze: bool = False) -> list[str]:
    """Validates the encodings of ``path`` against ``sim`` and installs them.

    Args:
        sim: a QuantizationSimModel.
        path: the encodings file, or its parsed dict.
        strict: an entry naming no quantizer of ``sim`` is an error.
        partial: False: quantizers without an entry are disabled (as they were in the exported
            sim); True: they are left as they are.
        freeze: freeze the installed encodings (a later ``compute_encodings`` keeps them).

    Returns:
        The names of the quantizers that got an encoding.

    Raises:
        EncodingsFileError: the file is unreadable or malformed, an encoding is invalid or does
            not fit its quantizer, or (``strict``) an entry names no quantizer; the message names
            the file and the JSON path or quantizer. Nothing was installed.

    Example:
        >>> install_encodings(sim, "out/resnet18_torch.encodings")[:2]
        ['x', 'conv1.weight']
    """
    where = (f"encodings file {os.fspath(path)}" if isinstance(path, (str, os.PathLike))
             else "encodings file")
    refs = {r.name: r for r in sim.quantizers()}
    axes = {name: int(r.quantizer.axis) for name, r in refs.items()
            if getattr(r.quantizer, "axis", None) is not None}
    layouts = target_layouts(sim)
    by_key = {key: name for name, keys in torch_names(sim).items() for key in keys}
    # AIMET's preparer names some layers differently (layer4.0.module_add_6 for our
    # layer4.0.module_add): a file AIMET exported is keyed by those names
    ours_to_aimet = {ours: aimet for aimet, ours in aimet_layer_names(sim.model).items()}
    for (layer, io, i), name in list(by_key.items()):
        if layer in ours_to_aimet:
            by_key.setdefault((ours_to_aimet[layer], io, i), name)
    # AIMET may list a tensor twice, as its producer's output and as a consumer's input (both
    # enabled, one encoding); here it is quantized once, by the producer's output quantizer
    for (layer, i), name in _inputs_quantized_upstream(sim).items():
        by_key.setdefault((layer, "input", i), name)
        if layer in ours_to_aimet:
            by_key.setdefault((ours_to_aimet[layer], "input", i), name)
    found: dict[str, str] = {}
    encodings = read_encodings(path, axes=axes, layouts=layouts, torch_names=by_key, found=found,
                               param_names=[n for n, r in refs.items() if r.kind == "param"],
                               source=where if not isinstance(path, (str, os.PathLike)) else None)
    bias_names = set(sim.bias_quantizers())
    chosen: dict[str, Any] = {}
    unknown = []
    for section in ("activation", "param"):
        for name, enc in encodings[section].items():
            if name in bias_names:
                continue
            if name not in refs:
                unknown.append(name)
                continue
            chosen[name] = enc
    if unknown and strict:
        raise EncodingsFileError(
            f"{where}: {found.get(unknown[0], '<root>')}: {len(unknown)} "
            f"entr{'y names' if len(unknown) == 1 else 'ies name'} no "
            f"quantizer of this sim: {unknown[:10]}; its quantizers are named {list(refs)[:10]}"
            f"{'...' if len(refs) > 10 else ''}. Build the sim on the model and config that were "
            "exported, or pass strict=False to skip them")
    for name, enc in chosen.items():
        q = refs[name].quantizer
        kind = "param" if refs[name].kind == "param" else "activation"
        at = f"{where}: {found.get(name, '<root>')}: {name!r}"
        if isinstance(q, AffineQuantizer):
            if not isinstance(enc, QuantEncoding):
                raise EncodingsFileError(f"{at}: a float16 entry, but the quantizer is an integer "
                                         "quantizer; export and load with the same "
                                         "default_data_type")
            lo, hi = BITWIDTH_RANGES[kind]
            if not lo <= enc.bitwidth <= hi:
                raise EncodingsFileError(f"{at}: bit width {enc.bitwidth} is invalid for an {kind} "
                                         f"quantizer (valid: {lo}-{hi})")
        elif isinstance(q, FloatQuantizer) and not isinstance(enc, FloatEncoding):
            raise EncodingsFileError(f"{at}: an integer entry, but the quantizer is a float16 "
                                     "quantizer; export and load with the same default_data_type")
    for name, enc in chosen.items():
        q = refs[name].quantizer
        if isinstance(q, AffineQuantizer):
            q.set_encoding(enc)  # (set_encoding stores it on the quantizer's device)
            if freeze:
                q.freeze_encoding()
        q.enabled = True
    if not partial:
        dangling = [n for n in refs if n not in chosen]
        for name in dangling:
            refs[name].quantizer.enabled = False
        if dangling:
            logger.info("%s: %d quantizer(s) without an entry were disabled (as in the exported "
                        "sim; pass partial=True to keep them): %s", where, len(dangling),
                        dangling[:10])
    if chosen:
        sim._encodings_computed = True
    return list(chosen)


def _inputs_quantized_upstream(sim: Any) -> dict[tuple[str, int], str]:
    """``{(layer, input index): output quantizer}`` for layer inputs that an output quantizer of
    the layer before quantizes (the edge has no input quantizer of its own)."""
    out: dict[tuple[str, int], str] = {}
    for name, node in iter_layers(sim.model):
        for i, arg in enumerate(node.all_input_nodes):
            if (_meta.get(arg, _meta.ROLE) == _meta.ROLE_QUANTIZER
                    and _meta.get(arg, _meta.QUANTIZES) == _meta.QUANTIZES_OUTPUT):
                out[(name, i)] = _meta.get(arg, _meta.LAYER_NAME)
    return out

