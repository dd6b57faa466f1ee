"""ConfigPolicy and QuantSimSettings (fxquant/quantsim/policy.py): which quantizers a quantsim
config and QuantSim's settings give each op, parameter and model input, and the graph decisions
(supergroups, data movement, model input/output) they lead to in a QuantizationSimModel.

The config's own resolution (``settings_for_op``) is tested in test_config.py and the insertion
pass with a stand-in policy in tests/passes/test_insert_quantizers.py; here the policy's
quantizers are checked: their presence, bit width, symmetry, axis, scheme and numerics."""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import pytest
import torch
from torch import nn

from fxquant.errors import ConfigError
from fxquant.quantsim.config import load_config
from fxquant.quantsim.policy import ConfigPolicy, QuantSimSettings
from fxquant.quantsim.quant_scheme import QuantizationDataType, QuantScheme
from fxquant.quantsim.quantizer import AffineQuantizer, FloatQuantizer
from fxquant.quantsim.quantsim import QuantizationSimModel


def config(**sections: Any) -> dict[str, Any]:
    """A minimal AIMET config: every op output and parameter but biases quantized (as AIMET's
    configs do), nothing else set;
    ``sections`` replace top-level entries, ``ops`` / ``defaults_extra`` extend ``defaults``."""
    ops = sections.pop("ops", {"is_output_quantized": "True"})
    params = sections.pop("default_params", {"is_quantized": "True"})
    extra = sections.pop("defaults_extra", {})
    base = {"defaults": {"ops": ops, "params": params, **extra},
            "params": {"bias": {"is_quantized": "False"}}, "op_type": {},
            "supergroups": [], "model_input": {}, "model_output": {}}
    base.update(sections)
    return base


def policy(cfg: Any = None, **settings: Any) -> ConfigPolicy:
    return ConfigPolicy(load_config(cfg), QuantSimSettings(**settings))


