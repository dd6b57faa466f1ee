"""The search behind the histogram encoding analyzers: the quantization cost of every candidate
range over a histogram, the occupied bins that bound the candidates, the cheapest candidate, and
the range-relative arithmetic (per-channel powers of two) that keeps them exact at extreme
magnitudes. Used by :mod:`fxquant.quantsim.histogram_analyzers`.

Example:
    >>> costs = _candidate_costs(centres, counts, scale, zero_point, qmin, qmax, width)
    >>> best_scale, best_zero_point = _select(costs, scale, zero_point)
"""
from __future__ import annotations

import torch
from torch import Tensor

_INF = float("inf")
# Elements per chunk of the [channels, candidates, bins] cost computation (bounds temporary memory).
_COST_CHUNK_ELEMENTS = {"cpu": 1 << 20, "other": 1 << 25}

# Range-relative arithmetic: histogram and cost computations run on values multiplied by a
# per-channel power of two that brings the channel's magnitude to within 2**±limit. Multiplying by
# a power of two is exact in float32, so channels already within that band (p == 1) compute
# exactly what they did before, and channels near float32's limits (1e20, 3e38, 1e-30) compute
# the scaled-down (or up) case bit for bit instead of overflowing or underflowing.
_HISTOGRAM_EXPONENT_LIMIT = 64
_COST_EXPONENT_LIMIT = 32


def _pow2_scale(magnitude: Tensor, limit: int) -> Tensor:
    """Per-channel float32 powers of two ``p`` with ``magnitude * p`` within ``2**±limit`` (1 for
    channels already inside, or with a zero or non-finite magnitude). No host sync."""
    finite = torch.isfinite(magnitude)
    m = torch.where(finite, magnitude.abs(), 0.0).to(torch.float32)
    exponent = torch.frexp(m).exponent
    shift = (exponent.clamp(-limit, limit) - exponent).clamp(-126, 126)
    return torch.ldexp(torch.ones_like(m), shift)


def _magnitude(lo: Tensor, hi: Tensor) -> Tensor:
    """``max(|lo|, |hi|)`` per channel, 0 where either end is not finite (empty extents)."""
    valid = torch.isfinite(lo) & torch.isfinite(hi)
    return torch.where(valid, torch.maximum(lo.abs(), hi.abs()), 0.0)


