"""The comparison metrics, defined once: SQNR (dB), normalized L2 error, cosine similarity.

Every metric compares a reference ``a`` with ``b`` through four sums, the *sufficient statistics*
of the pair (:class:`PairSums`): the reference's power ``Σa²`` (``signal``), ``Σb²``
(``signal_b``), the noise power ``Σ(a − b)²`` (``noise``, summed from the difference, not by
expanding the square, so that high SQNRs keep their precision) and ``Σab`` (``dot``). Sums add, so
one formula serves one tensor, a batch, or a stream of batches:

* :func:`sqnr_db`: ``10·log₁₀(Σa² / Σ(a − b)²)`` — higher is better;
* :func:`normalized_l2_error`: ``sqrt(Σ(a − b)² / Σa²)`` — lower is better;
* :func:`cosine_similarity`: ``Σab / max(sqrt(Σa²·Σb²), 1e-8)`` (torch's epsilon) — higher is
  better.

The edge cases, the same for every caller:

* identical tensors (``noise == 0``), including two all-zero tensors: SQNR ``+inf`` dB, L2 error
  ``0``, cosine ``1``;
* an all-zero reference with a nonzero error (``signal == 0 < noise``): SQNR ``-inf`` dB, L2 error
  ``+inf``, cosine ``0``; :attr:`PairSums.zero_reference` marks it;
* NaN or ±inf in either input: the sums, and so the metrics, become NaN (or ±inf) instead of
  skipping the element; :attr:`PairSums.nonfinite` counts the elements where ``a`` or ``b`` is not
  finite (found as the non-finite differences ``a − b``).

Two accumulators fill the sums: :func:`pair_sums` for NumPy arrays (the layer-dump diff, in
float64) and :class:`PairAccumulator` for torch tensors (the numeric suite's streaming loggers),
which keeps its sums as one float64 tensor on the data's device and reads them back only in
:meth:`PairAccumulator.result`, never once per batch.

Example:
    >>> sums = pair_sums(np.array([3.0, 4.0]), np.array([3.03, 4.04]))
    >>> round(sums.sqnr_db, 6), sums.nonfinite
    (40.0, 0)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = ["COSINE_EPS", "PairSums", "PairAccumulator", "sqnr_db", "normalized_l2_error",
           "cosine_similarity", "pair_sums", "as_pair_sums", "as_float", "sum_of_squares"]

#: Smallest norm product in the cosine's denominator (torch.nn.functional.cosine_similarity's).
COSINE_EPS = 1e-8

_SUMS = ("signal", "signal_b", "noise", "dot", "nonfinite")  # the accumulator tensor's order


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB from the sums ``Σa²`` and ``Σ(a − b)²``.

    Returns ``+inf`` when ``noise == 0`` (identical tensors, also when both are all zero),
    ``-inf`` when only the reference is zero, NaN when a sum is NaN.

    Example:
        >>> sqnr_db(100.0, 1.0), sqnr_db(0.0, 0.0), sqnr_db(0.0, 2.0)
        (20.0, inf, -inf)
    """
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or (math.isinf(noise) and not math.isinf(signal)):
        return -math.inf
    if math.isinf(signal):
        return math.nan if math.isinf(noise) else math.inf
    ratio = signal / noise
    if ratio == 0.0 or math.isinf(ratio):  # the quotient of two finite sums left float64's range
        return 10.0 * (math.log10(signal) - math.log10(noise))
    return 10.0 * math.log10(ratio)


def normalized_l2_error(signal: float, noise: float) -> float:
    """``sqrt(Σ(a − b)² / Σa²)``: the error's size relative to the reference's.

    Returns ``0`` for identical tensors (also both all zero), ``+inf`` for an all-zero reference
    with a nonzero error.

    Example:
        >>> normalized_l2_error(100.0, 1.0), normalized_l2_error(0.0, 0.0)
        (0.1, 0.0)
    """
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return 0.0
    if signal == 0.0:
        return math.inf
    return math.sqrt(noise / signal)


def cosine_similarity(dot: float, signal: float, signal_b: float, noise: float | None = None
                      ) -> float:
    """``Σab / max(sqrt(Σa²·Σb²), 1e-8)``: the cosine of the angle between ``a`` and ``b``.

    Given ``noise`` (``Σ(a − b)²``), identical tensors give exactly ``1``, also when both are all
    zero; a zero tensor against a nonzero one gives ``0``.

    Example:
        >>> cosine_similarity(0.0, 1.0, 1.0), cosine_similarity(0.0, 0.0, 0.0, noise=0.0)
        (0.0, 1.0)
    """
    if noise == 0.0 and math.isfinite(signal):
        return 1.0
    return dot / max(math.sqrt(signal) * math.sqrt(signal_b), COSINE_EPS)


