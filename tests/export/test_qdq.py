"""One quantizer, both sides: the QDQ builder's ONNX vs the quantizer module, bit for bit."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fxquant.export.qdq import build_qdq_model
from fxquant.quantsim.encoding import QuantEncoding
from fxquant.quantsim.quantizer import AffineQuantizer
from tests.export.ort_parity import DISABLE_ALL, ENABLE_ALL, session


def _identity_model(shape: list[int], initializer: np.ndarray | None = None) -> onnx.ModelProto:
    source = "w" if initializer is not None else "x"
    inputs = [] if initializer is not None else [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    inits = [] if initializer is None else [numpy_helper.from_array(initializer, "w")]
    graph = helper.make_graph([helper.make_node("Identity", [source], ["t"])], "g", inputs,
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _inputs(scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, channels: int) -> torch.Tensor:
    """Random values, exact ties (x / scale = k + 0.5) and saturating values, [N, C] per channel."""
    gen = torch.Generator().manual_seed(0)
    s = scale.reshape(1, -1).expand(1, channels)
    z = zp.reshape(1, -1).expand(1, channels).to(torch.float32)
    k = torch.randint(qmin - 3, qmax + 3, (4096, channels), generator=gen).to(torch.float32) - z
    ties = (k + 0.5) * s
    near = ties * (1 + 1e-7 * torch.randn(4096, channels, generator=gen))
    rand = torch.randn(4096, channels, generator=gen) * s * (qmax - qmin) / 4
    big = torch.tensor([[1e30], [-1e30], [0.0], [-0.0]]).expand(4, channels)
    return torch.cat([ties, near, rand, big]).to(torch.float32)


GRIDS = [(8, False, False), (8, True, True), (16, True, True), (16, False, False), (4, True, True),
         (12, False, False), (20, False, False)]


@pytest.mark.parametrize("bits,signed,symmetric", GRIDS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("level", [DISABLE_ALL, ENABLE_ALL], ids=["disable_all", "enable_all"])
def test_activation_qdq_bit_exact(bits: int, signed: bool, symmetric: bool, per_channel: bool,
                                  level) -> None:
    channels = 3
    if per_channel and bits not in (4, 8, 16):
        pytest.skip("per-channel activations on non-native grids are not exported")
    scale = torch.tensor([0.125, 0.0137, 3.1e-3]) if per_channel else torch.tensor(0.0137)
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    zp = torch.zeros_like(scale, dtype=torch.int64) if symmetric else (
        torch.tensor([3, qmax // 2, qmax - 1]) if per_channel else torch.tensor(qmax // 3))
    enc = QuantEncoding(scale=scale, zero_point=zp, bitwidth=bits, signed=signed, symmetric=symmetric,
                        axis=1 if per_channel else None)
    q = AffineQuantizer(bits, symmetric=symmetric, signed=signed, axis=1 if per_channel else None)
    q.set_encoding(enc)
    x = _inputs(scale, zp, qmin, qmax, channels)
    qdq = build_qdq_model(_identity_model(list(x.shape)), {"t": enc}, {})
    got = session(qdq.model, level).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = q(x).numpy()
    assert np.array_equal(got, want), f"{np.mean(got != want):.2e} of values differ"


@pytest.mark.parametrize("bits,signed", [(8, True), (4, True), (16, True), (8, False), (32, True)])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_param_qdq_bit_exact(bits: int, signed: bool, axis: int | None) -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 5, 3, generator=gen)
    symmetric = signed
    q = AffineQuantizer(bits, symmetric=symmetric, signed=signed, axis=axis, kind="param")
    with q.calibration():
        q(w)
    enc = q.encoding
    w_ties = w.clone()
    w_ties.view(-1)[:10] = 0.5 * enc.scale.reshape(-1)[0]
    qdq = build_qdq_model(_identity_model(list(w.shape), w_ties.numpy()), {}, {"w": enc})
    got = session(qdq.model).run(None, {})[0]
    with torch.no_grad():
        want = q(w_ties).numpy()
    assert np.array_equal(got, want)
    if bits <= 16:
        assert any(n.op_type == "DequantizeLinear" for n in qdq.model.graph.node)


def test_strict_symmetric_uses_clip() -> None:
    enc = QuantEncoding(scale=torch.tensor(0.01), zero_point=0, bitwidth=8, signed=True, symmetric=True,
                        strict=True)
    x = torch.tensor([[-5.0, -1.275, -1.265, 1.27, 5.0]])
    qdq = build_qdq_model(_identity_model([1, 5]), {"t": enc}, {})
    got = session(qdq.model).run(None, {"x": x.numpy()})[0]
    q = AffineQuantizer(8, symmetric=True, strict_symmetric=True)
    q.set_encoding(enc)
    assert np.array_equal(got, q(x).numpy())
    assert float(got.min()) == pytest.approx(-1.27)


@pytest.mark.parametrize("dtype, name", [(np.float16, "float16"), (np.float64, "float64")])
def test_non_float32_model_is_refused(dtype, name) -> None:
    from fxquant.export import ExportError

    model = _identity_model([4], np.ones(4, dtype=dtype))
    enc = QuantEncoding(scale=torch.tensor(0.1), zero_point=torch.tensor(0), bitwidth=8,
                        signed=True, symmetric=True)
    with pytest.raises(ExportError, match=rf"build_qdq_model needs a float32 model, but 1 "
                                          rf"input\(s\)/initializer\(s\) are not float32: w "
                                          rf"\({name}\)\. Export the float model in float32"):
        build_qdq_model(model, {}, {"w": enc})
