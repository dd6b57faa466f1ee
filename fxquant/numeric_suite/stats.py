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
* :class:`Comparison`: joins what two loggers record for the same model call (by call index)
  into a :class:`PairStats`, whichever of the two runs first.
* :class:`CallPairing`: checks that call ``i`` of both models got the same inputs.

Example:
    >>> pair = PairStats()
    >>> pair.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    >>> pair.as_dict()["noise"]
    0.25
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import Tensor

from fxquant.core.metrics import PairAccumulator, as_float, sum_of_squares
from fxquant.numeric_suite.errors import PairingError

__all__ = ["RunningStats", "PairStats", "Comparison", "CallPairing", "fingerprint", "as_float"]

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
    """Pairs the values two loggers record for the same layer, by call index.

    The reference logger is side 0, the other side 1. Each value comes with the index of the
    model call that produced it (the model's :class:`~fxquant.numeric_suite.loggers.CallClock`,
    or the logger's own count when the model has none): call ``i`` of model A is compared with
    call ``i`` of model B, whichever runs first. The first of the two leaves a copy of its
    value; running the two models alternately per batch (or a shadowed model, where both sides
    run in one forward) keeps at most one copy per layer.

    A value whose partner can no longer come (the other model has logged a later call at this
    layer, so that call of this model stopped before the layer — e.g. its forward raised) makes
    the pairs diverge: :class:`~fxquant.numeric_suite.errors.PairingError` is raised at once,
    rather than shifting every later pair.

    Args:
        key: the layer, for messages.
        model_names: names of the reference model and the other one.
        max_pending: values one side may leave waiting before a warning says the models are not
            being run alternately (memory grows with them).
    """

    def __init__(self, key: str, model_names: tuple[str, str], max_pending: int = 16) -> None:
        self.key = key
        self.model_names = model_names
        self.stats = PairStats()
        self.max_pending = max_pending
        self._pending: tuple[dict[int, tuple[Tensor, Tensor | None]], ...] = ({}, {})
        self._calls = [0, 0]
        self._warned = False

    @property
    def pending(self) -> int:
        """How many values wait for their partner."""
        return len(self._pending[0]) + len(self._pending[1])

    def pending_calls(self, side: int) -> list[int]:
        """Call indices of ``side`` that wait for the other side's value."""
        return sorted(self._pending[side])

    def offer(self, side: int, value: Tensor, keep: Callable[[], Tensor],
              sum_sq: Tensor | None = None, call: int | None = None) -> None:
        """Takes ``value`` (with its sum of squares, when known) of call ``call`` from ``side``;
        ``keep()`` returns a copy to store if it must wait.

        Raises:
            PairingError: this call index was already logged by ``side`` at this layer, or the
                other side waits for a call of this side that has passed this layer.
            ValueError: the two values have different numbers of elements.
        """
        if call is None:
            call = self._calls[side]
        self._calls[side] = call + 1
        mine, waiting = self._pending[side], self._pending[1 - side]
        if call in mine:
            raise PairingError(
                f"layer {self.key!r}: model {self.model_names[side]!r} logged call {call} twice; "
                "a logger must run once per model call", layer=self.key, call=call)
        stale = [i for i in waiting if i < call]
        if stale:
            raise PairingError(
                f"layer {self.key!r}: model {self.model_names[1 - side]!r} logged call "
                f"{stale[0]} here, but model {self.model_names[side]!r}'s call {stale[0]} never "
                f"reached this layer (did that forward raise?) and it is now at call {call}; the "
                "pairs would no longer line up. Reset both models' loggers "
                "(fxquant.ns.loggers_reset) and run them again on the same batches",
                layer=self.key, call=stale[0])
        match = waiting.pop(call, None)
        if match is None:
            mine[call] = (keep(), sum_sq)
            if len(mine) > self.max_pending and not self._warned:
                self._warned = True
                logger.warning(
                    "layer %r: %d values of model %r wait for model %r; run both models on each "
                    "batch in turn (or use add_shadow_loggers / fxquant.compare) to keep memory "
                    "constant", self.key, len(mine), self.model_names[side],
                    self.model_names[1 - side])
            return
        other, other_sum_sq = match
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
        """Forgets the sums, the call counts and any waiting value."""
        self.stats.reset()
        self._calls = [0, 0]
        for queue in self._pending:
            queue.clear()


