"""Quantizer groups per layer and the sweeps' switches: everything put back exactly."""
from __future__ import annotations

import pytest
import torch

import fxquant
from fxquant.analysis.quantizer_groups import (bitwidths, disabled, enabled_refs, layer_groups,
                                               only_enabled)
from fxquant.analysis.results import Suggestion, choose_best, rank_culprits
from tests.models import ConvBnNet


@pytest.fixture()
def sim(device):
    model = ConvBnNet().eval().to(device)
    x = torch.randn(4, 3, 16, 16, device=device)
    sim = fxquant.QuantizationSimModel(model, x[:1], quant_scheme="tf_enhanced")
    sim.compute_encodings(lambda m: m(x))
    return sim, x


def test_groups_follow_aimet_wrappers(sim):
    sim, _ = sim
    groups = layer_groups(sim)
    assert list(groups) == ["conv1", "relu", "conv2"]
    assert [q.name for q in groups["conv1"].quantizers] == ["conv1.weight", "x"]
    assert groups["conv1"].activation_keys == {"x": "conv1_input_0"}
    assert groups["conv1"].type_name == "Conv2d"
    assert [q.name for q in groups["conv2"].quantizers] == ["conv2.weight", "conv2"]
    assert list(layer_groups(sim, ignore=["relu"])) == ["conv1", "conv2"]
    sim.quantizer("relu").enabled = False
    assert "relu" not in layer_groups(sim)


def test_switches_restore_enabled_flags_even_on_error(sim):
    sim, x = sim
    before = [q.quantizer.enabled for q in sim.quantizers()]
    full = sim.model(x)
    groups = layer_groups(sim)
    with pytest.raises(RuntimeError):
        with only_enabled(sim, groups["relu"].quantizers):
            assert [q.name for q in enabled_refs(sim)] == ["relu"]
            raise RuntimeError("boom")
    with disabled(enabled_refs(sim)):
        assert enabled_refs(sim) == []
    assert [q.quantizer.enabled for q in sim.quantizers()] == before
    assert torch.equal(sim.model(x), full)


def test_bitwidths_recompute_from_statistics_and_restore_bit_exactly(sim):
    sim, x = sim
    full = sim.model(x)
    groups = layer_groups(sim)
    relu = groups["relu"].quantizers[0].quantizer
    scale8 = relu.scale.clone()
    state = {k: v.clone() for k, v in sim.model.state_dict().items() if torch.is_tensor(v)}
    with bitwidths([(r, 16) for r in groups["relu"].activations]):
        assert relu.bitwidth == 16
        assert relu.scale < scale8 / 200        # 8 more bits over about the same range
        assert not torch.equal(sim.model(x), full)
    assert relu.bitwidth == 8 and torch.equal(relu.scale, scale8)
    assert torch.equal(sim.model(x), full)
    for k, v in sim.model.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, state[k]), k


def test_bitwidths_needs_statistics(device):
    model = ConvBnNet().eval().to(device)
    sim = fxquant.QuantizationSimModel(model, torch.randn(1, 3, 16, 16, device=device))
    with pytest.raises(ValueError, match="kept no calibration statistics"):
        with bitwidths([(sim.quantizers()[0], 16)]):
            pass
    assert sim.quantizers()[0].quantizer.bitwidth == 8


def test_rank_and_choose():
    enabled = {"a": 0.9, "b": 0.2, "c": 0.95}
    disabled_scores = {"a": 0.5, "b": 0.9, "c": 0.5}
    assert rank_culprits(0.4, enabled, disabled_scores) == ["b", "a", "c"]
    cheap = Suggestion(("b",), "A16", 16, None, 0.899, 1)
    costly = Suggestion(("b", "a"), "W16A16", 16, 16, 0.9, 4)
    worse = Suggestion(("a",), "A16", 16, None, 0.3, 1)
    assert choose_best([costly, cheap, worse], quantized=0.4, fp32=0.95) is cheap
    assert choose_best([worse], quantized=0.4, fp32=0.95) is None
    assert choose_best([cheap], quantized=0.4, fp32=0.4) is None     # nothing was lost
    assert cheap.config_layers() == {"b": {"activation_bw": 16}}
