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
