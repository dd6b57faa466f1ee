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
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fxquant.core import files
from fxquant.core.encoding import AnyEncoding, FloatEncoding, QuantEncoding
from fxquant.core.jsonpath import JsonValidator, index, loads
from fxquant.errors import ConfigError

__all__ = ["FloatEncoding", "QuantizerArgs", "VERSIONS", "encodings_dict", "write_encodings",
           "read_encodings", "encodings_from_refs"]

logger = logging.getLogger(__name__)

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


# -------------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------------
_BITWIDTHS = (2, 32)
_SCALAR_OR_LIST = (list, int, float)
_NUMBER = (int, float)


def _bitwidth(v: JsonValidator, entry: Mapping[str, Any], key: str, where: str) -> int:
    return v.int_in_range(v.get(entry, key, where, int), f"{where}.{key}", *_BITWIDTHS,
                          what="a bit width")


def _scales(v: JsonValidator, value: Any, where: str) -> list[float]:
    return [float(x) for x in v.number_list(value, where, positive=True, what="a scale")]


def _integers(v: JsonValidator, value: Any, where: str) -> list[int]:
    return [int(x) for x in v.number_list(value, where, integer=True)]


def _from_offsets(v: JsonValidator, scales: list[float], offsets: list[int], bw: int, sym: bool,
                  per_channel: bool, axis: int, where: str) -> QuantEncoding:
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
        v.fail(f"{where}.offset", f"a symmetric {bw}-bit encoding has offset {-half} (signed), "
                                  f"{-half + 1} (strict) or 0 (unsigned); got {offsets}")
    else:
        signed, strict = False, False
        zps = [-o for o in offsets]
        bad = [o for o in offsets if not -((1 << bw) - 1) <= o <= 0]
        if bad:
            v.fail(f"{where}.offset", f"offsets of an asymmetric {bw}-bit encoding lie in "
                                      f"[{-((1 << bw) - 1)}, 0]; got {bad[:5]}")
    if not per_channel and len(scales) != 1:
        v.fail(f"{where}.scale", f"a per-tensor encoding has one scale, got {len(scales)}")
    scale = torch.tensor(scales, dtype=torch.float32)
    zp = torch.tensor(zps, dtype=torch.int64)
    return QuantEncoding(scale=scale if per_channel else scale[0], zero_point=zp if per_channel else zp[0],
                         bitwidth=bw, signed=signed, symmetric=sym, strict=strict,
                         axis=axis if per_channel else None)


def _read_1_0_0_entry(v: JsonValidator, entry: Any, where: str,
                      axes: Mapping[str, int]) -> tuple[str, AnyEncoding]:
    entry = v.object(entry, where)
    name = v.get(entry, "name", where, str)
    dtype = v.get(entry, "dtype", where, str)
    bw = _bitwidth(v, entry, "bw", where)
    if dtype.upper() == "FLOAT":
        if bw != 16:
            v.fail(f"{where}.bw", f"float encodings are 16-bit, got {bw}")
        return name, FloatEncoding(bw)
    if dtype.upper() != "INT":
        v.one_of(dtype, f"{where}.dtype", ("INT", "FLOAT"))
    enc_type = v.one_of(v.get(entry, "enc_type", where, str), f"{where}.enc_type",
                        ("PER_TENSOR", "PER_CHANNEL"), note="block encodings are not supported")
    sym = v.get(entry, "is_sym", where, bool)
    scales = _scales(v, v.get(entry, "scale", where, _SCALAR_OR_LIST), f"{where}.scale")
    offsets = _integers(v, v.get(entry, "offset", where, _SCALAR_OR_LIST), f"{where}.offset")
    return name, _from_offsets(v, scales, offsets, bw, sym, enc_type == "PER_CHANNEL",
                               axes.get(name, 0), where)


def _read_0_6_1_entries(v: JsonValidator, entries: Any, where: str, axis: int) -> AnyEncoding:
    if not isinstance(entries, list) or not entries:
        v.fail(where, "expected a non-empty list of encodings (one per channel)")
    scales, offsets = [], []
    bws, syms = set(), set()
    for i, e in enumerate(entries):
        w = index(where, i)
        e = v.object(e, w)
        bw = _bitwidth(v, e, "bitwidth", w)
        dtype = str(e.get("dtype", "int")).lower()
        if dtype == "float":
            if len(entries) != 1 or bw != 16:
                v.fail(w, "a float encoding is one 16-bit entry")
            return FloatEncoding(bw)
        if dtype != "int":
            v.fail(f"{w}.dtype", f"expected 'int' or 'float', got {e.get('dtype')!r}")
        sym = v.get(e, "is_symmetric", w, (str, bool))
        if isinstance(sym, str):
            sym = v.one_of(sym, f"{w}.is_symmetric", ("True", "False")) == "True"
        scales += _scales(v, v.get(e, "scale", w, _NUMBER), f"{w}.scale")
        offsets += _integers(v, v.get(e, "offset", w, _NUMBER), f"{w}.offset")
        bws.add(bw)
        syms.add(sym)
    if len(bws) != 1 or len(syms) != 1:
        v.fail(where, "per-channel entries disagree on bitwidth or is_symmetric")
    return _from_offsets(v, scales, offsets, bws.pop(), syms.pop(), len(entries) > 1, axis, where)


_DTYPES_2 = {**{f"int{b}": (b, True) for b in range(2, 33)},
             **{f"uint{b}": (b, False) for b in range(2, 33)}}


