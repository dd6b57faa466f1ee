"""Encoding analyzers: TF-enhanced against a loop-based reference of SPEC §5, percentile, MSE,
min-max, per-channel batching, NaN/Inf handling and errors."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from fxquant.core.kernels import quantize_dequantize
from fxquant.errors import ConfigError
from fxquant.quantsim import histogram_analyzers, minmax_analyzer
from fxquant.quantsim.encoding import MIN_SCALE, CalibrationError, QuantEncoding
from fxquant.quantsim.encoding_analyzer import (
    MinMaxEncodingAnalyzer, MseEncodingAnalyzer, PercentileEncodingAnalyzer,
    TfEnhancedEncodingAnalyzer, get_encoding_analyzer,
)
from fxquant.quantsim.histogram_analyzers import _bincount
from fxquant.quantsim.histogram_costs import _candidate_costs
from fxquant.quantsim.quant_scheme import QuantizationDataType, QuantScheme

SCHEMES = ["tf", "tf_enhanced", "percentile", "mse"]


# -------------------------------------------------------------------------------------------------
# Straightforward (loop-based) reference of SPEC §5, as documented in TfEnhancedEncodingAnalyzer
# -------------------------------------------------------------------------------------------------
def ref_histogram(batches: list[list[float]], bins: int = 512) -> tuple[list[float], float, float]:
    lo = hi = None
    limit = None
    counts = [0.0] * bins
    for batch in batches:
        values = [v for v in batch if math.isfinite(v)]
        new_lo = min(values) if lo is None else min(lo, min(values))
        new_hi = max(values) if hi is None else max(hi, max(values))
        if limit is None and new_hi > new_lo:          # widening limit: 3x the first range, centred
            centre, half = (new_lo + new_hi) / 2, 1.5 * (new_hi - new_lo)
            limit = (centre - half, centre + half)
        if limit is not None:
            new_lo, new_hi = max(new_lo, limit[0]), min(new_hi, limit[1])
        new_w = (new_hi - new_lo) / bins
        if lo is not None and (new_lo, new_hi) != (lo, hi):
            old_w = (hi - lo) / bins
            moved = [0.0] * bins
            for i, count in enumerate(counts):
                if count == 0:
                    continue
                a, b = lo + i * old_w, lo + (i + 1) * old_w
                for j in range(bins):           # overlap of old bin i with new bin j
                    c, d = new_lo + j * new_w, new_lo + (j + 1) * new_w
                    overlap = min(b, d) - max(a, c)
                    if overlap > 0:
                        moved[j] += count * overlap / old_w
            counts = moved
        lo, hi = new_lo, new_hi
        for v in values:
            j = int((v - lo) / new_w) if new_w > 0 else 0
            counts[min(max(j, 0), bins - 1)] += 1
    return counts, lo, hi


def ref_tf_enhanced(counts: list[float], lo: float, hi: float, bitwidth: int, symmetric: bool,
                    gamma: float = 3.0) -> tuple[float, float]:
    steps = 2 ** bitwidth - 1
    bins = len(counts)
    width = (hi - lo) / bins
    centres = [lo + (i + 0.5) * width for i in range(bins)]
    obs_lo, obs_hi = min(lo, 0.0), max(hi, 0.0)
    obs_hi = max(obs_hi, obs_lo + steps * MIN_SCALE)
    candidates = []
    if symmetric:
        delta_max = 2 * max(obs_hi, -obs_lo) / steps
        for k in range(1, 102):
            candidates.append((max(delta_max * k / 100, MIN_SCALE), -(2 ** (bitwidth - 1))))
    else:
        delta_obs = (obs_hi - obs_lo) / steps
        offset_obs = round(obs_lo / delta_obs)
        grid_lo = offset_obs * delta_obs
        grid_hi = grid_lo + steps * delta_obs
        offsets = [round(-steps + steps * i / 20) for i in range(21)] + [offset_obs]
        for k in range(1, 18):
            delta = delta_obs * k / 16
            for offset in offsets:
                cand_lo = max(delta * offset, grid_lo)
                cand_hi = min(delta * offset + steps * delta, grid_hi)
                d = max((cand_hi - cand_lo) / steps, MIN_SCALE)
                candidates.append((d, min(max(round(cand_lo / d), -steps), 0)))
    best = None
    for delta, offset in candidates:
        cost = 0.0
        for centre, count in zip(centres, counts):
            if count == 0:
                continue
            q = round(centre / delta) - offset
            clipped = q < 0 or q > steps
            err = (min(max(q, 0), steps) + offset) * delta - centre
            cost += count * err * err * (gamma if clipped else 1.0)
        if best is None or cost < best[0]:
            best = (cost, delta, offset)
    _, delta, offset = best
    return offset * delta, offset * delta + steps * delta


def _datasets() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    gaussian = torch.randn(20000, generator=gen)
    gaussian[:10] = torch.tensor([25.0, -18.0, 30.0, 22.0, -20.0, 40.0, 19.0, -25.0, 33.0, 21.0])
    return {
        "uniform": torch.rand(20000, generator=gen) * 3 - 1,
        "gaussian_outliers": gaussian,
        "relu": torch.randn(20000, generator=gen).relu() * 2,
    }


@pytest.mark.parametrize("bitwidth", [8, 4])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("data", ["uniform", "gaussian_outliers", "relu"])
def test_tf_enhanced_matches_loop_reference(data, symmetric, bitwidth):
    x = _datasets()[data]
    batches = list(x.split(5000)) if data == "uniform" else [x]
    analyzer = TfEnhancedEncodingAnalyzer(name=data)
    for b in batches:
        analyzer.update_stats(b)
    enc = analyzer.compute_encoding(bitwidth, symmetric=symmetric)
    counts, lo, hi = ref_histogram([b.tolist() for b in batches])
    ref_min, ref_max = ref_tf_enhanced(counts, lo, hi, bitwidth, symmetric)
    bin_width = (hi - lo) / 512
    assert abs(enc.min.item() - ref_min) <= bin_width
    assert abs(enc.max.item() - ref_max) <= bin_width
    if data == "gaussian_outliers" and bitwidth == 4:
        assert enc.max.item() < 0.5 * x.max().item()  # outliers are clipped, unlike min-max
    if data == "relu" and not symmetric:
        assert int(enc.zero_point) == 0


def test_histogram_widens_up_to_three_times_and_conserves_counts():
    analyzer = TfEnhancedEncodingAnalyzer()
    batches = [torch.linspace(0, 1, 1001), torch.linspace(-0.5, 1.5, 1001),
               torch.tensor([10.0, -10.0, 0.5])]
    for b in batches:
        analyzer.update_stats(b)
    counts, edges = analyzer.histogram()
    assert counts.sum().item() == pytest.approx(2005, abs=1e-6)
    assert edges[0, 0].item() == pytest.approx(-1.0) and edges[0, -1].item() == pytest.approx(2.0)
    mn, mx = analyzer.observed_min_max()
    assert (mn.item(), mx.item()) == (-10.0, 10.0)   # exact running min/max, beyond the histogram
    ref_counts, ref_lo, ref_hi = ref_histogram([b.tolist() for b in batches])
    assert (ref_lo, ref_hi) == pytest.approx((-1.0, 2.0))
    ours = counts[0].tolist()
    assert max(abs(a - b) for a, b in zip(ours, ref_counts)) <= 2.0
    # the old counts were spread proportionally: the first batch's mass stays where it was
    assert sum(ours[:170]) == pytest.approx(sum(ref_counts[:170]), abs=3)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_equals_per_tensor_channel_by_channel(scheme, axis, device):
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(6, 5, 40, generator=gen) * torch.linspace(0.1, 3, 5)[None, :, None]).to(device)
    x[0, :, 0] = 12.0
    batches = [x[..., :25], x[..., 25:] * 1.5]
    per_channel = get_encoding_analyzer(scheme, axis=axis)
    for b in batches:
        per_channel.update_stats(b)
    for symmetric in (False, True):
        enc = per_channel.compute_encoding(8, symmetric)
        assert enc.axis == axis and enc.scale.shape == (x.shape[axis],)
        for c in range(x.shape[axis]):
            single = get_encoding_analyzer(scheme)
            for b in batches:
                single.update_stats(b.select(axis, c))
            ref = single.compute_encoding(8, symmetric)
            assert enc.scale[c].item() == ref.scale.item()
            assert enc.zero_point[c].item() == ref.zero_point.item()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_nan_inf_excluded_counted_and_warned(scheme, device, caplog):
    clean = torch.randn(1000, device=device)
    dirty = clean.clone()
    dirty[::100] = float("nan")
    dirty[5] = float("inf")
    dirty[6] = -float("inf")
    reference = get_encoding_analyzer(scheme)
    reference.update_stats(clean[torch.isfinite(dirty)])
    analyzer = get_encoding_analyzer(scheme, name="layer3.relu")
    analyzer.update_stats(dirty)
    assert int(analyzer.num_nonfinite) == 12
    with caplog.at_level(logging.WARNING, logger="fxquant.quantsim.minmax_analyzer"):
        enc = analyzer.compute_encoding(8, symmetric=False)
    assert "'layer3.relu'" in caplog.text and "12 of 1000" in caplog.text
    assert "NaN or Inf" in caplog.text
    assert enc == reference.compute_encoding(8, symmetric=False)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_all_zero_tensor_gets_valid_encoding(scheme, symmetric, device):
    analyzer = get_encoding_analyzer(scheme)
    analyzer.update_stats(torch.zeros(64, device=device))
    analyzer.update_stats(torch.zeros(64, device=device))
    enc = analyzer.compute_encoding(8, symmetric)
    assert 0 < enc.scale.item() < 1e-3 and math.isfinite(enc.scale.item())
    assert enc.qmin <= int(enc.zero_point) <= enc.qmax
    zeros = quantize_dequantize(torch.zeros(4, device=device), enc.scale, enc.zero_point,
                                enc.qmin, enc.qmax)
    assert torch.equal(zeros, torch.zeros(4, device=device))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_constant_then_spread(scheme):
    """A degenerate first batch must not pin the histogram to a point."""
    analyzer = get_encoding_analyzer(scheme)
    analyzer.update_stats(torch.zeros(100))
    analyzer.update_stats(torch.linspace(-1, 1, 1001))
    enc = analyzer.compute_encoding(8, symmetric=False)
    assert enc.max.item() > 0.9 and enc.min.item() < -0.9


@pytest.mark.parametrize("scheme", SCHEMES)
def test_compute_before_update_raises(scheme):
    analyzer = get_encoding_analyzer(scheme, name="fc")
    with pytest.raises(CalibrationError, match=r"'fc' has no statistics.*update_stats"):
        analyzer.compute_encoding(8, symmetric=False)
    analyzer.update_stats(torch.empty(0))
    assert not analyzer.has_stats


def test_scatter_histogram_path_matches_bincount():
    """The accelerator path (scatter-add, no host sync) counts like torch.bincount."""
    index = torch.randint(0, 37, (5000,), dtype=torch.int32)
    assert torch.equal(_bincount(index, 40, scatter=True), torch.bincount(index, minlength=40))
    assert torch.equal(_bincount(index, 40), torch.bincount(index, minlength=40))


@pytest.mark.parametrize("scheme", ["tf_enhanced", "percentile", "mse"])
def test_analyzers_identical_with_the_scatter_histogram(scheme, monkeypatch):
    x = torch.randn(4, 300)
    x[0, 0] = float("nan")
    reference = get_encoding_analyzer(scheme, axis=0)
    reference.update_stats(x)
    reference.update_stats(x * 2)
    monkeypatch.setattr(histogram_analyzers, "_bincount",
                        lambda i, n: _bincount(i, n, scatter=True))
    scattered = get_encoding_analyzer(scheme, axis=0)
    scattered.update_stats(x)
    scattered.update_stats(x * 2)
    assert int(scattered.num_nonfinite) == 2
    assert scattered.compute_encoding(8, False) == reference.compute_encoding(8, False)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("axis", [None, 1])
def test_chunked_statistics_match_one_pass(scheme, axis, monkeypatch):
    """CPU statistics stream over column chunks; the result must not depend on the chunking."""
    x = torch.randn(3, 4, 250)
    x[1, 2, 7] = float("inf")
    batches = [x, x * 3 - 1]
    one_pass = get_encoding_analyzer(scheme, axis=axis)
    for b in batches:
        one_pass.update_stats(b)
    monkeypatch.setattr(minmax_analyzer, "_CPU_STATS_CHUNK", 97)
    chunked = get_encoding_analyzer(scheme, axis=axis)
    for b in batches:
        chunked.update_stats(b)
    assert int(chunked.num_nonfinite) == int(one_pass.num_nonfinite) == 2
    for symmetric in (False, True):
        assert chunked.compute_encoding(8, symmetric) == one_pass.compute_encoding(8, symmetric)
    if scheme != "tf":      # histograms counted in one lane equal the interleaved lanes' sum
        monkeypatch.setattr(histogram_analyzers, "_CPU_HISTOGRAM_LANES", 1)
        one_lane = get_encoding_analyzer(scheme, axis=axis)
        for b in batches:
            one_lane.update_stats(b)
        assert torch.equal(one_lane.histogram()[0], one_pass.histogram()[0])


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("axis", [None, 0])
def test_finite_fast_path_matches_masked_path(scheme, axis, monkeypatch):
    """On CPU an all-finite batch skips the NaN/Inf masking; the masked path (the one accelerators
    always take) must give the same statistics and encodings."""
    batches = [torch.randn(6, 300), torch.randn(6, 300) * 4 + 1, torch.rand(6, 300)]
    fast = get_encoding_analyzer(scheme, axis=axis)
    for b in batches:
        fast.update_stats(b)
    monkeypatch.setattr(minmax_analyzer, "_reads_back_freely", lambda device: False)
    masked = get_encoding_analyzer(scheme, axis=axis)
    for b in batches:
        masked.update_stats(b)
    assert int(fast.num_nonfinite) == int(masked.num_nonfinite) == 0
    for f, m in zip(fast.observed_min_max(), masked.observed_min_max()):
        assert torch.equal(f, m)
    if scheme != "tf":
        assert torch.equal(fast.histogram()[0], masked.histogram()[0])
    for symmetric in (False, True):
        assert fast.compute_encoding(8, symmetric) == masked.compute_encoding(8, symmetric)


def _brute_force_costs(centres, counts, scale, zero_point, qmin, qmax, gamma):
    """cost[c, k] = sum_b n_b (qdq(c_b) - c_b)^2, clipped bins weighted by gamma (float64)."""
    c, n = centres.double()[:, None, :], counts.double()[:, None, :]
    s = scale.double()[:, :, None]
    z = zero_point.double()[:, :, None] if torch.is_tensor(zero_point) else float(zero_point)
    err = (torch.clamp(torch.round(centres[:, None, :] / scale[:, :, None]).double() + z,
                       qmin, qmax) - z) * s - c
    clipped = (c < (qmin - z - 0.5) * s) | (c > (qmax - z + 0.5) * s)
    return (n * err * err * torch.where(clipped, gamma, 1.0)).sum(-1)


@pytest.mark.parametrize("occupancy", [0.01, 0.3, 0.95])
@pytest.mark.parametrize("uniform_zp", [True, False])
def test_candidate_costs_match_brute_force(occupancy, uniform_zp):
    """The vectorised cost (empty bins dropped, clipped part from prefix sums) equals a direct
    evaluation over every bin, for sparse (depthwise-weight-like), medium and dense histograms."""
    gen = torch.Generator().manual_seed(3)
    channels, bins, cands = 7, 512, 40
    start = torch.randn(channels, generator=gen) - 1
    width = torch.rand(channels, generator=gen) * 0.01 + 1e-3
    width[2] = 0.0                                          # a degenerate (constant) channel
    centres = start[:, None] + (torch.arange(bins) + 0.5) * width[:, None]
    counts = torch.where(torch.rand(channels, bins, generator=gen) < occupancy,
                         torch.randint(1, 50, (channels, bins), generator=gen).double(), 0.0)
    counts[4] = 0.0                                         # a channel without data
    span = (centres[:, -1] - centres[:, 0]).abs().clamp(min=1e-3)
    scale = (span[:, None] / 255 * torch.linspace(0.2, 1.2, cands)).float()
    zero_point = 128 if uniform_zp else torch.randint(0, 256, (channels, cands), generator=gen)
    got = _candidate_costs(centres, counts, scale, zero_point, 0, 255, gamma=3.0)
    want = _brute_force_costs(centres, counts, scale, zero_point, 0, 255, 3.0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
    assert torch.equal(got.argmin(1), want.argmin(1))


def test_channel_count_must_not_change():
    analyzer = MinMaxEncodingAnalyzer(axis=0, name="w")
    analyzer.update_stats(torch.randn(4, 3))
    with pytest.raises(ConfigError, match="got 5 channels along axis 0, but earlier batches had 4"):
        analyzer.update_stats(torch.randn(5, 3))
    with pytest.raises(ConfigError, match="out of range"):
        MinMaxEncodingAnalyzer(axis=3).update_stats(torch.randn(4, 3))


def test_min_max_matches_from_min_max(device):
    x = torch.randn(3, 100, device=device) * 4 + 1
    analyzer = MinMaxEncodingAnalyzer()
    analyzer.update_stats(x[0])
    analyzer.update_stats(x[1:])
    for symmetric in (False, True):
        enc = analyzer.compute_encoding(8, symmetric, strict=symmetric)
        assert enc == QuantEncoding.from_min_max(x.min(), x.max(), 8, symmetric, strict=symmetric)
    analyzer.reset()
    assert not analyzer.has_stats


def test_percentile():
    x = torch.linspace(-1, 1, 20001)
    full = PercentileEncodingAnalyzer(percentile=100)
    minmax = MinMaxEncodingAnalyzer()
    for b in (x, x * 3):
        full.update_stats(b)
        minmax.update_stats(b)
    for symmetric in (False, True):
        assert full.compute_encoding(8, symmetric) == minmax.compute_encoding(8, symmetric)
    clipped = PercentileEncodingAnalyzer(percentile=99.0)
    clipped.update_stats(x)
    lower, upper = clipped.percentile_range()
    assert lower.item() == pytest.approx(-0.98, abs=2e-3)
    assert upper.item() == pytest.approx(0.98, abs=2e-3)
    assert get_encoding_analyzer("percentile").percentile == 99.99
    for bad in (50, 100.5, 10, "99"):
        with pytest.raises(ConfigError, match=r"percentile must be in \(50, 100\]"):
            PercentileEncodingAnalyzer(percentile=bad)
        with pytest.raises(ConfigError, match=r"percentile must be in \(50, 100\]"):
            clipped.percentile = bad
    clipped.percentile = 99.9
    assert clipped.percentile_range()[1].item() > upper.item()


def test_mse_clips_outliers_and_beats_min_max():
    x = _datasets()["gaussian_outliers"]
    mse = MseEncodingAnalyzer()
    mse.update_stats(x)
    minmax = MinMaxEncodingAnalyzer()
    minmax.update_stats(x)
    for symmetric in (False, True):
        enc = mse.compute_encoding(4, symmetric)
        assert enc.max.item() < 0.5 * x.max().item()

        def err(e: QuantEncoding) -> float:
            out = quantize_dequantize(x, e.scale, e.zero_point, e.qmin, e.qmax)
            return ((out - x) ** 2).mean().item()

        assert err(enc) < err(minmax.compute_encoding(4, symmetric))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_half_precision_input(scheme):
    x = torch.randn(500)
    a, b = get_encoding_analyzer(scheme), get_encoding_analyzer(scheme)
    a.update_stats(x.half())
    b.update_stats(x.half().float())
    assert a.compute_encoding(8, False) == b.compute_encoding(8, False)


def test_get_encoding_analyzer_and_schemes():
    expected = {"tf": MinMaxEncodingAnalyzer, "min_max": MinMaxEncodingAnalyzer,
                "tf_enhanced": TfEnhancedEncodingAnalyzer, "percentile": PercentileEncodingAnalyzer,
                "mse": MseEncodingAnalyzer,
                QuantScheme.post_training_tf_enhanced: TfEnhancedEncodingAnalyzer,
                "post_training_percentile": PercentileEncodingAnalyzer,
                QuantScheme.training_range_learning_with_tf_init: MinMaxEncodingAnalyzer}
    for scheme, cls in expected.items():
        analyzer = get_encoding_analyzer(scheme, axis=0, name="x")
        assert type(analyzer) is cls and analyzer.axis == 0 and analyzer.name == "x"
    assert get_encoding_analyzer("percentile", percentile=99.9).percentile == 99.9
    with pytest.raises(ConfigError, match="'tf', 'min_max', 'tf_enhanced', 'percentile', 'mse'"):
        get_encoding_analyzer("kl")
    with pytest.raises(ConfigError, match="does not accept the options"):
        get_encoding_analyzer("tf", percentile=99.0)
    with pytest.raises(ConfigError, match="num_bins"):
        get_encoding_analyzer("tf_enhanced", num_bins=1)


def test_quant_scheme_parse():
    assert QuantScheme.parse("TF") is QuantScheme.post_training_tf
    assert QuantScheme.parse("min_max") is QuantScheme.post_training_tf
    assert QuantScheme.parse("QuantScheme.post_training_mse") is QuantScheme.post_training_mse
    percentile = QuantScheme.post_training_percentile
    assert QuantScheme.parse(percentile) is percentile
    assert QuantScheme.training_range_learning_with_tf_enhanced_init.learns_range
    assert QuantScheme.training_range_learning_with_tf_enhanced_init.calibration == "tf_enhanced"
    assert not QuantScheme.post_training_tf.learns_range
    with pytest.raises(ConfigError, match="valid values are 'tf', 'min_max'"):
        QuantScheme.parse(3)
    assert QuantizationDataType.parse("float") is QuantizationDataType.float
    assert QuantizationDataType.parse(QuantizationDataType.int) is QuantizationDataType.int
    with pytest.raises(ConfigError, match="'int' and 'float'"):
        QuantizationDataType.parse(QuantizationDataType.undefined)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scheme", SCHEMES)
def test_update_stats_never_syncs(scheme):
    analyzer = get_encoding_analyzer(scheme, axis=0)
    x = torch.randn(8, 1000, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        analyzer.update_stats(x)
        analyzer.update_stats(x * 3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert analyzer.compute_encoding(8, False).scale.device.type == "cuda"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("axis", [None, 0])
def test_accelerator_path_reads_nothing_back(scheme, axis, monkeypatch):
    """The path accelerators take (no free read-back) must never bring a value to the host while
    collecting statistics (a per-batch sync): run it on CPU with every read-back raising, over
    batches that widen, stay inside and hold NaN/Inf."""
    for module in (minmax_analyzer, histogram_analyzers):
        monkeypatch.setattr(module, "_reads_back_freely", lambda device: False)
    analyzer = get_encoding_analyzer(scheme, axis=axis)
    batches = [torch.randn(8, 300), torch.randn(8, 300) * 0.5, torch.randn(8, 300) * 4]
    batches[2][3, 7] = float("nan")

    def read_back(*args, **kwargs):
        raise AssertionError("read back to the host while collecting statistics")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            m.setattr(torch.Tensor, name, read_back)
        for b in batches:
            analyzer.update_stats(b)
    assert int(analyzer.num_nonfinite) == 1
    assert analyzer.compute_encoding(8, False).scale.shape == (() if axis is None else (8,))


# -------------------------------------------------------------------------------------------------
# Extreme magnitudes (issue 11 item 5): histograms and costs are range-relative
# -------------------------------------------------------------------------------------------------
def _calibrate(scheme: str, batches: list[torch.Tensor], axis: int | None = None,
               symmetric: bool = False) -> QuantEncoding:
    analyzer = get_encoding_analyzer(scheme, axis=axis, name="act")
    for batch in batches:
        analyzer.update_stats(batch)
    return analyzer.compute_encoding(8, symmetric=symmetric)


def _clipped_fraction(x: torch.Tensor, enc: QuantEncoding) -> float:
    qdq = quantize_dequantize(x.double(), enc.scale.double(), enc.zero_point.double(),
                              enc.qmin, enc.qmax, axis=enc.axis)
    err = (qdq - x.double()).abs()
    scale = enc.scale.double() if enc.axis is None else enc.scale.double()[:, None, None]
    return float((err > scale / 2 * (1 + 1e-6)).double().mean())


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("factor", [2.0 ** 66, 1e20, 2.0 ** 100, 3e38 / 4.5])
def test_extreme_magnitudes_calibrate_like_the_scaled_down_case(scheme, symmetric, factor):
    # two batches (the second widens the histogram), values around factor; 3e38 / 4.5 puts the
    # largest value just below float32's maximum
    gen = torch.Generator().manual_seed(5)
    base = [torch.randn(4000, generator=gen), torch.randn(4000, generator=gen) * 1.3 + 0.2]
    base = [b / 4.5 * 4.0 for b in base]
    ref = _calibrate(scheme, base, symmetric=symmetric)
    big = [b * factor for b in base]
    assert all(torch.isfinite(b).all() for b in big)
    got = _calibrate(scheme, big, symmetric=symmetric)
    ratio = float(got.scale.double() / (ref.scale.double() * factor))
    if math.log2(factor).is_integer():      # exact power of two: bit-identical, scaled
        assert ratio == 1.0 and int(got.zero_point) == int(ref.zero_point)
    else:
        assert ratio == pytest.approx(1.0, rel=1e-4)
        assert abs(int(got.zero_point) - int(ref.zero_point)) <= 1
    clipped_ref = max(_clipped_fraction(b, ref) for b in base)
    clipped = max(_clipped_fraction(b, got) for b in big)
    assert clipped <= clipped_ref + 1e-3 and clipped < 0.01


@pytest.mark.parametrize("scheme", ["tf_enhanced", "mse", "percentile"])
def test_extreme_magnitudes_per_channel(scheme):
    # channel 0 near float32's maximum, channel 1 ordinary: each gets its own range-relative scale
    gen = torch.Generator().manual_seed(6)
    base = torch.randn(2, 3, 500, generator=gen) / 4.5
    x = base.clone()
    x[0] *= 2.0 ** 127
    enc = _calibrate(scheme, [x], axis=0)
    ref0 = _calibrate(scheme, [base[0:1]], axis=0)
    ref1 = _calibrate(scheme, [base[1:2]], axis=0)
    assert float(enc.scale[0]) == float(ref0.scale[0]) * 2.0 ** 127
    assert float(enc.scale[1]) == float(ref1.scale[0])
    assert torch.isfinite(enc.scale).all()


def test_histogram_of_huge_values_has_finite_edges_and_all_counts():
    a = TfEnhancedEncodingAnalyzer(name="act")
    x = torch.linspace(-1, 1, 10001) * 3.3e38
    a.update_stats(x)
    counts, edges = a.histogram()
    assert torch.isfinite(edges).all() and float(counts.sum()) == 10001
    # uniform data: every bin holds about the same count (no pile-up in an edge bin)
    assert float(counts.max()) <= 2.2 * 10001 / 512


# -------------------------------------------------------------------------------------------------
# Host-side shortcuts of the CPU histogram (issue 14): an extent that did not move is neither
# re-derived nor re-binned, a batch inside the extent is binned without the clamp (its upper end
# folded into the last bin), a histogram starting at 0 skips the subtraction. Each must give what
# the branch-free path (the one accelerators take) gives, bit for bit.
# -------------------------------------------------------------------------------------------------
def _edge_batch(analyzer, per_channel: bool) -> torch.Tensor:
    """Values on every bin edge of the analyzer's current extent (the two ends included)."""
    _, edges = analyzer.histogram()
    return edges if per_channel else edges.reshape(-1)


