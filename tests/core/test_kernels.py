"""The QuantizeLinear/DequantizeLinear kernels: bit-exact with a numpy reference of SPEC §1 and
with ONNX Runtime, dtypes and validation, and the STE/LSQ gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.core import kernels
from fxquant.core.encoding import quant_range
from fxquant.core.kernels import dequantize, quantize, quantize_dequantize, ste_round
from fxquant.errors import ConfigError


# -------------------------------------------------------------------------------------------------
# numpy reference of SPEC §1 (float32 throughout: rint(x / s) + zp, clip, dequantize)
# -------------------------------------------------------------------------------------------------
def _along(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def ref_qdq(x, scale, zero_point, qmin, qmax, axis=None):
    x = np.asarray(x, np.float32)
    s = _along(np.asarray(scale, np.float32), x.ndim, axis)
    z = _along(np.asarray(zero_point, np.float64).astype(np.float32), x.ndim, axis)
    q = np.clip(np.rint(x / s) + z, np.float32(qmin), np.float32(qmax))
    return ((q - z) * s).astype(np.float32)


def make_ties(scale: np.ndarray, k: np.ndarray) -> np.ndarray:
    """float32 x with ``float32(x / scale) == k + 0.5`` exactly (NaN where none is nearby)."""
    scale = scale.astype(np.float32)
    target = (k + 0.5).astype(np.float32)
    x = (target.astype(np.float64) * scale.astype(np.float64)).astype(np.float32)
    found = np.full(x.shape, np.nan, np.float32)
    down = up = x
    for _ in range(6):
        for cand in (down, up):
            ok = np.isnan(found) & (cand / scale == target)
            found[ok] = cand[ok]
        down = np.nextafter(down, np.float32(-np.inf))
        up = np.nextafter(up, np.float32(np.inf))
    return found


@st.composite
def qdq_cases(draw):
    bitwidth = draw(st.integers(2, 32))
    signed, symmetric, strict = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    qmin, qmax = quant_range(bitwidth, signed, symmetric, strict)
    axis = draw(st.sampled_from([None, 0, 1]))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 4)), 7)
    channels = 1 if axis is None else shape[axis]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    log_scale = draw(st.floats(-20, 10))
    scale = np.exp2(log_scale + rng.uniform(-1, 1, channels)).astype(np.float32)
    if symmetric and signed:
        zero_point = np.zeros(channels, np.int64)
    else:
        zero_point = rng.integers(qmin, qmax, channels, endpoint=True)
    # grid positions spanning the grid and beyond (saturation), ties and a few non-finite values
    span = qmax - qmin
    u = rng.uniform(qmin - span / 4 - 2, qmax + span / 4 + 2, shape)
    s_b, z_b = _along(scale, 3, axis), _along(zero_point.astype(np.float64), 3, axis)
    x = ((u - z_b) * s_b.astype(np.float64)).astype(np.float32)
    k = np.clip(np.floor(u - z_b), -2 ** 22, 2 ** 22)
    ties = make_ties(np.broadcast_to(s_b, shape), k)
    use_tie = (rng.uniform(size=shape) < 0.3) & ~np.isnan(ties)
    x = np.where(use_tie, ties, x).astype(np.float32)
    if draw(st.booleans()):
        x.flat[rng.integers(0, x.size, 2)] = [np.inf, -np.inf]
    return x, scale, zero_point, qmin, qmax, axis


@settings(max_examples=300, deadline=None)
@given(case=qdq_cases())
def test_quantize_dequantize_bit_exact_with_reference(case):
    x, scale, zero_point, qmin, qmax, axis = case
    out = quantize_dequantize(torch.from_numpy(x), torch.from_numpy(scale),
                              torch.from_numpy(zero_point), qmin, qmax, axis=axis)
    ref = ref_qdq(x, scale, zero_point, qmin, qmax, axis)
    assert out.dtype == torch.float32
    assert np.array_equal(out.numpy(), ref, equal_nan=True)


@pytest.mark.parametrize("scale", [0.1, 0.3, 0.0123, 0.017])
def test_ties_round_half_to_even(scale):
    scale = np.float32(scale)
    k = np.arange(-120, 120, dtype=np.float64)
    x = make_ties(np.full(k.shape, scale), k)
    assert np.isnan(x).mean() < 0.5
    x = x[~np.isnan(x)]
    out = quantize_dequantize(torch.from_numpy(x), torch.tensor(scale), torch.tensor(0), -128,
                              127).numpy()
    assert np.array_equal(out, ref_qdq(x, scale, 0, -128, 127))
    assert np.all(np.rint(out / scale) % 2 == 0)          # every tie went to the even neighbour


def test_chunked_cpu_path_is_bit_exact(monkeypatch):
    """Large CPU tensors are fake-quantized chunk by chunk (cache-sized); ties, saturation and a
    ragged last chunk included, the result equals the reference bit for bit."""
    scale = np.float32(0.0123)
    ties = make_ties(np.full(240, scale), np.arange(-120, 120, dtype=np.float64))
    rng = np.random.default_rng(0)
    x = np.concatenate([ties[~np.isnan(ties)], rng.normal(0, 2, 1000).astype(np.float32),
                        np.float32([1e30, -1e30])]).astype(np.float32)
    monkeypatch.setattr(kernels, "_CPU_QDQ_CHUNK", 97)
    monkeypatch.setattr(kernels, "_CPU_QDQ_CHUNKED_ABOVE", 100)
    out = quantize_dequantize(torch.from_numpy(x).reshape(2, -1), torch.tensor(scale),
                              torch.tensor(3), -128, 127).numpy().reshape(-1)
    assert np.array_equal(out, ref_qdq(x, scale, 3, -128, 127))


def test_reciprocal_multiply_would_break_ties():
    """Why the arithmetic divides: torch's fused kernel multiplies by 1/scale and splits ties."""
    scale = np.float32(0.0123)
    x = make_ties(np.full(240, scale), np.arange(-120, 120, dtype=np.float64))
    x = torch.from_numpy(x[~np.isnan(x)])
    ours = quantize_dequantize(x, torch.tensor(scale), torch.tensor(0), -128, 127)
    fused = torch.fake_quantize_per_tensor_affine(x, float(scale), 0, -128, 127)
    assert (ours != fused).float().mean() > 0.05


