"""``export_sim``: the files of a QuantizationSimModel export, written all-or-nothing.

Files (``<prefix>`` = ``filename_prefix``):

* ``<prefix>.onnx`` — the float model (quantizers removed, batch norms folded as in the sim),
  tensors named canonically (:func:`fxquant.export.export_onnx`);
* ``<prefix>.encodings`` — AIMET encodings JSON (version 1.0.0 by default; 0.6.1 and 2.0.0);
* ``<prefix>_qdq.onnx`` — the float model with QuantizeLinear/DequantizeLinear
  (:func:`fxquant.export.build_qdq_model`);
* ``<prefix>.pth`` — ``torch.save`` of the float GraphModule's plain ``state_dict()``;
* ``<prefix>_torch.encodings`` — the encodings keyed by module and parameter names.

The files are one atomic directory update (:func:`fxquant.core.file_sets.staged_directory`): they are
written into a hidden folder inside ``path``, flushed to disk and then moved into place, each
previous file of the same name kept first. A failed export (while writing, flushing or moving into
place, a full disk included) leaves the previous export byte-identical and no new, partial or
temporary files (nor a folder it created); a successful one leaves no temporary files. ``path`` is
created when missing; existing files with these names are **overwritten** (as AIMET's
``sim.export`` does); other files in ``path`` are never touched. The ONNX opset is 21 unless
``onnx_export_args["opset_version"]`` says otherwise (21 is what 4- and 16-bit
QuantizeLinear/DequantizeLinear need).

A model in bfloat16, float16 or float64 is exported in float32 (both ONNX files; QuantizeLinear
takes float32 scales, and numpy has no bfloat16), with a logged warning; ``<prefix>.pth`` keeps the
model's own dtypes.

The file set is one dict ``{key: (file name, writer)}`` (:func:`_export_files`, plus the
``torch_encodings`` entry); a writer gets the staged file opened for binary writing. To add a file,
add one entry to that dict.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, BinaryIO, Callable

import onnx
import torch

from fxquant.core import file_sets
from fxquant.errors import ConfigError
from fxquant.export.errors import ExportError
from fxquant.export.onnx_export import export_onnx
from fxquant.export.qdq import QDQ_OPSET, build_qdq_model
from fxquant.export.encodings_file import (VERSIONS, encodings_dict, encodings_from_refs,
                                          torch_encodings_file)
from fxquant.model_resolution import private_copy
from fxquant.passes.remove_quantizers import RemoveQuantizersPass

__all__ = ["export_sim", "sim_encodings", "tensor_names"]

logger = logging.getLogger(__name__)


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name of ``model``'s main graph: inputs, initializers and node outputs."""
    graph = model.graph
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(v for v in node.output if v)
    return names


def sim_encodings(sim: Any) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """``({"activation": …, "param": …}, {"<layer>.bias": scale})`` of a sim's enabled quantizers.

    Example:
        >>> encs, bias = sim_encodings(sim)
        >>> encs["param"]["conv1.weight"].axis
        0
    """
    encs = encodings_from_refs(sim.quantizers())
    bias = {}
    for name, bq in sim.bias_quantizers().items():
        scale = bq.scale() if bq.enabled else None
        if scale is not None:
            bias[name] = scale.detach().cpu()
    return encs, bias


def _excluded_layers(sim: Any) -> list[str]:
    by_layer: dict[str, list[bool]] = {}
    for ref in sim.quantizers():
        if ref.layer:
            by_layer.setdefault(ref.layer, []).append(bool(ref.quantizer.enabled))
    return [layer for layer, flags in by_layer.items() if not any(flags)]


def _check_prefix(filename_prefix: str) -> None:
    if (not isinstance(filename_prefix, str) or not filename_prefix or filename_prefix in (".", "..")
            or os.sep in filename_prefix or (os.altsep and os.altsep in filename_prefix)):
        raise ValueError(f"filename_prefix must be a plain file name without a folder, got "
                         f"{filename_prefix!r}; put the folder in `path`")


