"""Calibration across processes with ``torch.distributed``: every rank ends with the statistics of
the union of all ranks' calibration data, hence identical encodings.

``QuantizationSimModel.compute_encodings`` calls :func:`reduce_statistics` when
``torch.distributed`` is initialized and the process group has more than one rank (single-process
calibration is untouched). The reduction is four collectives whatever the number of quantizers:

1. the number of analyzers, then the channel count and kind of every analyzer (MAX; a rank that
   saw nothing for a quantizer joins with empty statistics), checked to agree across ranks;
2. every minimum and (negated) maximum, histogram extent and widening limit, in one MIN
   all-reduce: min-max statistics are then exactly those of the union;
3. every histogram, first moved onto the bins of the merged extent (proportionally to the overlap
   of old and new bins, as a widening batch moves it), with the excluded-value, batch and value
   counts, in one float64 SUM all-reduce.

This is the same arithmetic as :meth:`EncodingAnalyzer.merge` (tested against it in one
process). Before reducing, the ranks agree on whether each one's calibration succeeded
(:func:`agree_on_failure`), so a rank whose callback raised makes every rank raise, naming it,
instead of leaving the others waiting in a collective.

Example:
    >>> # torchrun --nproc_per_node=2 calibrate.py   (each rank feeds its own shard)
    >>> torch.distributed.init_process_group("gloo")
    >>> sim.compute_encodings(calibrate, my_shard)        # identical encodings on every rank
"""
from __future__ import annotations

import datetime
import logging
import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from fxquant.errors import CalibrationError, ConfigError
from fxquant.quantsim.minmax_analyzer import EncodingAnalyzer

__all__ = ["is_distributed", "reduce_statistics", "agree_on_failure", "DEFAULT_TIMEOUT"]

logger = logging.getLogger(__name__)

#: How long a rank waits for the others in each collective of a calibration before it raises.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


def is_distributed(process_group: dist.ProcessGroup | None = None) -> bool:
    """True when ``torch.distributed`` is initialized and ``process_group`` (default: the world)
    has more than one rank.

    Example:
        >>> is_distributed()        # a plain python process
        False
    """
    if process_group is not None and not (dist.is_available()
                                          and isinstance(process_group, dist.ProcessGroup)):
        raise ConfigError(f"process_group must be a torch.distributed ProcessGroup (from "
                          f"dist.new_group) or None for the default group, got "
                          f"{type(process_group).__name__}")
    return (dist.is_available() and dist.is_initialized()
            and dist.get_world_size(process_group) > 1)


