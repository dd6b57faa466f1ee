"""Bias correction (fxquant.ptq.bias_correction): the per-channel mean error it targets is measured
before and after on a trained depthwise-separable CNN, the analytical formula is checked against
the empirical measurement on Gaussian inputs, and the contract (only biases change, ignored layers,
16-bit, determinism, errors) is tested."""
from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
import torch
from torch import nn

import fxquant
from fxquant.core.layers import iter_layers
from fxquant.errors import ConfigError
from fxquant.ptq._data import capture_layer_io
from fxquant.ptq.bias_correction import (ActivationType, ConvBnInfoType, QuantParams,
                                         _expected_input, correct_bias,
                                         find_all_conv_bn_with_activation)
from tests.ptq.digits_dw import (calibration_batches, sqnr, test_images, top1_agreement,
                                 trained_dw_net)

W4 = QuantParams(weight_bw=4, act_bw=8, quant_scheme="tf", config_file="per_tensor")
LAYERS = ("features.0", "features.3", "features.6", "features.9", "features.12",
          "features.15.conv.0", "features.15.conv.3", "features.15.conv.6", "classifier")


# -- measurement helpers -----------------------------------------------------------------------
def _sim(model: nn.Module, params: QuantParams = W4) -> fxquant.QuantizationSimModel:
    """The W4A8 sim a user builds after correcting (activations quantized too)."""
    calib = calibration_batches(4, 64)
    sim = fxquant.QuantizationSimModel(copy.deepcopy(model), calib[0],
                                       quant_scheme=params.quant_scheme,
                                       default_param_bw=params.weight_bw,
                                       default_output_bw=params.act_bw,
                                       config_file=params.config_file)
    sim.compute_encodings(lambda m: [m(b) for b in calib])
    return sim


@torch.no_grad()
def _channel_mean_errors(folded_fp32: nn.Module, sim: fxquant.QuantizationSimModel,
                         batches: list[torch.Tensor]) -> dict[str, float]:
    """Per conv/linear layer: RMS over output channels of E[FP32 output] − E[sim output]."""
    out = {}
    for name, node in iter_layers(sim.model):
        if name not in LAYERS:
            continue
        _, ref = capture_layer_io(folded_fp32, name, batches, inputs=False)
        _, got = capture_layer_io(sim.model, str(node.target), batches, inputs=False)
        ref, got = torch.cat(ref).double(), torch.cat(got).double()
        dims = [0, *range(2, ref.dim())]
        out[name] = float((ref - got).mean(dims).pow(2).mean().sqrt())
    assert set(out) == set(LAYERS)
    return out


def _total(errors: dict[str, float]) -> float:
    return sum(e * e for e in errors.values()) ** 0.5


def _folded(model: nn.Module) -> nn.Module:
    folded = copy.deepcopy(model)
    fxquant.fold_all_batch_norms(folded, dummy_input=calibration_batches(1)[0])
    return folded


def _biases(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".bias")}


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32() -> nn.Module:
    return trained_dw_net()


@pytest.fixture(scope="module")
def corrected(fp32: nn.Module) -> nn.Module:
    """The unfolded trained net, corrected empirically for W4 per-tensor weights."""
    model = copy.deepcopy(fp32)
    correct_bias(model, W4, num_quant_samples=256, data_loader=calibration_batches(4, 64),
                 num_bias_correct_samples=256)
    return model


@pytest.fixture(scope="module")
def before(fp32: nn.Module) -> fxquant.QuantizationSimModel:
    return _sim(fp32)