def test_saturation_and_32bit():
    x = torch.tensor([-1e30, -5.0, 5.0, 1e30, 3e9, -3e9])
    out = quantize_dequantize(x, torch.tensor(1.0), torch.tensor(0), -(2 ** 31), 2 ** 31 - 1)
    assert np.array_equal(out.numpy(), ref_qdq(x.numpy(), 1.0, 0, -(2 ** 31), 2 ** 31 - 1))
    q = quantize(x, 1.0, 0, -(2 ** 31), 2 ** 31 - 1)
    assert q.dtype == torch.int32
    assert q.tolist() == [-(2 ** 31), -5, 5, 2 ** 31 - 1, 2 ** 31 - 1, -(2 ** 31)]
    q = quantize(torch.tensor([1e30, -1.0]), 1.0, 0, 0, 2 ** 32 - 1)
    assert q.dtype == torch.int64 and q.tolist() == [2 ** 32 - 1, 0]


@settings(max_examples=100, deadline=None)
@given(case=qdq_cases())
def test_quantize_then_dequantize_matches_fake_quant(case):
    x, scale, zero_point, qmin, qmax, axis = case
    if qmax - qmin > 2 ** 24:      # beyond 24 bits float32 (q - zp) rounds; integers do not
        return
    xt, st_, zt = torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(zero_point)
    q = quantize(xt, st_, zt, qmin, qmax, axis=axis)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    expected = quantize_dequantize(xt, st_, zt, qmin, qmax, axis=axis)
    assert torch.equal(dequantize(q, st_, zt, axis=axis), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype, device):
    x = torch.randn(64, device=device).to(dtype)
    out = quantize_dequantize(x, torch.tensor(0.05), torch.tensor(7), 0, 15)
    assert out.dtype == dtype and out.device == x.device
    work = np.float64 if dtype == torch.float64 else np.float32
    xs = x.cpu().to(torch.float64 if dtype == torch.float64 else torch.float32).numpy()
    s, z = work(np.float32(0.05)), work(7)        # the float32 scale, in the working precision
    ref = (np.clip(np.rint(xs / s) + z, 0, 15) - z) * s
    assert torch.equal(out.cpu(), torch.from_numpy(ref.astype(xs.dtype)).to(dtype))


def test_device_and_axis_validation(device):
    x = torch.randn(2, 3, 4, device=device)
    out = quantize_dequantize(x, torch.full((3,), 0.1), torch.zeros(3), -128, 127, axis=1)
    assert out.device == x.device
    negative_axis = quantize_dequantize(x, torch.full((3,), 0.1), torch.zeros(3), -128, 127,
                                        axis=-2)
    assert torch.equal(out, negative_axis)
    with pytest.raises(ConfigError, match="3 channels but the tensor has 2 along axis 0"):
        quantize_dequantize(x, torch.full((3,), 0.1), torch.zeros(3), -128, 127, axis=0)
    with pytest.raises(ConfigError, match="needs a single scale"):
        quantize_dequantize(x, torch.full((3,), 0.1), torch.zeros(3), -128, 127)
    with pytest.raises(ConfigError, match="out of range"):
        quantize_dequantize(x, torch.full((3,), 0.1), torch.zeros(3), -128, 127, axis=3)
    with pytest.raises(ConfigError, match="qmin"):
        quantize_dequantize(x, 0.1, 0, 5, 5)
    with pytest.raises(TypeError, match="floating-point"):
        quantize_dequantize(torch.ones(2, dtype=torch.int32), 0.1, 0, 0, 255)


