"""Which torch operations make a value depend on tensor data."""
from __future__ import annotations

import pytest
import torch

from fxquant.tracing.data_dependence import DataDependenceProbe, data_dependent_reason


@pytest.mark.parametrize(("run", "reason"), [
    (lambda x: x.nonzero(), "nonzero()"),
    (lambda x: x[x > 0], "boolean-mask indexing"),
    (lambda x: torch.where(x > 0), "torch.where(condition)"),
    (lambda x: x.repeat_interleave(torch.tensor([1, 2, 1])), "repeat_interleave(tensor repeats)"),
    (lambda x: torch.unique(x), "unique()"),
    (lambda x: x.sum().item(), "item()"),
])
def test_probe_names_the_first_data_dependent_operation(run, reason):
    x = torch.tensor([1.0, -2.0, 3.0])
    with DataDependenceProbe() as probe:
        run(x)
        x.nonzero()                         # a later one does not replace the first
    assert probe.reason == reason


def test_shape_and_value_arithmetic_is_not_data_dependent():
    x = torch.rand(2, 3)
    with DataDependenceProbe() as probe:
        _ = (x * 2 + 1).reshape(3, 2)[0]
        _ = torch.where(x > 0.5, x, -x)     # three-argument where: shape known
        _ = x.repeat_interleave(2)          # int repeats: shape known
    assert probe.reason is None
    assert data_dependent_reason(torch.add, (x, x), {}) is None
