"""RemoveQuantizersPass: the float graph back from a sim, same node names, sim untouched."""
from __future__ import annotations

import copy

import torch
import torchvision

from fxquant import _meta
from fxquant.passes.base import state_tags
from fxquant.passes.remove_quantizers import RemoveQuantizersPass
from fxquant.quantsim.quantsim import QuantizationSimModel
from tests.models import FunctionalNet


def _sim(model: torch.nn.Module, x: torch.Tensor, **kwargs) -> QuantizationSimModel:
    sim = QuantizationSimModel(model, x, quant_scheme="tf", **kwargs)
    sim.compute_encodings(lambda m: m(x))
    return sim


def test_removes_quantizers_and_keeps_names() -> None:
    x = torch.randn(2, 3, 32, 32)
    sim = _sim(torchvision.models.resnet18().eval(), x)
    before = [n.name for n in sim.model.graph.nodes
              if _meta.get(n, _meta.ROLE) != _meta.ROLE_QUANTIZER]
    result = RemoveQuantizersPass()(copy.deepcopy(sim.model))
    gm = result.graph_module
    assert result.modified
    assert [n.name for n in gm.graph.nodes] == before
    assert not any(_meta.get(n, _meta.ROLE) == _meta.ROLE_QUANTIZER for n in gm.graph.nodes)
    assert "float" in state_tags(gm)
    keys = set(gm.state_dict())
    assert "conv1.weight" in keys and not any("parametrizations" in k or "quantizer" in k
                                               for k in keys)
    assert not hasattr(gm, "input_quantizers")
    # float numerics: equals the folded float model, and the sim still works (shared classes)
    with torch.no_grad():
        sim_out = sim.model(x)
        for ref in sim.quantizers():
            ref.quantizer.enabled = False
        assert torch.equal(gm(x), sim.model(x))
        assert not torch.equal(sim_out, gm(x))


def test_second_run_is_noop_and_bias_quantizers_go() -> None:
    x = torch.randn(2, 3, 16, 16)
    sim = _sim(FunctionalNet().eval(), x, quantize_bias=True)
    assert sim.bias_quantizers()
    gm = RemoveQuantizersPass()(copy.deepcopy(sim.model)).graph_module
    assert "conv1.bias" in gm.state_dict()
    assert RemoveQuantizersPass()(gm).modified is False
