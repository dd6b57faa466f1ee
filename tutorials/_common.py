"""Shared by the tutorials: a stand-in for calibration data on models built with ``weights=None``.

Not a tutorial itself (``tests/tutorials/test_tutorials.py`` runs every ``tutorials/*.py`` not starting with
an underscore).
"""
from __future__ import annotations

import torch
from torch import nn


def reestimate_batch_norm_statistics(model: nn.Module, size: int, batches: int,
                                     batch_size: int = 8) -> nn.Module:
    """Fresh models keep BN statistics at mean 0 / var 1, so deep activations vanish and SQNR
    means nothing; estimate real statistics on a few random batches drawn from torch's global
    generator (seed it first), then return the model in eval mode.

    Example:
        >>> torch.manual_seed(0)
        >>> model = reestimate_batch_norm_statistics(torchvision.models.resnet18(), 64, 3)
        >>> model.training
        False
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch_size, 3, size, size))
    return model.eval()


def trained_digits_cnn(epochs: int = 15) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The demo's digits CNN (conv-BN-ReLU ×2 with a residual add, a strided conv-BN-ReLU,
    pooling, a linear head) trained for ``epochs`` on scikit-learn's digits (seeded, a few seconds
    on CPU), and the data ``(x_train, y_train, x_test, y_test)`` (N×1×8×8 in [0, 1]).

    Example:
        >>> model, (x_train, y_train, x_test, y_test) = trained_digits_cnn()
        >>> float((model(x_test).argmax(1) == y_test).float().mean()) > 0.95
        True
    """
    from fxquant.cli.demo import DigitsCNN, digits_split, train_digits_cnn

    torch.manual_seed(0)
    data = digits_split()
    return train_digits_cnn(DigitsCNN(), data[0], data[1], epochs), data


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout)]
    return layers + ([act()] if act is not None else [])


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expand → 3×3 depthwise → 1×1 project (no activation), plus the
    input."""

    def __init__(self, channels: int, expand: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        hidden = channels * expand
        self.conv = nn.Sequential(*_conv_bn_act(channels, hidden, 1, act=act),
                                  *_conv_bn_act(hidden, hidden, 3, groups=hidden, act=act),
                                  *_conv_bn_act(hidden, channels, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class DigitsMobileNet(nn.Module):
    """A MobileNet in miniature for 8×8 digits: conv-BN-act, two depthwise-separable blocks
    (3×3 depthwise, then 1×1 pointwise; the second strided), an inverted residual, pooling and a
    linear head. ``act``: ``nn.ReLU`` or ``nn.ReLU6`` (MobileNetV2's).

    Layers (after BN folding): ``features.0, .3, .6, .9, .12`` and ``features.15.conv.0, .3, .6``
    (convs; ``.3`` and ``.9`` and ``15.conv.3`` depthwise), ``classifier``.
    """

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_act(1, 16, 3, act=act),
            *_conv_bn_act(16, 16, 3, groups=16, act=act), *_conv_bn_act(16, 32, 1, act=act),
            *_conv_bn_act(32, 32, 3, stride=2, groups=32, act=act),
            *_conv_bn_act(32, 32, 1, act=act),
            InvertedResidual(32, 4, act))
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def trained_digits_mobilenet(act: type[nn.Module] = nn.ReLU, epochs: int = 15
                             ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A :class:`DigitsMobileNet` trained for ``epochs`` on scikit-learn's digits (Adam, lr 3e-3,
    batch 64, seeded; about 6 s on one CPU core), its BN statistics re-estimated over the whole
    training split, in eval mode; and the data ``(x_train, y_train, x_test, y_test)``.

    Example:
        >>> model, (x_train, y_train, x_test, y_test) = trained_digits_mobilenet(nn.ReLU6)
        >>> float((model(x_test).argmax(1) == y_test).float().mean()) > 0.97
        True
    """
    from fxquant.cli.demo import digits_split

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_split()
    model = DigitsMobileNet(act)
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x_train), generator=gen)
            for i in range(0, len(x_train), 64):
                batch = order[i:i + 64]
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
    with torch.no_grad():  # BN statistics over the whole training set, not the last batches
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None
        for i in range(0, len(x_train), 64):
            model(x_train[i:i + 64])
    return model.eval(), (x_train, y_train, x_test, y_test)


class DigitsEvaluation:
    """What the post-training tutorials measure of a sim on the digits test split, and the
    calibration batches they run it on.

    Args:
        model: the float model (its test logits are the reference).
        data: ``(x_train, y_train, x_test, y_test)`` as :func:`trained_digits_mobilenet` returns.
        num_batches: calibration batches of 64 training images.

    Example:
        >>> evaluation = DigitsEvaluation(model, data, num_batches=4)
        >>> sim.compute_encodings(evaluation.calibrate)
        >>> evaluation.show("W4A8 nearest", sim)      # prints accuracy and logits SQNR
        12.3
    """

    def __init__(self, model: nn.Module, data: tuple[torch.Tensor, ...], num_batches: int) -> None:
        x_train, _, self.x_test, self.y_test = data
        self.calibration = [x_train[i:i + 64] for i in range(0, 64 * num_batches, 64)]
        with torch.no_grad():
            self.fp32 = model(self.x_test)

    def accuracy(self, logits: torch.Tensor) -> float:
        """Top-1 accuracy (%) of ``logits`` on the test split."""
        return 100.0 * float((logits.argmax(1) == self.y_test).float().mean())

    def calibrate(self, sim_model: nn.Module) -> None:
        """A ``compute_encodings`` callback: runs the calibration batches."""
        for batch in self.calibration:
            sim_model(batch)

    def show(self, label: str, sim: object) -> float:
        """Prints ``label``'s accuracy and logits SQNR against the float model; returns the
        SQNR (dB)."""
        import fxquant.ns as ns

        with torch.no_grad():
            logits = sim.model(self.x_test)
        sqnr = float(ns.compute_sqnr(self.fp32, logits))
        print(f"{label}: accuracy {self.accuracy(logits):.2f}%, logits SQNR {sqnr:.1f} dB")
        return sqnr