def _read_2_0_0_entry(v: JsonValidator, entry: Any, where: str) -> tuple[str, AnyEncoding, bool]:
    """(name, encoding, is_int32_bias) — int32 entries are returned as encodings too."""
    entry = v.object(entry, where)
    name = v.get(entry, "name", where, str)
    dtype = v.get(entry, "output_dtype", where, str)
    if dtype == "float16":
        return name, FloatEncoding(16), False
    if dtype not in _DTYPES_2:
        v.fail(f"{where}.output_dtype", f"expected int<b>, uint<b> (b in 2-32) or float16, "
                                        f"got {dtype!r}")
    bw, signed = _DTYPES_2[dtype]
    raw_scale = v.get(entry, "y_scale", where, _SCALAR_OR_LIST)
    per_channel = isinstance(raw_scale, list)
    scales = _scales(v, raw_scale, f"{where}.y_scale")
    if "y_zero_point" in entry:
        raw_zp = entry["y_zero_point"]
        if isinstance(raw_zp, list) != per_channel:
            v.fail(f"{where}.y_zero_point", "must be a list exactly when y_scale is a list")
        zps = _integers(v, raw_zp, f"{where}.y_zero_point")
    else:
        zps = [0] * len(scales)
    if len(zps) != len(scales):
        v.fail(where, f"{len(scales)} scales but {len(zps)} zero points")
    axis = v.get(entry, "axis", where, int) if per_channel else None
    qmin = -(1 << (bw - 1)) if signed else 0
    qmax = (1 << (bw - 1)) - 1 if signed else (1 << bw) - 1
    bad = [z for z in zps if not qmin <= z <= qmax]
    if bad:
        v.fail(f"{where}.y_zero_point", f"zero points must lie in [{qmin}, {qmax}] for {dtype}, "
                                        f"got {bad[:5]}")
    sym = signed and not any(zps)
    scale = torch.tensor(scales, dtype=torch.float32)
    zp = torch.tensor(zps, dtype=torch.int64)
    enc = QuantEncoding(scale=scale if per_channel else scale[0], zero_point=zp if per_channel else zp[0],
                        bitwidth=bw, signed=signed, symmetric=sym, axis=axis)
    return name, enc, dtype == "int32"


def _is_param_name(name: str) -> bool:
    return name.endswith(".weight") or name.endswith(".bias")


def read_encodings(path_or_dict: str | os.PathLike[str] | Mapping[str, Any], *,
                   axes: Mapping[str, int] | None = None,
                   param_names: Iterable[str] | None = None) -> dict[str, dict[str, AnyEncoding]]:
    """Reads an encodings file (or its parsed dict) of version 1.0.0, 0.6.1 or 2.0.0.

    Args:
        path_or_dict: a path to the JSON file, or the dict itself.
        axes: channel axis of per-channel entries in versions without one (default 0).
        param_names: for version 2.0.0, the names that are params (default: entries with an
            ``axis``, int32 entries, and names ending in ``.weight`` / ``.bias``).

    Returns:
        ``{"activation": {name: enc}, "param": {name: enc}}`` with :class:`QuantEncoding` or
        :class:`FloatEncoding` values (int32 bias entries of 2.0.0 are params).

    Raises:
        ConfigError: the file is not valid JSON (UTF-8) or does not follow the format; the
            message names the file and the JSON path (e.g. ``param_encodings[3].scale``).
        OSError: the file cannot be opened (e.g. ``FileNotFoundError``).

    Example:
        >>> encs = read_encodings("out/resnet18.encodings")
        >>> encs["param"]["conv1.weight"].axis
        0
    """
    if isinstance(path_or_dict, Mapping):
        data: Any = path_or_dict
        v = JsonValidator("encodings file")
    else:
        source = os.fspath(path_or_dict)
        v = JsonValidator(f"encodings file {source}")
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"encodings file {source}: not UTF-8 text ({exc.reason}); pass the "
                              "path of an .encodings (JSON) file") from exc
        data = loads(text, v.where, fix="write the file again, e.g. with sim.export()", log=logger)
    data = v.object(data, "")
    axes = dict(axes or {})
    version = data.get("version", "0.6.1")
    if not isinstance(version, str):
        v.fail("version", f"expected a string, got {version!r}")
    out: dict[str, dict[str, AnyEncoding]] = {"activation": {}, "param": {}}
    if version.startswith("2."):
        entries = v.get(data, "encodings", "", list)
        chosen = None if param_names is None else set(param_names)
        for i, entry in enumerate(entries):
            name, enc, is_bias = _read_2_0_0_entry(v, entry, index("encodings", i))
            if chosen is not None:
                is_param = name in chosen
            else:
                is_param = is_bias or (isinstance(enc, QuantEncoding) and enc.is_per_channel) or (
                    _is_param_name(name))
            section = "param" if is_param else "activation"
            if name in out[section]:
                v.fail(f"encodings[{i}].name", f"duplicate name {name!r}")
            if isinstance(enc, QuantEncoding) and enc.axis is not None and name in axes:
                enc = dataclasses.replace(enc, axis=axes[name])
            out[section][name] = enc
        return out
    if not version.startswith(("0.", "1.")):
        v.fail("version", f"unsupported version {version!r}; supported: {list(VERSIONS)}")
    for key, section in (("activation_encodings", "activation"), ("param_encodings", "param")):
        if version.startswith("1."):
            block = data.get(key, [])
            if not isinstance(block, list):
                v.fail(key, f"expected a list in version {version}, got {type(block).__name__}")
            for i, entry in enumerate(block):
                name, enc = _read_1_0_0_entry(v, entry, index(key, i), axes)
                if name in out[section]:
                    v.fail(f"{key}[{i}].name", f"duplicate name {name!r}")
                out[section][name] = enc
        else:
            block = v.object(data.get(key, {}), key)
            for name, entries in block.items():
                out[section][name] = _read_0_6_1_entries(v, entries, f"{key}[{name!r}]",
                                                         axes.get(name, 0))
    return out
