"""AIMET encodings files: round trips for 1.0.0 / 0.6.1 / 2.0.0 and validation messages."""
from __future__ import annotations

import json
import os

import pytest
import torch

from fxquant.errors import ConfigError
from fxquant.quantsim.encoding import QuantEncoding
from fxquant.quantsim.encodings_file import (FloatEncoding, encodings_dict, read_encodings,
                                             write_encodings)


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
    with pytest.raises(ConfigError, match=r"param_encodings\['w'\]"):
        read_encodings({"version": "0.6.1", "activation_encodings": {}, "param_encodings": {"w": []}})
