"""A MobileNet-style CNN trained on scikit-learn's digits: depthwise-separable blocks, batch norms,
ReLU6 and an inverted residual, the structure the PTQ techniques are made for (trained weights:
on ``weights=None`` models they show nothing)."""
from __future__ import annotations

import functools

import torch
from torch import nn

from fxquant.core.metrics import sqnr_db
from tests.quantsim.digits import digits, train


def _cbr(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
         act: type[nn.Module] | None = nn.ReLU6) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return layers


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise → 1×1 project, plus the input (MobileNetV2's block)."""

    def __init__(self, channels: int, expand: int, act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        hidden = channels * expand
        self.conv = nn.Sequential(*_cbr(channels, hidden, 1, act=act),
                                  *_cbr(hidden, hidden, 3, groups=hidden, act=act),
                                  *_cbr(hidden, channels, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class DigitsDWNet(nn.Module):
    """Conv-BN-ReLU6, two depthwise-separable blocks, an inverted residual, pooling, a linear
    head; 8×8 inputs, 10 classes. ``act``: the activation class (ReLU6 as in MobileNetV2)."""

    def __init__(self, act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_cbr(1, 16, 3, act=act),
            *_cbr(16, 16, 3, groups=16, act=act), *_cbr(16, 32, 1, act=act),  # separable
            *_cbr(32, 32, 3, stride=2, groups=32, act=act), *_cbr(32, 32, 1, act=act),  # → 4×4
            InvertedResidual(32, 4, act))
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


_ACTS = {"relu6": nn.ReLU6, "relu": nn.ReLU}


@functools.lru_cache(maxsize=2)
def trained_dw_state(act: str = "relu6") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    with torch.enable_grad():  # also when first asked for under no_grad
        return train(DigitsDWNet(_ACTS[act]), epochs=15, lr=3e-3).state_dict()


def trained_dw_net(act: str = "relu6") -> DigitsDWNet:
    """A freshly built DigitsDWNet (``act``: "relu6" or "relu") with the (cached) trained
    weights, in eval mode."""
    net = DigitsDWNet(_ACTS[act])
    net.load_state_dict(trained_dw_state(act))
    return net.eval()


def calibration_batches(n: int = 4, batch: int = 64) -> list[torch.Tensor]:
    """``n`` batches of training images (calibration data, as a user would take it)."""
    x = digits()[0]
    return [x[i * batch:(i + 1) * batch] for i in range(n)]


def test_images() -> torch.Tensor:
    """The test split's images (evaluation data)."""
    return digits()[2]


@torch.no_grad()
def sqnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    """SQNR (dB) of ``other`` against ``reference``, with the library's one definition."""
    reference, other = reference.double(), other.double()
    return sqnr_db(float(reference.pow(2).sum()), float((reference - other).pow(2).sum()))


@torch.no_grad()
def top1_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of rows whose arg-max agrees."""
    return float((reference.argmax(1) == other.argmax(1)).double().mean())


test_images.__test__ = False  # a helper, not a test (pytest collects test_* names it imports)
