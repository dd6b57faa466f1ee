"""Comparison metrics, with the call shapes of ``torch.ao.ns.fx.utils``.

Each metric compares a reference ``x`` with ``y``; the formulas and their edge cases are those of
:mod:`fxquant.core.metrics` (the one definition, shared with the layer-dump diff):

* :func:`compute_sqnr`: signal-to-quantization-noise ratio in dB (higher is better; ``inf`` when
  equal, also for two all-zero tensors; ``-inf`` for an all-zero reference with an error);
* :func:`compute_normalized_l2_error`: ``‖x − y‖ / ‖x‖`` (lower is better);
* :func:`compute_cosine_similarity`: ``x·y / (‖x‖‖y‖)`` (higher is better).

Unlike torch's, they compare every floating-point dtype: float16 and bfloat16 are compared in
float32 (torch's return None for them), quantized tensors are dequantized, tuples/lists are
compared element by element. NaN or inf in an input gives a NaN (or infinite) result, never a
skipped element. Every metric can also be computed from the running sums of a
:class:`~fxquant.numeric_suite.stats.PairStats` (or their dict, as results store them), which is
how streaming loggers report without keeping tensors; both paths give the same number.

Example:
    >>> x = torch.tensor([3.0, 4.0])
    >>> float(compute_sqnr(x, x + torch.tensor([0.03, 0.04])))
    40.0
"""
from __future__ import annotations

import dataclasses
import sys
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from fxquant.core.metrics import PairAccumulator, PairSums, as_pair_sums
from fxquant.core.report import MetricInfo

__all__ = ["compute_sqnr", "compute_normalized_l2_error", "compute_cosine_similarity", "Metric",
           "METRICS", "get_metric"]

_ARGS_DOC = """

    Args:
        x: reference tensor (or tuple/list of tensors), any float dtype or quantized.
        y: compared tensor(s) with as many elements.

    Returns:
        A 0-d float32 tensor (a list of them for tuples).

    Raises:
        TypeError: an input is not a tensor (or tuple of tensors), or is an integer tensor.
        ValueError: the inputs have different numbers of elements.

    Example:
        >>> {example}
"""


def _tensor_metric(name: str, sums_property: str, summary: str, example: str
                   ) -> Callable[[Any, Any], Any]:
    """``compute_<name>(x, y)``: the :class:`PairSums` property ``sums_property`` of one pair."""
    def metric(x: Any, y: Any) -> Any:
        if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
            if len(x) != len(y):
                raise ValueError(f"{metric.__name__}: cannot compare sequences of {len(x)} and "
                                 f"{len(y)} tensors")
            return [metric(a, b) for a, b in zip(x, y)]
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            raise TypeError(f"{metric.__name__} compares two tensors (or two tuples of tensors), "
                            f"got {type(x).__name__} and {type(y).__name__}")
        if x.numel() != y.numel():
            raise ValueError(f"{metric.__name__}: cannot compare shapes {tuple(x.shape)} and "
                             f"{tuple(y.shape)} (different numbers of elements)")
        sums = PairAccumulator.of(x, y).result()
        return torch.tensor(getattr(sums, sums_property), dtype=torch.float32)

    metric.__name__ = metric.__qualname__ = f"compute_{name}"
    metric.__doc__ = summary + _ARGS_DOC.format(example=example)
    return metric


compute_sqnr = _tensor_metric(
    "sqnr", "sqnr_db",
    "Signal-to-quantization-noise ratio of ``y`` against the reference ``x``, in dB.\n\n"
    "    ``10·log₁₀(Σx² / Σ(x − y)²)``: +6 dB per halving of the error; ``inf`` when the "
    "tensors are equal.",
    "compute_sqnr(torch.tensor([1.0, 1.0]), torch.tensor([1.1, 0.9]))\n        tensor(20.)")
compute_normalized_l2_error = _tensor_metric(
    "normalized_l2_error", "normalized_l2_error",
    "``‖x − y‖ / ‖x‖``: the error's size relative to the reference (0 when equal).",
    "compute_normalized_l2_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.5]))\n"
    "        tensor(0.1000)")
compute_cosine_similarity = _tensor_metric(
    "cosine_similarity", "cosine_similarity",
    "Cosine of the angle between ``x`` and ``y`` seen as flat vectors (1 when parallel).",
    "compute_cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))\n"
    "        tensor(0.7071)")


def _from_sums(sums_property: str) -> Callable[[Any], float]:
    def from_stats(stats: Any) -> float:
        return float(getattr(as_pair_sums(stats), sums_property))

    from_stats.__name__ = f"{sums_property}_from_stats"
    from_stats.__doc__ = (f"``{sums_property}`` from running sums (a PairStats, PairSums or their "
                          "dict).")
    return from_stats


@dataclasses.dataclass(frozen=True)
class Metric(MetricInfo):
    """A comparison metric: its tensor function and its streaming form.

    Attributes:
        name: short name, e.g. "sqnr".
        higher_is_better: whether larger values mean closer tensors.
        unit: unit for axis labels ("dB" or "").
        fn: ``fn(x, y) -> Tensor`` on tensors.
        from_stats: the same number from a :class:`PairStats`, :class:`PairSums` or their dict.

    Example:
        >>> METRICS["sqnr"].from_stats({"signal": 100.0, "signal_b": 81.0, "noise": 1.0,
        ...                             "dot": 90.0, "numel": 4})
        20.0
    """

    fn: Callable[[Any, Any], Any] = dataclasses.field(kw_only=True)
    from_stats: Callable[[PairSums | PairAccumulator | Mapping[str, Any]], float] = \
        dataclasses.field(kw_only=True)


METRICS: Mapping[str, Metric] = MappingProxyType({
    "sqnr": Metric("sqnr", True, "dB", fn=compute_sqnr, from_stats=_from_sums("sqnr_db")),
    "normalized_l2_error": Metric("normalized_l2_error", False, fn=compute_normalized_l2_error,
                                  from_stats=_from_sums("normalized_l2_error")),
    "cosine_similarity": Metric("cosine_similarity", True, fn=compute_cosine_similarity,
                                from_stats=_from_sums("cosine_similarity")),
})


def get_metric(metric: str | Callable[..., Any]) -> Metric | None:
    """The :class:`Metric` for a name ("sqnr"), one of our functions, or torch's same-named
    function from ``torch.ao.ns.fx.utils``; None for any other callable.

    Raises:
        ValueError: an unknown metric name (the message lists the known ones).

    Example:
        >>> get_metric("sqnr").unit
        'dB'
    """
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known metrics: {sorted(METRICS)}")
        return METRICS[metric]
    for m in METRICS.values():
        if metric is m.fn:
            return m
    torch_utils = sys.modules.get("torch.ao.ns.fx.utils")
    if torch_utils is not None:
        for m in METRICS.values():
            if metric is getattr(torch_utils, m.fn.__name__, None):
                return m
    return None