class Custom(nn.Module):
    """A module without ONNX op type, with a 2-D weight and a second float parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))
        self.scale = nn.Parameter(torch.ones(4))
        self.steps = nn.Parameter(torch.arange(4), requires_grad=False)  # integer: never quantized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


# ------------------------------------------------------------------------------------------------
# QuantSimSettings
# ------------------------------------------------------------------------------------------------


def test_settings_defaults_are_quantsims_and_frozen() -> None:
    s = QuantSimSettings()
    assert (s.quant_scheme, s.default_output_bw, s.default_param_bw, s.default_data_type) == (
        QuantScheme.post_training_tf_enhanced, 8, 8, QuantizationDataType.int)
    sig = inspect.signature(QuantizationSimModel.__init__).parameters
    for field in dataclasses.fields(QuantSimSettings):
        assert sig[field.name].default == getattr(s, field.name), field.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.default_param_bw = 4  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# Op types, data movement, supergroups
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module, op_type, data_movement", [
    (nn.Conv2d(3, 4, 3), "Conv", False),
    (nn.ConvTranspose2d(3, 4, 2), "ConvTranspose", False),
    (nn.Linear(3, 4), "Gemm", False),
    (nn.ReLU(), "Relu", False),
    (nn.LayerNorm(4), "LayerNormalization", False),
    (nn.MaxPool2d(2), "MaxPool", True),
    (nn.Flatten(), "Flatten", True),
    (nn.Dropout(), "Dropout", True),
    (nn.Embedding(3, 4), "Gather", True),
    (Custom(), None, False),
])
def test_op_type_and_data_movement(module: nn.Module, op_type: str | None,
                                   data_movement: bool) -> None:
    p = policy()
    assert p.op_type(module) == op_type
    assert p.is_data_movement(module) is data_movement


def test_supergroups_and_model_output_come_from_the_config() -> None:
    p = policy(config(supergroups=[{"op_list": ["Conv", "Relu"]},
                                   {"op_list": ["Gemm", "BatchNormalization", "Relu"]}],
                      model_output={"is_output_quantized": "False"}))
    assert p.supergroups == (("Conv", "Relu"), ("Gemm", "BatchNormalization", "Relu"))
    assert p.quantize_model_output is False
    default = policy()
    assert ("Conv", "Relu") in default.supergroups and ("Add", "Relu") in default.supergroups
    assert default.quantize_model_output is None


# ------------------------------------------------------------------------------------------------
# Parameter quantizers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module, axis, channels", [
    (nn.Conv1d(3, 5, 3), 0, 5),
    (nn.Conv2d(3, 5, 3), 0, 5),
    (nn.ConvTranspose2d(4, 6, 2), 1, 6),    # weight [in, out, kH, kW]: output channels on axis 1
    (nn.Linear(7, 5), 0, 5),                 # weight [out, in]
])
def test_builtin_default_quantizes_weights_per_output_channel(module: nn.Module, axis: int,
                                                              channels: int) -> None:
    torch.manual_seed(0)
    quantizers = policy(quant_scheme="tf").param_quantizers("layer", module)
    assert list(quantizers) == ["weight"]  # bias: not quantized by the built-in config
    q = quantizers["weight"]
    assert isinstance(q, AffineQuantizer)
    assert (q.name, q.kind, q.axis, q.bitwidth, q.symmetric) == ("layer.weight", "param", axis,
                                                                 8, True)
    assert q.quant_scheme is QuantScheme.post_training_tf
    w = module.weight.detach()
    with q.calibration():
        q(w)
    other = tuple(d for d in range(w.dim()) if d != axis)
    wmax, wmin = w.amax(dim=other), w.amin(dim=other)
    assert q.encoding.scale.shape == (channels,)
    # symmetric signed 8-bit grid [-128, 127], one scale per output channel
    torch.testing.assert_close(q.encoding.scale, torch.maximum(wmax / 127, -wmin / 128))


def test_per_tensor_config_and_params_without_channel_axis() -> None:
    per_tensor = policy("per_tensor")
    assert per_tensor.param_quantizers("conv", nn.Conv2d(3, 5, 3))["weight"].axis is None
    per_channel = policy()
    # per-channel applies only to the weight of Conv / ConvTranspose / Gemm
    assert per_channel.param_quantizers("ln", nn.LayerNorm(4))["weight"].axis is None
    custom = per_channel.param_quantizers("custom", Custom())
    assert sorted(custom) == ["scale", "weight"]  # the integer parameter is skipped
    assert custom["weight"].axis is None and custom["scale"].axis is None
    assert [custom[n].name for n in ("weight", "scale")] == ["custom.weight", "custom.scale"]


def test_op_type_per_channel_overrides_defaults_and_keyword_overrides_both() -> None:
    cfg = config(op_type={"Gemm": {"per_channel_quantization": "True"}})
    p = policy(cfg)
    assert p.param_quantizers("fc", nn.Linear(3, 4))["weight"].axis == 0
    assert p.param_quantizers("conv", nn.Conv2d(3, 4, 1))["weight"].axis is None
    forced = ConfigPolicy(load_config(cfg, per_channel=False), QuantSimSettings())
    assert forced.param_quantizers("fc", nn.Linear(3, 4))["weight"].axis is None
    forced = ConfigPolicy(load_config(cfg, per_channel=True), QuantSimSettings())
    assert forced.param_quantizers("conv", nn.Conv2d(3, 4, 1))["weight"].axis == 0


def test_param_precedence_defaults_then_params_then_op_type() -> None:
    p = policy(config(
        default_params={"is_quantized": "True", "is_symmetric": "False"},
        params={"weight": {"is_symmetric": "True"}, "bias": {"is_quantized": "True"},
                "scale": {"is_quantized": "False"}},
        op_type={"Gemm": {"params": {"weight": {"is_quantized": "False"}}},
                 "ConvTranspose": {"params": {"weight": {"is_symmetric": "False"}}}}))
    conv = p.param_quantizers("conv", nn.Conv2d(3, 4, 1))
    assert conv["weight"].symmetric is True                                         # params
    assert list(p.param_quantizers("fc", nn.Linear(3, 4))) == ["bias"]              # op_type
    assert p.param_quantizers("up", nn.ConvTranspose2d(3, 4, 2))["weight"].symmetric is False
    custom = p.param_quantizers("custom", Custom())
    assert list(custom) == ["weight"]  # params.scale: not quantized
    # params.bias.is_quantized: an AIMET bias quantizer (param bit width, the defaults' symmetry)
    assert conv["bias"].bitwidth == 8 and conv["bias"].symmetric is False
    assert conv["bias"].kind == "param" and conv["bias"].name == "conv.bias"


def test_params_off_by_default_leave_modules_unquantized() -> None:
    p = policy(config(default_params={}, op_type={"Conv": {"params": {"weight": {
        "is_quantized": "True", "is_symmetric": "True"}}}}))
    assert p.param_quantizers("fc", nn.Linear(3, 4)) == {}
    assert p.param_quantizers("conv", nn.Conv2d(3, 4, 1))["weight"].symmetric is True


def test_strict_and_unsigned_symmetric_reach_the_quantizers() -> None:
    p = policy(config(ops={"is_output_quantized": "True", "is_symmetric": "True"},
                      default_params={"is_quantized": "True", "is_symmetric": "True"},
                      defaults_extra={"strict_symmetric": "True", "unsigned_symmetric": "True"}),
               quant_scheme="tf")
    weight = p.param_quantizers("fc", nn.Linear(3, 4))["weight"]
    out = p.output_quantizer("relu", nn.ReLU())
    assert (weight.strict_symmetric, weight.unsigned_symmetric) == (True, False)
    assert (out.strict_symmetric, out.unsigned_symmetric) == (True, True)
    x = torch.tensor([0.0, 1.0, 2.54])
    with out.calibration():
        out(x)
    assert out.encoding.signed is False  # non-negative data: unsigned grid
    with weight.calibration():
        weight(torch.tensor([[-1.27, 0.5]]))
    assert weight.encoding.strict is True
    assert weight.encoding.scale.item() == pytest.approx(0.01)  # [-127, 127]: 1.27 / 127


# ------------------------------------------------------------------------------------------------
# Activation quantizers
# ------------------------------------------------------------------------------------------------


def test_output_quantizer_follows_defaults_then_op_type() -> None:
    p = policy(config(op_type={"Relu": {"is_output_quantized": "False"},
                               "Sigmoid": {"is_symmetric": "True"}}),
               default_output_bw=16, quant_scheme="percentile")
    conv = p.output_quantizer("conv", nn.Conv2d(3, 4, 1))
    assert isinstance(conv, AffineQuantizer)
    assert (conv.name, conv.kind, conv.bitwidth, conv.symmetric, conv.axis) == (
        "conv.output", "activation", 16, False, None)
    assert conv.quant_scheme is QuantScheme.post_training_percentile
    assert p.output_quantizer("relu", nn.ReLU()) is None
    assert p.output_quantizer("sig", nn.Sigmoid()).symmetric is True
    off = policy(config(ops={}, op_type={"Conv": {"is_output_quantized": "True"}}))
    assert off.output_quantizer("fc", nn.Linear(3, 4)) is None
    assert off.output_quantizer("conv", nn.Conv2d(3, 4, 1)).name == "conv.output"


def test_encoding_constraints_give_a_frozen_fixed_range() -> None:
    p = policy(config(op_type={"Softmax": {"encoding_constraints": {"min": 0.0, "max": 1.0}},
                               "Tanh": {"encoding_constraints": {"min": -1.0, "max": 1.0},
                                        "is_symmetric": "True"}}))
    q = p.output_quantizer("sm", nn.Softmax(-1))
    assert q.is_frozen
    assert q.encoding.scale.item() == pytest.approx(1 / 255)
    assert int(q.encoding.zero_point) == 0
    with q.calibration():
        q(torch.tensor([5.0, -3.0]))  # calibration does not move a frozen range
    assert q.encoding.scale.item() == pytest.approx(1 / 255)
    torch.testing.assert_close(q(torch.tensor([0.25, 1.5, -0.2])),
                               torch.tensor([64 / 255, 1.0, 0.0]))
    tanh = p.output_quantizer("tanh", nn.Tanh())
    assert (tanh.encoding.signed, tanh.encoding.symmetric) == (True, True)
    assert tanh.encoding.scale.item() == pytest.approx(1 / 127)
    assert p.output_quantizer("relu", nn.ReLU()).encoding is None  # no constraint: calibrated
    wide = policy(config(op_type={"Softmax": {"encoding_constraints": {"min": 0.0, "max": 1.0}}}),
                  default_output_bw=16)
    assert wide.output_quantizer("sm", nn.Softmax(-1)).encoding.scale.item() == pytest.approx(
        1 / 65535)


@pytest.mark.parametrize("model_input, defaults_input, expected", [
    ({"is_input_quantized": "True"}, False, True),
    ({"is_input_quantized": "False"}, True, False),  # model_input wins over the defaults
    ({}, True, True),
    ({}, False, False),
])
def test_input_quantizer_model_input_then_defaults(model_input: dict[str, str],
                                                   defaults_input: bool, expected: bool) -> None:
    ops = {"is_output_quantized": "True", "is_symmetric": "True"}
    if defaults_input:
        ops["is_input_quantized"] = "True"
    q = policy(config(ops=ops, model_input=model_input)).input_quantizer("x")
    if not expected:
        assert q is None
        return
    assert isinstance(q, AffineQuantizer)
    assert (q.name, q.kind, q.bitwidth, q.symmetric) == ("x", "activation", 8, True)


def test_float_data_type_gives_float16_quantizers_everywhere() -> None:
    p = policy(config(model_input={"is_input_quantized": "True"},
                      op_type={"Softmax": {"encoding_constraints": {"min": 0.0, "max": 1.0}}}),
               default_output_bw=16, default_param_bw=16,
               default_data_type=QuantizationDataType.float)
    p.validate()
    quantizers = [p.input_quantizer("x"), p.output_quantizer("sm", nn.Softmax(-1)),
                  p.param_quantizers("fc", nn.Linear(3, 4))["weight"]]
    assert all(isinstance(q, FloatQuantizer) and q.bitwidth == 16 for q in quantizers)
    assert [q.kind for q in quantizers] == ["activation", "activation", "param"]
    x = torch.tensor([1.0 + 2 ** -12, 3.0])
    torch.testing.assert_close(quantizers[1](x), torch.tensor([1.0, 3.0]), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# validate()
# ------------------------------------------------------------------------------------------------


def test_validate_accepts_the_valid_extremes() -> None:
    float16 = {"default_output_bw": 16, "default_param_bw": 16, "default_data_type": "float"}
    for settings in ({}, {"default_output_bw": 4, "default_param_bw": 2},
                     {"default_output_bw": 32, "default_param_bw": 32}, float16):
        assert policy(**settings).validate() is None


@pytest.mark.parametrize("settings, message", [
    ({"default_param_bw": 1},
     "quantizer 'default_param_bw': bitwidth 1 is not valid for a param quantizer; valid bit "
     "widths are 2-32 (integer), or 16 with data_type='float'"),
    ({"default_output_bw": 2},  # fine for params, not for activations
     "quantizer 'default_output_bw': bitwidth 2 is not valid for an activation"),
    ({"default_output_bw": 33}, "quantizer 'default_output_bw': bitwidth 33 is not valid"),
    ({"default_param_bw": 8.0}, "quantizer 'default_param_bw': bitwidth 8.0 is not valid"),
    ({"default_param_bw": True}, "quantizer 'default_param_bw': bitwidth True is not valid"),
    ({"default_output_bw": 8, "default_data_type": "float"},
     "quantizer 'default_output_bw': data_type='float' supports bitwidth 16 (float16) only, got 8"),
    ({"default_output_bw": 16, "default_param_bw": 8, "default_data_type": "float"},
     "quantizer 'default_param_bw': data_type='float' supports bitwidth 16 (float16) only, got 8"),
    ({"default_data_type": "bfloat16"},
     "data_type 'bfloat16' is not valid; valid values are 'int' and 'float'"),
    ({"default_data_type": QuantizationDataType.undefined},
     "valid values are 'int' and 'float'"),
])
def test_validate_names_the_setting_and_the_valid_values(settings: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        policy(**settings).validate()


def test_validate_reports_the_activation_range_for_output_bw() -> None:
    with pytest.raises(ConfigError, match=r"activation quantizer; valid bit widths are 4-32"):
        policy(default_output_bw=3).validate()


# ------------------------------------------------------------------------------------------------
# The policy's decisions in a QuantizationSimModel
# ------------------------------------------------------------------------------------------------


class Net(nn.Module):
    """conv → relu → maxpool → flatten → fc → relu → fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 3 * 3, 6)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu2(self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))))


