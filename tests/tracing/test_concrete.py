"""Concrete mode: list inputs, specializations (and where they were asked), data-dependent
control flow made opaque instead of specialized."""
from __future__ import annotations

import logging
import operator

import pytest
import torch
from torch import nn

from fxquant.errors import TraceError
from fxquant.tracing import (DataDependentError, Specialization, auto_leaves, specializations,
                             trace)
from tests.tracing.tracing_helpers import HELPERS_FILE, Gated, ListModel, module_targets, nodes


# --- concrete mode --------------------------------------------------------------------------------
def test_list_input_model_traces_in_concrete_mode(caplog):
    torch.manual_seed(0)
    model = ListModel()
    with pytest.raises(TraceError):
        trace(model)  # plain fx: a list input cannot be iterated
    example = [torch.rand(3, 10, 8), torch.rand(3, 6, 9)]
    with caplog.at_level(logging.INFO, logger="fxquant.tracing"):
        gm = trace(model, example_inputs=(example,))
    assert auto_leaves(gm) == ()
    placeholders = [n.name for n in nodes(gm, "placeholder")]
    assert placeholders[:2] == ["images_1", "images_2"]  # one graph input per tensor
    # Same structure and shapes, other data: the graph answers like the model.
    other = [torch.rand(3, 10, 8), torch.rand(3, 6, 9)]
    assert torch.equal(gm(other), model(other))
    assert torch.equal(gm(example), model(example))  # the caller's inputs were not modified
    specs = specializations(gm)
    assert all(isinstance(s, Specialization) for s in specs)
    texts = [s.assumption for s in specs]
    assert "len(images_1.shape[-2:]) == 2" in texts
    assert "flip = False (default)" in texts
    compare = next(s for s in specs if s.assumption.endswith("is True") and ">" in s.assumption)
    assert compare.kind == "value"
    assert compare.module_path == ""
    assert compare.source.startswith(HELPERS_FILE) and compare.source.endswith("if h > w:")
    assert "specialized len(images_1.shape[-2:]) == 2" in caplog.text


def test_specialization_records_submodule_path():
    class Inner(nn.Module):
        def forward(self, x):
            n, c = x.shape
            return x.reshape(n * c) if n > 1 else x

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x)

    x = torch.rand(2, 3)
    gm = trace(Outer(), example_inputs=x)  # a single tensor is the one positional argument
    assert torch.equal(gm(x), Outer()(x))
    spec = next(s for s in specializations(gm) if s.assumption == "len(x.shape) == 2")
    assert (spec.module_path, spec.kind) == ("inner", "shape")
    assert spec.source.endswith("n, c = x.shape")
    # Nodes only made to answer the question are pruned from the graph.
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.gt]


@pytest.mark.parametrize("mode", ["bool", "item", "nonzero"])
def test_data_dependent_branch_becomes_leaf(mode):
    torch.manual_seed(0)
    model = Gated(mode).eval()
    x = torch.randn(2, 8)
    gm = trace(model, example_inputs=(x,))
    (leaf,) = auto_leaves(gm)
    assert (leaf.module_path, leaf.method) == ("gate", "forward")
    assert "DataDependentError" in leaf.error and "depends on tensor data" in leaf.error
    assert "gate" in module_targets(gm) and "fc" in module_targets(gm)
    # Not specialized: inputs taking the other branch still match the model.
    for y in (x, torch.full((2, 8), 5.0), torch.full((2, 8), -5.0)):
        assert torch.equal(gm(y), model(y))


def test_data_dependent_branch_strict_raises():
    with pytest.raises(TraceError, match=r"cannot trace module 'gate' .*DataDependentError: "
                                         r"bool\(\) of .* depends on tensor data") as info:
        trace(Gated("bool"), example_inputs=(torch.randn(2, 8),), strict=True)
    assert isinstance(info.value.__cause__, DataDependentError)
    assert info.value.source_line.endswith("return x * 2 if positive else x - 1")