def _sequence(kind: str, g: torch.Generator) -> list[torch.Tensor]:
    def r(*shape):
        return torch.randn(*shape, generator=g)
    if kind == "relu_inside":       # starts at 0; later batches inside the first one's extent
        first = r(4, 6, 50).relu() * 3
        return [first, first * 0.5, r(4, 6, 50).relu().clamp(max=float(first.max())), first]
    if kind == "signed_growing":    # moves on most batches
        return [r(4, 6, 50) * (1 + i / 2) + i / 4 for i in range(5)]
    if kind == "beyond_limit":      # later batches clipped at the 3x limit
        return [r(4, 6, 50), r(4, 6, 50) * 10, r(4, 6, 50) * 0.1]
    if kind == "negative":
        return [-torch.rand(4, 6, 50, generator=g) - 1, -torch.rand(4, 6, 50, generator=g) * 1.5]
    if kind == "constant_then_spread":
        return [torch.zeros(4, 6, 50), torch.full((4, 6, 50), 2.0), r(4, 6, 50)]
    raise AssertionError(kind)


@pytest.mark.parametrize("scheme", ["tf_enhanced", "percentile", "mse"])
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("num_bins", [512, 1000])
@pytest.mark.parametrize("kind", ["relu_inside", "signed_growing", "beyond_limit", "negative",
                                  "constant_then_spread"])