def fingerprint(inputs: tuple[Any, ...]) -> tuple[Tensor | None, tuple[Any, ...]]:
    """What identifies a model call's inputs: ``(tensor, static)`` — the sum and sum of squares
    (float64, on the data's device, no host synchronisation) of every floating-point tensor
    input, and the shapes, dtypes and non-tensor values."""
    sums: list[Tensor] = []
    static: list[Any] = []
    for value in inputs:
        if isinstance(value, Tensor):
            static.append((tuple(value.shape), str(value.dtype)))
            if value.numel():
                flat = (value.dequantize() if value.is_quantized else value).detach()
                flat = flat.reshape(-1).double()
                pair = torch.stack([flat.sum(), (flat * flat).sum()])
                sums.append(pair.to(sums[0].device, non_blocking=True) if sums else pair)
        elif isinstance(value, (int, float, bool, str, type(None))):
            static.append(value)
        else:
            static.append(type(value).__qualname__)
    return (torch.cat(sums) if sums else None), tuple(static)


class CallPairing:
    """Checks that call ``i`` of model A and call ``i`` of model B got the same inputs.

    Each model's :class:`~fxquant.numeric_suite.loggers.CallClock` offers the
    :func:`fingerprint` of every call's inputs; when both models have made call ``i`` the two
    are compared. On the CPU a mismatch raises at once (before any logger of that call runs);
    on an accelerator the comparison stays on the device (no host synchronisation per batch)
    and :meth:`check` — called when results are extracted — raises.

    Args:
        model_names: names of model A and model B.
    """

    def __init__(self, model_names: tuple[str, str]) -> None:
        self.model_names = model_names
        self.calls = [0, 0]
        self.states: list[Any] = [None, None]  # the two clocks' call states (reset together)
        self._pending: tuple[dict[int, tuple[Tensor | None, tuple[Any, ...]]], ...] = ({}, {})
        self._first_mismatch: Tensor | None = None  # device tensor: first bad call, or -1

    def offer(self, side: int, call: int, inputs: tuple[Any, ...]) -> None:
        """Records call ``call`` of ``side`` with its inputs.

        Raises:
            PairingError: the call's inputs differ from the other model's call of that index.
        """
        self.calls[side] = call + 1
        fp = fingerprint(inputs)
        other = self._pending[1 - side].pop(call, None)
        if other is None:
            self._pending[side][call] = fp
            return
        (ta, sa), (tb, sb) = (fp, other) if side == 0 else (other, fp)
        if sa != sb or (ta is None) != (tb is None):
            raise self._error(call)
        if ta is not None and tb is not None:
            tb = tb.to(ta.device, non_blocking=True)
            same = torch.isclose(ta, tb, rtol=1e-6, atol=1e-12, equal_nan=True).all()
            if ta.device.type == "cpu":
                if not bool(same):
                    raise self._error(call)
            else:  # stays on the device: filled, not copied from the host
                if self._first_mismatch is None:
                    self._first_mismatch = torch.full((), -1, device=ta.device,
                                                      dtype=torch.long)
                bad = (~same) & (self._first_mismatch < 0)
                self._first_mismatch = torch.where(
                    bad, torch.full_like(self._first_mismatch, call), self._first_mismatch)

    def _error(self, call: int) -> PairingError:
        a, b = self.model_names
        return PairingError(
            f"call {call} of model {a!r} and call {call} of model {b!r} got different inputs; "
            f"loggers pair the models' calls by index, so run both models on the same batches "
            f"in the same order (a_ns(x); b_ns(x) for each x — a skipped or reordered call "
            f"shifts every later pair). Reset both (fxquant.ns.loggers_reset) and run again",
            call=call)

    def check(self) -> None:
        """Raises what a deferred (accelerator) comparison found, and unequal call counts.

        Raises:
            PairingError: a pair of calls got different inputs, or the models ran a different
                number of times.
        """
        if self._first_mismatch is not None:
            first = int(self._first_mismatch)
            if first >= 0:
                raise self._error(first)
        if self.calls[0] != self.calls[1]:
            (a, b), (na, nb) = self.model_names, self.calls
            raise PairingError(
                f"model {a!r} ran {na} time(s) but model {b!r} {nb} time(s); loggers pair the "
                f"models' calls by index, so run {(b if nb < na else a)!r} on the remaining "
                f"{abs(na - nb)} batch(es) too (or reset both with fxquant.ns.loggers_reset)",
                call=min(na, nb))

    def reset(self) -> None:
        """Forgets every call of both models (their clocks restart at call 0)."""
        self.calls = [0, 0]
        for state in self.states:
            if state is not None:
                state.reset()
        self._first_mismatch = None
        for queue in self._pending:
            queue.clear()
