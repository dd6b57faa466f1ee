"""Trace records: how AutoLeaf and Specialization read, with and without a source line."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from fxquant.tracing import AutoLeaf, Specialization


def test_auto_leaf_reads_as_what_was_made_opaque_and_where():
    leaf = AutoLeaf("post", "m.Post", "postprocess", "TraceError: boom", source="m.py:3: if x:")
    assert str(leaf) == "post.postprocess() (m.Post): TraceError: boom at m.py:3: if x:"
    root = AutoLeaf("", "m.Net", "forward", "TraceError: boom")
    assert str(root) == "<root> (m.Net): TraceError: boom" and root.source is None


def test_specialization_reads_as_the_assumption_and_where():
    spec = Specialization("x_1", "inner", "len(x.shape) == 2", "shape", source="m.py:7: n, c = x")
    assert str(spec) == "len(x.shape) == 2 [shape] in inner (node x_1) at m.py:7: n, c = x"
    assert str(Specialization("flip", "", "flip = False (default)", "input")) == (
        "flip = False (default) [input] in <root> (node flip)")


def test_records_are_frozen_and_source_is_keyword_only():
    spec = Specialization("n", "", "a", "value")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "shape"
    with pytest.raises(TypeError, match="positional argument"):
        AutoLeaf("p", "c", "forward", "e", "m.py:1")
    assert list(inspect.signature(AutoLeaf).parameters) == [
        "module_path", "module_class", "method", "error", "source"]