@dataclasses.dataclass(frozen=True)
class PairSums:
    """The sufficient statistics of comparing a reference ``a`` with ``b`` (see the module doc).

    Sums of several pairs add up with ``+``; the metrics are properties.

    Attributes:
        signal: ``Σa²``, the reference's power.
        signal_b: ``Σb²``.
        noise: ``Σ(a − b)²``.
        dot: ``Σab``.
        numel: elements compared.
        nonfinite: elements where ``a`` or ``b`` is NaN or ±inf (flagged, never dropped).
        count: pairs of values summed (batches, instances).

    Example:
        >>> total = PairSums(signal=4.0, noise=0.04, numel=2) + PairSums(signal=21.0, numel=3)
        >>> round(total.sqnr_db, 3), total.numel
        (27.959, 5)
    """

    signal: float = 0.0
    signal_b: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    numel: int = 0
    nonfinite: int = 0
    count: int = 0

    def __add__(self, other: PairSums) -> PairSums:
        if not isinstance(other, PairSums):
            return NotImplemented
        return PairSums(*(getattr(self, f.name) + getattr(other, f.name)
                          for f in dataclasses.fields(self)))

    @property
    def sqnr_db(self) -> float:
        """SQNR of ``b`` against ``a`` in dB (see :func:`sqnr_db`)."""
        return sqnr_db(self.signal, self.noise)

    @property
    def normalized_l2_error(self) -> float:
        """``‖a − b‖ / ‖a‖`` (see :func:`normalized_l2_error`)."""
        return normalized_l2_error(self.signal, self.noise)

    @property
    def cosine_similarity(self) -> float:
        """Cosine of ``a`` and ``b`` as flat vectors (see :func:`cosine_similarity`)."""
        return cosine_similarity(self.dot, self.signal, self.signal_b, self.noise)

    @property
    def zero_reference(self) -> bool:
        """Whether the reference is all zero while ``b`` differs from it (SQNR is ``-inf``)."""
        return self.signal == 0.0 and self.noise > 0.0

    @property
    def finite(self) -> bool:
        """Whether every compared element of both inputs was finite."""
        return self.nonfinite == 0

    def as_dict(self) -> dict[str, float | int]:
        """``{"count", "numel", "signal", "signal_b", "noise", "dot", "nonfinite"}``.

        Example:
            >>> PairSums(signal=1.0, numel=1).as_dict()["signal"]
            1.0
        """
        return {"count": self.count, "numel": self.numel, "signal": self.signal,
                "signal_b": self.signal_b, "noise": self.noise, "dot": self.dot,
                "nonfinite": self.nonfinite}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PairSums:
        """The sums :meth:`as_dict` wrote (``nonfinite`` and ``count`` default to 0).

        Raises:
            ValueError: a sum is missing, naming it and the keys given.

        Example:
            >>> PairSums.from_dict({"signal": 1.0, "signal_b": 1.0, "noise": 0.0, "dot": 1.0,
            ...                     "numel": 1}).sqnr_db
            inf
        """
        missing = [k for k in ("signal", "signal_b", "noise", "dot", "numel") if k not in values]
        if missing:
            raise ValueError(f"comparison sums lack {missing}; got keys {sorted(values)} (expected "
                             "the dict of PairSums.as_dict())")
        return cls(float(values["signal"]), float(values["signal_b"]), float(values["noise"]),
                   float(values["dot"]), int(values["numel"]), int(values.get("nonfinite", 0)),
                   int(values.get("count", 0)))


def pair_sums(a: np.ndarray, b: np.ndarray, diff: np.ndarray | None = None) -> PairSums:
    """The sums of one pair of NumPy arrays of equal size, in float64 (``count`` is 1).

    Args:
        a: the reference.
        b: the compared values (any shape with as many elements).
        diff: ``a − b`` in float64 when the caller has it already (not recomputed).

    Raises:
        ValueError: ``a`` and ``b`` have different numbers of elements.

    Example:
        >>> pair_sums(np.zeros(3), np.zeros(3)).sqnr_db
        inf
    """
    if np.size(a) != np.size(b):
        raise ValueError(f"cannot compare arrays of {np.size(a)} and {np.size(b)} elements")
    fa = np.asarray(a, dtype=np.float64).reshape(-1)
    fb = np.asarray(b, dtype=np.float64).reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are counted, not warned about
        fd = (fa - fb) if diff is None else np.asarray(diff, dtype=np.float64).reshape(-1)
        nonfinite = fd.size - int(np.count_nonzero(np.isfinite(fd)))
        return PairSums(float(np.dot(fa, fa)), float(np.dot(fb, fb)), float(np.dot(fd, fd)),
                        float(np.dot(fa, fb)), int(fa.size), nonfinite, 1)


