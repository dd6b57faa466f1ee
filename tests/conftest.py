"""Shared fixtures: devices, seeding and model helpers."""
from __future__ import annotations

import ctypes
import gc
import sys
from typing import Iterator

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


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
