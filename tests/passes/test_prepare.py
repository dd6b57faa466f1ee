"""PrepareModelPass / prepare_model: functionals become named modules, reuse is split, exact."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxquant
from fxquant import _meta
from fxquant import nn as fxnn
from tests.models import FunctionalNet, SameConvBnReLU6


def _call_modules(gm: torch.fx.GraphModule) -> dict[str, nn.Module]:
    return {n.target: gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"}


def test_functionals_become_modules_and_output_is_bit_exact(device: torch.device) -> None:
    model = FunctionalNet().eval().to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    gm = fxquant.prepare_model(model)
    mods = _call_modules(gm)
    kinds = {type(m).__name__ for m in mods.values()}
    assert {"Add", "Mul", "Sub", "Sigmoid", "ReLU6", "Hardswish", "Cat", "Interpolate", "Pool",
            "Flatten", "Reshape", "Linear", "Softmax"} <= kinds
    # only module calls remain for tensor ops; shape queries stay functional
    leftover = {str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_method")}
    assert leftover <= {"size", "<built-in function getitem>"}
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    # F.linear -> nn.Linear carrying the model's parameters (the same objects when the graph
    # module shares the model's, as a plain trace does; prepare_model works on a copy)
    assert type(gm.module_linear) is nn.Linear
    assert torch.equal(gm.module_linear.weight, model.fc_weight)
    assert [k for k in gm.state_dict() if "fc" in k or "linear" in k] == [
        "module_linear.weight", "module_linear.bias"]
    shared = fxquant.PrepareModelPass()(fxquant.trace(model)).graph_module
    assert shared.module_linear.weight is model.fc_weight
    assert shared.module_linear.bias is model.fc_bias
    assert isinstance(gm.get_submodule("module_softmax"), nn.Softmax)
    assert gm.get_submodule("module_softmax").dim == -1


def test_reused_module_is_split_per_call_site() -> None:
    gm = fxquant.prepare_model(FunctionalNet().eval())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets.count("relu") == 1 and targets.count("relu_1") == 1
    assert len(targets) == len(set(targets)), "every call site owns its module"


def test_split_keeps_parameters_tied() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    gm = fxquant.prepare_model(Twice().eval())
    assert gm.fc_1.weight is gm.fc.weight


def test_names_are_under_the_calling_scope_and_stable() -> None:
    model = torchvision.models.resnet18().eval()
    gm1 = fxquant.prepare_model(model)
    gm2 = fxquant.prepare_model(model)
    names = [n.target for n in gm1.graph.nodes if n.op == "call_module"]
    assert names == [n.target for n in gm2.graph.nodes if n.op == "call_module"]
    assert "layer1.0.module_add" in names and "layer4.1.module_add" in names
    assert "module_flatten" in names
    assert "layer1.0.relu_1" in names  # BasicBlock calls self.relu twice
    for node in gm1.graph.nodes:
        if node.op == "call_module":
            assert _meta.module_path(node) == node.target


def test_meta_and_handles_survive_preparation() -> None:
    traced = fxquant.trace(FunctionalNet().eval())
    handles = {n.name: _meta.handle(n) for n in traced.graph.nodes}
    add_handle = handles["add"]
    gm = fxquant.PrepareModelPass()(traced).graph_module
    add_node = next(n for n in gm.graph.nodes if n.target == "module_add")
    assert _meta.handle(add_node) == add_handle
    assert "models.py" in (_meta.source(add_node) or "")
    all_handles = [_meta.handle(n) for n in gm.graph.nodes]
    assert None not in all_handles and len(set(all_handles)) == len(all_handles)


def test_same_padding_conv_becomes_a_real_conv() -> None:
    model = SameConvBnReLU6().eval()
    gm = fxquant.prepare_model(model)
    conv = gm.get_submodule("conv.module_conv2d")
    assert isinstance(conv, nn.Conv2d)
    assert conv.weight is not model.conv.weight  # prepare_model worked on a copy
    x = torch.randn(1, 3, 15, 17)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert "conv.weight" not in dict(gm.named_parameters())  # moved, not duplicated


def test_shape_arithmetic_is_not_converted() -> None:
    class Shapes(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.size(0) * 2
            return x.reshape(n // 2, -1) + x.shape[1]

    gm = fxquant.prepare_model(Shapes())
    kinds = [type(m).__name__ for m in _call_modules(gm).values()]
    assert kinds == ["Reshape", "Add"]
    x = torch.randn(3, 4)
    assert torch.equal(gm(x), Shapes()(x))


def test_in_place_ops_keep_their_semantics() -> None:
    class InPlace(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2
            y += 1
            return F.relu(y, inplace=True)

    gm = fxquant.prepare_model(InPlace())
    mods = _call_modules(gm)
    assert isinstance(mods["module_relu"], nn.ReLU) and mods["module_relu"].inplace
    assert isinstance(mods["module_add"], fxnn.Add)  # fx records `y += 1` as operator.add
    x = torch.randn(5)
    assert torch.equal(gm(x), InPlace()(x))


def test_modules_to_exclude_are_left_opaque() -> None:
    model = torchvision.models.resnet18().eval()
    gm = fxquant.prepare_model(model, modules_to_exclude=[model.layer1[0]],
                               module_classes_to_exclude=[torchvision.models.resnet.Bottleneck])
    assert "layer1.0" in [n.target for n in gm.graph.nodes if n.op == "call_module"]
    gm2 = fxquant.prepare_model(model, modules_to_exclude=["layer2"])
    assert "layer2" in [n.target for n in gm2.graph.nodes if n.op == "call_module"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x)) and torch.equal(gm2(x), model(x))


def test_unknown_module_to_exclude_is_an_error_with_suggestion() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"modules_to_exclude: 'layer1.0.conv3' is not a "
                                         r"submodule path.*Did you mean .*'layer1.0.conv1'"):
        fxquant.prepare_model(model, modules_to_exclude=["layer1.0.conv3"])
    with pytest.raises(ValueError, match=r"Linear instance is not a submodule of the model"):
        fxquant.prepare_model(model, modules_to_exclude=[nn.Linear(2, 2)])


def test_non_module_input_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"prepare_model expects a torch.nn.Module, got function"):
        fxquant.prepare_model(lambda x: x)  # type: ignore[arg-type]


def test_prepare_is_idempotent() -> None:
    gm = fxquant.prepare_model(FunctionalNet().eval())
    assert not fxquant.PrepareModelPass()(gm).modified


def test_functional_module_repr_names_the_function() -> None:
    assert repr(fxnn.Add(fn=operator.add)) == "Add(_operator.add)"
    assert repr(fxnn.Reshape(method="view")) == "Reshape(Tensor.view)"
    with pytest.raises(ValueError, match="needs exactly one of fn or method"):
        fxnn.Add()


def test_every_op_module_node_carries_its_layer_name_and_a_second_run_changes_nothing() -> None:
    gm = fxquant.prepare_model(FunctionalNet().eval())
    ops = [n for n in gm.graph.nodes
           if n.op == "call_module" and _meta.get(n, _meta.ROLE) == _meta.ROLE_OP]
    assert len(ops) > 10
    assert [_meta.get(n, _meta.LAYER_NAME) for n in ops] == [str(n.target) for n in ops]
    code = gm.code
    result = fxquant.PrepareModelPass()(gm)
    assert result.modified is False and result.details["named"] == 0
    assert gm.code == code


def test_preparing_a_prepared_model_keeps_code_names_and_source_lines() -> None:
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    once = fxquant.prepare_model(model)
    twice = fxquant.prepare_model(once)
    assert twice is not once and twice.code == once.code
    assert sorted(n for n, _ in twice.named_modules()) == sorted(n for n, _ in once.named_modules())
    assert "features.3.module_add" in dict(twice.named_modules())
    assert not any(".module_add.module_add" in n for n, _ in twice.named_modules())
    sources = {n.name: _meta.source(n) for n in once.graph.nodes}
    assert {n.name: _meta.source(n) for n in twice.graph.nodes} == sources
    assert any(s and "mobilenetv2.py" in s for s in sources.values())
    # the copy's metadata is its own
    node = next(n for n in twice.graph.nodes if n.op == "call_module")
    _meta.set(node, _meta.LAYER_NAME, "changed")
    assert _meta.get(once.graph.find_nodes(op="call_module")[0], _meta.LAYER_NAME) != "changed"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(twice(x), model(x))


def test_a_graph_module_traced_by_torch_fx_itself_is_prepared_like_fxquants() -> None:
    """torch.fx.symbolic_trace records no module paths or op roles; the preparer fills them in,
    so the layers are named and a sim built on the result quantizes the same tensors (it used to
    quantize only the model input)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    foreign = torch.fx.symbolic_trace(model)
    fxquant.PrepareModelPass()(foreign)
    ours = fxquant.prepare_model(model)
    layers = [n.target for n in ours.graph.nodes if fxquant.core.layers.is_layer(n)]
    assert [n.target for n in foreign.graph.nodes if fxquant.core.layers.is_layer(n)] == layers
    names = [q.name for q in fxquant.QuantizationSimModel(ours, x).quantizers()]
    assert [q.name for q in fxquant.QuantizationSimModel(foreign, x).quantizers()] == names
    assert len(names) > 50


def test_identity_calls_are_removed_so_fold_first_and_sim_agree() -> None:
    """AIMET's flow folds the batch norms first (each becomes nn.Identity) and then builds the
    sim; the Identity between conv and ReLU used to split the conv → ReLU supergroup (an extra
    quantizer on every such conv output). Now both flows quantize the same tensors."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(1, 3, 32, 32)
    direct = fxquant.QuantizationSimModel(model, x)
    fxquant.fold_all_batch_norms(model)
    assert isinstance(model.features[0][1], nn.Identity)
    result = fxquant.PrepareModelPass()(fxquant.trace(model))
    assert "features.0.1" in result.details["identities_removed"]
    assert not any(isinstance(result.graph_module.get_submodule(str(n.target)), nn.Identity)
                   for n in result.graph_module.graph.nodes if n.op == "call_module")
    folded_first = fxquant.QuantizationSimModel(model, x)
    names = [q.name for q in direct.quantizers() if q.quantizer.enabled]
    assert [q.name for q in folded_first.quantizers() if q.quantizer.enabled] == names
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), model(x))
