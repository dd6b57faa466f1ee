"""fxquant.core.metrics: formulas against float64 NumPy, every edge case, streaming == one shot."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fxquant.core.metrics import (PairAccumulator, PairSums, as_float, as_pair_sums,
                                  cosine_similarity, normalized_l2_error, pair_sums, sqnr_db)


def _direct(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """SQNR (dB), normalized L2 error and cosine written out directly in float64."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    err = np.linalg.norm(a - b)
    return (20 * math.log10(np.linalg.norm(a) / err), err / np.linalg.norm(a),
            float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))


@pytest.mark.parametrize("noise", [1e-1, 1e-3, 1e-6])
def test_numpy_sums_match_the_direct_formula(noise: float) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3, 7)).astype(np.float32)
    b = (a + noise * rng.standard_normal(a.shape)).astype(np.float32)
    sums = pair_sums(a, b)
    sqnr, l2, cos = _direct(a, b)
    assert sums.sqnr_db == pytest.approx(sqnr, rel=1e-9)
    assert sums.normalized_l2_error == pytest.approx(l2, rel=1e-9)
    assert sums.cosine_similarity == pytest.approx(cos, rel=1e-12)
    assert (sums.numel, sums.nonfinite, sums.count) == (a.size, 0, 1)
    assert 10 * math.log10(1 / noise ** 2) - 3 < sums.sqnr_db < 10 * math.log10(1 / noise ** 2) + 3


def test_torch_accumulator_matches_the_direct_formula(device: torch.device) -> None:
    a = torch.randn(3, 5, 5, device=device)
    b = a + 0.01 * torch.randn_like(a)
    sums = PairAccumulator.of(a, b).result()
    sqnr, l2, cos = _direct(a.cpu().numpy(), b.cpu().numpy())
    assert sums.sqnr_db == pytest.approx(sqnr, rel=1e-5)
    assert sums.normalized_l2_error == pytest.approx(l2, rel=1e-5)
    assert sums.cosine_similarity == pytest.approx(cos, rel=1e-6)
    numpy_sums = pair_sums(a.cpu().numpy(), b.cpu().numpy())
    assert sums.sqnr_db == pytest.approx(numpy_sums.sqnr_db, rel=1e-5)


def test_identical_tensors_are_plus_infinity_also_when_all_zero() -> None:
    for a in (np.arange(5.0), np.zeros(5)):
        sums = pair_sums(a, a.copy())
        assert sums.sqnr_db == math.inf
        assert sums.normalized_l2_error == 0.0
        assert sums.cosine_similarity == 1.0
        assert not sums.zero_reference
    zero = torch.zeros(4)
    assert PairAccumulator.of(zero, zero).result().sqnr_db == math.inf
    assert (sqnr_db(0.0, 0.0), normalized_l2_error(0.0, 0.0)) == (math.inf, 0.0)
    assert cosine_similarity(0.0, 0.0, 0.0, noise=0.0) == 1.0


