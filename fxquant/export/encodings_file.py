"""AIMET encodings files (``<prefix>.encodings``): the formats, and writing versions 1.0.0, 0.6.1
and 2.0.0 (reading: :mod:`fxquant.export.encodings_reader`).

Formats (``SPEC.md`` §3):

* **1.0.0** (default): ``activation_encodings`` and ``param_encodings`` are lists of
  ``{"name", "dtype": "INT"|"FLOAT", "bw", "is_sym", "scale": [...], "offset": [...],
  "enc_type": "PER_TENSOR"|"PER_CHANNEL"}``; float entries carry only ``name``, ``dtype``, ``bw``
  and ``enc_type``.
* **0.6.1**: ``activation_encodings`` / ``param_encodings`` are dicts ``{name: [entry per channel]}``
  with ``{"min", "max", "scale", "offset", "bitwidth", "dtype": "int", "is_symmetric": "True"|"False"}``
  (float: ``{"bitwidth": 16, "dtype": "float"}``).
* **2.0.0**: ``{"version": "2.0.0", "encodings": [{"name", "output_dtype", "y_scale",
  "y_zero_point" (omitted when 0), "axis" (per channel)}]}``; int32 bias entries have
  ``y_scale = input scale × weight scale``. ``output_dtype`` is ``"int<b>"``/``"uint<b>"`` (``int8``,
  ``uint8``, ``int16``, ``int4``, ``int32`` …) or ``"float16"``.

Offsets follow AIMET: ``offset = qmin - zero_point`` with ``x = (q_unsigned + offset) * scale``, i.e. the
negative of the ONNX zero point on the unsigned grid (uint8 zero point 161 → offset -161); a signed
symmetric 8-bit grid is written as offset -128 (strict symmetric: -127).

Versions 1.0.0 and 2.0.0 also carry ``excluded_layers`` and ``quantizer_args``
(``{quant_scheme, param_bitwidth, activation_bitwidth, dtype, is_symmetric,
per_channel_quantization}``); 0.6.1 carries ``quantizer_args`` too.

What a file cannot say, and how reading resolves it:
    * 1.0.0 and 0.6.1 store no channel axis: per-channel entries are read with ``axis=0`` (pass
      ``axes={"deconv.weight": 1}`` for ConvTranspose weights).
    * 2.0.0 stores no symmetry flag and no activation/param split: a signed type with zero point
      0 reads as symmetric, anything else as asymmetric; entries with an ``axis``, int32 entries
      and names ending in ``.weight``/``.bias`` are params (override with ``param_names``).
    * A signed asymmetric grid is written in 1.0.0/0.6.1 as the equal unsigned grid and read back
      as that unsigned grid (same scale; zero point shifted by ``2^(b-1)``).

Example:
    >>> enc = QuantEncoding.from_min_max(-1.0, 3.0, bitwidth=8, symmetric=False)
    >>> d = encodings_dict({"activation": {"x": enc}, "param": {}})
    >>> d["activation_encodings"][0]["offset"]
    [-64]
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

import torch

from fxquant.core import files
from fxquant.core.encoding import AnyEncoding, FloatEncoding, QuantEncoding
from fxquant.core.layers import float_param
from fxquant.errors import ConfigError

__all__ = ["EncodingsFileError", "FloatEncoding", "QuantizerArgs", "VERSIONS", "encodings_dict",
           "write_encodings", "encodings_from_refs", "target_layouts", "torch_encodings_dict",
           "torch_encodings_file", "torch_names"]

logger = logging.getLogger(__name__)

class EncodingsFileError(ConfigError):
    """An encodings file cannot be read, does not follow the format, holds an invalid encoding,
    or does not fit the sim it is loaded into. The message names the file and the JSON path."""


#: Encoding file versions this module writes and reads.
VERSIONS: tuple[str, ...] = ("1.0.0", "0.6.1", "2.0.0")


@dataclasses.dataclass(frozen=True)
class QuantizerArgs:
    """The ``quantizer_args`` block: how the encodings were computed (informational).

    Example:
        >>> QuantizerArgs(quant_scheme="post_training_tf").as_dict()["param_bitwidth"]
        8
    """

    quant_scheme: str = "post_training_tf_enhanced"
    param_bitwidth: int = 8
    activation_bitwidth: int = 8
    dtype: str = "int"
    is_symmetric: bool = True
    per_channel_quantization: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return dataclasses.asdict(self)


# -------------------------------------------------------------------------------------------------
# Writing
# -------------------------------------------------------------------------------------------------
def encodings_from_refs(refs: Iterable[Any]) -> dict[str, dict[str, AnyEncoding]]:
    """``{"activation": {name: enc}, "param": {name: enc}}`` of the enabled quantizers in ``refs``.

    Args:
        refs: :class:`~fxquant.quantsim.quantsim.QuantizerRef` objects (``sim.quantizers()``).

    Raises:
        ConfigError: an enabled integer quantizer has no encoding (calibrate first).

    Example:
        >>> encs = encodings_from_refs(sim.quantizers())
        >>> sorted(encs)
        ['activation', 'param']
    """
    out: dict[str, dict[str, AnyEncoding]] = {"activation": {}, "param": {}}
    for ref in refs:
        quantizer = ref.quantizer
        if not getattr(quantizer, "enabled", False):
            continue
        section = "param" if ref.kind == "param" else "activation"
        if getattr(getattr(quantizer, "data_type", None), "name", "") == "float":
            out[section][ref.name] = FloatEncoding(int(getattr(quantizer, "bitwidth", 16)))
            continue
        enc = quantizer.encoding
        if enc is None:
            raise ConfigError(f"quantizer {ref.name!r} ({ref.kind}) is enabled but has no encoding; "
                              "run sim.compute_encodings(...) before exporting, or disable it")
        out[section][ref.name] = enc
    return out


def _as_sections(refs_or_encodings: Any) -> dict[str, dict[str, AnyEncoding]]:
    if isinstance(refs_or_encodings, Mapping):
        unknown = set(refs_or_encodings) - {"activation", "param"}
        if unknown:
            raise ConfigError(f"encodings mapping has keys {sorted(unknown)}; expected 'activation' "
                              "and 'param', each {tensor name: QuantEncoding | FloatEncoding}")
        sections = {k: dict(refs_or_encodings.get(k, {})) for k in ("activation", "param")}
        for section, encs in sections.items():
            for name, enc in encs.items():
                if not isinstance(enc, (QuantEncoding, FloatEncoding)):
                    raise ConfigError(f"encodings[{section!r}][{name!r}] is a {type(enc).__name__}; "
                                      "expected a QuantEncoding or FloatEncoding")
        return sections
    return encodings_from_refs(refs_or_encodings)


def _floats(t: torch.Tensor) -> list[float]:
    # float32 -> Python float (float64) is exact, and repr round-trips, so JSON keeps every bit.
    return [float(v) for v in t.detach().cpu().reshape(-1).to(torch.float32).tolist()]


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.detach().cpu().reshape(-1).tolist()]


def _offset(enc: QuantEncoding) -> torch.Tensor:
    """AIMET offset ``qmin - zero_point``: -(zero point on the unsigned grid); -128 for int8 symmetric."""
    return enc.qmin - enc.zero_point.to(torch.int64)


def _entry_1_0_0(name: str, enc: AnyEncoding) -> dict[str, Any]:
    if isinstance(enc, FloatEncoding):
        return {"name": name, "dtype": "FLOAT", "bw": enc.bitwidth, "enc_type": "PER_TENSOR"}
    return {"name": name, "dtype": "INT", "bw": enc.bitwidth, "is_sym": enc.symmetric,
            "scale": _floats(enc.scale), "offset": _ints(_offset(enc)),
            "enc_type": "PER_CHANNEL" if enc.is_per_channel else "PER_TENSOR"}


def _entries_0_6_1(enc: AnyEncoding) -> list[dict[str, Any]]:
    if isinstance(enc, FloatEncoding):
        return [{"bitwidth": enc.bitwidth, "dtype": "float"}]
    scales, offsets = _floats(enc.scale), _ints(_offset(enc))
    mins, maxs = _floats(enc.min), _floats(enc.max)
    sym = "True" if enc.symmetric else "False"
    return [{"min": mn, "max": mx, "scale": s, "offset": o, "bitwidth": enc.bitwidth, "dtype": "int",
             "is_symmetric": sym} for mn, mx, s, o in zip(mins, maxs, scales, offsets)]


def _dtype_name(enc: QuantEncoding) -> str:
    return f"{'int' if enc.signed else 'uint'}{enc.bitwidth}"


def _entry_2_0_0(name: str, enc: AnyEncoding) -> dict[str, Any]:
    if isinstance(enc, FloatEncoding):
        return {"name": name, "output_dtype": f"float{enc.bitwidth}"}
    entry: dict[str, Any] = {"name": name, "output_dtype": _dtype_name(enc)}
    scales, zps = _floats(enc.scale), _ints(enc.zero_point)
    if enc.is_per_channel:
        entry["y_scale"] = scales
        if any(zps):
            entry["y_zero_point"] = zps
        entry["axis"] = int(enc.axis)
    else:
        entry["y_scale"] = scales[0]
        if zps[0]:
            entry["y_zero_point"] = zps[0]
    return entry


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ConfigError(f"encoding version {version!r} is not supported; use one of {list(VERSIONS)}")
    return version


def encodings_dict(refs_or_encodings: Any, *, version: str = "1.0.0",
                   quantizer_args: QuantizerArgs | Mapping[str, Any] | None = None,
                   bias: Mapping[str, torch.Tensor] | None = None,
                   excluded_layers: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON-ready dict of an encodings file.

    Args:
        refs_or_encodings: ``sim.quantizers()`` (disabled quantizers are skipped) or
            ``{"activation": {name: enc}, "param": {name: enc}}``.
        version: "1.0.0" (default), "0.6.1" or "2.0.0".
        quantizer_args: the ``quantizer_args`` block (a :class:`QuantizerArgs` or dict).
        bias: ``{"<layer>.bias": scale}`` of int32-quantized biases (scale = input scale × weight
            scale, per channel or scalar); written as int32 entries in version 2.0.0 only.
        excluded_layers: layer names to list under ``excluded_layers``.

    Raises:
        ConfigError: unknown version, or an enabled quantizer without an encoding.

    Example:
        >>> d = encodings_dict(sim.quantizers(), version="2.0.0")
        >>> d["encodings"][0]["output_dtype"]
        'uint8'
    """
    _check_version(version)
    sections = _as_sections(refs_or_encodings)
    args = quantizer_args.as_dict() if isinstance(quantizer_args, QuantizerArgs) else dict(
        quantizer_args or QuantizerArgs().as_dict())
    excluded = list(excluded_layers)
    if version == "2.0.0":
        entries = [_entry_2_0_0(n, e) for n, e in sections["activation"].items()]
        entries += [_entry_2_0_0(n, e) for n, e in sections["param"].items()]
        for name, scale in (bias or {}).items():
            scale = torch.as_tensor(scale, dtype=torch.float32)
            entry: dict[str, Any] = {"name": name, "output_dtype": "int32"}
            if scale.dim() == 1:
                entry["y_scale"] = _floats(scale)
                entry["axis"] = 0
            else:
                entry["y_scale"] = float(scale.reshape(()).item())
            entries.append(entry)
        return {"version": version, "encodings": entries, "excluded_layers": excluded,
                "quantizer_args": args}
    if bias:
        logger.info("encodings version %s has no int32 bias entries; %d bias encodings are written "
                    "only in version 2.0.0", version, len(bias))
    if version == "1.0.0":
        return {"version": version,
                "activation_encodings": [_entry_1_0_0(n, e) for n, e in sections["activation"].items()],
                "param_encodings": [_entry_1_0_0(n, e) for n, e in sections["param"].items()],
                "excluded_layers": excluded, "quantizer_args": args}
    return {"version": version,
            "activation_encodings": {n: _entries_0_6_1(e) for n, e in sections["activation"].items()},
            "param_encodings": {n: _entries_0_6_1(e) for n, e in sections["param"].items()},
            "excluded_layers": excluded, "quantizer_args": args}


