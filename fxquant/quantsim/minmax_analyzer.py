"""The encoding analyzer base class and min-max ("tf") calibration.

:class:`EncodingAnalyzer` holds what every analyzer shares: flattening a batch to ``[C, M]`` (per
tensor or per channel along ``axis``), the running finite min/max, NaN/Inf counting and the
warning that names the layer, and ``compute_encoding``. :class:`StatsScratch` streams a batch in
cache-sized column chunks on CPU (one chunk on accelerators). :class:`MinMaxEncodingAnalyzer`
turns the running min/max into the encoding.

Example:
    >>> import torch
    >>> a = MinMaxEncodingAnalyzer(name="relu1")
    >>> a.update_stats(torch.tensor([0.0, 2.55]))
    >>> a.compute_encoding(8, symmetric=False).zero_point.item()
    0
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from fxquant.core.encoding import QuantEncoding, quant_range, scale_zero_point_from_min_max
from fxquant.errors import CalibrationError, ConfigError

__all__ = ["EncodingAnalyzer", "MinMaxEncodingAnalyzer", "StatsScratch"]

logger = logging.getLogger(__name__)

_INF = float("inf")
# On CPU, statistics stream over a batch in chunks of this many elements with reused scratch
# buffers: cache-friendly, and no fresh multi-MB allocation (each one page-faults on first touch).
_CPU_STATS_CHUNK = 1 << 20


def _reads_back_freely(device: torch.device) -> bool:
    """Whether reading a statistic back to Python costs nothing (CPU: no queue to wait for)."""
    return device.type == "cpu"


class StatsScratch:
    """Column chunks of a ``[C, M]`` tensor plus reusable float32 (and optionally integer) scratch
    buffers for them. Accelerators get a single chunk (their caching allocators make big buffers
    cheap and fewer launches are faster)."""

    def __init__(self, x2: Tensor, index_dtype: torch.dtype | None = None) -> None:
        channels, columns = x2.shape
        self.x2 = x2
        self.step = columns if x2.device.type != "cpu" else max(1, _CPU_STATS_CHUNK // channels)
        self.index_dtype = index_dtype
        self.values: Tensor | None = None       # allocated on the first ``chunks()``
        self.index: Tensor | None = None

    def chunks(self) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        """``(chunk of x2, float buffer, integer buffer or None)`` views of equal shape."""
        channels, columns = self.x2.shape
        if self.values is None:
            width = min(self.step, columns)
            self.values = torch.empty(channels, width, device=self.x2.device)
            if self.index_dtype is not None:
                self.index = torch.empty(channels, width, dtype=self.index_dtype,
                                         device=self.x2.device)
        for j in range(0, columns, self.step):
            n = min(self.step, columns - j)
            index = None if self.index is None else self.index[:, :n]
            yield self.x2[:, j:j + n], self.values[:, :n], index



class EncodingAnalyzer:
    """Base class: per-tensor or per-channel statistics plus ``compute_encoding``.

    Statistics tensors are never modified in place: each update binds new tensors to the
    attributes. A snapshot of the attributes (``dict(vars(analyzer))``, as
    ``QuantizerBase.state_snapshot`` takes) therefore stays valid without copying them.

    Args:
        axis: channel axis for per-channel statistics; None for per tensor.
        name: the layer/quantizer name used in messages.
    """

    def __init__(self, axis: int | None = None, name: str | None = None) -> None:
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ConfigError(f"{type(self).__name__} for {name!r}: axis must be an int or None, "
                              f"got {axis!r}")
        self.axis = axis
        self.name = name
        self.reset()

    # -- statistics -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all statistics."""
        self._num_batches = 0
        self._num_values = 0
        self._num_channels: int | None = None
        self._min: Tensor | None = None
        self._max: Tensor | None = None
        self._nonfinite: Tensor | None = None

    @property
    def has_stats(self) -> bool:
        """True once ``update_stats`` has seen a non-empty tensor."""
        return self._num_batches > 0

    @property
    def num_nonfinite(self) -> Tensor:
        """Number of NaN/Inf values excluded so far (an int64 tensor on the statistics' device)."""
        if self._nonfinite is None:
            return torch.zeros((), dtype=torch.int64)
        return self._nonfinite

    def _label(self) -> str:
        kind = type(self).__name__
        return f"{kind} for {self.name!r}" if self.name else f"unnamed {kind}"

    def _flatten(self, x: Tensor) -> Tensor:
        """``x`` as float32 ``[C, M]`` (C = 1 per tensor)."""
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if self.axis is None:
            x2 = x.reshape(1, -1)
        else:
            if not -x.dim() <= self.axis < max(x.dim(), 1):
                raise ConfigError(f"{self._label()}: axis {self.axis} is out of range for a tensor "
                                  f"of shape {tuple(x.shape)}")
            channels = x.shape[self.axis]
            x2 = x.movedim(self.axis, 0).reshape(channels, -1)
        if self._num_channels is not None and x2.shape[0] != self._num_channels:
            raise ConfigError(f"{self._label()}: got {x2.shape[0]} channels along axis "
                              f"{self.axis}, but earlier batches had {self._num_channels}")
        return x2 if x2.dtype == torch.float32 else x2.to(torch.float32)

    @torch.no_grad()
    def update_stats(self, x: Tensor) -> None:
        """Add one batch to the statistics (asynchronous on accelerators; NaN/Inf excluded and
        counted).

        Example:
            >>> a = MinMaxEncodingAnalyzer()
            >>> a.update_stats(torch.tensor([1.0, float("nan"), -2.0]))
            >>> [float(v) for v in a.observed_min_max()], int(a.num_nonfinite)
            ([-2.0, 1.0], 1)
        """
        x2 = self._flatten(x.detach())
        if x2.numel() == 0:
            return
        if self._min is None:
            channels = x2.shape[0]
            self._num_channels = channels
            self._min = torch.full((channels,), _INF, device=x2.device)
            self._max = torch.full((channels,), -_INF, device=x2.device)
            self._nonfinite = torch.zeros((), dtype=torch.int64, device=x2.device)
        self._update(x2)
        self._num_batches += 1
        self._num_values += x2.numel()

    def _update(self, x2: Tensor) -> None:
        raise NotImplementedError

    def _merge_min_max(self, scratch: StatsScratch) -> tuple[Tensor, Tensor, bool]:
        """Update the running finite min/max; return this batch's (``+inf``/``-inf`` for no finite
        value) and whether the batch is known to hold only finite values.

        On CPU, where reading a value back costs nothing, plain ``amin``/``amax`` (read-only
        passes; NaN propagates, so finite results prove the batch finite) settle the common case;
        only a batch with NaN/Inf takes the masked path. Elsewhere the masked path always runs, so
        nothing waits for the device. NaN/Inf are masked with ``nan_to_num`` (cheap float passes;
        boolean masks are several times slower on CPU)."""
        x2 = scratch.x2
        if _reads_back_freely(x2.device):
            batch_min, batch_max = x2.amin(dim=1), x2.amax(dim=1)
            if x2.shape[0] == 1:        # per tensor: two reads instead of four small ops
                finite = math.isfinite(batch_min.item()) and math.isfinite(batch_max.item())
            else:
                finite = bool(torch.isfinite(batch_min).all() and torch.isfinite(batch_max).all())
            if finite:
                self._min = torch.minimum(self._min, batch_min)
                self._max = torch.maximum(self._max, batch_max)
                return batch_min, batch_max, True
        batch_min, batch_max = torch.full_like(self._min, _INF), torch.full_like(self._max, -_INF)
        for chunk, buf, _ in scratch.chunks():
            torch.nan_to_num(chunk, nan=_INF, posinf=_INF, neginf=_INF, out=buf)
            batch_min = torch.minimum(batch_min, buf.amin(dim=1))
            torch.nan_to_num(chunk, nan=-_INF, posinf=-_INF, neginf=-_INF, out=buf)
            batch_max = torch.maximum(batch_max, buf.amax(dim=1))
        self._min = torch.minimum(self._min, batch_min)
        self._max = torch.maximum(self._max, batch_max)
        return batch_min, batch_max, False

    def observed_min_max(self) -> tuple[Tensor, Tensor]:
        """Running min and max of the finite values seen, shape ``[]`` (per tensor) or ``[C]``.

        Channels without any finite value report ``(0, 0)``.

        Raises:
            CalibrationError: no statistics yet.
        """
        self._require_stats()
        empty = self._min > self._max
        mn = torch.where(empty, 0.0, self._min)
        mx = torch.where(empty, 0.0, self._max)
        return self._shape_out(mn), self._shape_out(mx)

    def _shape_out(self, t: Tensor) -> Tensor:
        return t.reshape(()) if self.axis is None else t

    def _require_stats(self) -> None:
        if not self.has_stats:
            raise CalibrationError(f"{self._label()} has no statistics: call update_stats() with "
                                   f"calibration data (run sim.compute_encodings) before "
                                   f"compute_encoding()")

    # -- encodings --------------------------------------------------------------------------------
    def compute_encoding(self, bitwidth: int, symmetric: bool, strict: bool = False,
                         signed: bool | None = None) -> QuantEncoding:
        """Turn the statistics into an encoding.

        Args:
            bitwidth: 2-32.
            symmetric: symmetric encoding (zero point 0).
            strict: strict symmetric grid.
            signed: grid signedness; default ``symmetric``.

        Raises:
            CalibrationError: no statistics yet.

        Example:
            >>> a = MinMaxEncodingAnalyzer(axis=0)
            >>> a.update_stats(torch.tensor([[0.0, 2.55], [-1.0, 3.0]]))
            >>> a.compute_encoding(8, symmetric=False).zero_point.tolist()
            [0, 64]
        """
        self._require_stats()
        signed = symmetric if signed is None else bool(signed)
        qmin, qmax = quant_range(bitwidth, signed, symmetric, strict)
        self._warn_nonfinite()
        scale, zero_point = self._compute(qmin, qmax, symmetric, signed)
        return QuantEncoding(scale=self._shape_out(scale), zero_point=self._shape_out(zero_point),
                             bitwidth=bitwidth, signed=signed, symmetric=symmetric, strict=strict,
                             axis=self.axis)

    def _compute(self, qmin: int, qmax: int, symmetric: bool,
                 signed: bool) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _warn_nonfinite(self) -> None:
        excluded = int(self._nonfinite)
        if excluded:
            logger.warning("%s: %d of %d calibration values were NaN or Inf; they were excluded "
                           "and the encoding uses the finite values only (check the layer for "
                           "overflow or invalid inputs)", self._label(), excluded, self._num_values)
        empty = int((self._min > self._max).sum())
        if empty:
            logger.warning("%s: %d channel(s) had no finite calibration value; they get a minimal "
                           "encoding around 0", self._label(), empty)

    # -- merging statistics (several shards of the calibration data, or processes) ---------------
    #: rows of :meth:`_extremes` (values every merge reduces with a minimum)
    _EXTREME_ROWS = 2

    def state(self) -> dict[str, Tensor]:
        """The statistics collected so far, by name (``min``, ``max``, ``nonfinite``,
        ``num_batches``, ``num_values``; histogram analyzers add ``lo``, ``hi``, ``counts`` and the
        widening limits). The tensors are the analyzer's own (never modified in place).

        Raises:
            CalibrationError: no statistics yet.

        Example:
            >>> a = MinMaxEncodingAnalyzer()
            >>> a.update_stats(torch.tensor([1.0, -2.0]))
            >>> a.state()["min"].tolist(), int(a.state()["num_values"])
            ([-2.0], 2)
        """
        self._require_stats()
        out = {"min": self._min, "max": self._max, "nonfinite": self._nonfinite,
               "num_batches": torch.tensor(self._num_batches),
               "num_values": torch.tensor(self._num_values)}
        for key in ("lo", "hi", "limit_lo", "limit_hi", "limit_fixed", "counts"):
            if hasattr(self, f"_{key}"):
                out[key] = getattr(self, f"_{key}")
        return out

    def merge(self, other: EncodingAnalyzer) -> None:
        """Add the statistics of ``other`` (the same kind of analyzer over the same channels, fed
        other data) to these, as if this analyzer had seen both: min/max and counts exactly;
        histograms are first brought onto the bins of the union of both extents (each moved
        proportionally to the overlap of old and new bins, as a widening batch does), then summed.
        An analyzer without statistics contributes nothing. ``fxquant.distributed`` reduces the
        statistics of several processes the same way.

        Raises:
            ConfigError: ``other`` is another kind of analyzer or has other channels / bins.

        Example:
            >>> a, b = MinMaxEncodingAnalyzer(), MinMaxEncodingAnalyzer()
            >>> a.update_stats(torch.tensor([0.0, 1.0])); b.update_stats(torch.tensor([-3.0]))
            >>> a.merge(b)
            >>> [float(v) for v in a.observed_min_max()]
            [-3.0, 1.0]
        """
        if not other.has_stats:
            return
        if not self.has_stats:
            self._neutral(other._num_channels, other._min.device)
        if self._merge_key() != other._merge_key():
            raise ConfigError(f"{self._label()}: cannot merge the statistics of {other._label()}: "
                              f"{self._merge_key()} vs {other._merge_key()} (kind, channels, "
                              f"bins must match)")
        extremes = torch.minimum(self._extremes(), other._extremes())
        self._install(extremes, self._sums(extremes) + other._sums(extremes))

    def _merge_key(self) -> tuple[object, ...]:
        """What two analyzers must share to merge: kind and channels (histograms: and bins)."""
        return (type(self).__name__, self._num_channels)

    def _extremes(self) -> Tensor:
        """``[_EXTREME_ROWS, C]`` float32: the statistics a merge reduces with a minimum (maxima
        negated)."""
        return torch.stack([self._min, -self._max])

    def _sums(self, extremes: Tensor) -> Tensor:
        """Float64 statistics a merge adds, given the merged ``extremes``: excluded values,
        batches and values (exact in float64 up to 2**53), then what subclasses add."""
        counts = torch.tensor([self._num_batches, self._num_values], dtype=torch.float64,
                              device=self._min.device)
        return torch.cat([self._nonfinite.to(torch.float64).reshape(1), counts])

    def _neutral(self, channels: int, device: torch.device) -> None:
        """Empty statistics over ``channels`` that change nothing in a merge."""
        self._num_channels = channels
        self._min = torch.full((channels,), _INF, device=device)
        self._max = torch.full((channels,), -_INF, device=device)
        self._nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        self._num_batches = self._num_values = 0

    def _install(self, extremes: Tensor, sums: Tensor) -> Tensor:
        """Take the merged statistics; returns the part of ``sums`` a subclass adds. (Merged
        statistics of analyzers that all saw nothing are no statistics: callers then
        ``reset()``.)"""
        self._min, self._max = extremes[0], -extremes[1]
        self._nonfinite = sums[0].round().to(torch.int64)
        num_batches, num_values = sums[1:3].tolist()
        self._num_batches, self._num_values = int(num_batches), int(num_values)
        return sums[3:]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(axis={self.axis}, name={self.name!r})"



