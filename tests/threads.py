"""Torch's intra-op thread count, pinned where a test's figures depend on it.

Training and float reductions sum in an order that depends on how many threads split the work, so
the weights of a net trained in a test (and every threshold measured on it) depend on the thread
count torch picked for the machine. The figures in the tests were measured with
:data:`MEASURED_THREADS`; the helpers that train, and the comparisons of summed results, run with
that count whatever the machine or the pytest-xdist worker has.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

#: The thread count the suite's trained-net figures were measured with.
MEASURED_THREADS = 2


@contextlib.contextmanager
def torch_threads(count: int = MEASURED_THREADS) -> Iterator[None]:
    """Runs the block with ``torch.set_num_threads(count)``, then restores the previous count.

    Example:
        >>> with torch_threads(2):
        ...     torch.get_num_threads()
        2
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
