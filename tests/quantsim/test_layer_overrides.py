"""The quantsim config's ``layers`` section (fxquant's per-layer bit widths)."""
from __future__ import annotations

import json

import pytest
import torch

import fxquant
from fxquant.quantsim.config import load_config
from fxquant.quantsim.config_model import LayerOverride
from tests.models import ConvBnNet


def _config(layers) -> dict:
    cfg = load_config("default").to_dict()
    cfg["layers"] = layers
    return cfg


def test_parse_and_round_trip():
    cfg = load_config(_config({"conv": {"activation_bw": 16}, "fc": {"param_bw": 4}}))
    assert cfg.layers == {"conv": LayerOverride(activation_bw=16),
                          "fc": LayerOverride(param_bw=4)}
    assert load_config(cfg.to_dict()) == cfg
    assert "layers" not in load_config("default").to_dict()


@pytest.mark.parametrize("layers, match", [
    ([], r"layers: expected a JSON object"),
    ({"conv": {"activation_bw": 2}}, r"layers\.conv\.activation_bw: invalid value 2; expected an "
                                     r"integer in 4-32"),
    ({"conv": {"param_bw": 16.5}}, r"layers\.conv\.param_bw: invalid value 16\.5"),
    ({"conv": {"param_bw": True}}, r"layers\.conv\.param_bw: invalid value true"),
    ({"conv": {"output_bw": 16}}, r"layers\.conv.*unknown key 'output_bw'.*activation_bw"),
    ({"conv": {}}, r"layers\.conv: empty entry"),
])
def test_bad_layers_section(layers, match):
    with pytest.raises(fxquant.ConfigError, match=match):
        load_config(_config(layers))


def test_sim_applies_layer_bitwidths(tmp_path):
    model = ConvBnNet().eval()
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(_config({"conv1": {"activation_bw": 16, "param_bw": 12},
                                        "conv2": {"activation_bw": 16}})))
    sim = fxquant.QuantizationSimModel(model, x, config_file=str(path))
    # conv1's output is quantized after the relu (a supergroup): its activation quantizer is the
    # model input's, which a _torch.encodings file lists under conv1; conv2's is its output
    expected = {"x": 16, "conv1.weight": 12, "relu": 8, "conv2.weight": 8, "conv2": 16}
    assert {q.name: q.quantizer.bitwidth for q in sim.quantizers()} == expected
    sim.compute_encodings(lambda m: m(x))
    assert sim.quantizer("conv1.weight").encoding.bitwidth == 12


def test_unknown_layer_says_did_you_mean():
    model = ConvBnNet().eval()
    x = torch.randn(1, 3, 16, 16)
    layer = next(q.layer for q in fxquant.QuantizationSimModel(model, x).quantizers()
                 if q.kind == "param")
    with pytest.raises(fxquant.ConfigError,
                       match=rf"layers\.{layer}x: no layer of that name.*did you mean '{layer}'"):
        fxquant.QuantizationSimModel(model, x, config_file=_config({layer + "x": {"param_bw": 4}}))


def test_float_data_type_rejects_layer_bitwidths():
    model = ConvBnNet().eval()
    x = torch.randn(1, 3, 16, 16)
    layer = next(q.layer for q in fxquant.QuantizationSimModel(model, x).quantizers()
                 if q.kind == "param")
    with pytest.raises(fxquant.ConfigError, match="per-layer bit widths need integer"):
        fxquant.QuantizationSimModel(model, x, default_data_type="float", default_output_bw=16,
                                     default_param_bw=16,
                                     config_file=_config({layer: {"param_bw": 8}}))
