"""Quantsim config semantics as AIMET applies them: defaults → params → op_type → supergroups →
model_input → model_output, a later rule winning; op-level ``is_input_quantized``; quantized
biases in the encodings; supergroups fused with no quantizer between their members.

``quantized_tensors(sim)`` lists what a sim quantizes as ``{tensor name: kind}``: tensor names
are those of the exported ONNX graph (model inputs, layer outputs, initializers); it is the
set a comparison with AIMET's sim (same config) is made on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import fxquant
from fxquant.core.layers import input_quantizer_nodes, layer_nodes, output_quantizer_node
from fxquant.quantsim.quantizer import AffineQuantizer
from fxquant.quantsim.quantsim import QuantizationSimModel


def quantized_tensors(sim: QuantizationSimModel) -> dict[str, str]:
    """``{tensor name: "input" | "output" | "param"}`` of the sim's enabled quantizers."""
    return {q.name: q.kind for q in sim.quantizers() if q.quantizer.enabled}


def config(**sections: Any) -> dict[str, Any]:
    """Every op output and weight quantized (biases not), no supergroups; ``sections`` replace
    top-level entries."""
    base: dict[str, Any] = {
        "defaults": {"ops": {"is_output_quantized": "True"},
                     "params": {"is_quantized": "True", "is_symmetric": "True"}},
        "params": {"bias": {"is_quantized": "False"}}, "op_type": {}, "supergroups": [],
        "model_input": {}, "model_output": {}}
    base.update(sections)
    return base


class Mlp(nn.Module):
    """fc1 → relu → fc2 (the model output)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


class TwoBranches(nn.Module):
    """Two convs added, then relu; the first conv's output is also returned (a model output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv1(x)
        return self.relu(a + self.conv2(x)), a


def sim_of(model: nn.Module, cfg: Any, x: torch.Tensor, **kwargs: Any) -> QuantizationSimModel:
    torch.manual_seed(0)
    return QuantizationSimModel(model.eval(), x, quant_scheme="tf", config_file=cfg, **kwargs)


# ------------------------------------------------------------------------------------------------
# model_output wins over op_type
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_output, fc2_quantized", [({}, False),
                                                        ({"is_output_quantized": "True"}, True),
                                                        ({"is_output_quantized": "False"}, False)])
def test_model_output_is_applied_after_op_type(model_output: dict[str, str],
                                               fc2_quantized: bool) -> None:
    cfg = config(op_type={"Gemm": {"is_output_quantized": "False"}}, model_output=model_output)
    tensors = quantized_tensors(sim_of(Mlp(), cfg, torch.randn(2, 6)))
    assert ("fc2" in tensors) is fc2_quantized
    assert "fc1" not in tensors  # op_type still rules the op whose output is no model output
    assert tensors["relu"] == "output"


def test_model_output_true_quantizes_the_output_and_changes_the_numerics() -> None:
    cfg = config(op_type={"Gemm": {"is_output_quantized": "False"}},
                 model_output={"is_output_quantized": "True"})
    x = torch.randn(16, 6)
    sim = sim_of(Mlp(), cfg, x)
    sim.compute_encodings(lambda m: m(x))
    q = sim.quantizer("fc2")
    with torch.no_grad():
        out = sim.model(x)
    steps = (out / q.encoding.scale) + q.encoding.zero_point
    torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0)  # on fc2's output grid


