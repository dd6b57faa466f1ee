"""AIMET encodings files: round trips for 1.0.0 / 0.6.1 / 2.0.0 and validation messages."""
from __future__ import annotations

import errno
import json
import os
import re

import pytest
import torch

from fxquant.errors import ConfigError
import fxquant.export.encodings_file as encodings_file
import fxquant.export.encodings_reader as encodings_reader
from fxquant.core.encoding import QuantEncoding
from fxquant.errors import FileWriteError
from fxquant.export.encodings_file import (EncodingsFileError, FloatEncoding, encodings_dict,
                                           write_encodings)
from fxquant.export.encodings_reader import read_encodings


def _encodings() -> dict[str, dict]:
    gen = torch.Generator().manual_seed(0)
    return {
        "activation": {
            "x": QuantEncoding.from_min_max(-1.3, 2.9, bitwidth=8, symmetric=False),
            "layer1.0.module_add": QuantEncoding.from_min_max(-0.7, 0.1, bitwidth=16, symmetric=False),
            "act16": FloatEncoding(),
        },
        "param": {
            "conv1.weight": QuantEncoding(scale=torch.rand(5, generator=gen) + 1e-3, zero_point=0,
                                          bitwidth=8, signed=True, symmetric=True, axis=0),
            "fc.weight": QuantEncoding(scale=torch.tensor(0.0123), zero_point=0, bitwidth=4,
                                       signed=True, symmetric=True),
            "strict.weight": QuantEncoding(scale=torch.tensor(0.5), zero_point=0, bitwidth=8,
                                           signed=True, symmetric=True, strict=True),
        },
    }


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1", "2.0.0"])
def test_round_trip_bit_identical(tmp_path, version: str) -> None:
    encs = _encodings()
    path = tmp_path / "m.encodings"
    bias = {"conv1.bias": torch.rand(5) * 1e-4}
    write_encodings(path, encs, version=version, bias=bias)
    assert os.listdir(tmp_path) == ["m.encodings"]
    back = read_encodings(path)
    for section in ("activation", "param"):
        for name, enc in encs[section].items():
            if version == "2.0.0" and name == "strict.weight":
                # 2.0.0 has no strictness flag: same scale and zero point, full int8 grid
                assert torch.equal(back[section][name].scale, enc.scale)
                continue
            assert back[section][name] == enc, (version, name)
    if version == "2.0.0":
        assert torch.equal(back["param"]["conv1.bias"].scale, bias["conv1.bias"].to(torch.float32))
        assert back["param"]["conv1.bias"].bitwidth == 32


def test_format_1_0_0_matches_spec() -> None:
    enc = QuantEncoding(scale=torch.tensor(0.013148), zero_point=161, bitwidth=8, signed=False,
                        symmetric=False)
    w = QuantEncoding(scale=torch.tensor([0.0075, 0.536]), zero_point=0, bitwidth=8, signed=True,
                      symmetric=True, axis=0)
    d = encodings_dict({"activation": {"input": enc}, "param": {"conv1.weight": w}})
    act, par = d["activation_encodings"][0], d["param_encodings"][0]
    assert act == {"name": "input", "dtype": "INT", "bw": 8, "is_sym": False,
                   "scale": [float(torch.tensor(0.013148))], "offset": [-161], "enc_type": "PER_TENSOR"}
    assert par["offset"] == [-128, -128] and par["enc_type"] == "PER_CHANNEL" and par["is_sym"] is True
    assert set(d) == {"version", "activation_encodings", "param_encodings", "excluded_layers",
                      "quantizer_args"}
    assert set(d["quantizer_args"]) == {"quant_scheme", "param_bitwidth", "activation_bitwidth",
                                        "dtype", "is_symmetric", "per_channel_quantization"}