def write_encodings(path: str | os.PathLike[str], refs_or_encodings: Any, *, version: str = "1.0.0",
                    quantizer_args: QuantizerArgs | Mapping[str, Any] | None = None,
                    bias: Mapping[str, torch.Tensor] | None = None,
                    excluded_layers: Iterable[str] = ()) -> dict[str, Any]:
    """Writes an encodings file atomically (:func:`fxquant.core.files.atomic_write`).

    Arguments are those of :func:`encodings_dict`; returns the dict written. An existing file is
    replaced; if writing fails, it is left as it was.

    Raises:
        ConfigError: as :func:`encodings_dict` (nothing is written).
        FileWriteError: the file could not be written (the message names ``path``).

    Example:
        >>> write_encodings("out/model.encodings", sim.quantizers(), version="1.0.0")["version"]
        '1.0.0'
    """
    data = encodings_dict(refs_or_encodings, version=version, quantizer_args=quantizer_args,
                          bias=bias, excluded_layers=excluded_layers)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False)

    files.atomic_write(path, write, overwrite=True, suffix=".encodings")
    return data


def torch_names(sim: Any) -> dict[str, list[tuple[str, str, int]]]:
    """Where each activation quantizer of ``sim`` sits in a ``_torch.encodings`` file.

    AIMET keys activation encodings by torch layer: ``(layer, "output", i)`` for the i-th output
    of a layer, ``(layer, "input", i)`` for a quantizer on the i-th input of a layer (model-input
    quantizers are listed under every layer that consumes them). A quantizer whose consumer is
    not a layer is keyed by its own name.

    Returns:
        ``{quantizer name: [(layer, "input" | "output", index), ...]}``.

    Example:
        >>> torch_names(sim)["conv1"]
        [('conv1', 'output', 0)]
    """
    from fxquant import _meta
    from fxquant.core.layers import is_layer, layer_name

    out: dict[str, list[tuple[str, str, int]]] = {}
    for node in sim.model.graph.nodes:
        if _meta.get(node, _meta.ROLE) != _meta.ROLE_QUANTIZER:
            continue
        name = _meta.get(node, _meta.LAYER_NAME)
        if _meta.get(node, _meta.QUANTIZES) == _meta.QUANTIZES_OUTPUT:
            out[name] = [(name, "output", 0)]
            continue
        keys = []
        for user in node.users:
            if is_layer(user):
                keys.append((layer_name(user), "input", user.all_input_nodes.index(node)))
        out[name] = keys or [(name, "input", 0)]
    return out


