"""EqualizeLayersPass on small graphs: which pairs it scales, which it leaves and why, linear
pairs, devices, and its declarations (the shared contract is in test_contract.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant.passes.base import state_tags
from fxquant.passes.equalize import EqualizeLayersPass


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.fc2(torch.relu(self.fc1(x))))


class Branchy(nn.Module):
    """conv1's output has two users; conv3 is called twice; conv3 → flatten → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        b = self.conv2(a) + a
        return self.fc(torch.flatten(self.conv3(self.conv3(b)), 1))


def _imbalanced(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                shape = (-1,) + (1,) * (m.weight.dim() - 1)
                m.weight.mul_(torch.logspace(-2, 2, m.weight.shape[0]).view(shape))
    return model.eval()


def test_linear_pairs_with_and_without_relu(device: torch.device) -> None:
    model = _imbalanced(Mlp()).to(device)
    x = torch.randn(5, 6, device=device)
    with torch.no_grad():
        expected = model(x)
        gm = fxquant.prepare_model(model)
        result = EqualizeLayersPass()(gm)
        assert result.details["scaled"] == [("fc1", "fc2"), ("fc2", "fc3")]
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-4)
        assert gm.fc1.weight.device == x.device
        for first, second in result.details["scaled"]:
            r1 = gm.get_submodule(first).weight.abs().amax(1)
            r2 = gm.get_submodule(second).weight.abs().amax(0)
            torch.testing.assert_close(r1, r2, rtol=1e-5, atol=0)
    assert {"equalized", "bn_folded"} <= state_tags(gm)
    assert model.fc1.weight.abs().amax(1).max() / model.fc1.weight.abs().amax(1).min() > 1e3, \
        "the model sharing modules with the graph module was changed"


def test_pairs_it_cannot_scale_are_skipped_with_the_reason() -> None:
    model = _imbalanced(Branchy())
    x = torch.randn(2, 3, 2, 2)
    with torch.no_grad():
        expected = model(x)
        gm = fxquant.prepare_model(model)
        result = EqualizeLayersPass()(gm)
        torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-6)
    assert result.details["scaled"] == []
    assert not result.modified
    # conv1 → conv2: conv1's output also feeds the add; conv3 → fc: a flatten between; the
    # reused conv3 (split by the preparer into conv3 and conv3_1) shares its weight
    assert result.details["skipped"] == [("conv3", "conv3_1", "a layer or its weight is shared")]


def test_relu6_between_is_reported() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Conv2d(4, 4, 1)).eval()
    gm = fxquant.prepare_model(model)
    result = EqualizeLayersPass()(gm)
    assert result.details["skipped"] == [("0", "2", "ReLU6 between (not positively homogeneous; "
                                          "relu6_to_relu=True replaces ReLU6 by ReLU)")]
    replaced = EqualizeLayersPass(relu6_to_relu=True)(fxquant.prepare_model(model))
    assert replaced.details["relu6_replaced"] == ["1"]
    assert replaced.details["scaled"] == [("0", "2")]


def test_lossy_options_declare_that_they_change_numerics() -> None:
    assert EqualizeLayersPass().preserves_numerics
    assert not EqualizeLayersPass(high_bias_fold=True).preserves_numerics
    assert not EqualizeLayersPass(relu6_to_relu=True).preserves_numerics
    assert repr(EqualizeLayersPass(high_bias_fold=True)) == \
        "EqualizeLayersPass(high_bias_fold=True)"


def test_requires_a_prepared_graph() -> None:
    gm = fxquant.trace(Mlp().eval())
    with pytest.raises(fxquant.PassError, match=r"requires \['prepared'\].*run the passes"):
        EqualizeLayersPass()(gm)
