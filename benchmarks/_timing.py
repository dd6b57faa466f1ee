"""Interleaved timing: robust ratios against a baseline on a machine whose speed drifts.

Pure python (no fxquant import), so the aimet-torch worker of a benchmark can import it too.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

# glibc malloc: serve every tensor from the heap and keep freed memory. By default each tensor
# above a (dynamically raised) threshold is a fresh mmap whose pages fault in on first touch: that
# cost 2-3x on mobilenet_v2's FP32 forward here, and whether it happens depends on what freed
# memory before (aimet-torch's TF-enhanced calibration raised the threshold of its own process
# mid-run, roughly halving its later FP32 times). Both sides of a comparison run with this setting.
STEADY_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "8000000000"}


def use_steady_allocator() -> None:
    """Re-executes the running script once with :data:`STEADY_ALLOCATOR` in its environment
    (glibc reads it at start-up); subprocesses inherit it. No-op once set."""
    if all(os.environ.get(k) == v for k, v in STEADY_ALLOCATOR.items()):
        return
    os.environ.update(STEADY_ALLOCATOR)
    os.execv(sys.executable, [sys.executable, *sys.argv])


def interleaved_ratios(fns: dict[str, Callable[[], object]], baseline: str,
                       rounds: int) -> dict[str, float]:
    """Times every function once per round, in turn, after one untimed warm-up round.

    Returns, for each function other than ``baseline``, the median over rounds of its time divided
    by the baseline's time in the same round (a slow spell hits both sides of a ratio), and, under
    ``baseline``, the baseline's median time in seconds.

    Example:
        >>> work = lambda: sum(range(10_000))
        >>> r = interleaved_ratios({"fp32": work, "sim": work}, "fp32", 3)
        >>> sorted(r)
        ['fp32', 'sim']
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    base = times[baseline]
    out = {key: statistics.median(t / b for t, b in zip(values, base))
           for key, values in times.items() if key != baseline}
    out[baseline] = statistics.median(base)
    return out
