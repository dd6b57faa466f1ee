"""equalize_model / equalize_bn_folded_model (AIMET's CLE API) on trained depthwise-separable nets:
float outputs preserved, per-tensor W8A8 recovered, ReLU6 handled as AIMET 2.4+ (and < 2.4 on
request, with the effect measured), high biases absorbed exactly where the statistics hold."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import fxquant
from fxquant.ptq.cross_layer_equalization import equalize_bn_folded_model, equalize_model
from tests.ptq.digits_dw import (calibration_batches, sqnr, test_images, top1_agreement,
                                 trained_dw_net)
from tests.quantsim.digits import accuracy


def imbalance(net: nn.Module, spread: float = 20.0, seed: int = 0) -> nn.Module:
    """Gives the trained ReLU net what BN folding leaves in ImageNet MobileNets: per-channel weight
    ranges up to ``spread²`` apart. Each BN → ReLU → conv has channel ``c`` of the BN multiplied
    by ``k_c`` (log-uniform in [1/spread, spread]) and input channel ``c`` of the conv divided by
    it, which ReLU lets through unchanged: the float function is the same."""
    gen = torch.Generator().manual_seed(seed)
    flat = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU))]
    skip_input = net.features[15].conv[0]  # its input also feeds the residual add
    with torch.no_grad():
        for bn, act, conv in zip(flat, flat[1:], flat[2:]):
            if not (isinstance(bn, nn.BatchNorm2d) and isinstance(act, nn.ReLU)
                    and isinstance(conv, nn.Conv2d)) or conv is skip_input:
                continue
            k = torch.exp((torch.rand(bn.num_features, generator=gen) * 2 - 1)
                          * torch.log(torch.tensor(spread)))
            bn.weight.mul_(k)
            bn.bias.mul_(k)
            conv.weight.div_(k.view(-1, 1, 1, 1) if conv.groups > 1 else k.view(1, -1, 1, 1))
    return net


@torch.no_grad()
def w8a8(model: nn.Module, config: str | None = "per_tensor") -> torch.Tensor:
    x = test_images()
    sim = fxquant.QuantizationSimModel(model, x[:2], config_file=config)
    sim.compute_encodings(lambda m: [m(b) for b in calibration_batches()])
    return sim.model(x)


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@torch.no_grad()
def test_cle_preserves_fp32_and_recovers_per_tensor_w8a8() -> None:
    reference = trained_dw_net("relu")
    x = test_images()
    expected = reference(x)
    model = imbalance(trained_dw_net("relu"))
    _close(model(x), expected)  # the planted imbalance is function-preserving
    before = w8a8(model)
    report = equalize_model(model, dummy_input=x[:2])
    assert len(report["folded"]) == 8 and len(report["scaled"]) == 6
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    _close(model(x), expected)
    after = w8a8(model)
    # measured: -4.3 dB -> 29.3 dB (the untouched net quantizes to 28.3 dB)
    assert sqnr(expected, before) < 5
    assert sqnr(expected, after) > 25 and sqnr(expected, after) > sqnr(expected, before) + 20
    assert top1_agreement(expected, after) > 0.97


def _out_ranges(m: nn.Module) -> torch.Tensor:
    return m.weight.abs().flatten(1).amax(1).double()


def _in_ranges(m: nn.Module) -> torch.Tensor:
    w = m.weight.abs()
    return (w.flatten(1) if m.groups > 1 else w.transpose(0, 1).flatten(1)).amax(1).double()


@torch.no_grad()
def test_equalized_ranges_are_equal_along_a_depthwise_triplet() -> None:
    """conv → depthwise → conv alone: all three per-channel ranges end at cbrt(r1·r2·r3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    model[0].weight.mul_(torch.logspace(-2, 2, 8).view(-1, 1, 1, 1))
    x = torch.randn(4, 3, 6, 6)
    expected = model(x)
    target = (_out_ranges(model[0]) * _out_ranges(model[2]) * _in_ranges(model[4])) ** (1 / 3)
    equalize_model(model)
    for got in (_out_ranges(model[0]), _out_ranges(model[2]), _in_ranges(model[4])):
        torch.testing.assert_close(got, target, rtol=1e-5, atol=0)
    _close(model(x), expected)


@torch.no_grad()
def test_every_scaled_pair_ends_with_equal_ranges() -> None:
    """On a chain (each layer in two pairs) the scales settle where every pair's ranges agree."""
    model = imbalance(trained_dw_net("relu"))
    pairs = fxquant.fold_all_batch_norms(model)
    report = equalize_bn_folded_model(model, None, pairs)
    assert len(report["scaled"]) == 6
    for first, second in report["scaled"]:
        torch.testing.assert_close(_out_ranges(model.get_submodule(first)),
                                   _in_ranges(model.get_submodule(second)), rtol=1e-5, atol=0)


@torch.no_grad()
def test_relu6_pairs_are_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """AIMET 2.4+: pairs through ReLU6 are not scaled (ReLU6 is not positively homogeneous)."""
    model = trained_dw_net()
    x = test_images()
    expected = model(x)
    with caplog.at_level(logging.WARNING, logger="fxquant.ptq.cross_layer_equalization"):
        report = equalize_model(model, dummy_input=x[:2])
    assert report["scaled"] == [] and report["relu6_replaced"] == []
    assert ("features.0", "features.3") in [s[:2] for s in report["skipped"]]
    assert "relu6_to_relu=True" in caplog.text
    _close(model(x), expected)  # only the batch norms were folded


@torch.no_grad()
def test_relu6_to_relu_scales_through_it_and_its_effect_is_measured() -> None:
    """AIMET < 2.4's ReLU6 → ReLU. On the digits net it changes the float logits (pre-activations
    above 6 exist) — measured: logits 34.9 dB against the ReLU6 net, top-1 agreement 1.0,
    accuracy 98.89% both — and then lets every pair be scaled exactly."""
    model = trained_dw_net()
    x = test_images()
    expected = model(x)
    relu_only = copy.deepcopy(model)
    for name, m in list(relu_only.named_modules()):
        if isinstance(m, nn.ReLU6):
            parent, _, attr = name.rpartition(".")
            setattr(relu_only.get_submodule(parent), attr, nn.ReLU())
    report = equalize_model(model, dummy_input=x[:2], relu6_to_relu=True)
    assert len(report["relu6_replaced"]) == 7 and len(report["scaled"]) == 6
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
    _close(model(x), relu_only(x))  # equalization itself is exact
    assert sqnr(expected, model(x)) > 30
    assert top1_agreement(expected, model(x)) > 0.99
    assert abs(accuracy(model) - accuracy(trained_dw_net())) < 1.0


class HighBias(nn.Module):
    """conv → BN with high means → ReLU → 1×1 conv (no padding): absorption applies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn(self.conv1(x))))


@torch.no_grad()
def test_high_bias_absorption_is_exact_where_pre_activations_stay_above_c() -> None:
    torch.manual_seed(0)
    model = HighBias().eval()
    x = torch.randn(16, 3, 8, 8)
    pre = model.conv1(x)
    model.bn.running_mean.copy_(pre.mean((0, 2, 3)))
    # statistics wider than the data (output std γ/2): no pre-activation falls below β − 3|γ|
    model.bn.running_var.copy_(4 * pre.var((0, 2, 3)))
    model.bn.weight.copy_(torch.rand(8) * 0.1 + 0.05)  # small spread ...
    model.bn.bias.copy_(torch.rand(8) + 2.0)           # ... around high means
    expected = model(x)
    gamma, beta = model.bn.weight.clone(), model.bn.bias.clone()
    assert bool((model.bn(model.conv1(x)) > (beta - 3 * gamma).view(1, -1, 1, 1)).all())
    report = equalize_model(model, dummy_input=x)
    assert report["absorbed"] == [("conv1", "conv2")]
    _close(model(x), expected)
    assert float(model.conv1.bias.abs().max()) < 2.0  # the high biases left conv1


@torch.no_grad()
def test_graph_module_in_place_and_second_run_changes_nothing() -> None:
    gm = fxquant.prepare_model(imbalance(trained_dw_net("relu")))
    x = test_images()
    expected = gm(x)
    report = equalize_model(gm)
    assert len(report["scaled"]) == 6
    _close(gm(x), expected)
    again = equalize_model(gm)
    assert again["scaled"] == [] and again["folded"] == [] and again["absorbed"] == []


def test_training_mode_is_refused() -> None:
    with pytest.raises(fxquant.BatchNormFoldError, match=r"training mode.*model\.eval\(\)"):
        equalize_model(trained_dw_net().train())


def test_not_a_module_is_refused() -> None:
    with pytest.raises(TypeError, match="equalize_model expects a torch.nn.Module, got dict"):
        equalize_model({})  # type: ignore[arg-type]


def test_bad_folded_pairs_are_refused() -> None:
    model = trained_dw_net()
    with pytest.raises(fxquant.BatchNormFoldError,
                       match=r"folded_pairs\[0\] must be a \(layer of the model, folded batch norm\)"):
        equalize_bn_folded_model(model, None, [(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))])
