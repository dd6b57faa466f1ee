"""Shared fixtures: devices, seeding and model helpers."""
from __future__ import annotations

import ctypes
import gc
import os
import sys
from typing import Iterator

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Under pytest-xdist (``make test`` runs the suite on one worker per core) each worker keeps
# torch's default intra-op thread count: the tests on trained nets and the side-by-side ones
# with aimet-torch were measured with it, and several of their figures move with the thread count
# (a sum in another order trains another net). make test lets the waiting threads sleep
# (OMP_WAIT_POLICY=PASSIVE) so that the workers' threads do not spin against each other.


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device test runs on CPU, and on CUDA when available."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    # GraphModules sit in reference cycles (graph <-> owning module), so a finished test's models
    # are freed only by the cycle collector; collect now, or the next model-zoo test allocates
    # its copies on top of the last one's and the suite's peak memory doubles.
    gc.collect()
    _release_free_heap()


#: Set FXQUANT_MEM_PROBE=<file> to append, after every test, its peak resident size (VmHWM since
#: the previous test) and the resident size it leaves behind (VmRSS after the collection above),
#: in MB: ``<peak> <left> <test id>``. Linux only; how the suite's peak memory is tracked down.
_MEM_PROBE = os.environ.get("FXQUANT_MEM_PROBE")


@pytest.fixture(autouse=True)
def _memory_probe(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not _MEM_PROBE or not sys.platform.startswith("linux"):
        return
    gc.collect()
    _release_free_heap()
    status = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                status[key] = int(value.split()[0]) // 1024
    with open(_MEM_PROBE, "a", encoding="utf-8") as f:
        f.write(f"{status.get('VmHWM', 0)} {status.get('VmRSS', 0)} {request.node.nodeid}\n")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current resident size


def _release_free_heap() -> None:
    """Hands memory freed by the last test back to the OS (glibc keeps freed heap pages, so the
    suite's resident size would grow by fragmentation from test to test)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc() if sys.platform.startswith("linux") else None
