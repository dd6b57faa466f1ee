"""InsertQuantizersPass: placement per policy — inputs, outputs, supergroups, data movement,
parameters — and the node metadata later steps rely on."""
from __future__ import annotations

from typing import Mapping

import torch
import torchvision
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

import fxquant
from fxquant import _meta
from fxquant.core.layers import param_quantizers, quantizer_nodes
from fxquant.passes.insert_quantizers import InsertQuantizersPass


class Marker(nn.Module):
    """A stand-in quantizer: identity that records its name."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TypePolicy:
    """Quantizes every output, input and weight; op types by class name; Conv+Relu fused."""

    supergroups = (("Conv2d", "ReLU"), ("Add", "ReLU"))
    quantize_model_output: bool | None = None

    def op_type(self, module: nn.Module) -> str | None:
        return type(module).__name__

    def is_data_movement(self, module: nn.Module) -> bool:
        return isinstance(module, (nn.MaxPool2d, fxquant.nn.Flatten, fxquant.nn.Reshape))

    def input_quantizer(self, name: str) -> nn.Module | None:
        return Marker(f"in:{name}")

    def output_quantizer(self, layer: str, module: nn.Module) -> nn.Module | None:
        return Marker(f"out:{layer}")

    def param_quantizers(self, layer: str, module: nn.Module) -> Mapping[str, nn.Module]:
        return {"weight": Marker(f"w:{layer}")} if hasattr(module, "weight") else {}


def _quantized(model: nn.Module, x: torch.Tensor, policy=None) -> fxquant.PassResult:
    gm = fxquant.prepare_model(model.eval())
    fxquant.fold_all_batch_norms(gm)
    ShapeProp(gm).propagate(x)
    return InsertQuantizersPass(policy or TypePolicy())(gm)


def test_placement_on_resnet18() -> None:
    result = _quantized(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    outputs = result.details["outputs"]
    assert result.details["inputs"] == ["x"]
    assert "conv1" not in outputs and "relu" in outputs            # Conv+ReLU supergroup
    assert "layer1.0.conv2" in outputs                             # conv feeding an add
    assert "layer1.0.module_add" not in outputs                    # Add+ReLU supergroup
    assert "layer1.0.relu_1" in outputs
    assert "maxpool" not in outputs and "module_flatten" not in outputs  # data movement
    assert "fc" in outputs
    assert len(result.details["params"]) == 21                      # 20 convs + fc
    gm = result.graph_module
    assert "self.layer1.0.relu_1.output_quantizer" in gm.code.replace('getattr(self.layer1, "0")',
                                                                      "self.layer1.0")


def test_quantizer_nodes_carry_layer_names_and_are_right_after_their_op() -> None:
    result = _quantized(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    nodes = quantizer_nodes(result.graph_module)
    assert len(nodes) == 1 + len(result.details["outputs"])
    for node in nodes:
        layer = _meta.get(node, _meta.LAYER_NAME)
        assert _meta.get(node, _meta.ROLE) == _meta.ROLE_QUANTIZER
        if _meta.get(node, _meta.QUANTIZES) == "output":
            assert node.args[0].target == layer
            assert node.target == f"{layer}.output_quantizer"
            assert list(node.args[0].users) == [node]
        else:
            assert node.args[0].op == "placeholder" and node.target == f"input_quantizers.{layer}"
    handles = [_meta.handle(n) for n in result.graph_module.graph.nodes]
    assert len(set(handles)) == len(handles)


def test_param_quantizers_are_parametrizations_and_class_is_kept() -> None:
    result = _quantized(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    conv = result.graph_module.get_submodule("layer1.0.conv1")
    assert isinstance(conv, nn.Conv2d)
    assert param_quantizers(conv)["weight"].name == "w:layer1.0.conv1"


def test_non_float_outputs_are_not_quantized() -> None:
    class ArgMax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.emb = nn.Embedding(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.fc(x)
            return self.emb(y.argmax(-1)), y

    result = _quantized(ArgMax(), torch.randn(2, 4))
    assert set(result.details["outputs"]) == {"fc", "emb"}
    assert result.details["inputs"] == ["x"]


def test_model_output_can_be_left_unquantized() -> None:
    class NoOut(TypePolicy):
        quantize_model_output = False

    result = _quantized(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64), NoOut())
    assert "fc" not in result.details["outputs"]


def test_second_run_is_a_no_op_and_tags_hold() -> None:
    result = _quantized(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    again = InsertQuantizersPass(TypePolicy())(result.graph_module)
    assert not again.modified
    assert "quantized" in fxquant.passes.state_tags(again.graph_module)


class InputsPolicy(TypePolicy):
    """Op-level input quantizers on adds; convs' outputs off; the model output forced on."""

    quantize_model_output = True

    def output_quantizer(self, layer: str, module: nn.Module) -> nn.Module | None:
        return None if isinstance(module, (nn.Conv2d, nn.Linear)) else Marker(f"out:{layer}")

    def model_output_quantizer(self, layer: str, module: nn.Module) -> nn.Module | None:
        return Marker(f"model-out:{layer}")

    def layer_input_quantizer(self, layer: str, module: nn.Module, index: int,
                              is_model_input: bool = False) -> nn.Module | None:
        return Marker(f"in:{layer}:{index}") if isinstance(module, fxquant.nn.Add) else None


