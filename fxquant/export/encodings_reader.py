"""Reading AIMET encodings files (versions 1.0.0, 0.6.1, 2.0.0; ONNX-named ``<prefix>.encodings``
and torch-named ``<prefix>_torch.encodings``), validated as strictly as calibration's encodings.

The formats are described in :mod:`fxquant.export.encodings_file`. What a file cannot say, and how
reading resolves it:

* 1.0.0 and 0.6.1 store no channel axis: per-channel entries are read with ``axis=0`` (pass
  ``axes={"deconv.weight": 1}`` for ConvTranspose weights).
* 2.0.0 stores no symmetry flag and no activation/param split: a signed type with zero point 0
  reads as symmetric, anything else as asymmetric; entries with an ``axis``, int32 entries and
  names ending in ``.weight``/``.bias`` are params (override with ``param_names``).
* A signed asymmetric grid is written in 1.0.0/0.6.1 as the equal unsigned grid and read back as
  that unsigned grid (same scale; zero point shifted by ``2^(b-1)``).

Example:
    >>> enc = QuantEncoding.from_min_max(-1.0, 3.0, bitwidth=8, symmetric=False)
    >>> from fxquant.export.encodings_file import encodings_dict
    >>> data = encodings_dict({"activation": {"x": enc}, "param": {}})
    >>> read_encodings(data)["activation"]["x"] == enc
    True
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from fxquant.core.encoding import (AnyEncoding, FloatEncoding, QuantEncoding, encoding_problem,
                                   quant_range)
from fxquant.core.jsonpath import JsonValidator, got, index, join, loads, show
from fxquant.export.encodings_file import VERSIONS, EncodingsFileError

__all__ = ["read_encodings", "is_torch_encodings", "default_torch_name"]

logger = logging.getLogger(__name__)

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
                v.fail(join(index("encodings", i), "name"), f"duplicate name {name!r} (also at "
                       f"{expect.found.get(name, 'an earlier entry')}); each tensor has one entry")
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
                    v.fail(join(index(key, i), "name"), f"duplicate name {name!r} (also at "
                           f"{expect.found.get(name, 'an earlier entry')}); each tensor has one "
                           "entry")
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