def test_model_output_true_reaches_a_data_movement_output_whose_input_is_not_quantized() -> None:
    class ConvFlatten(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.flatten = nn.Flatten()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.flatten(self.conv(x))

    x = torch.randn(1, 3, 5, 5)
    off = config(op_type={"Conv": {"is_output_quantized": "False"}},
                 model_output={"is_output_quantized": "True"})
    assert quantized_tensors(sim_of(ConvFlatten(), off, x)).get("flatten") == "output"
    # when the conv's output is quantized the flatten reuses its encoding: nothing added
    on = config(model_output={"is_output_quantized": "True"})
    tensors = quantized_tensors(sim_of(ConvFlatten(), on, x))
    assert "flatten" not in tensors and tensors["conv"] == "output"


# ------------------------------------------------------------------------------------------------
# op_type.<T>.is_input_quantized
# ------------------------------------------------------------------------------------------------
def test_op_type_is_input_quantized_adds_input_quantizers_on_unquantized_inputs() -> None:
    x = torch.randn(2, 3, 6, 6)
    cfg = config(op_type={"Conv": {"is_output_quantized": "False"},
                          "Add": {"is_input_quantized": "True"}})
    sim = sim_of(TwoBranches(), cfg, x)
    tensors = quantized_tensors(sim)
    # the add's inputs are the convs' outputs: quantized by the add's input quantizers
    assert tensors["conv1"] == "input" and tensors["conv2"] == "input"
    layers = layer_nodes(sim.model)
    add = next(n for name, n in layers.items() if "add" in name)
    inputs = input_quantizer_nodes(add)
    assert [q.args[0] for q in inputs] == [layers["conv1"], layers["conv2"]]
    assert [str(q.target) for q in inputs] == [f"{add.target}.input_quantizers.0",
                                               f"{add.target}.input_quantizers.1"]
    # conv1's output is also a model output, which keeps the unquantized tensor (an op-level
    # input quantizer quantizes only the edge into its op)
    sim.compute_encodings(lambda m: m(x))
    with torch.no_grad():
        _, a = sim.model(x)
        expected_a = sim.model.conv1(sim.model.input_quantizers.x(x)) if hasattr(
            sim.model, "input_quantizers") else sim.model.conv1(x)
    assert torch.equal(a, expected_a)
    q = sim.model.get_submodule(str(inputs[0].target))
    assert isinstance(q, AffineQuantizer) and q.encoding is not None
    assert not torch.equal(q(a), a)


def test_op_type_input_quantizer_is_not_added_twice_on_a_quantized_tensor() -> None:
    x = torch.randn(2, 3, 6, 6)
    cfg = config(op_type={"Add": {"is_input_quantized": "True"}})
    sim = sim_of(TwoBranches(), cfg, x)
    layers = layer_nodes(sim.model)
    add = next(n for name, n in layers.items() if "add" in name)
    assert input_quantizer_nodes(add) == []  # both inputs already carry an output quantizer
    assert quantized_tensors(sim)["conv1"] == "output"


@pytest.mark.parametrize("model_input, x_quantized_by", [
    ({}, "conv"),                             # op_type decides: the conv's input quantizer
    ({"is_input_quantized": "True"}, "model"),  # model_input: the model input's quantizer
    ({"is_input_quantized": "False"}, None),  # model_input (applied later) wins over op_type
])
def test_model_input_is_applied_after_op_type(model_input: dict[str, str],
                                              x_quantized_by: str | None) -> None:
    cfg = config(op_type={"Gemm": {"is_input_quantized": "True"}}, model_input=model_input)
    sim = sim_of(Mlp(), cfg, torch.randn(2, 6))
    refs = {q.name: q for q in sim.quantizers()}
    if x_quantized_by is None:
        assert "x" not in refs
    else:
        assert refs["x"].kind == "input"
        expected = "fc1.input_quantizers.0" if x_quantized_by == "conv" else "input_quantizers.x"
        assert refs["x"].module_path == expected
    # fc2's input (the relu's quantized output) gets no second quantizer
    assert input_quantizer_nodes(layer_nodes(sim.model)["fc2"]) == []


# ------------------------------------------------------------------------------------------------
# supergroups
# ------------------------------------------------------------------------------------------------
def test_supergroup_members_have_no_quantizer_between_them() -> None:
    class ConvReluConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(4, 4, 1)
            self.relu2 = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu2(self.conv2(self.relu(self.conv(x))))

    # every op asks for input quantizers; Conv+Relu is fused: the relu's input (the conv's
    # output) gets neither an output nor an input quantizer
    cfg = config(op_type={"Relu": {"is_input_quantized": "True"},
                          "Conv": {"is_output_quantized": "False"}},
                 supergroups=[{"op_list": ["Conv", "Relu"]}])
    sim = sim_of(ConvReluConv(), cfg, torch.randn(1, 3, 6, 6))
    layers = layer_nodes(sim.model)
    for conv, relu in (("conv", "relu"), ("conv2", "relu2")):
        assert output_quantizer_node(layers[conv]) is None
        assert input_quantizer_nodes(layers[relu]) == []
        assert layers[relu].args[0] is layers[conv]
    assert [n for n, k in quantized_tensors(sim).items() if k != "param"] == ["relu", "relu2"]
    # without the supergroup the relus quantize their inputs
    unfused = sim_of(ConvReluConv(), {**cfg, "supergroups": []}, torch.randn(1, 3, 6, 6))
    assert quantized_tensors(unfused)["conv"] == "input"


# ------------------------------------------------------------------------------------------------
# quantized biases (AIMET's rule) and the encodings
# ------------------------------------------------------------------------------------------------
def test_config_quantized_bias_is_a_param_quantizer_and_in_the_encodings(tmp_path: Path) -> None:
    x = torch.randn(8, 6)
    cfg = config(params={"bias": {"is_quantized": "True"}})
    sim = sim_of(Mlp(), cfg, x)
    tensors = quantized_tensors(sim)
    assert tensors["fc1.bias"] == "param" and tensors["fc2.bias"] == "param"
    sim.compute_encodings(lambda m: m(x))
    bias_q = sim.quantizer("fc1.bias")
    # param bit width, symmetric as defaults.params say, calibrated from the bias values
    enc = bias_q.encoding
    assert enc.bitwidth == 8 and enc.symmetric
    bias = sim.model.fc1.parametrizations.bias.original
    assert float(enc.scale) == pytest.approx(float(bias.abs().max()) / 127, rel=1e-5)
    path = tmp_path / "mlp.encodings"
    sim.save_encodings(path)
    written = json.loads(path.read_text())
    names = {e["name"]: e for e in written["param_encodings"]}
    assert {"fc1.bias", "fc2.bias", "fc1.weight", "fc2.weight"} <= set(names)
    assert names["fc1.bias"]["bw"] == 8 and names["fc1.bias"]["is_sym"] is True
    with torch.no_grad():
        torch.testing.assert_close(sim.model.fc1.bias, bias_q(bias))  # the layer uses it


def test_op_type_bias_setting_and_int32_simulation_of_the_others() -> None:
    x = torch.randn(8, 6)
    cfg = config(op_type={"Gemm": {"params": {"bias": {"is_quantized": "True"}}}})
    assert quantized_tensors(sim_of(Mlp(), cfg, x))["fc1.bias"] == "param"
    # per-channel configs quantize the bias per output channel (AIMET: channel axis 0)
    per_channel = {**cfg, "defaults": {**cfg["defaults"], "per_channel_quantization": "True"}}
    assert sim_of(Mlp(), per_channel, x).quantizer("fc1.bias").axis == 0
    # the int32 simulation (quantize_bias=True) is for the biases the config leaves float
    conv_cfg = config(op_type={"Conv": {"params": {"bias": {"is_quantized": "True"}}}})
    sim = sim_of(TwoBranches(), conv_cfg, torch.randn(1, 3, 6, 6), quantize_bias=True)
    assert "conv1.bias" in quantized_tensors(sim) and sim.bias_quantizers() == {}
    sim = sim_of(Mlp(), config(), x, quantize_bias=True)
    assert set(sim.bias_quantizers()) == {"fc2.bias"}  # fc1's input (x) is not quantized here
    assert "fc2.bias" not in quantized_tensors(sim)


# ------------------------------------------------------------------------------------------------
# torchvision models: the quantized tensors under one config that uses every rule
# ------------------------------------------------------------------------------------------------
EVERY_RULE = config(
    defaults={"ops": {"is_output_quantized": "True"},
              "params": {"is_quantized": "True", "is_symmetric": "True"},
              "per_channel_quantization": "True"},
    params={"bias": {"is_quantized": "True"}},
    op_type={"Conv": {"is_output_quantized": "False"},
             "Add": {"is_input_quantized": "True"},
             "Gemm": {"is_output_quantized": "False"}},
    supergroups=[{"op_list": ["Conv", "Relu"]}, {"op_list": ["Conv", "Clip"]},
                 {"op_list": ["Add", "Relu"]}],
    model_input={"is_input_quantized": "True"},
    model_output={"is_output_quantized": "True"})


def _kinds(tensors: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in tensors.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_resnet18_quantized_tensors() -> None:
    sim = sim_of(torchvision.models.resnet18(weights=None), EVERY_RULE, torch.randn(1, 3, 64, 64))
    tensors = quantized_tensors(sim)
    # 20 convs + fc: weights and (after BN folding, every conv has one) biases
    params = [n for n, k in tensors.items() if k == "param"]
    assert len(params) == 42 and "fc.bias" in params and "layer1.0.conv1.bias" in params
    outputs = {n for n, k in tensors.items() if k == "output"}
    # Conv outputs are off; relus (ending Conv+Relu / Add+Relu), the pool and, by model_output,
    # the fc are quantized: 1 + 8 blocks × 2 + avgpool + fc
    assert len(outputs) == 19 and {"fc", "avgpool", "relu"} <= outputs
    assert not any(n.endswith(("conv1", "conv2")) for n in outputs)
    # the adds quantize their unquantized inputs: every block's conv2 output and the 3
    # downsample outputs (the other identities are relu outputs, quantized already)
    inputs = {n for n, k in tensors.items() if k == "input"}
    assert inputs == {"x"} | {f"layer{i}.{j}.conv2" for i in range(1, 5) for j in range(2)} | {
        f"layer{i}.0.downsample.0" for i in range(2, 5)}
    assert _kinds(tensors) == {"input": 12, "output": 19, "param": 42}


def test_mobilenet_v2_quantized_tensors() -> None:
    sim = sim_of(torchvision.models.mobilenet_v2(weights=None), EVERY_RULE,
                 torch.randn(1, 3, 64, 64))
    tensors = quantized_tensors(sim)
    counts = _kinds(tensors)
    # 52 convs + the classifier linear, weight and bias each
    assert counts["param"] == 106
    # 35 ReLU6 (Conv+Clip ends) + 10 residual adds + the pool + the classifier (model_output)
    outputs = [n for n, k in tensors.items() if k == "output"]
    assert len(outputs) == 47 and "classifier.1" in outputs
    # the adds' unquantized inputs (projection conv outputs; a block input that is a previous
    # add's output is quantized already): 15, plus the model input
    assert counts["input"] == 16 and tensors["x"] == "input"
    assert tensors["features.2.conv.2"] == "input"  # block 2's projection, into block 3's add


def test_export_names_every_quantized_tensor_of_the_onnx_graph(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from fxquant.export.sim_export import tensor_names

    x = torch.randn(2, 3, 6, 6)
    cfg = config(op_type={"Conv": {"is_output_quantized": "False"},
                          "Add": {"is_input_quantized": "True"}},
                 params={"bias": {"is_quantized": "True"}},
                 model_output={"is_output_quantized": "True"})
    sim = sim_of(TwoBranches(), cfg, x)
    sim.compute_encodings(lambda m: m(x))
    files = sim.export(str(tmp_path), "two", x)
    names = tensor_names(onnx.load(files["onnx"]))
    written = json.loads(Path(files["encodings"]).read_text())
    act = {e["name"] for e in written["activation_encodings"]}
    par = {e["name"] for e in written["param_encodings"]}
    assert act | par == set(quantized_tensors(sim))
    assert {"conv1", "conv2"} <= act and {"conv1.bias", "conv2.bias"} <= par
    assert act | par <= names