def test_format_0_6_1_and_2_0_0() -> None:
    enc = QuantEncoding(scale=torch.tensor(0.5), zero_point=3, bitwidth=8, signed=False, symmetric=False)
    d = encodings_dict({"activation": {"t": enc}, "param": {}}, version="0.6.1")
    (entry,) = d["activation_encodings"]["t"]
    assert entry == {"min": -1.5, "max": 126.0, "scale": 0.5, "offset": -3, "bitwidth": 8,
                     "dtype": "int", "is_symmetric": "False"}
    d2 = encodings_dict({"activation": {"t": enc}, "param": {}}, version="2.0.0",
                        bias={"c.bias": torch.tensor([1e-3, 2e-3])})
    assert d2["encodings"][0] == {"name": "t", "output_dtype": "uint8", "y_scale": 0.5, "y_zero_point": 3}
    assert d2["encodings"][1]["output_dtype"] == "int32" and d2["encodings"][1]["axis"] == 0
    sym = QuantEncoding(scale=torch.tensor(0.5), zero_point=0, bitwidth=8, signed=True, symmetric=True)
    assert "y_zero_point" not in encodings_dict({"activation": {"s": sym}, "param": {}},
                                                version="2.0.0")["encodings"][0]


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["param_encodings"][0].update(scale=[0.1, -1.0]), r"param_encodings\[0\]\.scale\[1\]"),
    (lambda d: d["param_encodings"][0].pop("offset"), r"param_encodings\[0\]\.offset: missing"),
    (lambda d: d["activation_encodings"][0].update(bw=64), r"activation_encodings\[0\]\.bw"),
    (lambda d: d["activation_encodings"][0].update(enc_type="PER_BLOCK"), r"enc_type"),
    (lambda d: d["param_encodings"][0].update(offset=[-5] * 5), r"param_encodings\[0\]\.offset"),
    (lambda d: d.update(activation_encodings={}), r"activation_encodings: expected a list"),
])
def test_errors_name_the_json_path(mutate, match: str) -> None:
    d = encodings_dict(_encodings())
    d = json.loads(json.dumps(d))
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        read_encodings(d)


def test_other_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not supported"):
        encodings_dict(_encodings(), version="3.0.0")
    bad = tmp_path / "bad.encodings"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_encodings(bad)
    with pytest.raises(ConfigError, match=r"encodings\[0\]\.output_dtype"):
        read_encodings({"version": "2.0.0", "encodings": [{"name": "a", "output_dtype": "int64",
                                                           "y_scale": 1.0}]})
    with pytest.raises(ConfigError, match=r"param_encodings\.w: expected a non-empty list"):
        read_encodings({"version": "0.6.1", "activation_encodings": {}, "param_encodings": {"w": []}})


def test_write_failure_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "m.encodings"
    write_encodings(path, _encodings())
    before = path.read_bytes()

    def full(data, f, **kwargs):
        f.write('{"version": "1.0.0", "activation_enc')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(encodings_file.json, "dump", full)
    with pytest.raises(FileWriteError, match=rf"cannot write {path}: No space left on device "
                                             r"\(the disk") as info:
        write_encodings(path, _encodings(), version="2.0.0")
    assert info.value.filename == str(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.encodings"]


def test_invalid_encodings_write_nothing(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"encodings\['activation'\]\['x'\] is a float"):
        write_encodings(tmp_path / "m.encodings", {"activation": {"x": 1.0}, "param": {}})
    with pytest.raises(ConfigError, match=r"keys \['weights'\]; expected 'activation' and 'param'"):
        write_encodings(tmp_path / "m.encodings", {"weights": {}})
    assert os.listdir(tmp_path) == []


def test_file_errors_name_the_file(tmp_path) -> None:
    path = tmp_path / "m.encodings"
    d = json.loads(json.dumps(encodings_dict(_encodings())))
    d["param_encodings"][1]["scale"] = [0.0]
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=rf"^encodings file {re.escape(str(path))}: "
                                          r"param_encodings\[1\]\.scale\[0\]: invalid value 0.0; "
                                          r"expected a number > 0 \(a scale\)$"):
        read_encodings(path)
    path.write_text('{"version": "1.0.0",\n "param_encodings": [}')
    with pytest.raises(ConfigError, match=rf"encodings file {re.escape(str(path))}: invalid JSON "
                                          r"at line 2, column 22: .*not valid JSON \(write the file "
                                          r"again, e.g. with sim.export\(\)\)") as info:
        read_encodings(path)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
    path.write_bytes(b'{"version": "\xff"}')
    with pytest.raises(ConfigError, match=r"m.encodings: not UTF-8 text"):
        read_encodings(path)
    with pytest.raises(EncodingsFileError, match=r"missing.encodings not found; pass the path"):
        read_encodings(tmp_path / "missing.encodings")
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=rf"^encodings file {re.escape(str(path))}: <root>: "
                                          r"expected a JSON object, got array \[1, 2\]$"):
        read_encodings(path)