def quantized(cfg: Any, model: nn.Module | None = None, **kwargs: Any) -> list[tuple[str, str]]:
    torch.manual_seed(0)
    sim = QuantizationSimModel((model or Net()).eval(), torch.randn(1, 3, 8, 8),
                               config_file=cfg, **kwargs)
    return [(q.name, q.kind) for q in sim.quantizers()]


def test_sim_with_builtin_default_config() -> None:
    assert quantized(None) == [
        ("x", "input"), ("conv.weight", "param"), ("relu", "output"),  # Conv+Relu fused
        ("fc.weight", "param"), ("relu2", "output"),                   # Gemm+Relu fused
        ("fc2.weight", "param"), ("fc2", "output")]                    # no pool / flatten output


def test_sim_without_supergroups_quantizes_every_op_but_data_movement() -> None:
    outputs = [n for n, kind in quantized(config()) if kind == "output"]
    assert outputs == ["conv", "relu", "fc", "relu2", "fc2"]


def test_sim_supergroup_needs_the_whole_chain() -> None:
    cfg = config(supergroups=[{"op_list": ["Conv", "Relu", "MaxPool"]},
                              {"op_list": ["Gemm", "Relu", "Gemm"]},
                              {"op_list": ["Relu", "Conv"]}])   # never matches: no such chain
    outputs = [n for n, kind in quantized(cfg) if kind == "output"]
    # conv and relu end inside Conv+Relu+MaxPool (whose last op has no quantizer of its own);
    # fc and relu2 inside Gemm+Relu+Gemm
    assert outputs == ["fc2"]