def test_all_zero_reference_with_an_error_is_minus_infinity_and_marked() -> None:
    sums = pair_sums(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    assert sums.sqnr_db == -math.inf and sums.zero_reference
    assert sums.normalized_l2_error == math.inf
    assert sums.cosine_similarity == 0.0
    assert not pair_sums(np.ones(3), np.zeros(3)).zero_reference  # B zero: finite, 0 dB
    assert pair_sums(np.ones(3), np.zeros(3)).sqnr_db == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_inputs_are_flagged_never_dropped(bad: float, device: torch.device) -> None:
    a = np.linspace(1.0, 2.0, 6)
    b = a + 0.01
    for where in ("a", "b", "both"):
        x, y = a.copy(), b.copy()
        if where in ("a", "both"):
            x[2] = bad
        if where in ("b", "both"):
            y[2] = bad
        sums = pair_sums(x, y)
        assert sums.nonfinite == 1 and not sums.finite
        assert math.isnan(sums.sqnr_db) or sums.sqnr_db == -math.inf, (where, sums)
        assert not math.isfinite(sums.normalized_l2_error)
        streamed = PairAccumulator.of(torch.tensor(x, device=device),
                                      torch.tensor(y, device=device)).result()
        assert streamed.nonfinite == 1
        assert not math.isfinite(streamed.sqnr_db)
        clean = pair_sums(np.delete(x, 2), np.delete(y, 2))  # dropping it would look fine
        assert math.isfinite(clean.sqnr_db) and clean.nonfinite == 0


def test_streaming_equals_one_shot(device: torch.device) -> None:
    batches = [(torch.randn(2, 4, device=device, dtype=torch.float64),) for _ in range(6)]
    batches = [(x, x + 0.05 * torch.randn_like(x)) for (x,) in batches]
    acc = PairAccumulator()
    for x, y in batches:
        acc.update(x, y)
    whole = PairAccumulator.of(torch.cat([x for x, _ in batches]),
                               torch.cat([y for _, y in batches])).result()
    streamed = acc.result()
    assert streamed.count == 6 and whole.count == 1 and streamed.numel == whole.numel == 48
    for name in ("sqnr_db", "normalized_l2_error", "cosine_similarity"):
        assert getattr(streamed, name) == pytest.approx(getattr(whole, name), rel=1e-12)
    added = sum((pair_sums(x.cpu().numpy(), y.cpu().numpy()) for x, y in batches), PairSums())
    assert added.sqnr_db == pytest.approx(whole.sqnr_db, rel=1e-12) and added.count == 6


def test_accumulator_keeps_its_sums_on_the_device(device: torch.device) -> None:
    acc = PairAccumulator()
    acc.update(torch.ones(3, device=device), torch.zeros(3, device=device))
    acc.update(torch.ones(2, device=device, dtype=torch.float16), torch.ones(2, device=device))
    assert acc._sums is not None and acc._sums.device.type == device.type
    assert acc._sums.dtype == torch.float64
    assert acc.as_dict() == pytest.approx({"count": 2, "numel": 5, "signal": 5.0,
                                           "signal_b": 2.0, "noise": 3.0, "dot": 2.0,
                                           "nonfinite": 0}, rel=1e-6)
    acc.update(torch.ones(0, device=device), torch.ones(0, device=device))
    assert (acc.count, acc.numel) == (3, 5)
    acc.reset()
    assert acc.result() == PairSums()


def test_sums_round_trip_through_their_dict() -> None:
    sums = pair_sums(np.array([1.0, 2.0]), np.array([1.5, math.nan]))
    assert PairSums.from_dict(sums.as_dict()).as_dict() == sums.as_dict()
    assert as_pair_sums(sums) is sums
    assert as_pair_sums(PairAccumulator.of(torch.ones(2), torch.ones(2))).sqnr_db == math.inf
    assert as_pair_sums({"signal": 4.0, "signal_b": 4.0, "noise": 0.04, "dot": 4.0,
                         "numel": 2}).sqnr_db == pytest.approx(20.0)


def test_sqnr_stays_defined_outside_float64_range() -> None:
    assert sqnr_db(1e-300, 1e300) == pytest.approx(-6000.0)
    assert sqnr_db(1e300, 1e-300) == pytest.approx(6000.0)
    assert sqnr_db(math.inf, 1.0) == math.inf and sqnr_db(1.0, math.inf) == -math.inf
    assert math.isnan(sqnr_db(math.inf, math.inf))


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="arrays of 3 and 4 elements"):
        pair_sums(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="tensors of 3 and 2 elements"):
        PairAccumulator.of(torch.ones(3), torch.ones(2))
    with pytest.raises(TypeError, match=r"cast integer tensors with \.float\(\)"):
        as_float(torch.ones(2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"comparison sums lack \['noise', 'dot'\]"):
        PairSums.from_dict({"signal": 1.0, "signal_b": 1.0, "numel": 1})
    with pytest.raises(TypeError, match="expected PairSums, a PairAccumulator"):
        as_pair_sums(3.0)  # type: ignore[arg-type]