def test_host_shortcuts_match_the_branch_free_path(scheme, axis, num_bins, kind, monkeypatch):
    g = torch.Generator().manual_seed(len(kind) + num_bins)
    batches = _sequence(kind, g)

    def run() -> tuple[object, list[torch.Tensor]]:
        a = get_encoding_analyzer(scheme, axis=axis, num_bins=num_bins)
        seen = []
        for b in batches:
            a.update_stats(b)
            seen.append(a.histogram()[0])
        # values exactly on every edge of the extent: positions k, the upper end exactly num_bins
        edges = _edge_batch(a, axis is not None)
        a.update_stats(edges[None, :, :].movedim(1, axis) if axis is not None else edges)
        seen.append(a.histogram()[0])
        return a, seen

    fast, fast_seen = run()
    monkeypatch.setattr(histogram_analyzers, "_reads_back_freely", lambda device: False)
    plain, plain_seen = run()
    for f, p in zip(fast_seen, plain_seen):
        assert torch.equal(f, p)
    assert torch.equal(fast.histogram()[1], plain.histogram()[1])
    assert int(fast.num_nonfinite) == int(plain.num_nonfinite) == 0
    for bitwidth, symmetric in ((8, False), (8, True), (4, False)):
        assert (fast.compute_encoding(bitwidth, symmetric)
                == plain.compute_encoding(bitwidth, symmetric))


