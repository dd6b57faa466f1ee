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