class MinMaxEncodingAnalyzer(EncodingAnalyzer):
    """Min-max ("tf") calibration: the encoding covers the running min and max (widened to include
    0).

    Example:
        >>> a = MinMaxEncodingAnalyzer()
        >>> a.update_stats(torch.tensor([-1.0, 3.0]))
        >>> round(float(a.compute_encoding(8, symmetric=False).max), 3)
        2.996
    """

    def _update(self, x2: Tensor) -> None:
        scratch = StatsScratch(x2)
        if self._merge_min_max(scratch)[2]:
            return                                  # all finite: nothing to count
        excluded = torch.zeros((), dtype=torch.float64, device=x2.device)
        for chunk, buf, _ in scratch.chunks():
            # x - x is 0 for finite values and NaN for NaN/Inf: a count without a boolean mask
            indicator = torch.sub(chunk, chunk, out=buf).nan_to_num_(nan=1.0)
            excluded += indicator.sum(dtype=torch.float64)
        self._nonfinite = self._nonfinite + excluded.to(torch.int64)   # never in place (above)

    def _compute(self, qmin: int, qmax: int, symmetric: bool,
                 signed: bool) -> tuple[Tensor, Tensor]:
        mn, mx = self.observed_min_max()
        return scale_zero_point_from_min_max(mn, mx, qmin, qmax, symmetric=symmetric, signed=signed)