def test_sim_three_op_supergroup_with_unfolded_batch_norm() -> None:
    class ConvBnRelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.bn(self.conv(x)))

    cfg = config(supergroups=[{"op_list": ["Conv", "BatchNormalization", "Relu"]}])
    names = quantized(cfg, ConvBnRelu(), fold_batch_norms=False)
    assert [n for n, kind in names if kind == "output"] == ["relu"]
    # a BN kept right after its conv folds into it on target: its parameters stay float
    assert [n for n, kind in names if kind == "param"] == ["conv.weight"]


@pytest.mark.parametrize("model_input, model_output, first, last", [
    ({}, {}, ("conv.weight", "param"), ("fc2", "output")),  # defaults: no input quantizer
    ({"is_input_quantized": "True"}, {"is_output_quantized": "False"}, ("x", "input"),
     ("fc2.weight", "param")),
])
def test_sim_model_input_and_model_output_flags(model_input: dict[str, str],
                                                model_output: dict[str, str],
                                                first: tuple[str, str],
                                                last: tuple[str, str]) -> None:
    names = quantized(config(model_input=model_input, model_output=model_output))
    assert names[0] == first and names[-1] == last
    assert ("relu2", "output") in names  # only the model output is affected


def test_sim_op_type_turns_outputs_off() -> None:
    names = quantized(config(op_type={"Relu": {"is_output_quantized": "False"},
                                      "Gemm": {"params": {"weight": {"is_quantized": "False"}}}}))
    assert names == [("conv.weight", "param"), ("conv", "output"), ("fc", "output"),
                     ("fc2", "output")]


def test_settings_given_as_strings_behave_like_the_enums() -> None:
    settings = QuantSimSettings(quant_scheme="tf", default_data_type="int")
    assert settings == QuantSimSettings(quant_scheme=QuantScheme.post_training_tf,
                                        default_data_type=QuantizationDataType.int)
    cfg = config(op_type={"Softmax": {"encoding_constraints": {"min": 0.0, "max": 1.0}}})
    q = ConfigPolicy(load_config(cfg), settings).output_quantizer("sm", nn.Softmax(-1))
    assert q.is_frozen and q.encoding.scale.item() == pytest.approx(1 / 255)
    with pytest.raises(ValueError, match="int"):
        QuantSimSettings(default_data_type="int4")
