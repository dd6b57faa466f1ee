"""Replay of concrete values across fallback attempts, and its refusal when a value changed."""
from __future__ import annotations

import logging
import re

import torch

from fxquant.tracing import auto_leaves, trace
from tests.tracing.tracing_helpers import Gated, ShapeMutating


def test_fallback_retries_replay_values(caplog):
    torch.manual_seed(0)
    model = Gated("bool").eval()
    x = torch.randn(2, 8)
    with caplog.at_level(logging.DEBUG, logger="fxquant.tracing"):
        gm = trace(model, example_inputs=(x,))
    # The retry reuses the values of the first attempt up to the gate (input, fc, ...).
    counts = re.findall(r"attempt (failed|succeeded); it replayed (\d+) node", caplog.text)
    assert [outcome for outcome, _ in counts] == ["failed", "succeeded"]
    assert int(counts[0][1]) == 0 and int(counts[1][1]) >= 2
    assert "not replaying" not in caplog.text
    assert torch.equal(gm(x), model(x))


def test_replay_refuses_values_modified_after_the_divergence(caplog):
    torch.manual_seed(0)
    model = ShapeMutating().eval()
    x = torch.randn(2, 8)
    with caplog.at_level(logging.DEBUG, logger="fxquant.tracing"):
        gm = trace(model, example_inputs=(x,))
    assert "not replaying" in caplog.text
    assert [leaf.module_path for leaf in auto_leaves(gm)] == ["gate"]
    with torch.no_grad():
        expected = model(x.clone())
        assert expected.shape == (1, 16)
        assert torch.equal(gm(x.clone()), expected)
