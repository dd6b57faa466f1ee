"""Histogram calibration: TF-enhanced, percentile and MSE encoding analyzers.

All three accumulate per-channel histograms (``[C, num_bins]`` float64 counts) on the input's
device: the first batch's ``[min, max]`` defines the bins; a later batch outside it widens the
histogram, never beyond 3x the first range (centred on it, as AIMET's ``[c - 1.5 R, c + 1.5 R]``),
re-binning old counts proportionally to the overlap of old and new bins. Values beyond that limit
land in the edge bins. A first range of zero width (constant or all-zero batches) fixes the limit
only once a batch with spread arrives.

Bin positions and candidate costs are computed range-relatively: each channel's values are
multiplied by a power of two that brings them near 1 when they are extreme (beyond 2**±64 for the
histogram, 2**±32 for the costs). That is exact in float32, so activations around 1e20 or 3e38
calibrate exactly as the scaled-down tensor would, scaled up, and ordinary ranges compute what
they always did.

* :class:`TfEnhancedEncodingAnalyzer`: AIMET's TF-enhanced search (``SPEC.md`` §5), 512 bins.
* :class:`PercentileEncodingAnalyzer`: the range between two percentiles (2048 bins).
* :class:`MseEncodingAnalyzer`: the clipping range with the smallest quantization MSE (512 bins).

Example:
    >>> import torch
    >>> a = PercentileEncodingAnalyzer(percentile=99.0)
    >>> a.update_stats(torch.linspace(0, 1, 10001))
    >>> round(float(a.percentile_range()[1]), 2)
    0.99
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fxquant.core.encoding import MIN_SCALE, scale_zero_point_from_min_max
from fxquant.errors import ConfigError
from fxquant.quantsim.histogram_costs import (_HISTOGRAM_EXPONENT_LIMIT, _candidate_costs,
                                              _magnitude, _pow2_scale, _select)
from fxquant.quantsim.minmax_analyzer import EncodingAnalyzer, StatsScratch, _reads_back_freely

__all__ = ["TfEnhancedEncodingAnalyzer", "PercentileEncodingAnalyzer", "MseEncodingAnalyzer"]

_INF = float("inf")
# CPU histograms count consecutive values into this many interleaved copies of the bins, summed at
# the end: a run of equal bin indices (ReLU zeros) otherwise serialises on one counter.
_CPU_HISTOGRAM_LANES = 4
# A finite batch inside the histogram's extent is binned without a clamp up to this many bins: its
# positions (x - start) / width then stay below bins * (1 + 3 * 2**-24) < bins + 1.
_UNCLAMPED_MAX_BINS = 1 << 16


def _histogram_lanes(device: torch.device) -> int:
    """Interleaved copies of the bins a histogram counts into (see ``_CPU_HISTOGRAM_LANES``)."""
    return _CPU_HISTOGRAM_LANES if device.type == "cpu" else 1


def _bincount(index: Tensor, length: int, scatter: bool | None = None) -> Tensor:
    """Counts of ``index`` values in ``[0, length)`` without a host sync: ``torch.bincount`` on CPU
    (fastest there), a scatter-add elsewhere (``bincount`` syncs on CUDA to size its output)."""
    if scatter is None:
        scatter = index.device.type != "cpu"
    if not scatter:
        return torch.bincount(index, minlength=length)
    index = index.to(torch.int64)
    ones = torch.ones((), dtype=torch.int64, device=index.device).expand(index.numel())
    return torch.zeros(length, dtype=torch.int64, device=index.device).scatter_add_(0, index, ones)


class _HistogramAnalyzer(EncodingAnalyzer):
    """Per-channel histograms (``[C, num_bins]`` float64 counts) that widen as the module
    docstring describes."""

    _WIDEN_LIMIT = 3.0

    def __init__(self, axis: int | None = None, name: str | None = None, *,
                 num_bins: int = 512) -> None:
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
            raise ConfigError(f"{type(self).__name__} for {name!r}: num_bins must be an int >= 2, "
                              f"got {num_bins!r}")
        self.num_bins = num_bins
        super().__init__(axis=axis, name=name)

    def reset(self) -> None:
        super().reset()
        self._lo: Tensor | None = None      # histogram extent [C]; +inf/-inf while empty
        self._hi: Tensor | None = None
        self._limit_lo: Tensor | None = None  # widening limit, fixed by the first range with spread
        self._limit_hi: Tensor | None = None
        self._limit_fixed: Tensor | None = None
        self._counts: Tensor | None = None
        self._offsets: tuple[tuple[object, ...], Tensor] | None = None   # see _slot_offsets
        self._ext: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # _extent_parts(lo, hi)
        self._binning: tuple[Tensor, Tensor, Tensor, bool, bool] | None = None  # _binning_of(_ext)
        self._limits_settled = False   # host-side: every channel's widening limit is fixed

    def _update(self, x2: Tensor) -> None:
        channels, bins = x2.shape[0], self.num_bins
        if self._counts is None:
            dev = x2.device
            self._lo = torch.full((channels,), _INF, device=dev)
            self._hi = torch.full((channels,), -_INF, device=dev)
            self._limit_lo = torch.full((channels,), -_INF, device=dev)
            self._limit_hi = torch.full((channels,), _INF, device=dev)
            self._limit_fixed = torch.zeros(channels, dtype=torch.bool, device=dev)
            self._counts = torch.zeros(channels, bins, dtype=torch.float64, device=dev)
        # Where reading back is free (CPU), decisions that skip work are taken on the host: an
        # extent that did not move is neither re-derived nor re-binned, and a batch inside it is
        # binned without the clamp (see _histogram). Elsewhere every step runs, branch-free.
        host = _reads_back_freely(x2.device)
        lanes = _histogram_lanes(x2.device)
        small = lanes * channels * (bins + 1) < 2 ** 31
        scratch = StatsScratch(x2, torch.int32 if lanes > 1 and small else torch.int64)
        batch_min, batch_max, finite = self._merge_min_max(scratch)
        new_lo, new_hi = self._widen(batch_min, batch_max, host)
        moved = not (host and self._ext is not None and torch.equal(new_lo, self._lo)
                     and torch.equal(new_hi, self._hi))
        ext = self._extent_parts(new_lo, new_hi, bins) if moved else self._ext
        if self._num_batches and moved:        # nothing to move before the first batch
            self._counts = self._rebin(new_lo, new_hi, ext)
        if moved:
            self._binning = self._binning_of(ext, host)
        self._lo, self._hi, self._ext = new_lo, new_hi, ext
        inside = (host and finite and bins <= _UNCLAMPED_MAX_BINS
                  and bool((batch_min >= new_lo).all()) and bool((batch_max <= new_hi).all()))
        hist, excluded = self._histogram(scratch, finite, inside)
        self._counts = self._counts + hist        # never in place (see EncodingAnalyzer)
        if excluded is not None:
            self._nonfinite = self._nonfinite + excluded

    def _widen(self, batch_min: Tensor, batch_max: Tensor,
               host: bool = False) -> tuple[Tensor, Tensor]:
        lo = torch.minimum(self._lo, batch_min)
        hi = torch.maximum(self._hi, batch_max)
        if self._limits_settled:       # no limit left to fix: the steps below would keep them
            return torch.maximum(lo, self._limit_lo), torch.minimum(hi, self._limit_hi)
        # range-relative (see _pow2_scale): hi - lo of a channel near float32's limit overflows
        p = _pow2_scale(_magnitude(lo, hi), _HISTOGRAM_EXPONENT_LIMIT)
        lo_s, hi_s = lo * p, hi * p
        width = hi_s - lo_s                               # -inf while empty
        fix = ~self._limit_fixed & (width > 0) & torch.isfinite(width)
        centre = lo_s * 0.5 + hi_s * 0.5
        half = width * (self._WIDEN_LIMIT / 2)
        # a limit beyond float32's range becomes +-inf: no limit on that side
        self._limit_lo = torch.where(fix, (centre - half) / p, self._limit_lo)
        self._limit_hi = torch.where(fix, (centre + half) / p, self._limit_hi)
        self._limit_fixed = self._limit_fixed | fix
        if host:
            self._limits_settled = bool(self._limit_fixed.all())
        return torch.maximum(lo, self._limit_lo), torch.minimum(hi, self._limit_hi)

    @staticmethod
    def _extent_parts(lo: Tensor, hi: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(start, start * p, width * p, p)``: the sanitised start (0 for empty extents) and the
        range-relative start and bin width with the power of two ``p`` of :func:`_pow2_scale`
        (``hi - lo`` near float32's limit would overflow)."""
        valid = hi >= lo
        start = torch.where(valid, lo, 0.0)
        p = _pow2_scale(_magnitude(start, torch.where(valid, hi, 0.0)),
                        _HISTOGRAM_EXPONENT_LIMIT)
        width = torch.where(valid, (hi * p - lo * p) / bins, 0.0)
        return start, start * p, torch.nan_to_num(width, nan=0.0, posinf=0.0), p

    @classmethod
    def _extent_scaled(cls, lo: Tensor, hi: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
        """Range-relative (start, bin width, p): ``start * p`` and ``width * p``."""
        return cls._extent_parts(lo, hi, bins)[1:]

    @classmethod
    def _extent(cls, lo: Tensor, hi: Tensor, bins: int) -> tuple[Tensor, Tensor]:
        """Sanitised (start, bin width): (0, 0) for empty extents."""
        return cls._extent_of(cls._extent_parts(lo, hi, bins))

    @staticmethod
    def _extent_of(parts: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(start, bin width) from :meth:`_extent_parts`."""
        return parts[0], parts[2] / parts[3]

    def _extent_end(self) -> Tensor:
        """``start + width * num_bins`` in float64 (float32 can overflow near its limit)."""
        start, width, p = self._extent_scaled(self._lo, self._hi, self.num_bins)
        return (start + width * self.num_bins).double() / p.double()

    def _rebin(self, new_lo: Tensor, new_hi: Tensor,
               new_parts: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        """Old counts redistributed onto the (wider) new bins, proportionally to the overlap.
        ``new_parts``: :meth:`_extent_parts` of the new extent."""
        return self._rebinned(self._counts, self._lo, self._hi, self._ext, new_lo, new_hi,
                              new_parts)

    @classmethod
    def _rebinned(cls, counts: Tensor, lo: Tensor, hi: Tensor,
                  parts: tuple[Tensor, Tensor, Tensor, Tensor], new_lo: Tensor, new_hi: Tensor,
                  new_parts: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        """``counts`` over the extent ``[lo, hi]`` (:meth:`_extent_parts` ``parts``) moved onto the
        bins of ``[new_lo, new_hi]`` (``new_parts``), which contains it, proportionally to the
        overlap of old and new bins; channels whose extent is unchanged keep their counts."""
        bins = counts.shape[1]
        old_start, old_w = (t.double() for t in cls._extent_of(parts))
        new_start, new_w = (t.double() for t in cls._extent_of(new_parts))
        index = torch.arange(bins, device=counts.device, dtype=torch.float64)
        left = old_start[:, None] + index * old_w[:, None]
        inv_new = torch.where(new_w > 0, 1.0 / torch.where(new_w > 0, new_w, 1.0), 0.0)
        j = torch.floor((left - new_start[:, None]) * inv_new[:, None]).clamp_(0, bins - 1)
        boundary = new_start[:, None] + (j + 1) * new_w[:, None]
        safe_old_w = torch.where(old_w > 0, old_w, 1.0)[:, None]
        frac = torch.where(old_w[:, None] > 0, ((boundary - left) / safe_old_w).clamp_(0, 1), 1.0)
        first = counts * frac
        j = j.long()
        out = torch.zeros_like(counts).scatter_add_(1, j, first)
        out.scatter_add_(1, (j + 1).clamp_(max=bins - 1), counts - first)
        unchanged = (lo == new_lo) & (hi == new_hi)
        return torch.where(unchanged[:, None], counts, out)

    # -- merging statistics (see EncodingAnalyzer.merge) ------------------------------------------
    _EXTREME_ROWS = EncodingAnalyzer._EXTREME_ROWS + 5

    def _extremes(self) -> Tensor:
        fixed = torch.where(self._limit_fixed, -1.0, 0.0)     # min over ranks == any fixed
        return torch.cat([super()._extremes(), torch.stack(
            [self._lo, -self._hi, self._limit_lo, -self._limit_hi, fixed])])

    def _sums(self, extremes: Tensor) -> Tensor:
        lo, hi = extremes[2], -extremes[3]
        counts = self._rebinned(self._counts, self._lo, self._hi, self._ext, lo, hi,
                                self._extent_parts(lo, hi, self.num_bins))
        return torch.cat([super()._sums(extremes), counts.reshape(-1)])

    def _neutral(self, channels: int, device: torch.device) -> None:
        super()._neutral(channels, device)
        self._lo = torch.full((channels,), _INF, device=device)
        self._hi = torch.full((channels,), -_INF, device=device)
        self._limit_lo = torch.full((channels,), _INF, device=device)
        self._limit_hi = torch.full((channels,), -_INF, device=device)
        self._limit_fixed = torch.zeros(channels, dtype=torch.bool, device=device)
        self._counts = torch.zeros(channels, self.num_bins, dtype=torch.float64, device=device)
        self._ext = self._extent_parts(self._lo, self._hi, self.num_bins)

    def _install(self, extremes: Tensor, sums: Tensor) -> None:
        channels = extremes.shape[1]
        rest = super()._install(extremes, sums)
        lo, hi = extremes[2], -extremes[3]
        self._limit_lo = extremes[4]
        self._limit_hi = -extremes[5]
        self._limit_fixed = extremes[6] < 0
        self._limits_settled = False
        self._lo, self._hi = lo, hi
        self._ext = self._extent_parts(lo, hi, self.num_bins)
        self._binning = self._binning_of(self._ext, _reads_back_freely(lo.device))
        self._counts = rest.reshape(channels, self.num_bins)

    def _merge_key(self) -> tuple[object, ...]:
        return (*super()._merge_key(), self.num_bins)

    def _histogram(self, scratch: StatsScratch, finite: bool,
                   inside: bool = False) -> tuple[Tensor, Tensor | None]:
        """This batch's ``[C, bins]`` counts over the current extent, and the number of excluded
        values (None for a batch known to be ``finite``).

        Unless the batch is known to be ``finite``, NaN/Inf become NaN, survive the clamp and land
        in an extra slot per channel that counts them. A finite batch known to lie ``inside`` the
        extent skips the clamp: its bin positions are then in ``[0, bins]`` (``bins`` only for the
        extent's upper end, within rounding; see ``_UNCLAMPED_MAX_BINS``), and the extra slot's
        count moves to the last bin, where the clamp would have put it."""
        x2 = scratch.x2
        channels, bins = x2.shape[0], self.num_bins
        slots = channels * (bins + 1)
        lanes = _histogram_lanes(x2.device)
        neg_start, inv, p, unit, zero_start = self._binning
        from_zero = finite and zero_start
        offsets = self._slot_offsets(channels, min(scratch.step, x2.shape[1]), lanes,
                                     scratch.index_dtype, x2.device)
        hist = None
        for chunk, pos, index in scratch.chunks():
            if from_zero:
                torch.mul(chunk, inv, out=pos)
            elif finite and unit:
                torch.sub(chunk, -neg_start, out=pos).mul_(inv)
            elif finite:
                torch.addcmul(neg_start, chunk, p, out=pos).mul_(inv)
            else:
                torch.nan_to_num(chunk, nan=math.nan, posinf=math.nan, neginf=math.nan, out=pos)
                if not unit:
                    pos.mul_(p)
                pos.add_(neg_start).mul_(inv)
            if not inside:
                pos.clamp_(0, bins - 1)
            if not finite:
                pos.nan_to_num_(nan=float(bins))
            index.copy_(pos)                          # truncation == floor: pos >= 0
            if offsets is not None:
                index += offsets[:, :index.shape[1]]
            counts = _bincount(index.reshape(-1), lanes * slots)
            hist = counts if hist is None else hist.add_(counts)
        hist = hist.reshape(lanes, channels, bins + 1).sum(0)
        counts = hist[:, :bins]
        if inside:
            counts[:, bins - 1] += hist[:, bins]
        return counts, (None if finite else hist[:, bins].sum())

    @staticmethod
    def _binning_of(parts: tuple[Tensor, Tensor, Tensor, Tensor],
                    host: bool) -> tuple[Tensor, Tensor, Tensor, bool, bool]:
        """What binning a batch over the extent ``parts`` (:meth:`_extent_parts`) needs, computed
        once per extent: ``[C, 1]`` columns ``-start * p``, ``1 / (width * p)`` (0 for an empty or
        degenerate extent) and ``p`` — bin positions are range-relative, ``(x * p - start * p) /
        (width * p)``, exact for p == 1 (see :func:`_pow2_scale`) — and, read on the ``host`` where
        that is free, whether no channel needs the scaling (``p == 1``: the cheaper unscaled
        subtraction) and whether every channel also starts at 0 (``x - 0 == x`` bit for bit: no
        subtraction). Both False elsewhere."""
        _, start, width, p = parts
        inv = 1.0 / torch.where(width > 0, width, 1.0)
        inv = torch.where((width > 0) & torch.isfinite(inv), inv, 0.0)
        unit = host and bool((p == 1).all())
        zero_start = unit and bool((start == 0).all())
        return -start[:, None], inv[:, None], p[:, None], unit, zero_start

    def _slot_offsets(self, channels: int, columns: int, lanes: int, dtype: torch.dtype,
                      device: torch.device) -> Tensor | None:
        """``[C, columns]`` offsets into the flat counts: channel ``c`` owns slots
        ``c * (bins + 1) ...`` of each lane, column ``j`` counts in lane ``j % lanes``. None when
        there is one channel and one lane. Cached: the shape repeats batch after batch."""
        if channels == 1 and lanes == 1:
            return None
        slots = channels * (self.num_bins + 1)
        per_channel = torch.arange(0, slots, self.num_bins + 1, device=device, dtype=dtype)
        if lanes == 1:
            return per_channel[:, None]
        key = (channels, columns, lanes, dtype, device)
        if self._offsets is None or self._offsets[0] != key:
            per_lane = (torch.arange(columns, device=device, dtype=dtype) % lanes) * slots
            self._offsets = (key, per_channel[:, None] + per_lane[None, :])
        return self._offsets[1]

    def histogram(self) -> tuple[Tensor, Tensor]:
        """The accumulated histogram: ``(counts [C, bins] float64, edges [C, bins + 1] float32)``.

        Per-tensor analyzers return C = 1.
        """
        self._require_stats()
        start, width, p = self._extent_scaled(self._lo, self._hi, self.num_bins)
        index = torch.arange(self.num_bins + 1, device=start.device)
        edges = (start[:, None] + index * width[:, None]) / p[:, None]
        return self._counts.clone(), edges

    def _centres(self) -> tuple[Tensor, Tensor, Tensor]:
        """Bin centres ``[C, bins]`` (float32, ascending), histogram start and bin width ``[C]``."""
        start, width, p = self._extent_scaled(self._lo, self._hi, self.num_bins)
        idx = torch.arange(self.num_bins, device=start.device, dtype=torch.float32) + 0.5
        centres = (start[:, None] + idx * width[:, None]) / p[:, None]
        return centres, start / p, width / p


class TfEnhancedEncodingAnalyzer(_HistogramAnalyzer):
    """AIMET's TF-enhanced calibration (``SPEC.md`` §5), vectorised over candidates and channels.

    On the unsigned view of the grid (N = qmax - qmin steps, offset o = -zero point):

    * asymmetric: with the observed range ``[m, M]`` (histogram extent, widened to include 0)
      mapped to the grid (``Δ0 = (M - m) / N``, ``o0 = round(m / Δ0)``), candidates are 17 step
      sizes ``Δ0 * k / 16`` (k = 1..17) x 22 offsets (``round(-N + N * i / 20)``, i = 0..20, plus
      ``o0``). As in AIMET, each candidate's range ``[oΔ, oΔ + NΔ]`` is then clamped to the
      observed one and its step size and offset recomputed, so no candidate spends levels outside
      the data;
    * symmetric (signed grid): 101 step sizes ``2 max(|m|, |M|) / N * k / 100`` (k = 1..101) with
      the offset fixed at the grid's (``qmin``); unsigned symmetric: ``M / N * k / 100``, offset 0.

    Each candidate's cost is ``sum count * err^2`` over the bin centres, with the error of clipped
    bins weighted by ``gamma`` (3); the cheapest wins and gives ``min = oΔ``, ``max = min + NΔ``.
    Differences from AIMET's C++ code: the observed range comes from exact running min/max
    (clipped to the histogram) instead of bin left edges, and the clipped cost uses the clamped
    value rather than the centre of the edge bin.

    Args:
        axis: per-channel axis or None.
        name: layer name for messages.
        num_bins: histogram bins (512).
        gamma: weight of clipping error (3.0).
    """

    def __init__(self, axis: int | None = None, name: str | None = None, *,
                 num_bins: int = 512, gamma: float = 3.0) -> None:
        super().__init__(axis=axis, name=name, num_bins=num_bins)
        self.gamma = float(gamma)

    def _compute(self, qmin: int, qmax: int, symmetric: bool,
                 signed: bool) -> tuple[Tensor, Tensor]:
        steps = qmax - qmin
        centres, start, width = self._centres()
        obs_lo = start.double().clamp(max=0.0)
        end = self._extent_end()
        obs_hi = torch.maximum(end.clamp(min=0.0), obs_lo + steps * MIN_SCALE)
        counts = self._counts
        if symmetric:
            # offset fixed at the grid's (-qmin on the unsigned view: 128 for int8, 0 unsigned)
            k = torch.arange(1, 102, device=centres.device, dtype=torch.float64) / 100
            delta_max = 2 * torch.maximum(obs_hi, -obs_lo) / steps if signed else obs_hi / steps
            scale = (delta_max[:, None] * k).clamp(min=MIN_SCALE).to(torch.float32)
            zp_unsigned = -qmin if signed else 0
            costs = _candidate_costs(centres, counts, scale, zp_unsigned, 0, steps, self.gamma)
            best = costs.argmin(dim=1, keepdim=True)
            best_scale = scale.gather(1, best).squeeze(1)
            return best_scale, torch.zeros_like(best_scale, dtype=torch.float64)
        delta, offset = self._asymmetric_candidates(obs_lo, obs_hi, steps)
        scale = delta.to(torch.float32)
        zp_unsigned = -offset                                  # zero point on the grid [0, N]
        costs = _candidate_costs(centres, counts, scale, zp_unsigned, 0, steps, self.gamma)
        best_scale, best_zp = _select(costs, scale, zp_unsigned)
        return best_scale, best_zp + qmin

    @staticmethod
    def _asymmetric_candidates(obs_lo: Tensor, obs_hi: Tensor,
                               steps: int) -> tuple[Tensor, Tensor]:
        """``(delta, offset)`` ``[C, 17 * 22]`` float64, clamped to the observed range."""
        dev = obs_lo.device
        delta_obs = (obs_hi - obs_lo) / steps
        offset_obs = torch.round(obs_lo / delta_obs)
        grid_lo = offset_obs * delta_obs
        grid_hi = grid_lo + steps * delta_obs
        k = torch.arange(1, 18, device=dev, dtype=torch.float64) / 16
        deltas = delta_obs[:, None, None] * k[None, :, None]                       # [C, 17, 1]
        i = torch.arange(21, device=dev, dtype=torch.float64)
        spread = torch.round(-steps + steps * i / 20)
        offsets = torch.cat([spread.expand(obs_lo.shape[0], -1), offset_obs[:, None]], 1)
        offsets = offsets[:, None, :]                                              # [C, 1, 22]
        cand_lo = torch.maximum(deltas * offsets, grid_lo[:, None, None])          # [C, 17, 22]
        cand_hi = torch.minimum(deltas * offsets + steps * deltas, grid_hi[:, None, None])
        delta = ((cand_hi - cand_lo) / steps).clamp(min=MIN_SCALE)
        delta = delta.to(torch.float32).double()           # the scale the encoding will carry
        offset = torch.round(cand_lo / delta).clamp(-steps, 0)
        return delta.flatten(1), offset.flatten(1)


class PercentileEncodingAnalyzer(_HistogramAnalyzer):
    """Percentile calibration: the range between the (100 - p)-th and p-th percentiles.

    Percentiles are read from the accumulated histogram (2048 bins by default) with linear
    interpolation inside a bin, so memory stays bounded. ``percentile=100`` uses the exact running
    min/max (identical to min-max calibration).

    Args:
        percentile: in (50, 100]; default 99.99.
        axis, name, num_bins: as for the other analyzers.

    Example:
        >>> a = PercentileEncodingAnalyzer(percentile=99.0)
        >>> a.update_stats(torch.linspace(0, 1, 10001))
        >>> round(float(a.observed_min_max()[1]), 2), round(float(a.percentile_range()[1]), 2)
        (1.0, 0.99)
    """

    def __init__(self, percentile: float = 99.99, axis: int | None = None,
                 name: str | None = None, *, num_bins: int = 2048) -> None:
        super().__init__(axis=axis, name=name, num_bins=num_bins)
        self.percentile = percentile

    @property
    def percentile(self) -> float:
        """The clipping percentile, in (50, 100]; assignments are validated."""
        return self._percentile

    @percentile.setter
    def percentile(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 50 < value <= 100:
            raise ConfigError(f"{self._label()}: percentile must be in (50, 100], got {value!r}")
        self._percentile = float(value)

    def percentile_range(self) -> tuple[Tensor, Tensor]:
        """The (lower, upper) percentile values, shape ``[]`` or ``[C]``."""
        self._require_stats()
        if self.percentile == 100:
            return self.observed_min_max()
        counts = self._counts
        start, width = (t.double() for t in self._extent(self._lo, self._hi, self.num_bins))
        cdf = counts.cumsum(1)
        total = cdf[:, -1:]
        fraction = self.percentile / 100

        def value_at(target: Tensor) -> Tensor:
            idx = torch.searchsorted(cdf, target, side="left").clamp_(max=self.num_bins - 1)
            before = torch.where(idx > 0, cdf.gather(1, (idx - 1).clamp(min=0)), 0.0)
            inside = counts.gather(1, idx)
            safe = torch.where(inside > 0, inside, 1.0)
            part = torch.where(inside > 0, (target - before) / safe, 1.0)
            return (start[:, None] + (idx + part.clamp(0, 1)) * width[:, None]).squeeze(1)

        lower = value_at(total * (1 - fraction))
        upper = value_at(total * fraction)
        mn, mx = (t.double().reshape(-1) for t in self.observed_min_max())
        lower = torch.minimum(torch.maximum(lower, mn), mx).to(torch.float32)
        upper = torch.minimum(torch.maximum(upper, mn), mx).to(torch.float32)
        return self._shape_out(lower), self._shape_out(upper)

    def _compute(self, qmin: int, qmax: int, symmetric: bool,
                 signed: bool) -> tuple[Tensor, Tensor]:
        lower, upper = self.percentile_range()
        return scale_zero_point_from_min_max(lower, upper, qmin, qmax, symmetric=symmetric,
                                             signed=signed)


class MseEncodingAnalyzer(_HistogramAnalyzer):
    """MSE calibration: the clipping range with the smallest quantization MSE over the histogram.

    Candidates are ``num_candidates`` (100) fractions ``k / num_candidates`` of the observed range
    ``[min, max]`` (widened to include 0; both ends scaled), each turned into an encoding as
    min-max calibration would; the cost is ``sum count * err^2`` over the bin centres (clipping
    error unweighted).

    Args:
        axis, name: as for the other analyzers.
        num_bins: histogram bins (512).
        num_candidates: clipping fractions tried (100).
    """

    def __init__(self, axis: int | None = None, name: str | None = None, *,
                 num_bins: int = 512, num_candidates: int = 100) -> None:
        super().__init__(axis=axis, name=name, num_bins=num_bins)
        if (isinstance(num_candidates, bool) or not isinstance(num_candidates, int)
                or num_candidates < 1):
            raise ConfigError(f"{self._label()}: num_candidates must be a positive int, got "
                              f"{num_candidates!r}")
        self.num_candidates = num_candidates

    def _compute(self, qmin: int, qmax: int, symmetric: bool,
                 signed: bool) -> tuple[Tensor, Tensor]:
        centres, start, width = self._centres()
        k = torch.arange(1, self.num_candidates + 1, device=start.device, dtype=torch.float64)
        frac = k / self.num_candidates
        cand_lo = start.double().clamp(max=0.0)[:, None] * frac
        cand_hi = self._extent_end().clamp(min=0.0)[:, None] * frac
        scale, zero_point = scale_zero_point_from_min_max(cand_lo, cand_hi, qmin, qmax,
                                                          symmetric=symmetric, signed=signed)
        shared_zp = 0 if symmetric else zero_point      # symmetric: zero point 0 for all candidates
        costs = _candidate_costs(centres, self._counts, scale, shared_zp, qmin, qmax)
        return _select(costs, scale, zero_point)