def _candidate_costs(centres: Tensor, counts: Tensor, scale: Tensor, zero_point: Tensor | int,
                     qmin: int, qmax: int, gamma: float = 1.0) -> Tensor:
    """Weighted squared quantization error of every candidate encoding over the histogram.

    ``cost[c, k] = sum_b counts[c, b] * err[c, k, b]^2 * (gamma if bin b clips else 1)`` where
    ``err = qdq(centres[c, b]; scale[c, k], zero_point[c, k]) - centres[c, b]`` with the
    fake-quant arithmetic of ``quantize_dequantize``. Empty bins are dropped first (they cost
    nothing). The clipped part is added as ``(gamma - 1) * sum over clipped bins`` from prefix
    sums over the (ascending) occupied centres: bins below ``(qmin - z - 1/2) s`` or above
    ``(qmax - z + 1/2) s`` clip, and where those thresholds fall is found by ``searchsorted``.

    Args:
        centres: ``[C, B]`` float32 bin centres, ascending along each row.
        counts: ``[C, B]`` counts.
        scale: ``[C, K]`` float32 candidate scales.
        zero_point: ``[C, K]`` candidate zero points (integers, on the grid ``[qmin, qmax]``),
            or one Python int shared by all candidates (cheaper).

    Returns:
        ``[C, K]`` float64 costs.
    """
    channels, num_cand = scale.shape
    uniform_zp = isinstance(zero_point, int)
    zp = None if uniform_zp else zero_point.to(torch.float32)
    # Range-relative (see _pow2_scale): centres and scales of a channel are multiplied by one power
    # of two p, exact in float32, so err^2 * count cannot overflow (values ~1e20) or underflow; the
    # costs are divided by p^2 in float64 at the end. Channels of moderate range have p == 1.
    p = _pow2_scale(centres.abs().amax(dim=1), _COST_EXPONENT_LIMIT)[:, None]
    centres, scale = centres * p, scale * p
    centres, counts = _occupied_bins(centres, counts.to(torch.float32))
    used = centres.shape[1]
    key = "cpu" if centres.device.type == "cpu" else "other"
    step = max(1, _COST_CHUNK_ELEMENTS[key] // max(1, num_cand * used))
    cost = torch.empty(channels, num_cand, device=centres.device)
    # one scratch buffer for all chunks: fresh multi-MB allocations page-fault on every chunk
    work = torch.empty(min(step, channels), num_cand, used, device=centres.device)
    for c0 in range(0, channels, step):
        c1 = min(channels, c0 + step)
        s, c = scale[c0:c1, :, None], centres[c0:c1, None, :]
        err = torch.div(c, s, out=work[:c1 - c0]).round_()
        if uniform_zp:     # clamp(r + z, qmin, qmax) - z == clamp(r, qmin - z, qmax - z)
            err.clamp_(qmin - zero_point, qmax - zero_point)
        else:
            z = zp[c0:c1, :, None]
            err.add_(z).clamp_(qmin, qmax).sub_(z)
        torch.addcmul(c, err, s, value=-1.0, out=err).square_()        # (c - qdq(c))^2
        torch.sum(err.mul_(counts[c0:c1, None, :]), dim=-1, out=cost[c0:c1])
    unscale = p.double().square()
    cost = cost.to(torch.float64)
    if gamma == 1.0:
        return cost / unscale
    # (gamma - 1) * clipped error, from prefix sums of counts, counts*c and counts*c^2 (float64)
    c64, n64 = centres.double(), counts.double()
    p0, p1, p2 = torch.empty(3, channels, used + 1, dtype=torch.float64, device=centres.device)
    weighted = n64
    for p in (p0, p1, p2):
        p[:, 0] = 0
        torch.cumsum(weighted, dim=1, out=p[:, 1:])
        weighted = weighted * c64
    s64 = scale.double()
    z64 = float(zero_point) if uniform_zp else zero_point.double()
    v_lo, v_hi = (qmin - z64) * s64, (qmax - z64) * s64
    i_lo = torch.searchsorted(c64, (qmin - z64 - 0.5) * s64, side="left")    # centres <  t
    i_hi = torch.searchsorted(c64, (qmax - z64 + 0.5) * s64, side="right")   # centres <= t

    def range_cost(a: Tensor, b: Tensor, v: Tensor) -> Tensor:   # sum_{a <= i < b} n (c - v)^2
        s0 = p0.gather(1, b) - p0.gather(1, a)
        s1 = p1.gather(1, b) - p1.gather(1, a)
        s2 = p2.gather(1, b) - p2.gather(1, a)
        return (s2 - 2 * v * s1 + v * v * s0).clamp_(min=0)

    full = torch.full_like(i_hi, used)
    clipped = (range_cost(torch.zeros_like(i_lo), i_lo, v_lo)
               + range_cost(torch.maximum(i_hi, i_lo), full, v_hi))
    return (cost + (gamma - 1.0) * clipped) / unscale


def _occupied_bins(centres: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Drop empty bins (they cost nothing): per channel the occupied bins in ascending order,
    padded to the largest occupancy with zero-count copies of the channel's last occupied centre
    (rows stay ascending). Weight histograms are often a third empty, depthwise ones almost all.
    Syncs once on accelerators."""
    bins = counts.shape[1]
    occupancy = counts.sign()                   # counts >= 0: 1 on occupied bins, else 0
    width = int(occupancy.sum(1).max())
    if width > 0.9 * bins:
        return centres, counts
    width = max(width, 1)
    # occupied bins rank by position, lowest first (topk is cheaper than a sort for few bins)
    key = occupancy * torch.arange(bins, 0, -1, device=counts.device, dtype=counts.dtype)
    if width <= bins // 4:
        order = key.topk(width, dim=1).indices
    else:
        order = key.sort(dim=1, descending=True).indices[:, :width]
    centres, counts = centres.gather(1, order), counts.gather(1, order)
    occupied = counts > 0
    last = torch.where(occupied, centres, -_INF).amax(1, keepdim=True)
    last = torch.maximum(last, centres[:, :1])  # a channel without data: any finite centre
    return torch.where(occupied, centres, last), counts


def _select(costs: Tensor, scale: Tensor, zero_point: Tensor) -> tuple[Tensor, Tensor]:
    best = costs.argmin(dim=1, keepdim=True)
    return scale.gather(1, best).squeeze(1), zero_point.gather(1, best).squeeze(1)
