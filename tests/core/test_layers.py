"""fxquant.core.layers: the one answer to "which nodes are layers" for every package."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxquant
from fxquant import _meta
from fxquant.core import layers
from tests.models import FunctionalNet


def _sim(model: nn.Module, shape: tuple[int, ...]) -> fxquant.QuantizationSimModel:
    return fxquant.QuantizationSimModel(model, torch.randn(*shape))


def test_layers_are_the_prepared_modules_in_graph_order() -> None:
    gm = fxquant.prepare_model(torchvision.models.resnet18(weights=None).eval())
    names = list(layers.layer_nodes(gm))
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert "layer1.0.module_add" in names and names[-1] == "fc"
    expected = [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert names == expected
    assert all(layers.layer_name(node) == name for name, node in layers.layer_nodes(gm).items())
    assert not layers.has_quantizers(gm)
    assert layers.type_name(gm, layers.layer_nodes(gm)["conv1"]) == "torch.nn.modules.conv.Conv2d"
    add = layers.layer_nodes(gm)["layer1.0.module_add"]
    assert layers.type_name(gm, add) == "fxquant.nn.Add"


def test_an_unprepared_trace_has_no_layers() -> None:
    gm = fxquant.trace(FunctionalNet().eval())
    assert layers.layer_nodes(gm) == {}
    prepared = fxquant.PrepareModelPass()(gm).graph_module
    assert len(layers.layer_nodes(prepared)) > 10


def test_quantizer_queries_on_a_sim() -> None:
    sim = _sim(torchvision.models.resnet18(weights=None).eval(), (1, 3, 32, 32))
    gm = sim.model
    assert layers.has_quantizers(gm)
    names = list(layers.layer_nodes(gm))
    assert "conv1.output_quantizer" not in names and "bn1" not in names  # folded into conv1
    conv1 = layers.layer_nodes(gm)["conv1"]
    assert layers.type_name(gm, conv1) == "torch.nn.modules.conv.Conv2d"  # not Parametrized…
    assert layers.output_quantizer_node(conv1) is None  # conv1 -> relu is a supergroup
    relu = layers.layer_nodes(gm)["relu"]
    out_q = layers.output_quantizer_node(relu)
    assert out_q is not None and str(out_q.target) == "relu.output_quantizer"
    assert layers.layer_name(out_q) == "relu"
    assert set(layers.param_quantizers(gm.get_submodule("conv1"))) >= {"weight"}
    inputs = layers.quantizer_nodes(gm, _meta.QUANTIZES_INPUT)
    assert [layers.layer_name(q) for q in inputs] == ["x"]
    assert layers.input_quantizer_nodes(conv1) == inputs
    outputs = layers.quantizer_nodes(gm, _meta.QUANTIZES_OUTPUT)
    assert len(inputs) + len(outputs) == len(layers.quantizer_nodes(gm))
    assert all(layers.output_quantizer_node(layers.layer_nodes(gm)[layers.layer_name(q)]) is q
               for q in outputs)


def test_float_model_after_removing_quantizers_has_the_same_layers() -> None:
    sim = _sim(torchvision.models.mobilenet_v2(weights=None).eval(), (1, 3, 32, 32))
    float_gm = fxquant.RemoveQuantizersPass()(
        fxquant.model_resolution.private_copy(sim.model)).graph_module
    assert list(layers.layer_nodes(float_gm)) == list(layers.layer_nodes(sim.model))
    assert not layers.has_quantizers(float_gm)
    assert layers.has_quantizers(sim.model)


def test_aimet_layer_names_follow_aimets_preparer() -> None:
    """AIMET 2.42's prepare_model names a module made from a functional after the traced node
    (``module_add_6``: the seventh add of the model) and a split call of a reused module
    ``module_<name>_<k>`` (names seen in its log for resnet18)."""
    gm = fxquant.prepare_model(torchvision.models.resnet18(weights=None).eval())
    aliases = layers.aimet_layer_names(gm)
    assert aliases["layer1.1.module_add_1"] == "layer1.1.module_add"
    assert aliases["layer4.0.module_add_6"] == "layer4.0.module_add"
    assert aliases["layer3.1.module_relu_1"] == "layer3.1.relu_1"
    assert "layer1.0.module_add" not in aliases           # the same name in both: no alias
    assert "conv1" not in aliases and "module_flatten" not in aliases
    assert len(aliases) == 15                            # 7 adds after the first, 8 relu splits
    # kept by the preparer's idempotence: preparing the prepared model changes nothing
    assert layers.aimet_layer_names(fxquant.prepare_model(gm)) == aliases

def test_float_param_is_what_the_weight_quantizer_reads() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    sim = _sim(model, (1, 3, 8, 8))
    sim.compute_encodings(lambda m: m(torch.randn(2, 3, 8, 8)))
    conv = sim.model.get_submodule("0")
    weight = layers.float_param(conv, "weight")
    assert torch.equal(weight, model[0].weight)              # the float weight, bit for bit
    quantizer = layers.param_quantizers(conv)["weight"]
    assert torch.equal(quantizer(weight), conv.weight)        # the module's is the quantized one
    assert not torch.equal(conv.weight, weight)
    with pytest.raises(KeyError, match=r"Conv2d has no quantized parameter 'scale'; its "
                                       r"quantized parameters: \['weight'\]"):
        layers.float_param(conv, "scale")