def test_unclamped_batch_counts_its_upper_end_in_the_last_bin():
    """A batch inside the extent skips the clamp; the extent's upper end (position == bins)
    still counts in the last bin, and nothing is lost."""
    a = TfEnhancedEncodingAnalyzer(num_bins=8)
    a.update_stats(torch.tensor([0.0, 8.0]))
    a.update_stats(torch.tensor([8.0, 8.0, 7.5, 0.0, 3.0]))
    counts, edges = a.histogram()
    assert edges[0, [0, -1]].tolist() == [0.0, 8.0]
    assert counts[0].tolist() == [2, 0, 0, 1, 0, 0, 0, 4]


def test_unmoved_extent_is_not_rebinned(monkeypatch):
    """A batch inside the extent leaves the bins where they are: no re-binning runs."""
    a = TfEnhancedEncodingAnalyzer()
    a.update_stats(torch.linspace(-1, 3, 1000))
    calls = []
    original = histogram_analyzers._HistogramAnalyzer._rebin
    monkeypatch.setattr(histogram_analyzers._HistogramAnalyzer, "_rebin",
                        lambda self, *args: calls.append(1) or original(self, *args))
    a.update_stats(torch.linspace(-0.5, 2, 1000))
    assert calls == []
    a.update_stats(torch.linspace(-2, 3, 1000))
    assert calls == [1]
