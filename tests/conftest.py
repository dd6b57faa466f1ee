"""Shared fixtures: devices, seeding and model helpers."""
from __future__ import annotations

import gc
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
