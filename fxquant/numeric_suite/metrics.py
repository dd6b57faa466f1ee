"""Comparison metrics, with the call shapes of ``torch.ao.ns.fx.utils``.

Each metric compares a reference ``x`` with ``y``:

* :func:`compute_sqnr`: ``20·log10(‖x‖ / ‖x − y‖)`` in dB (higher is better; ``inf`` when equal);
* :func:`compute_normalized_l2_error`: ``‖x − y‖ / ‖x‖`` (lower is better);
* :func:`compute_cosine_similarity`: ``x·y / (‖x‖‖y‖)`` (higher is better).

Unlike torch's, they compare every floating-point dtype: float16 and bfloat16 are compared in
float32 (torch's return None for them), quantized tensors are dequantized, tuples/lists are
compared element by element. Every metric can also be computed from the running sums of a
:class:`~fxquant.numeric_suite.stats.PairStats`, which is how streaming loggers report without
keeping tensors; both paths give the same number.

Example:
    >>> x = torch.tensor([3.0, 4.0])
    >>> float(compute_sqnr(x, x + torch.tensor([0.03, 0.04])))
    40.0
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from fxquant.numeric_suite.stats import PairStats

__all__ = ["compute_sqnr", "compute_normalized_l2_error", "compute_cosine_similarity", "Metric",
           "METRICS", "get_metric"]

_COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default


def _pairwise(fn: Callable[[PairStats], float]) -> Callable[[Any, Any], Any]:
    @functools.wraps(fn)
    def metric(x: Any, y: Any) -> Any:
        if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
            if len(x) != len(y):
                raise ValueError(f"{fn.__name__}: cannot compare sequences of {len(x)} and "
                                 f"{len(y)} tensors")
            return [metric(a, b) for a, b in zip(x, y)]
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            raise TypeError(f"{fn.__name__} compares two tensors (or two tuples of tensors), got "
                            f"{type(x).__name__} and {type(y).__name__}")
        if x.numel() != y.numel():
            raise ValueError(f"{fn.__name__}: cannot compare shapes {tuple(x.shape)} and "
                             f"{tuple(y.shape)} (different numbers of elements)")
        return torch.tensor(fn(PairStats.of(x, y)), dtype=torch.float32)

    del metric.__wrapped__  # type: ignore[attr-defined]  # show (x, y), not (stats)
    metric.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("x", "y")])
    return metric


def sqnr_from_stats(stats: PairStats) -> float:
    """SQNR in dB from running sums: ``10·log10(Σx² / Σ(x − y)²)``."""
    d = stats.as_dict()
    return _db(d["signal"], d["noise"])


def normalized_l2_error_from_stats(stats: PairStats) -> float:
    """``sqrt(Σ(x − y)² / Σx²)`` from running sums."""
    d = stats.as_dict()
    if d["signal"] == 0.0:
        return 0.0 if d["noise"] == 0.0 else math.inf
    return math.sqrt(d["noise"] / d["signal"])


def cosine_similarity_from_stats(stats: PairStats) -> float:
    """``Σxy / max(sqrt(Σx²·Σy²), 1e-8)`` from running sums (torch's epsilon)."""
    d = stats.as_dict()
    return d["dot"] / max(math.sqrt(d["signal"] * d["signal_b"]), _COSINE_EPS)


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.nan if signal == 0.0 else math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@_pairwise
def compute_sqnr(stats: PairStats) -> float:
    """Signal-to-quantization-noise ratio of ``y`` against the reference ``x``, in dB.

    ``20·log10(‖x‖ / ‖x − y‖)``: +6 dB per halving of the error; ``inf`` when the tensors are
    equal.

    Args:
        x: reference tensor (or tuple/list of tensors), any float dtype or quantized.
        y: compared tensor(s) with as many elements.

    Returns:
        A 0-d float32 tensor (a list of them for tuples).

    Example:
        >>> compute_sqnr(torch.tensor([1.0, 1.0]), torch.tensor([1.1, 0.9]))
        tensor(20.)
    """
    return sqnr_from_stats(stats)


@_pairwise
def compute_normalized_l2_error(stats: PairStats) -> float:
    """``‖x − y‖ / ‖x‖``: the error's size relative to the reference (0 when equal).

    Args:
        x: reference tensor(s), any float dtype or quantized.
        y: compared tensor(s).

    Returns:
        A 0-d float32 tensor (a list of them for tuples).

    Example:
        >>> compute_normalized_l2_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.5]))
        tensor(0.1000)
    """
    return normalized_l2_error_from_stats(stats)


@_pairwise
def compute_cosine_similarity(stats: PairStats) -> float:
    """Cosine of the angle between ``x`` and ``y`` seen as flat vectors (1 when parallel).

    Args:
        x: reference tensor(s), any float dtype or quantized.
        y: compared tensor(s).

    Returns:
        A 0-d float32 tensor (a list of them for tuples).

    Example:
        >>> compute_cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
        tensor(0.7071)
    """
    return cosine_similarity_from_stats(stats)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A comparison metric: its tensor function and its streaming form.

    Attributes:
        name: short name, e.g. "sqnr".
        fn: ``fn(x, y) -> Tensor`` on tensors.
        from_stats: the same number from a :class:`PairStats`.
        higher_is_better: whether larger values mean closer tensors.
        unit: unit for axis labels ("dB" or "").
    """

    name: str
    fn: Callable[[Any, Any], Any]
    from_stats: Callable[[PairStats], float]
    higher_is_better: bool
    unit: str = ""


METRICS: Mapping[str, Metric] = MappingProxyType({
    "sqnr": Metric("sqnr", compute_sqnr, sqnr_from_stats, True, "dB"),
    "normalized_l2_error": Metric("normalized_l2_error", compute_normalized_l2_error,
                                  normalized_l2_error_from_stats, False),
    "cosine_similarity": Metric("cosine_similarity", compute_cosine_similarity,
                                cosine_similarity_from_stats, True),
})


def get_metric(metric: str | Callable[..., Any]) -> Metric | None:
    """The :class:`Metric` for a name ("sqnr"), one of our functions, or torch's same-named
    function from ``torch.ao.ns.fx.utils``; None for any other callable.

    Raises:
        ValueError: an unknown metric name (the message lists the known ones).
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
