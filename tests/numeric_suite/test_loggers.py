"""Streaming statistics, the pairing of two loggers, and the logger module itself."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from fxquant.numeric_suite import (OutputLogger, loggers_reset, loggers_set_enabled,
                                   loggers_set_save_activations)
from fxquant.numeric_suite.stats import Comparison, PairStats, RunningStats


def _logger(model: str = "a", save: bool = False) -> OutputLogger:
    return OutputLogger("op", "op", model, "layer", "t", "t", "node_output", 0, 0, "layer",
                        save_activations=save)


def test_running_stats(device: torch.device) -> None:
    stats = RunningStats()
    stats.update(torch.tensor([1.0, -3.0], device=device))
    stats.update(torch.tensor([2.0], device=device, dtype=torch.bfloat16))
    stats.update(torch.empty(0, device=device))
    d = stats.as_dict()
    assert d == {"count": 3, "numel": 3, "sum": 0.0, "sum_sq": 14.0, "mean": 0.0, "min": -3.0,
                 "max": 2.0}
    stats.reset()
    assert stats.as_dict()["count"] == 0 and math.isnan(stats.as_dict()["min"])


def test_pair_stats_keep_precision_at_high_sqnr() -> None:
    x = torch.randn(10_000, dtype=torch.float64)
    y = x + 1e-7 * torch.randn_like(x)  # ~140 dB: expanding (x - y)² would lose it all
    stats = PairStats.of(x.float(), y)
    expected = ((x - y.float().double()) ** 2).sum().item()
    assert stats.as_dict()["noise"] == pytest.approx(expected, rel=1e-3)


def test_pair_stats_need_equal_sizes() -> None:
    with pytest.raises(ValueError, match="tensors of 3 and 4 elements"):
        PairStats.of(torch.ones(3), torch.ones(4))


def test_comparison_pairs_in_either_order_and_checks_sizes() -> None:
    comparison = Comparison("layer", ("a", "b"))
    x, y = torch.ones(4), torch.zeros(4)
    comparison.offer(1, y, y.clone)
    assert comparison.pending == 1
    comparison.offer(0, x, x.clone)
    assert comparison.pending == 0
    assert comparison.stats.as_dict()["signal"] == 4.0  # side 0 is the reference
    comparison.offer(0, x, x.clone)
    with pytest.raises(ValueError, match="logged shape .4,. but model 'b' logged shape .3,."):
        comparison.offer(1, torch.ones(3), torch.ones(3).clone)


def test_comparison_warns_once_when_models_are_not_run_alternately(
        caplog: pytest.LogCaptureFixture) -> None:
    comparison = Comparison("conv1", ("float", "int8"), max_pending=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            comparison.offer(0, torch.ones(2), torch.ones(2).clone)
    assert sum("run both models on each batch" in r.message for r in caplog.records) == 1
    comparison.reset()
    assert comparison.pending == 0 and comparison.stats.count == 0


def test_logger_is_identity_and_records_by_value(device: torch.device) -> None:
    log = _logger(save=True)
    x = torch.randn(3, device=device)
    assert log(x) is x
    x.add_(1.0)  # an in-place op after the logger must not change what it recorded
    assert not torch.equal(log.stats[0], x)
    assert log(3) == 3 and log(torch.arange(3, device=device)).dtype == torch.int64
    assert log.running.count == 1
    log.enabled = False
    log(x)
    assert log.running.count == 1 and len(log.stats) == 1


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_loggers_stream_by_default_and_feed_comparisons() -> None:
    a, b = _logger("a"), _logger("b")
    comparison = Comparison("layer", ("a", "b"))
    a.link(comparison, 0)
    b.link(comparison, 1)
    for _ in range(3):
        x = torch.randn(8)
        a(x)
        b(torch.quantize_per_tensor(x, 0.1, 128, torch.quint8))
    assert a.stats == [] and b.stats == [] and comparison.stats.count == 3
    assert 20 < 10 * math.log10(comparison.stats.as_dict()["signal"]
                                / comparison.stats.as_dict()["noise"]) < 60


def test_switches_over_all_loggers() -> None:
    model = torch.nn.Sequential(_logger("a"), torch.nn.ReLU(), _logger("a"))
    loggers_set_save_activations(model, True)
    model(torch.ones(2))
    assert all(len(m.stats) == 1 for m in model if isinstance(m, OutputLogger))
    loggers_set_enabled(model, False)
    model(torch.ones(2))
    assert all(m.running.count == 1 for m in model if isinstance(m, OutputLogger))
    loggers_reset(model)
    assert all(m.running.count == 0 and not m.stats for m in model
               if isinstance(m, OutputLogger))
    with pytest.raises(TypeError, match="instrumented by add_loggers"):
        loggers_set_enabled("model", True)  # type: ignore[arg-type]


def test_comparison_pairs_by_call_index() -> None:
    from fxquant.numeric_suite.errors import PairingError

    comparison = Comparison("conv2", ("float", "int8"))
    xs = [torch.full((3,), float(i + 1)) for i in range(3)]
    for i, x in enumerate(xs):  # all of model A first
        comparison.offer(0, x, x.clone, call=i)
    assert comparison.pending_calls(0) == [0, 1, 2]
    comparison.offer(1, xs[0], xs[0].clone, call=0)
    comparison.offer(1, xs[1] + 1, (xs[1] + 1).clone, call=1)
    assert comparison.pending_calls(0) == [2]
    stats = comparison.stats.as_dict()
    assert stats["count"] == 2 and stats["noise"] == 3.0  # call 1 differs by 1 on 3 elements
    with pytest.raises(PairingError, match="model 'float' logged call 2 here, but model "
                                           "'int8''s call 2 never reached this layer"):
        comparison.offer(1, xs[2], xs[2].clone, call=3)  # B's call 2 skipped this layer
    again = Comparison("conv2", ("float", "int8"))
    again.offer(1, xs[0], xs[0].clone, call=5)
    with pytest.raises(PairingError, match="model 'int8' logged call 5 twice"):
        again.offer(1, xs[0], xs[0].clone, call=5)


def test_call_pairing_checks_inputs_and_counts() -> None:
    from fxquant.numeric_suite.errors import PairingError
    from fxquant.numeric_suite.stats import CallPairing

    pairing = CallPairing(("float", "int8"))
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    pairing.offer(0, 0, (x, 4))
    pairing.offer(1, 0, (x.clone(), 4))  # same values: fine
    pairing.offer(0, 1, (x,))
    with pytest.raises(PairingError, match="call 1 of model 'float' and call 1 of model 'int8' "
                                           "got different inputs") as info:
        pairing.offer(1, 1, (y,))
    assert info.value.call == 1
    pairing.offer(0, 2, (x, None))
    with pytest.raises(PairingError, match="call 2 of model 'float'"):
        pairing.offer(1, 2, (x, 1))  # a non-tensor input differs
    pairing.offer(0, 3, (x,))
    with pytest.raises(PairingError, match="model 'float' ran 4 time\\(s\\) but model 'int8' 3"):
        pairing.check()
    pairing.reset()
    pairing.check()
    assert pairing.calls == [0, 0]


def test_call_clock_counts_calls_and_resets_both_models() -> None:
    from fxquant.numeric_suite.loggers import CallClock
    from fxquant.numeric_suite.stats import CallPairing

    pairing = CallPairing(("a", "b"))
    clock_a, clock_b = CallClock("a", 0, pairing), CallClock("b", 1, pairing)
    log = _logger("a")
    log.clock = clock_a.state
    comparison = Comparison("layer", ("a", "b"))
    log.link(comparison, 0)
    x = torch.ones(2)
    for _ in range(2):
        clock_a(x)
        log(x)
    assert clock_a.state.count == 2 and comparison.pending_calls(0) == [0, 1]
    clock_b(x)
    clock_a.reset()  # restarts both models' numbering together
    assert clock_a.state.count == 0 and clock_b.state.count == 0 and pairing.calls == [0, 0]
    clock_a.enabled = False
    clock_a(x)
    assert clock_a.state.count == 0


def test_call_pairing_accepts_equal_inputs_with_nan() -> None:
    from fxquant.numeric_suite.stats import CallPairing

    pairing = CallPairing(("a", "b"))
    x = torch.tensor([1.0, float("nan")])
    pairing.offer(0, 0, (x,))
    pairing.offer(1, 0, (x.clone(),))  # NaN inputs are the same inputs
    pairing.check()
