"""Encoding records: QuantEncoding grids, min/max -> scale/zero point, validation; FloatEncoding
and the int32 grid."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.errors import ConfigError
from fxquant.core.encoding import (INT32_MAX, INT32_MIN, MIN_SCALE, FloatEncoding, QuantEncoding,
                                   encoding_problem, quant_range)
from fxquant.core.kernels import quantize_dequantize


@pytest.mark.parametrize(("bitwidth", "signed", "symmetric", "strict", "expected"), [
    (8, False, False, False, (0, 255)),
    (8, True, True, False, (-128, 127)),
    (8, True, True, True, (-127, 127)),
    (8, True, False, True, (-128, 127)),      # strict applies to symmetric grids only
    (8, False, True, True, (0, 255)),
    (4, True, True, False, (-8, 7)),
    (2, True, True, True, (-1, 1)),
    (16, False, False, False, (0, 65535)),
    (32, True, True, False, (-2 ** 31, 2 ** 31 - 1)),
    (32, False, False, False, (0, 2 ** 32 - 1)),
])
def test_quant_range(bitwidth, signed, symmetric, strict, expected):
    assert quant_range(bitwidth, signed, symmetric, strict) == expected


@pytest.mark.parametrize("bitwidth", [1, 33, 0, 8.0, True, "8"])
def test_bad_bitwidth(bitwidth):
    with pytest.raises(ConfigError, match="bit widths 2-32"):
        QuantEncoding.from_min_max(-1.0, 1.0, bitwidth, symmetric=False)


def test_asymmetric_uint8():
    enc = QuantEncoding.from_min_max(-1.0, 3.0, bitwidth=8, symmetric=False)
    assert (enc.qmin, enc.qmax, enc.signed, enc.symmetric) == (0, 255, False, False)
    assert enc.scale.dtype == torch.float32 and enc.zero_point.dtype == torch.int64
    assert enc.scale.item() == pytest.approx(4 / 255)
    assert int(enc.zero_point) == 64
    assert int(enc.offset) == -64                      # AIMET's offset convention
    assert float(enc.min) == pytest.approx(-64 * 4 / 255, rel=1e-6)
    assert float(enc.max) == pytest.approx(191 * 4 / 255, rel=1e-6)


def test_symmetric_int8_covers_range_with_tightest_scale():
    enc = QuantEncoding.from_min_max(-2.0, 1.0, bitwidth=8, symmetric=True)
    assert (enc.qmin, enc.qmax, int(enc.zero_point)) == (-128, 127, 0)
    assert enc.scale.item() == pytest.approx(2.0 / 128)
    assert int(enc.offset) == -128
    strict = QuantEncoding.from_min_max(-2.0, 1.0, bitwidth=8, symmetric=True, strict=True)
    assert (strict.qmin, strict.strict) == (-127, True)
    assert strict.scale.item() == pytest.approx(2.0 / 127)
    positive = QuantEncoding.from_min_max(-1.0, 2.0, bitwidth=8, symmetric=True)
    assert positive.scale.item() == pytest.approx(2.0 / 127)


def test_unsigned_symmetric_and_signed_asymmetric():
    enc = QuantEncoding.from_min_max(0.0, 2.55, bitwidth=8, symmetric=True, signed=False)
    assert (enc.qmin, enc.qmax, int(enc.zero_point)) == (0, 255, 0)
    assert enc.scale.item() == pytest.approx(0.01)
    assert not enc.strict
    enc = QuantEncoding.from_min_max(-1.0, 3.0, bitwidth=8, symmetric=False, signed=True)
    assert (enc.qmin, enc.qmax, int(enc.zero_point)) == (-128, 127, 64 - 128)
    assert torch.allclose(enc.min, QuantEncoding.from_min_max(-1.0, 3.0, 8, False).min)


@settings(max_examples=200, deadline=None)
@given(lo=st.floats(-1e4, 1e4, allow_subnormal=False),
       hi=st.floats(-1e4, 1e4, allow_subnormal=False),
       bitwidth=st.integers(2, 32), symmetric=st.booleans(), strict=st.booleans(),
       signed=st.booleans())
def test_zero_is_exact_and_range_covered(lo, hi, bitwidth, symmetric, strict, signed):
    lo, hi = min(lo, hi), max(lo, hi)
    if symmetric and not signed:
        lo = max(lo, 0.0)
    enc = QuantEncoding.from_min_max(lo, hi, bitwidth, symmetric, strict=strict, signed=signed)
    assert enc.qmin <= int(enc.zero_point) <= enc.qmax
    assert enc.scale.item() >= MIN_SCALE and math.isfinite(enc.scale.item())
    zero = quantize_dequantize(torch.zeros(3), enc.scale, enc.zero_point, enc.qmin, enc.qmax)
    assert torch.equal(zero, torch.zeros(3))
    # within half a step, plus the float32 rounding of the scale (relative 2^-24, times the range)
    slack = enc.scale.item() * (0.5 + 1e-3) + (max(hi, 0.0) - min(lo, 0.0)) * 2.0 ** -22
    assert enc.min.item() <= min(lo, 0.0) + slack
    assert enc.max.item() >= max(hi, 0.0) - slack
    if symmetric:
        assert int(enc.zero_point) == 0


@pytest.mark.parametrize("symmetric", [False, True])
def test_all_zero_range_is_valid(symmetric):
    enc = QuantEncoding.from_min_max(0.0, 0.0, 8, symmetric)
    assert enc.scale.item() == pytest.approx(MIN_SCALE)
    assert enc.qmin <= int(enc.zero_point) <= enc.qmax
    x = torch.tensor([0.0, 1e-9, -1e-9])
    out = quantize_dequantize(x, enc.scale, enc.zero_point, enc.qmin, enc.qmax)
    assert torch.equal(out, torch.zeros(3))


def test_32bit_zero_point_exact():
    enc = QuantEncoding.from_min_max(-1.0, 3.0, 32, symmetric=False)
    assert enc.qmax == 2 ** 32 - 1
    assert enc.zero_point.dtype == torch.int64
    assert int(enc.zero_point) == round(1.0 / enc.scale.double().item())


def test_per_channel(device):
    lo = torch.tensor([-1.0, 0.0, -4.0], device=device)
    hi = torch.tensor([1.0, 0.0, 2.0], device=device)
    enc = QuantEncoding.from_min_max(lo, hi, 8, symmetric=True, axis=0)
    assert enc.is_per_channel and enc.scale.shape == (3,)
    assert enc.device.type == torch.device(device).type
    assert enc.zero_point.tolist() == [0, 0, 0]
    assert enc.scale.cpu().tolist() == pytest.approx([1 / 127, MIN_SCALE, 4 / 128], rel=1e-6)
    moved = enc.to("cpu")
    assert moved.device.type == "cpu" and moved == enc.to("cpu")


def test_constructor_coerces_and_validates():
    enc = QuantEncoding(scale=torch.tensor([0.5, 0.25], dtype=torch.float64), zero_point=0,
                        bitwidth=8, signed=True, symmetric=True, axis=0)
    assert enc.scale.dtype == torch.float32 and enc.zero_point.tolist() == [0, 0]
    assert QuantEncoding(scale=torch.tensor([0.1]), zero_point=torch.tensor([3.0]), bitwidth=8,
                         signed=False, symmetric=False).scale.shape == ()
    with pytest.raises(ConfigError, match="per-tensor QuantEncoding"):
        QuantEncoding(scale=torch.ones(2), zero_point=0, bitwidth=8, signed=True, symmetric=True)
    with pytest.raises(ConfigError, match="needs a 1-D scale"):
        QuantEncoding(scale=torch.ones(2, 2), zero_point=0, bitwidth=8, signed=True,
                      symmetric=True, axis=0)
    with pytest.raises(ConfigError, match="does not match scale shape"):
        QuantEncoding(scale=torch.ones(2), zero_point=torch.zeros(3), bitwidth=8, signed=True,
                      symmetric=True, axis=0)
    with pytest.raises(ConfigError, match="axis must be an int"):
        QuantEncoding(scale=torch.ones(2), zero_point=0, bitwidth=8, signed=True, symmetric=True,
                      axis="0")


def test_equality_and_immutability():
    a = QuantEncoding.from_min_max(-1.0, 1.0, 8, False)
    b = QuantEncoding.from_min_max(-1.0, 1.0, 8, False)
    c = QuantEncoding.from_min_max(-1.0, 1.0, 4, False)
    assert a == b and a != c and a != "x"
    with pytest.raises(AttributeError):
        a.bitwidth = 4  # type: ignore[misc]
    assert "bitwidth=8" in repr(a)


def test_int32_grid_is_the_signed_32_bit_grid():
    assert (INT32_MIN, INT32_MAX) == quant_range(32, signed=True)
    assert (INT32_MIN, INT32_MAX) == (int(torch.iinfo(torch.int32).min),
                                      int(torch.iinfo(torch.int32).max))


def test_float_encoding_is_a_frozen_float16_record():
    enc = FloatEncoding()
    assert enc.bitwidth == 16 and enc == FloatEncoding(16) and hash(enc) == hash(FloatEncoding())
    with pytest.raises(AttributeError, match="bitwidth"):
        enc.bitwidth = 8                                        # frozen dataclass



# -------------------------------------------------------------------------------------------------
# encoding_problem: the one definition of a valid encoding (issue 11 item 7)
# -------------------------------------------------------------------------------------------------
_UINT8 = dict(qmin=0, qmax=255, symmetric=False)


@pytest.mark.parametrize("scale,zero_point,kwargs,expected", [
    (float("nan"), 0, _UINT8, ("scale", "a scale must be a finite number")),
    (float("inf"), 0, _UINT8, ("scale", "a scale must be a finite number")),
    (0.0, 0, _UINT8, ("scale", "a scale must be > 0")),
    (-1.0, 0, _UINT8, ("scale", "a scale must be > 0")),
    (1e39, 0, _UINT8, ("scale", "a scale must be finite in float32")),
    (1e-45, 0, _UINT8, ("scale", "a scale must be at least 1.1920928955078125e-07")),
    (0.1, 256, _UINT8, ("zero_point", "zero points lie on the grid [0, 255]")),
    (0.1, -1, _UINT8, ("zero_point", "zero points lie on the grid [0, 255]")),
    (0.1, 2.5, _UINT8, ("zero_point", "zero points are integers")),
    (0.1, float("nan"), _UINT8, ("zero_point", "a zero point must be finite")),
    (0.1, 1, dict(qmin=-128, qmax=127, symmetric=True), ("zero_point", "zero point 0")),
    ([0.1] * 3, [0] * 3, dict(_UINT8, shape=(8,)),
     ("scale", "expected 8 per-channel scales for this quantizer, got 3 scales")),
    ([0.1] * 2, [0] * 2, dict(_UINT8, shape=()),
     ("scale", "expected one scale (per tensor) for this quantizer, got 2 scales")),
    ([0.1] * 2, [0] * 3, _UINT8, ("zero_point", "shape (3,) does not match the scale's (2,)")),
    ([[0.1]], [[0]], _UINT8, ("scale", "expected one scale or a 1-D list")),
    (0.1, 10 ** 400, _UINT8, ("zero_point", "expected numbers")),
])
def test_encoding_problem_names_the_field_and_rule(scale, zero_point, kwargs, expected) -> None:
    problem = encoding_problem(scale, zero_point, **kwargs)
    assert problem is not None and problem[0] == expected[0] and expected[1] in problem[1], problem


def test_encoding_problem_accepts_what_calibration_computes() -> None:
    gen = torch.Generator().manual_seed(0)
    for symmetric in (False, True):
        for bitwidth in (4, 8, 16, 32):
            lo = -torch.rand(6, generator=gen) * 10.0 ** torch.randint(-8, 8, (1,), generator=gen)
            enc = QuantEncoding.from_min_max(lo, -lo * 3, bitwidth, symmetric, axis=0)
            assert encoding_problem(enc.scale, enc.zero_point, qmin=enc.qmin, qmax=enc.qmax,
                                    symmetric=enc.symmetric, shape=(6,)) is None
    zero = QuantEncoding.from_min_max(0.0, 0.0, 8, False)        # all-zero tensor: MIN_SCALE
    assert encoding_problem(zero.scale, zero.zero_point, **_UINT8) is None
    # learned ranges are clamped/rounded by the forward pass: only finiteness is required
    assert encoding_problem(1e-9, 3.4, **_UINT8, learned_scale=True, learned_zero_point=True) is None
    assert encoding_problem(1e-9, float("inf"), **_UINT8, learned_scale=True,
                            learned_zero_point=True)[0] == "zero_point"
