"""Metrics: closed forms, every float dtype, quantized tensors, tuples, streaming == tensor path."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from fxquant.numeric_suite import (METRICS, compute_cosine_similarity,
                                   compute_normalized_l2_error, compute_sqnr)
from fxquant.numeric_suite.metrics import get_metric
from fxquant.numeric_suite.stats import PairStats


def _pair(device: torch.device, dtype: torch.dtype = torch.float32
          ) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(4, 3, 5, 5, device=device)
    y = x + 0.01 * torch.randn_like(x)
    return x.to(dtype), y.to(dtype)


def test_closed_forms(device: torch.device) -> None:
    x, y = _pair(device, torch.float64)
    noise = ((x - y) ** 2).sum()
    signal = (x ** 2).sum()
    assert compute_sqnr(x, y).item() == pytest.approx(10 * math.log10(signal / noise), rel=1e-6)
    assert compute_normalized_l2_error(x, y).item() == pytest.approx(
        math.sqrt(noise / signal), rel=1e-6)
    cos = (x * y).sum() / (x.norm() * y.norm())
    assert compute_cosine_similarity(x, y).item() == pytest.approx(cos.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_float_dtype_is_compared_in_at_least_float32(device: torch.device,
                                                           dtype: torch.dtype) -> None:
    x, y = _pair(device, dtype)
    for metric in METRICS.values():
        got = metric.fn(x, y)
        assert got is not None and torch.isfinite(got)
        widened = metric.fn(x.float(), y.float()) if dtype != torch.float64 else \
            metric.fn(x, y)
        assert got.item() == pytest.approx(widened.item(), rel=1e-5)


def test_equal_and_zero_tensors(device: torch.device) -> None:
    x = torch.randn(10, device=device)
    assert math.isinf(compute_sqnr(x, x).item())
    assert compute_normalized_l2_error(x, x).item() == 0.0
    assert compute_cosine_similarity(x, x).item() == pytest.approx(1.0)
    zero = torch.zeros(3, device=device)
    assert compute_sqnr(zero, zero).item() == math.inf  # identical, also when all zero
    assert compute_normalized_l2_error(zero, zero).item() == 0.0
    assert compute_cosine_similarity(zero, zero).item() == 1.0
    assert compute_sqnr(zero, zero + 1).item() == -math.inf  # all-zero reference, an error
    assert compute_normalized_l2_error(zero, zero + 1).item() == math.inf
    bad = x.clone()
    bad[3] = math.nan
    assert math.isnan(compute_sqnr(x, bad).item())  # NaN is reported, not skipped
    assert PairStats.of(x, bad).result().nonfinite == 1


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_quantized_tensors_are_dequantized() -> None:
    x = torch.randn(16)
    q = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
    assert compute_sqnr(x, q).item() == pytest.approx(compute_sqnr(x, q.dequantize()).item())


def test_tuples_compare_element_by_element() -> None:
    x, y = torch.randn(5), torch.randn(5)
    out = compute_sqnr((x, y), (x, y + 1))
    assert isinstance(out, list) and math.isinf(out[0].item()) and math.isfinite(out[1].item())


def test_shapes_with_equal_size_are_compared_flat() -> None:
    x = torch.randn(2, 6)
    assert compute_cosine_similarity(x, x.reshape(3, 4)).item() == pytest.approx(1.0)


def test_streaming_sums_equal_the_tensor_metric_over_all_batches(device: torch.device) -> None:
    batches = [_pair(device) for _ in range(5)]
    stats = PairStats()
    for x, y in batches:
        stats.update(x, y)
    x_all = torch.cat([x.reshape(-1) for x, _ in batches])
    y_all = torch.cat([y.reshape(-1) for _, y in batches])
    for metric in METRICS.values():
        assert metric.from_stats(stats) == pytest.approx(metric.fn(x_all, y_all).item(),
                                                         rel=1e-4)


def test_metric_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="different numbers of elements"):
        compute_sqnr(torch.ones(3), torch.ones(4))
    with pytest.raises(TypeError, match="compares two tensors"):
        compute_sqnr(torch.ones(3), [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="integer tensors with .float"):
        compute_sqnr(torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="sequences of 2 and 1"):
        compute_sqnr((torch.ones(1), torch.ones(1)), (torch.ones(1),))
    with pytest.raises(ValueError, match="known metrics"):
        get_metric("psnr")


def test_get_metric_recognises_names_ours_and_torchs() -> None:
    assert get_metric("sqnr") is METRICS["sqnr"]
    assert get_metric(compute_cosine_similarity) is METRICS["cosine_similarity"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.ns.fx import utils as torch_utils
    assert get_metric(torch_utils.compute_sqnr) is METRICS["sqnr"]
    assert get_metric(lambda a, b: a) is None