# -- the measured effect -----------------------------------------------------------------------
def test_empirical_correction_removes_the_channel_mean_error(fp32, corrected, before):
    """W4 per-tensor weights (min-max) on the trained net, measured in the W4A8 sim: the RMS over
    channels of the per-channel mean error of each layer's output against FP32 drops on held-out
    images 15×–240× per layer (17.6× over all layers; 1.21 → 0.069) and ~90× on the correction's
    own images; logits SQNR rises from 6.6 to 11.9 dB, top-1 agreement with FP32 from 94.2% to
    99.3% (CPU)."""
    folded = _folded(fp32)
    after = _sim(corrected)
    test = test_images()
    held_out = [test[i:i + 150] for i in range(0, len(test), 150)]
    calib = calibration_batches(4, 64)
    b, a = _channel_mean_errors(folded, before, held_out), _channel_mean_errors(folded, after,
                                                                                held_out)
    for name in LAYERS:
        assert b[name] > 0.05, (name, b[name])            # a real bias to correct
        assert a[name] < b[name] / 8, (name, b[name], a[name])
    assert _total(a) < _total(b) / 10, (_total(b), _total(a))
    b_cal, a_cal = _channel_mean_errors(folded, before, calib), _channel_mean_errors(
        folded, after, calib)
    assert _total(a_cal) < _total(b_cal) / 40, (_total(b_cal), _total(a_cal))

    with torch.no_grad():
        ref, q_before, q_after = fp32(test), before.model(test), after.model(test)
    assert sqnr(ref, q_after) >= sqnr(ref, q_before) + 3.0, (sqnr(ref, q_before),
                                                              sqnr(ref, q_after))
    assert top1_agreement(ref, q_after) >= top1_agreement(ref, q_before)
    assert top1_agreement(ref, q_after) >= 0.98


def test_analytical_correction_reduces_the_error(fp32, before):
    """AIMET's documented flow: conv_bn_dict from the unfolded model, fold, then analytical
    correction of every layer fed by BN+ReLU6 (the first conv and the classifier empirically):
    the held-out per-channel mean error drops 5× (1.21 → 0.24 RMS over layers), logits SQNR
    rises from 6.6 to 11.3 dB."""
    model = copy.deepcopy(fp32)
    conv_bn_dict = find_all_conv_bn_with_activation(model, input_shape=(1, 1, 8, 8))
    fxquant.fold_all_batch_norms(model, dummy_input=calibration_batches(1)[0])
    correct_bias(model, W4, 256, calibration_batches(4, 64), 256, conv_bn_dict=conv_bn_dict,
                 perform_only_empirical_bias_corr=False)
    after = _sim(model)
    test = test_images()
    held_out = [test[i:i + 150] for i in range(0, len(test), 150)]
    folded = _folded(fp32)
    b, a = _channel_mean_errors(folded, before, held_out), _channel_mean_errors(folded, after,
                                                                                held_out)
    assert _total(a) < _total(b) / 3, (_total(b), _total(a))
    assert all(a[name] < b[name] for name in LAYERS), (b, a)
    with torch.no_grad():
        ref = fp32(test)
        assert sqnr(ref, after.model(test)) > sqnr(ref, before.model(test)) + 3.0


class _GaussianNet(nn.Module):
    """conv0 (identity 1×1) → BN (β, γ chosen; running stats of N(0, 1)) → act → conv1: on
    N(0, 1) inputs conv1's input is exactly act(N(β, γ²)), the analytical model's assumption."""

    def __init__(self, act: nn.Module | None) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.act = act
        self.conv1 = nn.Conv2d(4, 8, 1)
        with torch.no_grad():
            self.conv0.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            self.bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
            self.bn.bias.copy_(torch.tensor([0.5, 1.0, -0.3, 4.0]))
            self.conv1.weight.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv0(x))
        return self.conv1(x if self.act is None else self.act(x))


@pytest.mark.parametrize("act, kind", [(None, ActivationType.no_activation),
                                       (nn.ReLU(), ActivationType.relu),
                                       (nn.ReLU6(), ActivationType.relu6)])