def _device(process_group: dist.ProcessGroup | None) -> torch.device:
    """Where collective buffers live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensor: Tensor, op: dist.ReduceOp, process_group: dist.ProcessGroup | None,
                timeout: datetime.timedelta, what: str) -> Tensor:
    """``tensor`` reduced in place over the group, waiting at most ``timeout``."""
    work = dist.all_reduce(tensor, op=op, group=process_group, async_op=True)
    try:
        finished = work.wait(timeout)
    except RuntimeError as exc:
        raise CalibrationError(
            f"rank {dist.get_rank(process_group)}: the other ranks did not join the {what} "
            f"within {timeout.total_seconds():.0f} s ({exc}); a rank failed or was killed: see "
            f"its log, fix it and restart all ranks") from exc
    if finished is False:
        raise CalibrationError(
            f"rank {dist.get_rank(process_group)}: the other ranks did not join the {what} within "
            f"{timeout.total_seconds():.0f} s; a rank failed or was killed: see its log")
    return tensor


def agree_on_failure(failed: bool, process_group: dist.ProcessGroup | None = None,
                     timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> list[int]:
    """Every rank says whether its part failed; returns the ranks that did (the same list on
    every rank). A rank that does not answer within ``timeout`` raises ``CalibrationError``.

    Example:
        >>> failing = agree_on_failure(failed=False)     # [] when every rank succeeded
    """
    world = dist.get_world_size(process_group)
    flags = torch.zeros(world, dtype=torch.int32, device=_device(process_group))
    flags[dist.get_rank(process_group)] = int(failed)
    _all_reduce(flags, dist.ReduceOp.MAX, process_group, timeout, "failure check")
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def _kind(analyzer: EncodingAnalyzer) -> int:
    """A number that differs between analyzers whose statistics cannot be merged (kind, bins)."""
    name = zlib.crc32(type(analyzer).__name__.encode()) % 1000   # stable across processes
    return name * 1_000_000 + getattr(analyzer, "num_bins", 0)


def reduce_statistics(analyzers: Sequence[EncodingAnalyzer],
                      process_group: dist.ProcessGroup | None = None,
                      timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> int:
    """Replaces the statistics of ``analyzers`` on every rank by those of all ranks together
    (see the module docstring). Every rank must pass the same analyzers in the same order (those
    of the same sim); an analyzer that saw no data on a rank takes part with empty statistics.

    Returns:
        The bytes this rank contributed to the collectives (each all-reduce's buffer once).

    Raises:
        ConfigError: the ranks' analyzers differ (kind, channels or bins).
        CalibrationError: a rank did not join a collective within ``timeout``.

    Example:
        >>> reduce_statistics([q.encoding_analyzer for q in quantizers])
    """
    device = _device(process_group)
    n = len(analyzers)
    # first the number of analyzers (a fixed size): ranks that disagree would exchange buffers
    # of different sizes below, which no backend checks
    count = torch.tensor([n, -n], dtype=torch.int64, device=device)
    _all_reduce(count, dist.ReduceOp.MAX, process_group, timeout, "analyzer count exchange")
    sent = count.numel() * count.element_size()
    most, fewest = count[0].item(), -count[1].item()
    if most != fewest:
        raise ConfigError(f"the ranks have between {fewest} and {most} analyzers to reduce (rank "
                          f"{dist.get_rank(process_group)}: {n}): every rank must calibrate the "
                          f"same sim")
    channels = torch.tensor([(a._num_channels or 0) if a.has_stats else 0 for a in analyzers],
                            dtype=torch.int64, device=device)
    kinds = torch.tensor([_kind(a) for a in analyzers], dtype=torch.int64, device=device)
    # one MAX gives the largest and (negated) the smallest non-empty channel count and kind per
    # analyzer
    probe = torch.cat([channels, torch.where(channels > 0, -channels, -(2 ** 62)), kinds, -kinds])
    _all_reduce(probe, dist.ReduceOp.MAX, process_group, timeout, "channel count exchange")
    sent += probe.numel() * probe.element_size()
    values = probe.tolist()
    most, fewest = values[:n], [-v for v in values[n:2 * n]]
    kind_hi, kind_lo = values[2 * n:3 * n], [-v for v in values[3 * n:4 * n]]
    for analyzer, hi, lo, k_hi, k_lo in zip(analyzers, most, fewest, kind_hi, kind_lo):
        if (hi and lo != hi) or k_hi != k_lo:
            raise ConfigError(f"{analyzer._label()}: the ranks' analyzers differ (channels "
                              f"{lo} vs {hi}, kind/bins code {k_lo} vs {k_hi}); every rank must "
                              f"calibrate the same sim")
    live = [(a, c) for a, c in zip(analyzers, most) if c]
    if not live:
        return sent
    # a rank that saw nothing for an analyzer joins with empty statistics on its peers' device
    home = next((a._min.device for a, _ in live if a.has_stats), device)
    for analyzer, count in live:
        if not analyzer.has_stats:
            analyzer._neutral(count, home)
    extremes = [a._extremes() for a, _ in live]
    flat = _all_reduce(torch.cat([e.to(device).reshape(-1) for e in extremes]),
                       dist.ReduceOp.MIN, process_group, timeout, "min/max exchange")
    sent += flat.numel() * flat.element_size()
    merged, start = [], 0
    for (analyzer, _), e in zip(live, extremes):
        merged.append(flat[start:start + e.numel()].reshape(e.shape).to(e.device))
        start += e.numel()
    sums = [a._sums(m) for (a, _), m in zip(live, merged)]
    flat = _all_reduce(torch.cat([s.to(device) for s in sums]), dist.ReduceOp.SUM, process_group,
                       timeout, "histogram exchange")
    sent += flat.numel() * flat.element_size()
    start = 0
    for (analyzer, _), m, s in zip(live, merged, sums):
        analyzer._install(m, flat[start:start + s.numel()].to(s.device))
        start += s.numel()
        if analyzer._num_batches == 0:
            analyzer.reset()
    logger.info("reduced the statistics of %d analyzers over %d ranks (%d bytes a rank)",
                len(live), dist.get_world_size(process_group), sent)
    return sent