def test_layer_input_quantizers_and_the_model_output_on_resnet18() -> None:
    result = _quantized(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64), InputsPolicy())
    gm = result.graph_module
    # every add's conv2 input, and the downsample outputs (the other identities are quantized)
    assert len(result.details["layer_inputs"]) == 8 + 3
    assert "layer1.0.module_add:0" in result.details["layer_inputs"]
    node = next(n for n in gm.graph.nodes if n.target == "layer1.0.module_add.input_quantizers.0")
    assert _meta.get(node, _meta.QUANTIZES) == "input"
    assert _meta.get(node, _meta.LAYER_NAME) == "layer1.0.conv2"  # the tensor it quantizes
    assert node.args[0].target == "layer1.0.conv2"
    assert [u.target for u in node.users] == ["layer1.0.module_add"]
    # the fc's output is the model output: model_output_quantizer decides, not output_quantizer
    assert "fc" in result.details["outputs"]
    assert gm.get_submodule("fc.output_quantizer").name == "model-out:fc"


def test_a_policy_without_the_optional_methods_gets_no_layer_inputs() -> None:
    result = _quantized(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    assert result.details["layer_inputs"] == []


def test_supergroups_never_start_at_a_depthwise_or_3d_conv() -> None:
    """AIMET's rule: a supergroup match is rejected when its first op is a depthwise conv or a
    3-D conv (its target does not fuse them), so their outputs stay quantized."""
    from fxquant.quantsim.quantsim import QuantizationSimModel

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)               # regular: fused
            self.act = nn.ReLU6()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)       # depthwise: not fused
            self.act2 = nn.ReLU6()
            self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)  # grouped, not depthwise
            self.act3 = nn.ReLU6()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act3(self.grouped(self.act2(self.dw(self.act(self.conv(x))))))

    cfg = {"defaults": {"ops": {"is_output_quantized": "True"},
                        "params": {"is_quantized": "True"}},
           "params": {}, "op_type": {}, "supergroups": [{"op_list": ["Conv", "Clip"]}],
           "model_input": {}, "model_output": {}}
    sim = QuantizationSimModel(Net().eval(), torch.randn(1, 4, 6, 6), config_file=cfg)
    outputs = {r.name for r in sim.quantizers() if r.kind == "output"}
    assert outputs == {"act", "dw", "act2", "act3"}

    class Net3d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(2, 2, 1)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x))

    cfg["supergroups"] = [{"op_list": ["Conv", "Relu"]}]
    sim = QuantizationSimModel(Net3d().eval(), torch.randn(1, 2, 3, 3, 3), config_file=cfg)
    assert {r.name for r in sim.quantizers() if r.kind == "output"} == {"conv", "act"}
