"""AIMET encodings files (``<prefix>.encodings``): write and read versions 1.0.0, 0.6.1 and 2.0.0.

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
    >>> read_encodings(d)["activation"]["x"] == enc
    True
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
from fxquant.core.encoding import (AnyEncoding, FloatEncoding, QuantEncoding, encoding_problem,
                                   quant_range)
from fxquant.core.jsonpath import JsonValidator, got, index, join, loads, show
from fxquant.errors import ConfigError

__all__ = ["EncodingsFileError", "FloatEncoding", "QuantizerArgs", "VERSIONS", "encodings_dict",
           "write_encodings", "read_encodings", "encodings_from_refs", "is_torch_encodings",
           "default_torch_name", "target_layouts", "torch_encodings_dict", "torch_encodings_file", "torch_names"]

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
            original = owner.parametrizations[ref.name.rsplit(".", 1)[1]].original
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


# -------------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------------
_BITWIDTHS = (2, 32)
_SCALAR_OR_LIST = (list, int, float)
_NUMBER = (int, float)


@dataclasses.dataclass(frozen=True)
class _Expect:
    """What the reader knows about the target: channel axes, channel counts, torch names."""

    axes: Mapping[str, int]
    layouts: Mapping[str, int | None]
    found: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> JSON path


def _bitwidth(v: JsonValidator, entry: Mapping[str, Any], key: str, where: str) -> int:
    return v.int_in_range(v.get(entry, key, where, int), join(where, key), *_BITWIDTHS,
                          what="a bit width")


def _numbers(v: JsonValidator, value: Any, where: str, *, integer: bool = False) -> list[Any]:
    return v.number_list(value, where, integer=integer)


def _scales(v: JsonValidator, value: Any, where: str) -> list[float]:
    return [float(x) for x in v.number_list(value, where, positive=True, what="a scale")]


def _build(v: JsonValidator, name: str, scales: list[float], zps: list[int], *, bw: int,
           signed: bool, symmetric: bool, strict: bool, per_channel: bool, axis: int | None,
           paths: Mapping[str, Any], where: str, expect: _Expect) -> QuantEncoding:
    """The QuantEncoding of one entry, validated by :func:`fxquant.core.encoding.encoding_problem`
    (and against the target's layout when known); errors name the JSON path."""
    qmin, qmax = quant_range(bw, signed, symmetric, strict)
    layout = expect.layouts.get(name, "unknown")
    if layout is None and per_channel:
        v.fail(where, f"{len(scales)} per-channel scales, but the quantizer of {name!r} is per "
                      "tensor (one scale)")
    if isinstance(layout, int) and not isinstance(layout, bool):
        if not per_channel and layout == 1 and len(scales) == 1:
            per_channel = True  # a one-channel tensor: per tensor and per channel agree
        if not per_channel:
            v.fail(where, f"one scale (per tensor), but the quantizer of {name!r} is per channel "
                          f"({layout} channels along axis {expect.axes.get(name, 0)})")
    shape: tuple[int, ...] | None = None
    if layout != "unknown":
        shape = () if layout is None else (int(layout),)
    if per_channel and axis is None:
        axis = 0
    scale = scales if per_channel else scales[0]
    zp = zps if per_channel else zps[0]
    problem = encoding_problem(scale, zp, qmin=qmin, qmax=qmax, symmetric=symmetric, shape=shape)
    if problem is not None:
        field, message = problem
        path = paths[field]
        for i, (s_i, z_i) in enumerate(zip(scales, zps)):  # name the first bad value's index
            one = encoding_problem(s_i, z_i, qmin=qmin, qmax=qmax, symmetric=symmetric)
            if one is not None and callable(paths.get(f"{field}[i]")):
                field, message = one
                path = paths[f"{field}[i]"](i)
                break
        v.fail(path, message)
    return QuantEncoding(scale=torch.tensor(scale, dtype=torch.float64).to(torch.float32),
                         zero_point=torch.tensor(zp, dtype=torch.int64), bitwidth=bw,
                         signed=signed, symmetric=symmetric, strict=strict,
                         axis=axis if per_channel else None)


def _list_paths(where: str, scale_key: str, zp_key: str, raw_scale: Any,
                raw_zp: Any) -> dict[str, Any]:
    paths: dict[str, Any] = {"scale": join(where, scale_key), "zero_point": join(where, zp_key)}
    if isinstance(raw_scale, list):
        paths["scale[i]"] = lambda i: index(join(where, scale_key), i)
    if isinstance(raw_zp, list):
        paths["zero_point[i]"] = lambda i: index(join(where, zp_key), i)
    return paths


def _from_offsets(v: JsonValidator, name: str, scales: list[float], offsets: list[int], bw: int,
                  sym: bool, per_channel: bool, where: str, paths: Mapping[str, Any],
                  expect: _Expect) -> QuantEncoding:
    if len(scales) != len(offsets):
        v.fail(where, f"{len(scales)} scales but {len(offsets)} offsets")
    half = 1 << (bw - 1)
    if sym and all(o == -half for o in offsets):
        signed, strict, zps = True, False, [0] * len(offsets)
    elif sym and all(o == -half + 1 for o in offsets):
        signed, strict, zps = True, True, [0] * len(offsets)
    elif sym and all(o == 0 for o in offsets):
        signed, strict, zps = False, False, [0] * len(offsets)
    elif sym:
        v.fail(paths["zero_point"], f"a symmetric {bw}-bit encoding has offset {-half} (signed), "
                                    f"{-half + 1} (strict) or 0 (unsigned); got {offsets[:5]}")
    else:
        signed, strict = False, False
        zps = [-o for o in offsets]
        bad = [o for o in offsets if not -((1 << bw) - 1) <= o <= 0]
        if bad:
            v.fail(paths["zero_point"], f"offsets of an asymmetric {bw}-bit encoding lie in "
                                        f"[{-((1 << bw) - 1)}, 0]; got {bad[:5]}")
    if not per_channel and len(scales) != 1:
        v.fail(paths["scale"], f"a per-tensor encoding has one scale, got {len(scales)}")
    return _build(v, name, scales, zps, bw=bw, signed=signed, symmetric=sym, strict=strict,
                  per_channel=per_channel, axis=expect.axes.get(name, 0) if per_channel else None,
                  paths=paths, where=where, expect=expect)


def _read_1_0_0_entry(v: JsonValidator, entry: Any, where: str,
                      expect: _Expect) -> tuple[str, AnyEncoding]:
    entry = v.object(entry, where)
    name = v.get(entry, "name", where, str)
    dtype = v.get(entry, "dtype", where, str)
    bw = _bitwidth(v, entry, "bw", where)
    if dtype.upper() == "FLOAT":
        if bw != 16:
            v.fail(join(where, "bw"), f"float encodings are 16-bit, got {bw}")
        return name, FloatEncoding(bw)
    if dtype.upper() != "INT":
        v.one_of(dtype, join(where, "dtype"), ("INT", "FLOAT"))
    enc_type = v.one_of(v.get(entry, "enc_type", where, str), join(where, "enc_type"),
                        ("PER_TENSOR", "PER_CHANNEL"), note="block encodings are not supported")
    sym = v.get(entry, "is_sym", where, bool)
    scales = _scales(v, v.get(entry, "scale", where, _SCALAR_OR_LIST), join(where, "scale"))
    offsets = _numbers(v, v.get(entry, "offset", where, _SCALAR_OR_LIST), join(where, "offset"),
                       integer=True)
    paths = _list_paths(where, "scale", "offset", entry["scale"], entry["offset"])
    return name, _from_offsets(v, name, scales, offsets, bw, sym, enc_type == "PER_CHANNEL",
                               where, paths, expect)


def _read_0_6_1_entries(v: JsonValidator, name: str, entries: Any, where: str,
                        expect: _Expect, single: bool = False) -> AnyEncoding:
    """One 0.6.1-style encoding: a list of per-channel entries at ``where``, or with ``single``
    the one entry object at ``where`` (a torch-named activation)."""
    if single:
        entries = [entries]
    elif not isinstance(entries, list) or not entries:
        v.fail(where, f"expected a non-empty list of encodings (one per channel), {got(entries)}")

    def at(i: int) -> str:
        return where if single else index(where, i)

    scales, offsets, ranges = [], [], []
    bws, syms = set(), set()
    for i, e in enumerate(entries):
        w = at(i)
        e = v.object(e, w)
        bw = _bitwidth(v, e, "bitwidth", w)
        dtype = v.get(e, "dtype", w, str) if "dtype" in e else "int"
        if dtype.lower() == "float":
            if len(entries) != 1 or bw != 16:
                v.fail(w, "a float encoding is one 16-bit entry")
            return FloatEncoding(bw)
        if dtype.lower() != "int":
            v.fail(join(w, "dtype"), f"expected 'int' or 'float', got {show(dtype)}")
        sym = v.get(e, "is_symmetric", w, (str, bool))
        if isinstance(sym, str):
            sym = v.one_of(sym, join(w, "is_symmetric"), ("True", "False")) == "True"
        scales += _scales(v, v.get(e, "scale", w, _NUMBER), join(w, "scale"))
        offsets += _numbers(v, v.get(e, "offset", w, _NUMBER), join(w, "offset"), integer=True)
        lo = v.number(e["min"], join(w, "min")) if "min" in e else None
        hi = v.number(e["max"], join(w, "max")) if "max" in e else None
        ranges.append((lo, hi))
        bws.add(bw)
        syms.add(sym)
    if len(bws) != 1 or len(syms) != 1:
        v.fail(where, "per-channel entries disagree on bitwidth or is_symmetric")
    paths = {"scale": where, "zero_point": where,
             "scale[i]": lambda i: join(at(i), "scale"),
             "zero_point[i]": lambda i: join(at(i), "offset")}
    enc = _from_offsets(v, name, scales, offsets, bws.pop(), syms.pop(), len(entries) > 1, where,
                        paths, expect)
    _check_min_max(v, enc, ranges, at)
    return enc


def _check_min_max(v: JsonValidator, enc: QuantEncoding,
                   ranges: list[tuple[float | None, float | None]],
                   at: Callable[[int], str]) -> None:
    """0.6.1 ``min``/``max`` must be the grid's ends (within half a step): a file whose range
    contradicts its scale and offset is corrupt, and which one is right cannot be told."""
    mins = enc.min.reshape(-1).tolist()
    maxs = enc.max.reshape(-1).tolist()
    steps = enc.scale.reshape(-1).tolist()
    for i, ((lo, hi), mn, mx, step) in enumerate(zip(ranges, mins, maxs, steps)):
        for key, value, expected in (("min", lo, mn), ("max", hi, mx)):
            if value is None:
                continue
            if abs(float(value) - expected) > 0.5 * step + 1e-6 * abs(expected):
                v.fail(join(at(i), key),
                       f"{show(value)} contradicts the entry's scale and offset, which give "
                       f"{key} {expected!r} (the grid's end); write the file again")


_DTYPES_2 = {**{f"int{b}": (b, True) for b in range(2, 33)},
             **{f"uint{b}": (b, False) for b in range(2, 33)}}


def _read_2_0_0_entry(v: JsonValidator, entry: Any, where: str,
                      expect: _Expect) -> tuple[str, AnyEncoding, bool]:
    """(name, encoding, is_int32_bias) — int32 entries are returned as encodings too."""
    entry = v.object(entry, where)
    name = v.get(entry, "name", where, str)
    dtype = v.get(entry, "output_dtype", where, str)
    if dtype == "float16":
        return name, FloatEncoding(16), False
    if dtype not in _DTYPES_2:
        v.fail(join(where, "output_dtype"), f"expected int<b>, uint<b> (b in 2-32) or float16, "
                                            f"got {show(dtype)}")
    bw, signed = _DTYPES_2[dtype]
    raw_scale = v.get(entry, "y_scale", where, _SCALAR_OR_LIST)
    per_channel = isinstance(raw_scale, list)
    scales = _scales(v, raw_scale, join(where, "y_scale"))
    if "y_zero_point" in entry:
        raw_zp = entry["y_zero_point"]
        if isinstance(raw_zp, list) != per_channel:
            v.fail(join(where, "y_zero_point"), "must be a list exactly when y_scale is a list")
        zps = _numbers(v, raw_zp, join(where, "y_zero_point"), integer=True)
    else:
        zps = [0] * len(scales)
    if len(zps) != len(scales):
        v.fail(where, f"{len(scales)} scales but {len(zps)} zero points")
    axis = None
    if per_channel:
        axis = v.get(entry, "axis", where, int)
        if axis < 0:
            v.fail(join(where, "axis"), f"invalid value {axis}; expected a channel axis >= 0")
        want = expect.axes.get(name)
        if want is not None and axis != want:
            v.fail(join(where, "axis"), f"the file quantizes {name!r} along axis {axis}, but its "
                                        f"quantizer quantizes along axis {want}")
    elif "axis" in entry and entry["axis"] is not None:
        v.fail(join(where, "axis"), "a per-tensor entry (y_scale a number) has no axis")
    sym = signed and not any(zps)
    paths = _list_paths(where, "y_scale", "y_zero_point", raw_scale, entry.get("y_zero_point"))
    enc = _build(v, name, scales, zps, bw=bw, signed=signed, symmetric=sym, strict=False,
                 per_channel=per_channel, axis=axis, paths=paths, where=where,
                 expect=expect if dtype != "int32" else _Expect({}, {}))
    return name, enc, dtype == "int32"


def _is_param_name(name: str) -> bool:
    return name.endswith(".weight") or name.endswith(".bias")


def is_torch_encodings(data: Any) -> bool:
    """Whether parsed encodings are a ``<prefix>_torch.encodings`` document (activation entries
    keyed by layer, ``{"conv1": {"output": {"0": {...}}}}``) rather than ONNX-named.

    Example:
        >>> is_torch_encodings({"activation_encodings": {"conv1": {"output": {"0": {}}}}})
        True
    """
    if not isinstance(data, Mapping):
        return False
    acts = data.get("activation_encodings")
    return isinstance(acts, Mapping) and any(isinstance(e, Mapping) for e in acts.values())


def default_torch_name(layer: str, io: str, i: int) -> str:
    """The quantizer name a torch-named activation key stands for when no sim says otherwise:
    the layer name for its (first) output, ``<layer>.<io>.<i>`` otherwise."""
    return layer if (io, i) == ("output", 0) else f"{layer}.{io}.{i}"


def _read_torch_activations(v: JsonValidator, block: Any, expect: _Expect,
                            torch_names: Mapping[tuple[str, str, int], str] | None,
                            out: dict[str, AnyEncoding]) -> None:
    block = v.object(block, "activation_encodings")
    for layer, ios in block.items():
        lpath = join("activation_encodings", layer)
        ios = v.object(ios, lpath)
        v.check_keys(ios, lpath, ("input", "output"))
        for io, entries in ios.items():
            ipath = join(lpath, io)
            entries = v.object(entries, ipath)
            for key, entry in entries.items():
                epath = join(ipath, key)
                if not key.isdigit() or len(key) > 6:
                    v.fail(epath, f"expected a tensor index ('0', '1' ...), got key {key!r}")
                i = int(key)
                name = (torch_names or {}).get((layer, io, i)) or default_torch_name(layer, io, i)
                enc = _read_0_6_1_entries(v, name, entry, epath, expect, single=True)
                if name in out and out[name] != enc:
                    v.fail(epath, f"the quantizer {name!r} is given two different encodings")
                out[name] = enc
                expect.found.setdefault(name, epath)


def read_encodings(path_or_dict: str | os.PathLike[str] | Mapping[str, Any], *,
                   axes: Mapping[str, int] | None = None,
                   param_names: Iterable[str] | None = None,
                   layouts: Mapping[str, int | None] | None = None,
                   torch_names: Mapping[tuple[str, str, int], str] | None = None,
                   source: str | None = None,
                   found: dict[str, str] | None = None) -> dict[str, dict[str, AnyEncoding]]:
    """Reads an encodings file (or its parsed dict) of version 1.0.0, 0.6.1 or 2.0.0, ONNX-named
    (``<prefix>.encodings``) or torch-named (``<prefix>_torch.encodings``).

    Every encoding is validated as calibration's own are
    (:func:`fxquant.core.encoding.encoding_problem`): scales finite, > 0, finite in float32 and
    at least ``MIN_SCALE``; zero points integers on the grid; 0.6.1 ``min``/``max`` agreeing with
    scale and offset.

    Args:
        path_or_dict: a path to the JSON file, or the dict itself.
        axes: channel axis of per-channel entries by name; versions without an axis use it
            (default 0), and a 2.0.0 ``axis`` that differs is an error.
        param_names: for version 2.0.0, the names that are params (default: entries with an
            ``axis``, int32 entries, and names ending in ``.weight`` / ``.bias``).
        layouts: the target's layout by name: the number of channels of a per-channel
            quantizer, None for a per-tensor one; an entry that does not fit is an error.
        torch_names: for torch-named files, ``(layer, "input"|"output", index)`` → quantizer
            name (default :func:`default_torch_name`).
        source: what the dict is, for messages (default ``"encodings file"``).
        found: a dict that receives ``{name: JSON path of its entry}``, for messages.

    Returns:
        ``{"activation": {name: enc}, "param": {name: enc}}`` with :class:`QuantEncoding` or
        :class:`FloatEncoding` values (int32 bias entries of 2.0.0 are params).

    Raises:
        EncodingsFileError: the file cannot be read, is not UTF-8 JSON, or does not follow the
            format; the message names the file and the JSON path (e.g.
            ``param_encodings[3].scale``). A subclass of :class:`~fxquant.errors.ConfigError`.

    Example:
        >>> encs = read_encodings("out/resnet18.encodings")
        >>> encs["param"]["conv1.weight"].axis
        0
    """
    if isinstance(path_or_dict, Mapping):
        data: Any = path_or_dict
        v = JsonValidator(source or "encodings file", error_cls=EncodingsFileError)
    else:
        data, v = _load_json(path_or_dict)
    expect = _Expect(dict(axes or {}), dict(layouts or {}), found if found is not None else {})
    data = v.object(data, "")
    version = data.get("version", "0.6.1")
    if not isinstance(version, str):
        v.fail("version", f"expected a string, {got(version)}")
    out: dict[str, dict[str, AnyEncoding]] = {"activation": {}, "param": {}}
    # torch-named: activations keyed by layer; in version 1.x also recognised by its params,
    # which are keyed by name (an ONNX-named 1.x file lists them)
    if is_torch_encodings(data) or (version.startswith("1.")
                                    and isinstance(data.get("param_encodings"), Mapping)):
        acts = data.get("activation_encodings", {})
        if not isinstance(acts, Mapping):
            v.fail("activation_encodings", "expected an object keyed by layer name (the file is "
                   "torch-named: its param_encodings is keyed by parameter name), "
                   f"{got(acts)}")
        _read_torch_activations(v, acts, expect, torch_names, out["activation"])
        block = v.object(data.get("param_encodings", {}), "param_encodings")
        for name, entries in block.items():
            out["param"][name] = _read_0_6_1_entries(v, name, entries,
                                                     join("param_encodings", name), expect)
            expect.found[name] = join("param_encodings", name)
        return out
    if version.startswith("2."):
        entries = v.array(v.get(data, "encodings", "", list), "encodings")
        chosen = None if param_names is None else set(param_names)
        for i, entry in enumerate(entries):
            name, enc, is_bias = _read_2_0_0_entry(v, entry, index("encodings", i), expect)
            if chosen is not None:
                is_param = name in chosen
            else:
                is_param = is_bias or (isinstance(enc, QuantEncoding) and enc.is_per_channel) or (
                    _is_param_name(name))
            section = "param" if is_param else "activation"
            if name in out[section]:
                v.fail(join(index("encodings", i), "name"), f"duplicate name {name!r}")
            out[section][name] = enc
            expect.found[name] = join(index("encodings", i), "name")
        return out
    if not version.startswith(("0.", "1.")):
        v.fail("version", f"unsupported version {version!r}; supported: {list(VERSIONS)}")
    for key, section in (("activation_encodings", "activation"), ("param_encodings", "param")):
        if version.startswith("1."):
            block = data.get(key, [])
            if not isinstance(block, list):
                v.fail(key, f"expected a list in version {version}, {got(block)}")
            for i, entry in enumerate(block):
                name, enc = _read_1_0_0_entry(v, entry, index(key, i), expect)
                if name in out[section]:
                    v.fail(join(index(key, i), "name"), f"duplicate name {name!r}")
                out[section][name] = enc
                expect.found[name] = join(index(key, i), "name")
        else:
            block = data.get(key, {})
            if not isinstance(block, Mapping):
                v.fail(key, f"expected an object keyed by tensor name in version {version}, "
                            f"{got(block)}")
            for name, entries in block.items():
                out[section][name] = _read_0_6_1_entries(v, name, entries, join(key, name), expect)
                expect.found[name] = join(key, name)
    return out


def _load_json(path: str | os.PathLike[str]) -> tuple[Any, JsonValidator]:
    try:
        source = os.fspath(path)
    except TypeError as exc:
        raise EncodingsFileError(f"expected the path of an .encodings file or its parsed dict, "
                                 f"got {type(path).__name__}") from exc
    v = JsonValidator(f"encodings file {source}", error_cls=EncodingsFileError)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise EncodingsFileError(f"encodings file {source} not found; pass the path of an "
                                 ".encodings file written by sim.export() or save_encodings()"
                                 ) from exc
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
        raise EncodingsFileError(f"encodings file {source!r} cannot be read: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncodingsFileError(f"encodings file {source}: not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start}); pass the path of an .encodings (JSON) file"
                                 ) from exc
    data = loads(text, v.where, error_cls=EncodingsFileError,
                 fix="write the file again, e.g. with sim.export()", log=logger)
    return data, v
