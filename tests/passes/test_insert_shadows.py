"""InsertShadowsPass: the pass contract (model A's outputs unchanged, also with in-place ops),
what a shadow contains, unshadowable layers, and errors."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxquant
from fxquant import _meta
from fxquant.passes.base import state_tags
from fxquant.passes.insert_shadows import InsertShadowsPass, ShadowSite, shadow_nodes
from tests.models import randomize_batch_norms
from tests.numeric_suite.ns_helpers import calibrated_sim, mixnet


class Recorder(nn.Module):
    def __init__(self, site: ShadowSite) -> None:
        super().__init__()
        self.site = site
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = x.detach().clone()
        return x


def _float(model: nn.Module) -> torch.fx.GraphModule:
    gm = fxquant.prepare_model(model)
    fxquant.fold_all_batch_norms(gm)
    return gm


def test_contract_on_resnet18_with_in_place_ops(device: torch.device) -> None:
    model = randomize_batch_norms(torchvision.models.resnet18()).eval().to(device)
    shape = (1, 3, 32, 32)
    sim = calibrated_sim(model, shape, device)
    float_gm = _float(model)
    code_before = float_gm.code
    x = torch.randn(*shape, device=device)
    with torch.no_grad():
        expected = float_gm(x)
        result = InsertShadowsPass(sim.model, Recorder)(float_gm)
        shadowed = result.graph_module
        assert shadowed is not float_gm and float_gm.code == code_before
        got = shadowed(x)
        if device.type == "cpu":
            assert torch.equal(got, expected)  # model A's numerics preserved, bit for bit
        else:  # the same calls; CUDA may still pick another kernel
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert {"shadowed", "prepared", "bn_folded"} <= state_tags(shadowed)
    assert not InsertShadowsPass(sim.model, Recorder)(shadowed).modified
    assert "layer1.0.module_add" in result.details["shadowed"]
    assert result.details["unshadowable"] == []
    assert all(_meta.get(n, _meta.ROLE) != _meta.ROLE_SHADOW for n in float_gm.graph.nodes)


def test_a_supergroup_is_shadowed_whole_and_fed_through_model_bs_quantizers() -> None:
    model = mixnet()
    sim = calibrated_sim(model, (2, 3, 8, 8))
    float_gm = _float(model)
    sites: dict[str, ShadowSite] = {}
    recorders: dict[str, Recorder] = {}

    def make(site: ShadowSite) -> Recorder:
        sites[site.key] = site
        recorders[site.key] = Recorder(site)
        return recorders[site.key]

    shadowed = InsertShadowsPass(sim.model, make, ["relu2", "module_cat"])(float_gm).graph_module
    by_layer: dict[str, list[str]] = {}
    for node in shadow_nodes(shadowed):
        by_layer.setdefault(_meta.get(node, _meta.LAYER_NAME), []).append(str(node.target))
    # relu2's shadow: B's relu output quantizer on A's relu, then conv2 -> relu2 -> quantizer
    assert by_layer["relu2"] == ["ns_shadows.relu.output_quantizer", "ns_shadows.conv2",
                                 "ns_shadows.relu2", "ns_shadows.relu2.output_quantizer"]
    # the logged value is the quantized one, reported as the layer's (not the quantizer's)
    assert sites["relu2"].value_node == "shadow_relu2"
    assert sites["relu2"].value_type == "torch.nn.modules.activation.ReLU"
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        shadowed(x)
        q, conv2, relu2, q2 = (sim.model.get_submodule(p) for p in (
            "relu.output_quantizer", "conv2", "relu2", "relu2.output_quantizer"))
        a_relu = float_gm.relu(float_gm.conv1(x))
        expected = q2(relu2(conv2(q(a_relu))))
    assert torch.equal(recorders["relu2"].last, expected)
    assert len(by_layer["module_cat"]) >= 4  # two quantized inputs, the cat, its quantizer


def test_unshadowable_layers_are_reported_with_the_reason() -> None:
    sim = calibrated_sim(mixnet(), (2, 3, 8, 8))
    other = _float(mixnet())
    result = InsertShadowsPass(sim.model, Recorder, ["relu2", "fc"], max_segment=1)(other)
    assert result.details["shadowed"] == ["fc"]  # fc alone; relu2 needs conv2 -> relu2
    assert "more than 1 ops of model b lie between 'relu2'" in \
        dict(result.details["unshadowable"])["relu2"]
    renamed = fxquant.prepare_model(mixnet())
    renamed.graph.find_nodes(op="placeholder")[0].name = "image"
    renamed.recompile()
    result = InsertShadowsPass(sim.model, Recorder, ["relu"])(renamed)
    assert "comes from 'x', which has no counterpart in model a" in \
        dict(result.details["unshadowable"])["relu"]
    no_input_quantizer = fxquant.prepare_model(mixnet())  # a float model b: inputs read directly
    result = InsertShadowsPass(no_input_quantizer, Recorder, ["conv1"])(renamed)
    assert "model b's input 'x' has no input of that name in model a" in \
        dict(result.details["unshadowable"])["conv1"]


def test_errors_name_the_culprit() -> None:
    gm = _float(mixnet())
    with pytest.raises(TypeError, match="model_b must be a torch.fx.GraphModule"):
        InsertShadowsPass(mixnet(), Recorder)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="make_logger must be callable"):
        InsertShadowsPass(gm, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="write layers=\\['fc'\\]"):
        InsertShadowsPass(gm, Recorder, "fc")
    with pytest.raises(fxquant.PassError, match="not layers of model_b, e.g. 'fc9'"):
        InsertShadowsPass(gm, Recorder, ["fc9"])(gm)
    with pytest.raises(fxquant.PassError, match="requires \\['prepared'\\]"):
        InsertShadowsPass(gm, Recorder)(fxquant.trace(mixnet()))