def as_float(x: Tensor) -> Tensor:
    """``x`` as a float32/float64 tensor: quantized tensors are dequantized, float16/bfloat16
    are widened to float32 (compared, not skipped).

    Raises:
        TypeError: ``x`` is not a floating-point or quantized tensor.

    Example:
        >>> as_float(torch.ones(2, dtype=torch.float16)).dtype
        torch.float32
    """
    if x.is_quantized:
        x = x.dequantize()
    if not x.is_floating_point():
        raise TypeError(f"metrics compare floating-point tensors, got dtype {x.dtype}; cast "
                        "integer tensors with .float() first")
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sum_of_squares(flat: Tensor) -> Tensor:
    """``Σx²`` of a flat tensor, as a 0-d tensor on its device (the vectorised norm is faster
    than ``dot(x, x)`` on CPU).

    Example:
        >>> float(sum_of_squares(torch.tensor([3.0, 4.0])))
        25.0
    """
    return torch.linalg.vector_norm(flat).square()


def _count_nonfinite(flat: Tensor) -> Tensor:
    """How many elements of ``flat`` are NaN or ±inf, as a 0-d float tensor on its device
    (``x·0`` is NaN exactly there; float arithmetic is several times faster than ``isfinite``'s
    boolean kernels on CPU)."""
    return (flat * 0).nan_to_num_(nan=1.0).sum()


class PairAccumulator:
    """Streaming :class:`PairSums` of torch tensors, kept on the data's device.

    Each :meth:`update` adds one pair's sums to a float64 tensor on the first value's device
    without reading anything back; :meth:`result` (or :meth:`as_dict`) synchronises once.

    Attributes:
        count: pairs added (empty ones included).
        numel: elements compared.

    Example:
        >>> acc = PairAccumulator()
        >>> acc.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
        >>> acc.result().noise
        0.25
    """

    def __init__(self) -> None:
        self.count = 0
        self.numel = 0
        self._sums: Tensor | None = None  # float64, in the order of _SUMS

    def update(self, a: Tensor, b: Tensor, sum_sq_a: Tensor | None = None,
               sum_sq_b: Tensor | None = None) -> None:
        """Adds one pair of equally sized values (any float dtypes or quantized, any shapes).

        Args:
            a: the reference.
            b: the compared value.
            sum_sq_a: ``Σa²`` when already known (a 0-d tensor), not recomputed.
            sum_sq_b: ``Σb²`` when already known.

        Raises:
            ValueError: the values have different numbers of elements.
        """
        self.count += 1
        fa, fb = as_float(a), as_float(b)
        if fa.dtype != fb.dtype:
            fa, fb = fa.double(), fb.double()
        if fa.device != fb.device:
            fb = fb.to(fa.device)
        fa, fb = fa.reshape(-1), fb.reshape(-1)
        if fa.numel() != fb.numel():
            raise ValueError(f"cannot compare tensors of {fa.numel()} and {fb.numel()} elements")
        if fa.numel() == 0:
            return
        diff = fa - fb
        sums = torch.stack([
            sum_of_squares(fa) if sum_sq_a is None else sum_sq_a.to(fa.device, fa.dtype),
            sum_of_squares(fb) if sum_sq_b is None else sum_sq_b.to(fa.device, fa.dtype),
            sum_of_squares(diff), torch.dot(fa, fb), _count_nonfinite(diff)]).double()
        self._sums = sums if self._sums is None else self._sums + sums
        self.numel += fa.numel()

    @classmethod
    def of(cls, a: Tensor, b: Tensor) -> PairAccumulator:
        """The accumulator of one pair.

        Example:
            >>> PairAccumulator.of(torch.ones(2), torch.ones(2)).result().sqnr_db
            inf
        """
        acc = cls()
        acc.update(a, b)
        return acc

    def reset(self) -> None:
        """Forgets everything added so far."""
        self.count = 0
        self.numel = 0
        self._sums = None

    def result(self) -> PairSums:
        """The sums so far as Python numbers (one device-to-host read)."""
        if self._sums is None:
            return PairSums(count=self.count)
        values = dict(zip(_SUMS, self._sums.tolist()))
        return PairSums(values["signal"], values["signal_b"], values["noise"], values["dot"],
                        self.numel, int(values["nonfinite"]), self.count)

    def as_dict(self) -> dict[str, float | int]:
        """:meth:`PairSums.as_dict` of :meth:`result`."""
        return self.result().as_dict()


def as_pair_sums(stats: PairSums | PairAccumulator | Mapping[str, Any]) -> PairSums:
    """:class:`PairSums` from sums, an accumulator, or the dict of :meth:`PairSums.as_dict`.

    Raises:
        TypeError: ``stats`` is none of these.

    Example:
        >>> as_pair_sums({"signal": 1.0, "signal_b": 0.0, "noise": 1.0, "dot": 0.0,
        ...               "numel": 1}).sqnr_db
        0.0
    """
    if isinstance(stats, PairSums):
        return stats
    if isinstance(stats, PairAccumulator):
        return stats.result()
    if isinstance(stats, Mapping):
        return PairSums.from_dict(stats)
    raise TypeError(f"expected PairSums, a PairAccumulator or the dict of PairSums.as_dict(), got "
                    f"{type(stats).__qualname__}")
