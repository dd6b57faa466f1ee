"""Running sums that loggers keep instead of tensors (streaming comparison).

A logger that keeps every activation needs memory proportional to the number of batches; these
accumulators need a few numbers per layer. They are float64 tensors on the data's device (no
host synchronisation per batch); ``as_dict()`` reads them out. The comparison sums and the
metrics computed from them are defined once, in :mod:`fxquant.core.metrics`.

* :class:`RunningStats`: what one model computed at one layer — calls, elements, sum, sum of
  squares (signal power), min and max.
* :class:`PairStats` (:class:`fxquant.core.metrics.PairAccumulator`): two models at the same
  layer on the same inputs — each one's power, the noise power ``Σ(a − b)²`` (computed from the
  difference, not by expanding the square, so high SQNRs keep their precision), the dot product
  ``Σ a·b`` and the count of NaN/inf elements.
* :class:`Comparison`: joins what two loggers record for the same forward inputs into a
  :class:`PairStats`, whichever of the two runs first.

Example:
    >>> pair = PairStats()
    >>> pair.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    >>> pair.as_dict()["noise"]
    0.25
"""
from __future__ import annotations

import collections
import logging
from typing import Callable

import torch
from torch import Tensor

from fxquant.core.metrics import PairAccumulator, as_float, sum_of_squares

__all__ = ["RunningStats", "PairStats", "Comparison", "as_float"]

logger = logging.getLogger(__name__)


class RunningStats:
    """Streaming statistics of the values one logger sees.

    Example:
        >>> s = RunningStats()
        >>> s.update(torch.tensor([1.0, -3.0]))
        >>> s.as_dict()["max"], s.as_dict()["sum_sq"]
        (1.0, 10.0)
    """

    def __init__(self) -> None:
        self.count = 0
        self.numel = 0
        self._sums: Tensor | None = None  # [sum, sum_sq]
        self._min: Tensor | None = None
        self._max: Tensor | None = None

    def update(self, x: Tensor) -> Tensor | None:
        """Adds one value (any float dtype; quantized tensors are dequantized).

        Returns:
            Its sum of squares (a 0-d tensor on the value's device), None for an empty value;
            comparisons reuse it instead of computing it again.
        """
        self.count += 1
        if x.numel() == 0:
            return None
        flat = as_float(x).reshape(-1)
        sum_sq = sum_of_squares(flat)
        sums = torch.stack([flat.sum(), sum_sq]).double()
        lo, hi = torch.aminmax(flat)
        if self._sums is None:
            self._sums, self._min, self._max = sums, lo.double(), hi.double()
        else:
            self._sums = self._sums + sums
            self._min = torch.minimum(self._min, lo.double())
            self._max = torch.maximum(self._max, hi.double())
        self.numel += flat.numel()
        return sum_sq

    def reset(self) -> None:
        """Forgets everything seen so far."""
        self.__init__()  # type: ignore[misc]

    def as_dict(self) -> dict[str, float | int]:
        """``{"count", "numel", "sum", "sum_sq", "mean", "min", "max"}`` as Python numbers."""
        if self._sums is None:
            nan = float("nan")
            return {"count": self.count, "numel": 0, "sum": 0.0, "sum_sq": 0.0, "mean": nan,
                    "min": nan, "max": nan}
        total, sum_sq = self._sums.tolist()
        return {"count": self.count, "numel": self.numel, "sum": total, "sum_sq": sum_sq,
                "mean": total / self.numel, "min": float(self._min), "max": float(self._max)}


#: Streaming sums comparing a reference ``a`` with ``b``: the core's accumulator, kept on the data's
#: device (``update``, ``of``, ``reset``, ``result()`` → :class:`~fxquant.core.metrics.PairSums`,
#: ``as_dict()``).
PairStats = PairAccumulator


class Comparison:
    """Pairs the values two loggers record for the same forward inputs.

    The reference logger is side 0, the other side 1. Whichever side arrives first leaves a copy
    of its value; the other side's value is compared with it and the copy is dropped. Running
    model A and model B alternately on each batch (or a shadowed model, where both sides run in
    one forward) keeps at most one copy per layer.

    Args:
        key: the layer, for messages.
        model_names: names of the reference model and the other one.
        max_pending: values one side may leave waiting before a warning says the models are not
            being run alternately.
    """

    def __init__(self, key: str, model_names: tuple[str, str], max_pending: int = 16) -> None:
        self.key = key
        self.model_names = model_names
        self.stats = PairStats()
        self.max_pending = max_pending
        self._pending: tuple[collections.deque[tuple[Tensor, Tensor | None]], ...] = (
            collections.deque(), collections.deque())
        self._warned = False

    @property
    def pending(self) -> int:
        """How many values wait for their partner."""
        return len(self._pending[0]) + len(self._pending[1])

    def offer(self, side: int, value: Tensor, keep: Callable[[], Tensor],
              sum_sq: Tensor | None = None) -> None:
        """Takes ``value`` (with its sum of squares, when known) from ``side``; ``keep()``
        returns a copy to store if it must wait.

        Raises:
            ValueError: the two values have different numbers of elements.
        """
        waiting = self._pending[1 - side]
        if not waiting:
            self._pending[side].append((keep(), sum_sq))
            if len(self._pending[side]) > self.max_pending and not self._warned:
                self._warned = True
                logger.warning(
                    "layer %r: %d values of model %r wait for model %r; run both models on each "
                    "batch in turn (or use add_shadow_loggers / fxquant.compare) to keep memory "
                    "constant", self.key, len(self._pending[side]), self.model_names[side],
                    self.model_names[1 - side])
            return
        other, other_sum_sq = waiting.popleft()
        a, b = (value, other) if side == 0 else (other, value)
        ss_a, ss_b = (sum_sq, other_sum_sq) if side == 0 else (other_sum_sq, sum_sq)
        if a.numel() != b.numel():
            raise ValueError(
                f"layer {self.key!r}: model {self.model_names[0]!r} logged shape "
                f"{tuple(a.shape)} but model {self.model_names[1]!r} logged shape "
                f"{tuple(b.shape)}; the layers share a name but compute different things — "
                f"leave it out with layers=[...], or check both models got the same input")
        self.stats.update(a, b, ss_a, ss_b)

    def reset(self) -> None:
        """Forgets the sums and any waiting value."""
        self.stats.reset()
        for queue in self._pending:
            queue.clear()