# -------------------------------------------------------------------------------------------------
# ONNX Runtime parity
# -------------------------------------------------------------------------------------------------
def _ort_qdq(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
             axis: int | None) -> np.ndarray:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    per_channel = axis is not None
    kwargs = {"axis": axis} if per_channel else {}
    shape = () if not per_channel else (scale.size,)
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], **kwargs),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], **kwargs)]
    inits = [numpy_helper.from_array(scale.astype(np.float32).reshape(shape), "scale"),
             numpy_helper.from_array(zero_point.reshape(shape), "zp")]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("zp_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_bit_exact_with_onnxruntime(zp_dtype, axis):
    rng = np.random.default_rng(1)
    shape = (4, 3, 8, 8)
    qmin, qmax = (0, 255) if zp_dtype == np.uint8 else (-128, 127)
    channels = 1 if axis is None else shape[axis]
    scale = rng.uniform(0.001, 0.2, channels).astype(np.float32)
    zero_point = rng.integers(qmin, qmax, channels, endpoint=True).astype(zp_dtype)
    s_b, z_b = _along(scale, 4, axis), _along(zero_point.astype(np.float64), 4, axis)
    u = rng.uniform(qmin - 40, qmax + 40, shape)            # includes saturation on both sides
    x = ((u - z_b) * s_b).astype(np.float32)
    ties = make_ties(np.broadcast_to(s_b, shape), np.floor(u - z_b))
    x = np.where((rng.uniform(size=shape) < 0.5) & ~np.isnan(ties), ties, x).astype(np.float32)
    x.reshape(-1)[:4] = [0.0, -0.0, 1e9, -1e9]
    expected = _ort_qdq(x, scale, zero_point, axis)
    ours = quantize_dequantize(torch.from_numpy(x), torch.from_numpy(scale),
                               torch.from_numpy(zero_point.astype(np.int64)), qmin, qmax, axis=axis)
    assert np.array_equal(ours.numpy(), expected)


# -------------------------------------------------------------------------------------------------
# Gradients
# -------------------------------------------------------------------------------------------------
def test_ste_gradient_wrt_input(device):
    x = torch.tensor([-3.0, -0.26, 0.0, 0.3, 1.49, 1.51, 2.0, 10.0], device=device,
                     requires_grad=True)
    out = quantize_dequantize(x, torch.tensor(0.1), torch.tensor(3.0), 0, 18)   # range [-0.3, 1.5]
    out.backward(torch.ones_like(out))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def _surrogate(x, s, z, s0, qmin, qmax, axis):
    """The smooth function the STE/LSQ gradients differentiate: round() replaced by the identity
    plus
    the rounding residual frozen at s0."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s_, z_, s0_ = s.reshape(shape), z.reshape(shape), s0.reshape(shape)
    residual = torch.round(x / s0_) - x / s0_
    q = (x / s_ + residual + z_).clamp(qmin, qmax)
    return (q - z_) * s_


@pytest.mark.parametrize("axis", [None, 1])
def test_learnable_scale_and_offset_gradients_match_finite_differences(axis):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 5, dtype=torch.float64, generator=gen) * 2
    channels = 1 if axis is None else x.shape[axis]
    qmin, qmax = 0, 15
    s0 = torch.rand(channels, dtype=torch.float64, generator=gen) * 0.1 + 0.15
    z0 = torch.randint(4, 12, (channels,), generator=gen).to(torch.float64)
    if axis is None:
        s0, z0 = s0.reshape(()), z0.reshape(())
    shape = [1] * 3
    if axis is not None:
        shape[axis] = -1
    q = torch.round(x / s0.reshape(shape)) + z0.reshape(shape)
    keep = (q != qmin) & (q != qmax)            # avoid the kinks of the clamp
    weights = torch.randn(x.shape, dtype=torch.float64, generator=gen) * keep

    s = s0.clone().requires_grad_(True)
    z = z0.clone().requires_grad_(True)
    (quantize_dequantize(x, s, z, qmin, qmax, axis=axis) * weights).sum().backward()
    assert 0 < int(keep.sum()) and bool(((q < qmin) | (q > qmax)).any())   # both regions

    def loss(s_, z_):
        return float((_surrogate(x, s_, z_, s0, qmin, qmax, axis) * weights).sum())

    h = 1e-6
    for i in range(channels):
        e = torch.zeros(channels, dtype=torch.float64)
        e[i] = h
        e = e.reshape(s0.shape)
        fd_s = (loss(s0 + e, z0) - loss(s0 - e, z0)) / (2 * h)
        fd_z = (loss(s0, z0 + e) - loss(s0, z0 - e)) / (2 * h)
        assert s.grad.reshape(-1)[i].item() == pytest.approx(fd_s, rel=1e-6, abs=1e-8)
        assert z.grad.reshape(-1)[i].item() == pytest.approx(fd_z, rel=1e-6, abs=1e-8)


def test_ste_round_rounds_forward_and_passes_gradients_through():
    t = torch.tensor([0.4, 0.5, 1.5, -2.6], requires_grad=True)
    out = ste_round(t)
    assert out.tolist() == [0.0, 0.0, 2.0, -3.0]          # half to even, like the kernels
    (out * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert t.grad.tolist() == [1.0, 2.0, 3.0, 4.0]