def test_analytical_matches_the_empirical_measurement_on_gaussian_inputs(act, kind):
    """The analytical correction of conv1 (ΔW·E[x] with E[x] from β, γ, a negative γ included)
    equals the one measured on 8192 Gaussian images within 1.5% of its size (measured: 0.15% to
    0.3%). Per-channel weights make conv0's folded (diagonal) weight exact, so conv1 sees
    act(N(β, γ²)) in the sim too."""
    torch.manual_seed(0)
    net = _GaussianNet(act).eval()
    data = [torch.randn(512, 4, 8, 8) for _ in range(16)]
    info = find_all_conv_bn_with_activation(net)[net.conv1]
    assert info.input_bn is net.bn and info.in_activation_type is kind
    corrections = []
    for empirical in (True, False):
        model = copy.deepcopy(net)
        correct_bias(model, QuantParams(weight_bw=4, quant_scheme="tf"), 512, data, 8192,
                     perform_only_empirical_bias_corr=empirical)
        corrections.append((model.conv1.bias - net.conv1.bias).detach())
    measured, analytical = corrections
    assert measured.abs().max() > 0.02  # W4 leaves a real mean error
    assert torch.allclose(analytical, measured, atol=0.015 * float(measured.abs().max()))


def test_expected_input_is_the_clipped_normal_mean():
    """E[act(y)], y ~ N(β, γ²), against a million samples; the spread is |γ| (AIMET's formula
    takes γ itself and gives E[relu(y)] = −0.40 instead of 1.40 for β = 1, γ = −2)."""
    bn = nn.BatchNorm1d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0, 1e-9]))
        bn.bias.copy_(torch.tensor([0.5, 1.0, -0.3, 4.0, 2.0]))
    y = torch.randn(1_000_000, 5, dtype=torch.float64) * bn.weight.double() + bn.bias.double()
    for kind, f in ((ActivationType.no_activation, lambda t: t),
                    (ActivationType.relu, torch.relu), (ActivationType.relu6, lambda t: t.clamp(0, 6))):
        got = _expected_input(bn, kind, torch.float64)
        assert torch.allclose(got, f(y).mean(0), atol=0.01), (kind, got, f(y).mean(0))


# -- the contract ------------------------------------------------------------------------------
def test_only_biases_change_and_batch_norms_take_the_folded_correction(fp32, corrected):
    """Weights and BN statistics are untouched; the corrections of conv → BN layers land in the
    BN's β (convs keep no bias); folding the corrected model gives what correcting the folded
    model gives."""
    before, after = fp32.state_dict(), corrected.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(".bias") for k in changed), changed
    assert {"features.1.bias", "features.4.bias", "classifier.bias"} <= changed
    assert corrected.features[0].bias is None
    folded_then_corrected = _folded(fp32)
    correct_bias(folded_then_corrected, W4, 256, calibration_batches(4, 64), 256)
    corrected_then_folded = _folded(corrected)
    reference = _folded(fp32)
    for name in LAYERS:
        got = corrected_then_folded.get_submodule(name).bias.detach()
        want = folded_then_corrected.get_submodule(name).bias.detach()
        shift = want - reference.get_submodule(name).bias.detach()
        assert torch.allclose(got, want, atol=1e-3 * float(shift.abs().max())), name


def test_layers_to_ignore_are_untouched(fp32):
    model = copy.deepcopy(fp32)
    model.train()
    correct_bias(model, W4, 64, calibration_batches(1, 64), 64,
                 layers_to_ignore=["features.3", model.classifier])
    assert model.training and model.features[1].training  # the mode is restored
    original, now = _biases(fp32), _biases(model)
    assert torch.equal(now["features.4.bias"], original["features.4.bias"])  # BN after features.3
    assert torch.equal(now["classifier.bias"], original["classifier.bias"])
    assert model.features[3].bias is None
    assert not torch.equal(now["features.1.bias"], original["features.1.bias"])