def _v2(**entry) -> dict:
    return {"version": "2.0.0", "encodings": [{"name": "a", "output_dtype": "uint8",
                                               "y_scale": 0.5, **entry}]}


@pytest.mark.parametrize("data, match", [
    ({"version": 1}, r"version: expected a string, got number 1"),
    ({"version": "3.0.0"}, r"version: unsupported version '3.0.0'; supported: \['1.0.0'"),
    ({"version": "2.0.0"}, r"^encodings file: encodings: missing; expected array$"),
    ({"version": "2.0.0", "encodings": [3]}, r"encodings\[0\]: expected a JSON object, got number"),
    (_v2(y_scale="0.5"), r"encodings\[0\]\.y_scale: expected array or number, got string '0.5'"),
    (_v2(y_scale=[0.5, 0.25], y_zero_point=0),
     r"encodings\[0\]\.y_zero_point: must be a list exactly when y_scale is a list"),
    (_v2(y_scale=[0.5, 0.25], y_zero_point=[0, 1]),
     r"encodings\[0\]\.axis: missing; expected integer"),
    (_v2(y_zero_point=300),
     r"encodings\[0\]\.y_zero_point: invalid value \[300.0\]; zero points lie on the grid "
     r"\[0, 255\]"),
    (_v2(y_zero_point=1.5),
     r"encodings\[0\]\.y_zero_point: invalid value 1.5; expected an integer"),
    (_v2(y_scale=float("inf")),
     r"encodings\[0\]\.y_scale: invalid value Infinity; expected a finite"),
    ({"version": "2.0.0", "encodings": _v2()["encodings"] * 2},
     r"encodings\[1\]\.name: duplicate name 'a'"),
    ({"version": "1.0.0", "activation_encodings": [{"name": "a", "dtype": "INT", "bw": True}]},
     r"activation_encodings\[0\]\.bw: expected integer, got boolean true"),
    ({"version": "1.0.0", "activation_encodings": [{"name": "a", "dtype": "FLOAT", "bw": 8}]},
     r"activation_encodings\[0\]\.bw: float encodings are 16-bit, got 8"),
    ({"version": "1.0.0", "activation_encodings": [{"name": "a", "dtype": "BOOL", "bw": 8}]},
     r"activation_encodings\[0\]\.dtype: invalid value 'BOOL'; expected one of 'INT', 'FLOAT'"),
    ({"version": "1.0.0", "activation_encodings": [
        {"name": "a", "dtype": "INT", "bw": 8, "enc_type": "PER_TENSOR", "is_sym": "True"}]},
     r"activation_encodings\[0\]\.is_sym: expected boolean, got string 'True'"),
    ({"version": "0.6.1", "param_encodings": []},
     r"param_encodings: expected an object keyed by tensor name in version 0.6.1, got array"),
    ({"version": "0.6.1", "param_encodings": {"w": [
        {"bitwidth": 8, "is_symmetric": "yes", "scale": 0.1, "offset": -128}]}},
     r"param_encodings\.w\[0\]\.is_symmetric: invalid value 'yes'; expected one of 'True'"),
    ({"version": "0.6.1", "param_encodings": {"w": [
        {"bitwidth": 8, "is_symmetric": "True", "scale": 0.1, "offset": -128},
        {"bitwidth": 4, "is_symmetric": "True", "scale": 0.1, "offset": -8}]}},
     r"param_encodings\.w: per-channel entries disagree on bitwidth or is_symmetric"),
])
def test_read_errors_name_the_json_path(data, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        read_encodings(data)


# -------------------------------------------------------------------------------------------------
# Issue 11 items 7 and 10: loaded encodings are validated as strictly as computed ones
# -------------------------------------------------------------------------------------------------
def _one(version: str, scale, offset: int = -128, name: str = "w") -> dict:
    if version == "2.0.0":
        return {"version": "2.0.0", "encodings": [{"name": name, "output_dtype": "int8",
                                                   "y_scale": scale}]}
    return {"version": "1.0.0", "activation_encodings": [], "param_encodings": [
        {"name": name, "dtype": "INT", "bw": 8, "is_sym": True, "scale": [scale],
         "offset": [offset], "enc_type": "PER_TENSOR"}]}


@pytest.mark.parametrize("version,path", [("1.0.0", r"param_encodings\[0\]\.scale\[0\]"),
                                          ("2.0.0", r"encodings\[0\]\.y_scale")])
@pytest.mark.parametrize("scale,fragment", [
    (1e39, r"invalid value \[1e\+39\]; a scale must be finite in float32"),
    (1e-45, r"invalid value \[1e-45\]; a scale must be at least 1.1920928955078125e-07"),
])
def test_scales_beyond_float32_or_below_the_minimum_are_refused(version, path, scale,
                                                                fragment) -> None:
    with pytest.raises(EncodingsFileError, match=rf"encodings file: {path}: {fragment}"):
        read_encodings(_one(version, scale))


def test_per_channel_counts_and_axes_must_fit_the_target() -> None:
    d = encodings_dict({"activation": {}, "param": {"w": QuantEncoding(
        scale=torch.full((3,), 0.1), zero_point=0, bitwidth=8, signed=True, symmetric=True,
        axis=0)}})
    with pytest.raises(EncodingsFileError, match=r"param_encodings\[0\]\.scale: expected 8 "
                                                 r"per-channel scales for this quantizer, got 3"):
        read_encodings(d, layouts={"w": 8})
    assert read_encodings(d, layouts={"w": 3})["param"]["w"].scale.shape == (3,)
    with pytest.raises(EncodingsFileError, match=r"param_encodings\[0\]: 3 per-channel scales, "
                                                 r"but the quantizer of 'w' is per tensor"):
        read_encodings(d, layouts={"w": None})
    d2 = encodings_dict(read_encodings(d), version="2.0.0")
    d2["encodings"][0]["axis"] = 3
    assert read_encodings(d2)["param"]["w"].axis == 3     # nothing known: the file's axis is kept
    with pytest.raises(EncodingsFileError, match=r"encodings\[0\]\.axis: the file quantizes 'w' "
                                                 r"along axis 3, but its quantizer quantizes along "
                                                 r"axis 0"):
        read_encodings(d2, axes={"w": 0})


def test_0_6_1_min_max_must_agree_with_scale_and_offset() -> None:
    d = encodings_dict(_encodings(), version="0.6.1")
    d = json.loads(json.dumps(d))
    assert read_encodings(d)  # as written: consistent
    d["activation_encodings"]["x"][0]["max"] = 10.0
    with pytest.raises(EncodingsFileError, match=r"activation_encodings\.x\[0\]\.max: 10\.0 "
                                                 r"contradicts the entry's scale and offset, which "
                                                 r"give max 2\.89"):
        read_encodings(d)


def test_unreadable_files_are_encodings_file_errors(tmp_path) -> None:
    (tmp_path / "latin1.encodings").write_bytes(b'{"version": "1.0.0", "x": "caf\xe9"}')
    with pytest.raises(EncodingsFileError, match=rf"encodings file {tmp_path}/latin1.encodings: "
                                                 r"not UTF-8 text \(invalid continuation byte"):
        read_encodings(tmp_path / "latin1.encodings")
    (tmp_path / "deep.encodings").write_text("[" * 100_000)
    with pytest.raises(EncodingsFileError, match=r"deep.encodings: JSON nested too deeply"):
        read_encodings(tmp_path / "deep.encodings")
    (tmp_path / "big.encodings").write_text('{"version": ' + "9" * 5000 + "}")
    with pytest.raises(EncodingsFileError, match=r"big.encodings: invalid JSON: Exceeds the limit"):
        read_encodings(tmp_path / "big.encodings")
    with pytest.raises(EncodingsFileError, match=rf"encodings file '{tmp_path}' cannot be read"):
        read_encodings(tmp_path)
    with pytest.raises(EncodingsFileError, match=r"missing.encodings not found"):
        read_encodings(tmp_path / "missing.encodings")
    huge = _one("2.0.0", 0.1)
    huge["encodings"][0]["y_zero_point"] = 10 ** 400
    with pytest.raises(EncodingsFileError, match=r"encodings\[0\]\.y_zero_point: invalid value "):
        read_encodings(huge)
    assert issubclass(EncodingsFileError, ConfigError)


def test_torch_named_documents_read_with_default_names() -> None:
    enc = QuantEncoding.from_min_max(-1.0, 3.0, bitwidth=8, symmetric=False)
    d = {"version": "1.0.0",
         "activation_encodings": {"conv": {"input": {"0": encodings_file._entries_0_6_1(enc)[0]},
                                           "output": {"0": encodings_file._entries_0_6_1(enc)[0]}}},
         "param_encodings": {}}
    assert encodings_reader.is_torch_encodings(d)
    got = read_encodings(d)["activation"]
    assert set(got) == {"conv", "conv.input.0"} and got["conv"] == enc
    got = read_encodings(d, torch_names={("conv", "input", 0): "x"})["activation"]
    assert set(got) == {"conv", "x"}
    d["activation_encodings"]["conv"]["output"] = {"first": {}}
    with pytest.raises(EncodingsFileError, match=r"activation_encodings\.conv\.output\.first: "
                                                 r"expected a tensor index"):
        read_encodings(d)


@pytest.mark.parametrize("acts", [[], "x", None])
def test_a_torch_named_file_is_recognised_by_its_params(acts) -> None:
    """A 1.x file whose param_encodings is keyed by name is torch-named even when its
    activation_encodings is damaged: the error names activation_encodings, not the params."""
    data = {"version": "1.0.0", "activation_encodings": acts,
            "param_encodings": {"fc.weight": [{"bitwidth": 8, "is_symmetric": "True",
                                               "scale": 0.1, "offset": -128}]}}
    with pytest.raises(ConfigError, match=r"^encodings file: activation_encodings: expected an "
                                          r"object keyed by layer name \(the file is torch-named: "
                                          r"its param_encodings is keyed by parameter name\)"):
        read_encodings(data)
    data["activation_encodings"] = {}          # no activations at all: a valid file
    assert set(read_encodings(data)["param"]) == {"fc.weight"}


def test_torch_named_activation_errors_name_the_entry_itself() -> None:
    entry = {"bitwidth": 8, "is_symmetric": "False", "scale": "0", "offset": 0}
    data = {"version": "1.0.0", "activation_encodings": {"relu": {"output": {"0": entry}}},
            "param_encodings": {}}
    with pytest.raises(ConfigError, match=r'^encodings file: activation_encodings\.relu\.output'
                                          r'\["0"\]\.scale: expected number, got string'):
        read_encodings(data)


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_a_duplicate_name_names_both_entries(version) -> None:
    enc = QuantEncoding.from_min_max(-1.0, 1.0, bitwidth=8, symmetric=False)
    data = encodings_dict({"activation": {"a": enc, "b": enc}, "param": {}}, version=version)
    entries = data["encodings"] if version == "2.0.0" else data["activation_encodings"]
    entries[1]["name"] = "a"
    key = "encodings" if version == "2.0.0" else "activation_encodings"
    with pytest.raises(ConfigError, match=rf"^encodings file: {key}\[1\]\.name: duplicate name "
                                          rf"'a' \(also at {key}\[0\]\.name\); each tensor has "
                                          r"one entry$"):
        read_encodings(data)
