"""FoldBatchNormPass / fold_all_batch_norms: every layer kind, both directions, the guards."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant.batch_norm_fold import FoldedPair, folded_names
from tests.models import (Conv1d3dNet, Conv2dSameInline, ConvTransposeNet, FunctionalNet,
                          SameConvBnReLU6, randomize_batch_norms)


def _bns(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_backward_and_forward_folds_on_every_layer_kind(device: torch.device) -> None:
    model = randomize_batch_norms(ConvTransposeNet()).eval().to(device)
    x = torch.randn(4, 3, 6, 6, device=device)
    with torch.no_grad():
        expected = model(x)
    gm = fxquant.prepare_model(model)
    folded = folded_names(fxquant.fold_all_batch_norms(gm, input_shapes=(4, 3, 6, 6)))
    assert set(folded) == {("conv0", "pre_bn"), ("dw", "dw_bn"), ("up", "up_bn"),
                           ("gup", "gup_bn"), ("fc", "fc_bn")}
    assert _bns(gm) == []
    with torch.no_grad():
        torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


def test_linear_bn1d_needs_known_rank() -> None:
    model = randomize_batch_norms(ConvTransposeNet()).eval()
    gm = fxquant.prepare_model(model)
    folded = folded_names(fxquant.fold_all_batch_norms(gm))  # no shapes: Linear -> BN1d stays
    assert ("fc", "fc_bn") not in folded and _bns(gm) == ["fc_bn"]


def test_conv1d_conv3d_and_conv_transpose1d() -> None:
    model = randomize_batch_norms(Conv1d3dNet()).eval()
    x, v = torch.randn(2, 3, 9), torch.randn(2, 1, 5, 5, 5)
    with torch.no_grad():
        expected = model(x, v)
    gm = fxquant.prepare_model(model)
    folded = folded_names(fxquant.fold_all_batch_norms(gm))
    assert set(folded) == {("c1", "b1"), ("t1", "tb1"), ("c3", "b3")}
    with torch.no_grad():
        torch.testing.assert_close(gm(x, v), expected, rtol=1e-5, atol=1e-5)


def test_forward_fold_refused_when_inexact() -> None:
    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)  # padding: BN -> conv fold inexact
            self.bn2 = nn.BatchNorm2d(4)
            self.tconv = nn.ConvTranspose2d(4, 4, 1)  # never forward-fold into ConvTranspose

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.tconv(self.bn2(torch.relu(self.conv(self.bn(x)))))

    gm = fxquant.prepare_model(randomize_batch_norms(Padded()).eval())
    assert fxquant.fold_all_batch_norms(gm) == []


def test_layer_with_other_users_is_not_folded() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    gm = fxquant.prepare_model(randomize_batch_norms(Branch()).eval())
    assert fxquant.fold_all_batch_norms(gm) == []


def test_fold_on_plain_module_is_in_place_and_keeps_numerics() -> None:
    model = randomize_batch_norms(FunctionalNet()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    bn1, bn2 = model.bn1, model.bn2
    folded = fxquant.fold_all_batch_norms(model)
    # AIMET's return value: (layer module, bn module) pairs; the names ride along
    assert folded == [(model.conv1, bn1), (model.conv2, bn2)]
    assert all(isinstance(pair, FoldedPair) for pair in folded)
    conv, bn = folded[0]
    assert conv is model.conv1 and bn is bn1 and folded[1][0] is model.conv2
    assert folded_names(folded) == [("conv1", "bn1"), ("conv2", "bn2")]
    assert folded[1].layer_name == "conv2" and folded[1].bn_name == "bn2"
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.bn2, nn.Identity)
    assert model.conv2.bias is not None  # a bias was created for the bias-free conv
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conv_class", [None, Conv2dSameInline], ids=["fx-wrapped-pad", "auto-leaf"])
def test_same_padding_conv_subclass_bn_is_folded(conv_class: type | None) -> None:
    """EfficientNet-style conv (F.pad + F.conv2d) → BN → ReLU6."""
    model = randomize_batch_norms(
        SameConvBnReLU6() if conv_class is None else SameConvBnReLU6(conv_class)).eval()
    x = torch.randn(2, 3, 15, 17)
    with torch.no_grad():
        expected = model(x)
    gm = fxquant.prepare_model(model)
    folded = fxquant.fold_all_batch_norms(gm)
    layer = "conv.module_conv2d" if conv_class is None else "conv"
    assert folded_names(folded) == [(layer, "bn")]
    assert folded[0][0] is gm.get_submodule(layer)  # the graph module's (folded) layer
    assert _bns(gm) == []
    with torch.no_grad():
        torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-6)
    # and directly on the user's module, in place
    bn = model.bn
    folded_in_place = fxquant.fold_all_batch_norms(model)
    assert [b for _, b in folded_in_place] == [bn] and isinstance(model.bn, nn.Identity)
    # the layer returned is the user's module that owns the folded weight
    assert folded_in_place[0][0] is model.conv
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_shared_bn_is_not_folded_into_a_user_module() -> None:
    class SharedBn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.c1(x)) + self.bn(self.c2(torch.relu(self.bn(self.c1(x)))))

    model = randomize_batch_norms(SharedBn()).eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        expected = model(x)
    assert fxquant.fold_all_batch_norms(model) == []
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_training_mode_is_an_error_that_says_how_to_fix_it() -> None:
    model = FunctionalNet().train()
    with pytest.raises(fxquant.BatchNormFoldError, match=r"FunctionalNet is in training mode.*"
                                                         r"Call model.eval\(\)"):
        fxquant.fold_all_batch_norms(model)
    gm = fxquant.prepare_model(FunctionalNet().eval())
    gm.bn1.train()
    with pytest.raises(fxquant.PassError, match=r"batch norm 'bn1' is in training mode.*"
                                                r"model.eval\(\)"):
        fxquant.FoldBatchNormPass()(gm)


def test_fold_rejects_non_module() -> None:
    with pytest.raises(TypeError, match="fold_all_batch_norms expects a torch.nn.Module"):
        fxquant.fold_all_batch_norms("resnet18")  # type: ignore[arg-type]


def test_second_fold_reports_nothing() -> None:
    gm = fxquant.prepare_model(randomize_batch_norms(FunctionalNet()).eval())
    first = fxquant.FoldBatchNormPass()(gm)
    assert first.modified and len(first.details["folded"]) == 2
    second = fxquant.FoldBatchNormPass()(gm)
    assert not second.modified and second.details["folded"] == []


def test_folded_pairs_index_by_module_as_aimet_users_do() -> None:
    """AIMET's example: ``{conv: bn for conv, bn in pairs}`` and ``pairs[i][0].weight``."""
    model = randomize_batch_norms(FunctionalNet()).eval()
    expected_weight = model.conv1.weight.detach().clone()
    bn1 = model.bn1
    scale = (bn1.weight / torch.sqrt(bn1.running_var + bn1.eps)).detach()
    pairs = fxquant.fold_all_batch_norms(model)
    by_layer = {layer: bn for layer, bn in pairs}
    assert by_layer[model.conv1] is bn1
    torch.testing.assert_close(pairs[0][0].weight, expected_weight * scale.view(-1, 1, 1, 1))
    assert repr(pairs[0]) == "FoldedPair('conv1' <- 'bn1')"
    assert pairs[0].names == ("conv1", "bn1")
