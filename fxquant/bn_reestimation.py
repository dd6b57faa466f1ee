"""``reestimate_bn_stats`` (AIMET's name and call shape): BatchNorm statistics of a quantized model.

After QAT of a sim that kept its batch norms (a sim built on a training-mode model), the BNs'
running statistics were gathered on the way through training and lag behind the final weights and
quantizers. AIMET's flow re-estimates them on training data with the quantizers active, then
folds the BNs into the weight quantizers (``fold_all_batch_norms_to_scale``)::

    handle = reestimate_bn_stats(sim.model, train_loader, num_batches=100)
    fold_all_batch_norms_to_scale(sim)

The re-estimate (AIMET's rule): every other module in eval mode, the BNs in training mode with
momentum 1 and reset statistics, so each batch sets ``running_mean`` / ``running_var`` to that
batch's mean and (unbiased) variance; the result is the average of those per-batch statistics
over the batches run. The returned handle's ``remove()`` puts the previous statistics back.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fxquant.errors import FxQuantError

__all__ = ["BNStatsHandle", "DEFAULT_NUM_BATCHES", "keep_bn_statistics", "reestimate_bn_stats"]

logger = logging.getLogger(__name__)

#: AIMET's default number of batches.
DEFAULT_NUM_BATCHES = 100


class BNStatsHandle:
    """Undoes a BN re-estimation: ``remove()`` restores every BN's previous running statistics.

    Attributes:
        batch_norms: module path → BN module, of the BNs that were re-estimated.
        num_batches: how many batches the estimate averaged.

    Example:
        >>> handle = reestimate_bn_stats(model, loader, num_batches=10)
        >>> handle.remove()   # back to the statistics before the call
    """

    def __init__(self, saved: dict[str, tuple[_BatchNorm, dict[str, torch.Tensor]]],
                 num_batches: int) -> None:
        self._saved = saved
        self.batch_norms = {name: bn for name, (bn, _) in saved.items()}
        self.num_batches = num_batches
        self._removed = False

    def remove(self) -> None:
        """Restore the statistics from before the re-estimation (a second call does nothing)."""
        if self._removed:
            return
        _restore(self._saved)
        self._removed = True

    def __repr__(self) -> str:
        state = "removed" if self._removed else "active"
        return f"BNStatsHandle({len(self._saved)} batch norms, {self.num_batches} batches, {state})"


def _active_batch_norms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.running_mean is not None
            and m.running_var is not None}


def _snapshot(bns: dict[str, _BatchNorm]) -> dict[str, tuple[_BatchNorm, dict[str, torch.Tensor]]]:
    return {name: (bn, {key: buf.detach().clone() for key, buf in bn.named_buffers(recurse=False)
                        if buf is not None})
            for name, bn in bns.items()}


def _restore(saved: dict[str, tuple[_BatchNorm, dict[str, torch.Tensor]]]) -> None:
    with torch.no_grad():
        for bn, buffers in saved.values():
            for key, value in buffers.items():
                getattr(bn, key).copy_(value)


@contextlib.contextmanager
def keep_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Runs the body with ``model``'s BN running statistics restored afterwards (a forward pass
    in training mode would otherwise move them).

    Example:
        >>> with keep_bn_statistics(model):
        ...     model(torch.randn(1, 3, 32, 32))   # statistics unchanged after this
    """
    saved = _snapshot(_active_batch_norms(model))
    try:
        yield
    finally:
        _restore(saved)


@contextlib.contextmanager
def _modes(model: nn.Module, bns: Iterable[_BatchNorm]) -> Iterator[None]:
    """Model in eval mode except the BNs (training mode, momentum 1); all restored on exit."""
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    try:
        model.eval()
        for bn in momenta:
            bn.train()
            bn.momentum = 1.0
        yield
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training


def reestimate_bn_stats(model: nn.Module, dataloader: Iterable[Any],
                        num_batches: int = DEFAULT_NUM_BATCHES,
                        forward_fn: Callable[[nn.Module, Any], Any] | None = None) -> BNStatsHandle:
    """Re-estimates the running mean and variance of every BatchNorm of ``model``.

    Pass ``sim.model`` to estimate them with the quantizers active (what the quantized model
    computes). Every other module runs in eval mode; the modes are restored afterwards.

    Args:
        model: the model (typically ``sim.model`` of a sim that kept its batch norms).
        dataloader: an iterable of batches (a ``DataLoader``); the first ``num_batches`` are used.
        num_batches: how many batches to average (AIMET's default 100).
        forward_fn: ``forward_fn(model, batch)`` runs one batch; default ``model(batch)``.

    Returns:
        A :class:`BNStatsHandle`; ``handle.remove()`` restores the previous statistics.

    Raises:
        FxQuantError: ``num_batches`` is not a positive int, the model has no batch norm that
            tracks running statistics, or the data loader yields no batch.

    Example:
        >>> sim = QuantizationSimModel(model.train(), dummy_input)   # BNs kept
        >>> ...                                                    # QAT
        >>> handle = reestimate_bn_stats(sim.model, train_loader, num_batches=100,
        ...                              forward_fn=lambda m, batch: m(batch[0]))
        >>> fold_all_batch_norms_to_scale(sim)
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise FxQuantError(f"reestimate_bn_stats: num_batches must be a positive int, got "
                           f"{num_batches!r}")
    bns = _active_batch_norms(model)
    if not bns:
        raise FxQuantError(
            f"reestimate_bn_stats: {type(model).__name__} has no BatchNorm with running "
            "statistics (were they folded? build the sim on the model in training mode, "
            "model.train(), to keep them)")
    forward = forward_fn or (lambda m, batch: m(batch))
    saved = _snapshot(bns)
    sums = {name: [torch.zeros_like(bn.running_mean, dtype=torch.float64),
                   torch.zeros_like(bn.running_var, dtype=torch.float64)]
            for name, bn in bns.items()}
    count = 0
    try:
        with _modes(model, bns.values()), torch.no_grad():
            for bn in bns.values():
                bn.reset_running_stats()
            for batch in itertools.islice(dataloader, num_batches):
                forward(model, batch)
                for name, bn in bns.items():
                    sums[name][0] += bn.running_mean
                    sums[name][1] += bn.running_var
                count += 1
        if count == 0:
            raise FxQuantError("reestimate_bn_stats: the data loader yielded no batch; pass one "
                               "with at least one batch")
        with torch.no_grad():
            for name, bn in bns.items():
                bn.running_mean.copy_(sums[name][0] / count)
                bn.running_var.copy_(sums[name][1] / count)
    except BaseException:
        _restore(saved)
        raise
    logger.info("re-estimated the statistics of %d batch norm(s) over %d batch(es)", len(bns),
                count)
    return BNStatsHandle(saved, count)