def export_sim(sim: Any, path: str | os.PathLike[str], filename_prefix: str, dummy_input: Any, *,
               onnx_export_args: Mapping[str, Any] | None = None,
               encoding_version: str = "1.0.0") -> dict[str, str]:
    """Exports a calibrated sim: float ONNX, encodings, QDQ ONNX and float state dict.

    Args:
        sim: a :class:`~fxquant.quantsim.quantsim.QuantizationSimModel` with encodings.
        path: output folder (created when missing).
        filename_prefix: file name prefix, e.g. ``"resnet18"``.
        dummy_input: example input for the ONNX export.
        onnx_export_args: extra ``torch.onnx.export`` keyword arguments (opset 21 by default).
        encoding_version: "1.0.0" (default), "0.6.1" or "2.0.0".

    Returns:
        ``{"onnx", "encodings", "qdq_onnx", "pth"}`` → the paths written.

    Raises:
        ExportError: an encoding names a tensor the float ONNX model lacks (the message lists them).
        ConfigError: an enabled quantizer has no encoding, or the version is unknown.
        FileWriteError: a file could not be written or moved into place (the message names it);
            the previous export in ``path`` is left as it was.

    Example:
        >>> files = export_sim(sim, "out", "resnet18", torch.randn(1, 3, 224, 224))
        >>> sorted(files)
        ['encodings', 'onnx', 'pth', 'qdq_onnx']
    """
    _check_prefix(filename_prefix)
    if encoding_version not in VERSIONS:
        raise ConfigError(f"encoding_version {encoding_version!r} is not supported; use one of "
                          f"{list(VERSIONS)}")
    encs, bias = sim_encodings(sim)
    args = dict(onnx_export_args or {})
    args.setdefault("opset_version", QDQ_OPSET)
    float_gm = RemoveQuantizersPass()(private_copy(sim.model)).graph_module
    state = dict(float_gm.state_dict())  # the model's own dtypes, taken before any conversion
    float_gm, onnx_input = _in_float32(float_gm, dummy_input)
    exported = export_onnx(float_gm, onnx_input, None, onnx_export_args=args)
    names = tensor_names(exported.model)
    wanted = [*encs["activation"], *encs["param"], *bias]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ExportError(
            f"{len(missing)} encoding name(s) are not tensors of the exported ONNX model: {missing[:20]}"
            f"{' …' if len(missing) > 20 else ''}. Layers without an ONNX value: "
            f"{list(exported.unmapped_layers)[:20]}. Disable these quantizers "
            "(sim.quantizer(name).enabled = False) or report the model so the name mapping can "
            "cover it.")
    qdq = build_qdq_model(exported.model, encs["activation"], encs["param"], bias)
    data = encodings_dict(encs, version=encoding_version, quantizer_args=sim.quantizer_args(),
                          bias=bias, excluded_layers=_excluded_layers(sim))

    out_dir = os.fspath(path)
    outputs = _export_files(filename_prefix, exported.model, data, qdq.model, state)
    outputs["torch_encodings"] = torch_encodings_file(  # for load_encodings_to_sim (AIMET's)
        sim, filename_prefix, version=encoding_version, quantizer_args=sim.quantizer_args(),
        excluded_layers=_excluded_layers(sim))
    with file_sets.staged_directory(out_dir, overwrite=True) as stage:
        for name, write in outputs.values():
            stage.write_file(name, write)
    logger.info("exported %d activation, %d param and %d bias encodings to %s", len(encs["activation"]),
                len(encs["param"]), len(bias), out_dir)
    return {key: os.path.join(out_dir, name) for key, (name, _) in outputs.items()}


Writer = Callable[[BinaryIO], None]


def _export_files(prefix: str, float_model: onnx.ModelProto, encodings: Mapping[str, Any],
                  qdq_model: onnx.ModelProto, state: Mapping[str, torch.Tensor]
                  ) -> dict[str, tuple[str, Writer]]:
    """``{key: (file name, writer)}`` of one export: the files staged and moved in together.

    Each writer writes the whole file to the binary file object it is given.
    """
    return {
        "onnx": (f"{prefix}.onnx", lambda f: onnx.save_model(float_model, f)),
        "encodings": (f"{prefix}.encodings", lambda f: f.write(_json_bytes(encodings))),
        "qdq_onnx": (f"{prefix}_qdq.onnx", lambda f: onnx.save_model(qdq_model, f)),
        "pth": (f"{prefix}.pth", lambda f: torch.save(dict(state), f)),
    }


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    """``data`` as the UTF-8 JSON text of an encodings file (strict: NaN/Inf refused)."""
    return (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8")


def _in_float32(gm: torch.fx.GraphModule, dummy_input: Any) -> tuple[torch.fx.GraphModule, Any]:
    """``gm`` (a private copy, converted in place) and ``dummy_input`` in float32 when either holds
    floating-point tensors of another dtype; unchanged otherwise."""
    dtypes = {t.dtype for t in (*gm.parameters(), *gm.buffers()) if t.is_floating_point()}
    dtypes |= {t.dtype for t in _tensors(dummy_input) if t.is_floating_point()}
    other = sorted(str(d).replace("torch.", "") for d in dtypes if d != torch.float32)
    if not other:
        return gm, dummy_input
    logger.warning("the model (or its input) is in %s; it is exported in float32 (the ONNX files "
                   "hold float32 weights and inputs, the .pth file keeps the model's dtypes)",
                   ", ".join(other))
    gm.to(torch.float32)
    return gm, _to_float32(dummy_input)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(torch.float32) if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return type(value)({k: _to_float32(v) for k, v in value.items()})  # type: ignore[call-arg]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_float32(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float32(v) for v in value)
    return value