def target_layouts(sim: Any) -> dict[str, int | None]:
    """What each integer quantizer of ``sim`` needs from a loaded encoding: the number of channels
    of a per-channel parameter quantizer (its tensor's size along the axis), None for a per-tensor
    quantizer; per-channel activation quantizers are left out (their size is not known here).
    Pass it as ``read_encodings(..., layouts=...)``.

    Example:
        >>> target_layouts(sim)["conv1.weight"], target_layouts(sim)["conv1"]
        (64, None)
    """
    modules = dict(sim.model.named_modules())
    out: dict[str, int | None] = {}
    for ref in sim.quantizers():
        q = ref.quantizer
        if getattr(q, "data_type", None) is None or q.data_type.name != "int":
            continue
        axis = getattr(q, "axis", None)
        if axis is None:
            out[ref.name] = None
        elif ref.kind == "param":
            owner = modules.get(ref.layer)
            original = float_param(owner, ref.name.rsplit(".", 1)[1])
            if -original.dim() <= axis < original.dim():
                out[ref.name] = int(original.shape[axis])
    return out


def torch_encodings_dict(sim: Any, *, version: str = "1.0.0",
                         quantizer_args: QuantizerArgs | Mapping[str, Any] | None = None,
                         excluded_layers: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON-ready dict of ``<prefix>_torch.encodings``: the sim's encodings keyed by torch
    module and parameter names, for reloading with
    :func:`fxquant.quantsim.load_encodings_to_sim`.

    As AIMET writes it: ``version`` is the export's encoding version while the entries are
    0.6.1-style; ``activation_encodings`` is ``{layer: {"input"|"output": {"<i>": entry}}}``,
    ``param_encodings`` is ``{"<layer>.<param>": [entry per channel]}``; disabled quantizers are
    absent.

    Raises:
        ConfigError: unknown version, or an enabled quantizer without an encoding.

    Example:
        >>> d = torch_encodings_dict(sim)
        >>> d["activation_encodings"]["conv1"]["output"]["0"]["bitwidth"]
        8
    """
    _check_version(version)
    refs = list(sim.quantizers())
    sections = encodings_from_refs(refs)
    keys = torch_names(sim)
    acts: dict[str, dict[str, dict[str, Any]]] = {}
    for name, enc in sections["activation"].items():
        entry = _entries_0_6_1(enc)[0]
        for layer, io, i in keys.get(name, [(name, "output", 0)]):
            acts.setdefault(layer, {}).setdefault(io, {})[str(i)] = entry
    args = quantizer_args.as_dict() if isinstance(quantizer_args, QuantizerArgs) else dict(
        quantizer_args or QuantizerArgs().as_dict())
    return {"version": version, "activation_encodings": acts,
            "param_encodings": {n: _entries_0_6_1(e) for n, e in sections["param"].items()},
            "excluded_layers": list(excluded_layers), "quantizer_args": args}


def torch_encodings_file(sim: Any, prefix: str, *, version: str = "1.0.0",
                         quantizer_args: QuantizerArgs | Mapping[str, Any] | None = None,
                         excluded_layers: Iterable[str] = ()
                         ) -> tuple[str, Callable[[BinaryIO], None]]:
    """``(file name, writer)`` of ``<prefix>_torch.encodings`` for an export's file set: the dict
    (:func:`torch_encodings_dict`) is built now, so that errors come before anything is written;
    the writer writes its UTF-8 JSON to a binary file object.

    Example:
        >>> name, write = torch_encodings_file(sim, "resnet18")
        >>> name
        'resnet18_torch.encodings'
    """
    data = torch_encodings_dict(sim, version=version, quantizer_args=quantizer_args,
                                excluded_layers=excluded_layers)
    text = json.dumps(data, indent=1, allow_nan=False).encode("utf-8")
    return f"{prefix}_torch.encodings", lambda f: f.write(text)