def test_no_correction_without_quantization_error_and_determinism(fp32):
    """At 16 bits the corrections are noise (measured ≤ 0.03% of the 4-bit ones, at most 7e-5;
    required < 0.2%); two runs on the same data give bit-identical biases."""
    data = calibration_batches(2, 64)
    runs = {}
    for key, params in (("w4", W4), ("w4 again", W4),
                        ("w16", QuantParams(weight_bw=16, act_bw=16))):
        model = copy.deepcopy(fp32)
        correct_bias(model, params, 128, data, 128)
        runs[key] = _biases(model)
    original = _biases(fp32)
    for key in original:
        assert torch.equal(runs["w4"][key], runs["w4 again"][key]), key
    shift = {k: (runs["w4"][k] - v).abs().max() for k, v in original.items()}
    noise = {k: (runs["w16"][k] - v).abs().max() for k, v in original.items()}
    assert max(shift.values()) > 0.1
    assert all(noise[k] <= 2e-3 * max(shift[k], 1e-3) + 1e-6 for k in original), (noise, shift)


def test_a_layer_without_bias_or_batch_norm_gets_one(device):
    """As AIMET, a conv without a bias (and no BN after it) gets a zero bias plus its correction;
    everything runs on the model's device."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4)).to(device).eval()
    dataset = torch.utils.data.TensorDataset(torch.rand(96, 3, 8, 8), torch.zeros(96))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)  # [inputs, labels] batches
    correct_bias(model, QuantParams(weight_bw=3, quant_scheme="tf"), 40, loader, 64)
    assert model[0].bias is not None and model[0].bias.device.type == device.type
    assert float(model[0].bias.detach().abs().max()) > 0


def test_find_all_conv_bn_with_activation():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
            self.conv3, self.fc = nn.Conv2d(8, 8, 1), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv2(torch.nn.functional.relu(self.bn1(self.conv1(x))))
            x = self.conv3(torch.clamp(self.bn2(x), 0, 6))
            return self.fc(x.mean((2, 3)))

    net = Net()
    found = find_all_conv_bn_with_activation(net, (1, 3, 8, 8))
    assert list(found) == [net.conv1, net.conv2, net.conv3, net.fc]
    assert found[net.conv1] == ConvBnInfoType(None, net.bn1, ActivationType.no_activation,
                                              ActivationType.relu)
    assert found[net.conv2] == ConvBnInfoType(net.bn1, net.bn2, ActivationType.relu,
                                              ActivationType.relu6)
    assert found[net.conv3].input_bn is net.bn2
    assert found[net.conv3].in_activation_type is ActivationType.relu6
    assert found[net.fc] == ConvBnInfoType()
    dw = find_all_conv_bn_with_activation(trained_dw_net())
    assert sum(info.input_bn is not None for info in dw.values()) == 7


def test_logs_per_layer_and_never_prints(fp32, caplog, capsys):
    model = copy.deepcopy(fp32)
    with caplog.at_level(logging.INFO, logger="fxquant.ptq.bias_correction"):
        correct_bias(model, W4, 64, calibration_batches(1, 64), 64,
                     perform_only_empirical_bias_corr=False)
    text = caplog.text
    assert "features.0 (empirical)" in text and "features.3 (analytical)" in text
    assert "classifier (empirical)" in text
    assert capsys.readouterr().out == ""


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"weight_bw": 1}, r"QuantParams.weight_bw must be an int from 2 to 32, got 1"),
    ({"weight_bw": True}, r"QuantParams.weight_bw must be an int"),
    ({"act_bw": 40}, r"QuantParams.act_bw must be an int from 4 to 32, got 40"),
    ({"round_mode": "stochastic"}, r"round_mode='stochastic' is not supported; valid value: "
                                   r"'nearest'"),
    ({"quant_scheme": "tf_enhancedd"}, r"QuantParams.quant_scheme: .*tf_enhancedd"),
    ({"config_file": 3}, r"QuantParams.config_file must be None, a path, a dict"),
])
def test_quant_params_validation(kwargs: dict[str, Any], match: str):
    with pytest.raises(ConfigError, match=match):
        QuantParams(**kwargs)


def test_quant_params_is_frozen_with_aimet_defaults():
    params = QuantParams()
    assert (params.weight_bw, params.act_bw, params.round_mode, params.config_file) == (
        8, 8, "nearest", None)
    assert params.quant_scheme is fxquant.QuantScheme.post_training_tf_enhanced
    with pytest.raises(AttributeError):
        params.weight_bw = 4  # type: ignore[misc]


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv(x))))


_DATA = [torch.rand(4, 3, 8, 8)]


@pytest.mark.parametrize("args, kwargs, match", [
    ((None, W4, 4, _DATA, 4), {}, r"model must be a torch.nn.Module, got NoneType"),
    ((_Small(), {"weight_bw": 4}, 4, _DATA, 4), {},
     r"quant_params must be fxquant's QuantParams\(weight_bw=...\), got dict"),
    ((_Small(), W4, 0, _DATA, 4), {}, r"num_quant_samples must be a positive int, got 0"),
    ((_Small(), W4, 4, _DATA, 2.5), {}, r"num_bias_correct_samples must be a positive int"),
    ((_Small(), W4, 4, 5, 4), {}, r"data_loader must be iterable .* got int"),
    ((_Small(), W4, 4, [], 4), {}, r"data_loader yielded no batch"),
    ((_Small(), W4, 4, [{"x": _DATA[0]}], 4), {},
     r"batches whose input is not a batched tensor; yield a tensor or an \(inputs, labels\)"),
    ((_Small(), W4, 4, _DATA, 4), {"layers_to_ignore": ["conv3"]},
     r"layers_to_ignore\[0\] \('conv3'\) is not a module of the model.*close: \['conv'"),
    ((_Small(), W4, 4, _DATA, 4), {"layers_to_ignore": [nn.Conv2d(1, 1, 1)]},
     r"layers_to_ignore\[0\] .* is not a module of the model"),
    ((_Small(), W4, 4, _DATA, 4), {"layers_to_ignore": "conv"},
     r"layers_to_ignore must be a list of modules or module paths, got str"),
    ((_Small(), W4, 4, _DATA, 4), {"perform_only_empirical_bias_corr": "no"},
     r"perform_only_empirical_bias_corr must be True or False, got str"),
    ((_Small(), W4, 4, _DATA, 4), {"perform_only_empirical_bias_corr": False,
                                   "conv_bn_dict": [1]},
     r"conv_bn_dict must be the dict find_all_conv_bn_with_activation returns, got list"),
    ((nn.Sequential(nn.ReLU()), W4, 4, _DATA, 4), {},
     r"Sequential has no conv/linear layer that bias correction can correct"),
])
def test_correct_bias_errors(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        correct_bias(*args, **kwargs)


def test_conv_bn_dict_entries_are_checked():
    model = _Small().eval()
    state = copy.deepcopy(model.state_dict())
    wrong_bn = {model.conv2: ConvBnInfoType(input_bn=nn.BatchNorm2d(7))}
    with pytest.raises(ConfigError, match=r"conv_bn_dict\[conv2\].input_bn has 7 features but "
                                          r"the layer takes 4 input channels"):
        correct_bias(model, W4, 4, _DATA, 4, wrong_bn, perform_only_empirical_bias_corr=False)
    not_bn = {model.conv2: ConvBnInfoType(input_bn=model.conv)}
    with pytest.raises(ConfigError, match=r"conv_bn_dict\[conv2\].input_bn is a Conv2d, not a "
                                          r"BatchNorm module"):
        correct_bias(model, W4, 4, _DATA, 4, not_bn, perform_only_empirical_bias_corr=False)
    bad_act = {model.conv2: ConvBnInfoType(input_bn=model.bn, in_activation_type="gelu")}
    with pytest.raises(ConfigError, match=r"in_activation_type 'gelu' is not one of "
                                          r"\['no_activation', 'relu', 'relu6'\]"):
        correct_bias(model, W4, 4, _DATA, 4, bad_act, perform_only_empirical_bias_corr=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # unchanged
