"""fxquant.model_resolution: one resolution of what users pass; sims from prepared models."""
from __future__ import annotations

import pytest
import torch
import torchvision

import fxquant
from fxquant import _meta
from fxquant.model_resolution import (FLOAT, SIM, graph_module_to_transform, is_sim,
                                      private_copy, resolve_model)


def _quantizer_names(sim: fxquant.QuantizationSimModel) -> list[str]:
    return [q.name for q in sim.quantizers()]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_sim_from_prepared_model_has_the_names_of_sim_from_raw_model(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    raw = fxquant.QuantizationSimModel(model, x)
    from_prepared = fxquant.QuantizationSimModel(fxquant.prepare_model(model), x)
    assert _quantizer_names(from_prepared) == _quantizer_names(raw)
    assert from_prepared.model.code == raw.model.code
    assert not any(".module_add.module_add" in n for n in _quantizer_names(from_prepared))


def test_resolution_kinds_and_copies() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    resolved = resolve_model(model)
    assert (resolved.kind, resolved.source) == (FLOAT, "module")
    prepared = resolved.gm
    again = resolve_model(prepared)
    assert again.gm is not prepared and again.gm.code == prepared.code
    assert (again.kind, again.source) == (FLOAT, "prepared")
    assert resolve_model(prepared, copy=False).gm is prepared

    sim = fxquant.QuantizationSimModel(model, torch.randn(1, 3, 32, 32))
    assert is_sim(sim) and not is_sim(sim.model)
    of_sim = resolve_model(sim)
    assert (of_sim.kind, of_sim.source) == (SIM, SIM) and of_sim.gm is not sim.model
    of_model = resolve_model(sim.model, copy=False)
    assert (of_model.kind, of_model.source) == (SIM, "prepared") and of_model.gm is sim.model


def test_private_copy_does_not_share_node_metadata() -> None:
    gm = fxquant.prepare_model(torchvision.models.resnet18(weights=None).eval())
    mine = private_copy(gm)
    node = next(n for n in mine.graph.nodes if n.op == "call_module")
    _meta.set(node, _meta.LAYER_NAME, "edited")
    original = next(n for n in gm.graph.nodes if n.op == "call_module")
    assert _meta.get(original, _meta.LAYER_NAME) == str(original.target)


def test_graph_module_to_transform_does_not_retrace_prepared_models() -> None:
    prepared = fxquant.prepare_model(torchvision.models.mobilenet_v2(weights=None).eval())
    gm = graph_module_to_transform(prepared)
    assert gm is not prepared and gm.code == prepared.code
    assert graph_module_to_transform(prepared, in_place=True) is prepared
    assert fxquant.PrepareModelPass()(gm).modified is False


def test_resolving_something_that_is_no_model_names_what_is_accepted() -> None:
    with pytest.raises(TypeError, match=r"model_a must be a torch.nn.Module or a "
                                        r"fxquant.QuantizationSimModel .*, got str"):
        resolve_model("resnet18", what="model_a")
