"""The QuantizeLinear/DequantizeLinear kernels: fake quantization bit-exact with ONNX.

One module holds the arithmetic that quantsim's quantizers simulate and export's QDQ writer
stores (:func:`quantize` computes the integers of exported weights and biases).

Arithmetic (``SPEC.md`` §1), computed in float32 (float64 for float64 inputs; float16/bfloat16
inputs are cast to float32 and the result cast back)::

    q  = clamp(round_half_to_even(x / scale) + zero_point, qmin, qmax)     # a true division
    x' = (q - zero_point) * scale

Gradients (straight-through estimator, LSQ-style range learning; ``r = round(x / s)``,
``q = r + z`` before clamping, "inside" means ``qmin <= q <= qmax``)::

    d x'/d x = 1 inside, 0 outside
    d x'/d s = r - x / s inside,  clamp(q, qmin, qmax) - z outside
    d x'/d z = 0 inside,          -s outside

The zero point ``z`` enters the forward pass rounded (and clamped to the grid); its gradient
passes that rounding straight through. Per-channel gradients of ``s`` and ``z`` are summed over all
other axes.

Example:
    >>> import torch
    >>> x = torch.tensor([-1.0, 0.0, 0.26, 0.25, 9.0])
    >>> quantize_dequantize(x, torch.tensor(0.5), torch.tensor(2.0), 0, 15).tolist()
    [-1.0, 0.0, 0.5, 0.0, 6.5]
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fxquant.core.encoding import INT32_MAX, INT32_MIN
from fxquant.errors import ConfigError

__all__ = ["quantize_dequantize", "quantize", "dequantize", "ste_round"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    if not x.is_floating_point():
        raise TypeError(f"fake quantization needs a floating-point tensor, got dtype {x.dtype}")
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_grid(qmin: int, qmax: int) -> None:
    if not qmin < qmax:
        raise ConfigError(f"qmin ({qmin}) must be smaller than qmax ({qmax})")


def _along_axis(t: Tensor, x: Tensor, axis: int | None, what: str) -> Tensor:
    """Reshape a per-channel ``[C]`` tensor so that it broadcasts along ``axis`` of ``x``."""
    if axis is None:
        if t.numel() != 1:
            raise ConfigError(f"per-tensor quantization (axis=None) needs a single {what}, got "
                              f"shape {tuple(t.shape)}; pass axis=<channel axis> for per-channel "
                              f"values")
        return t.reshape(())
    ndim = x.dim()
    if not -ndim <= axis < ndim:
        raise ConfigError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
    ax = axis % ndim
    if t.numel() == 1 and t.dim() == 0:
        return t
    if t.numel() != x.shape[ax]:
        raise ConfigError(f"{what} has {t.numel()} channels but the tensor has {x.shape[ax]} "
                          f"along axis {axis} (shape {tuple(x.shape)}); use the axis of the "
                          f"channel dimension")
    shape = [1] * ndim
    shape[ax] = -1
    return t.reshape(shape)


def _prepare(x: Tensor, scale: Tensor | float, zero_point: Tensor | float, axis: int | None,
             ) -> tuple[Tensor, Tensor, Tensor]:
    dtype = _compute_dtype(x)
    xc = x if x.dtype == dtype else x.to(dtype)
    # scale and zero point always become tensors on x's device: a CPU scalar divisor makes CUDA
    # multiply by a reciprocal instead of dividing, which breaks parity on ties.
    s = torch.as_tensor(scale).to(device=x.device, dtype=dtype)
    z = torch.as_tensor(zero_point).to(device=x.device, dtype=dtype)
    return xc, _along_axis(s, x, axis, "scale"), _along_axis(z, x, axis, "zero_point")


_EXACT_SHIFT_LIMIT = 2**24  # float32 represents every integer below this exactly


class _FakeQuantSTE(torch.autograd.Function):
    """Quantize-dequantize with the straight-through / LSQ gradients of the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int,
                qmax: int) -> Tensor:
        ctx.qrange = (qmin, qmax)
        ctx.save_for_backward(x, scale, zero_point)
        return (torch.round(x / scale).add_(zero_point).clamp_(qmin, qmax)
                .sub_(zero_point).mul_(scale))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        u = x / scale
        r = torch.round(u)
        q = r + zero_point
        inside = (q >= qmin) & (q <= qmax)
        grad_x = grad_s = grad_z = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.masked_fill(~inside, 0.0)
        if ctx.needs_input_grad[1]:
            d_s = torch.where(inside, r - u, q.clamp(qmin, qmax) - zero_point)
            grad_s = (grad * d_s).sum_to_size(scale.shape)
        if ctx.needs_input_grad[2]:
            grad_z = (grad.masked_fill(inside, 0.0) * -scale).sum_to_size(zero_point.shape)
        return grad_x, grad_s, grad_z, None, None


# CPU tensors larger than the last-level cache are fake-quantized in chunks of this many elements,
# so that the four passes run on cached data (2-3× faster on 38 MB activations).
_CPU_QDQ_CHUNK = 1 << 20
_CPU_QDQ_CHUNKED_ABOVE = 1 << 22


def _qdq_cpu_scalar(x: Tensor, s: Tensor, lo: float, hi: float) -> Tensor:
    """``round(x / s)`` clamped to ``[lo, hi]``, times ``s``, for a per-tensor scale on CPU."""
    if x.numel() <= _CPU_QDQ_CHUNKED_ABOVE or not x.is_contiguous() or s.numel() != 1:
        return torch.div(x, s).round_().clamp_(lo, hi).mul_(s)
    out = torch.empty_like(x)
    src, dst = x.view(-1), out.view(-1)
    for j in range(0, src.numel(), _CPU_QDQ_CHUNK):
        part = dst[j:j + _CPU_QDQ_CHUNK]
        torch.div(src[j:j + _CPU_QDQ_CHUNK], s, out=part).round_().clamp_(lo, hi).mul_(s)
    return out


def quantize_dequantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | float, qmin: int,
                        qmax: int, axis: int | None = None) -> Tensor:
    """Fake-quantize ``x``: ONNX QuantizeLinear followed by DequantizeLinear, bit for bit.

    Differentiable with the straight-through estimator (and LSQ gradients for ``scale`` and
    ``zero_point`` when they require grad); see the module docstring for the formulas.

    Args:
        x: floating-point input of any shape and device.
        scale: float scale, shape ``[]`` or ``[C]`` (per channel along ``axis``).
        zero_point: integer-valued zero point (any numeric dtype), same shape as ``scale``.
        qmin: smallest integer of the grid, e.g. 0 (uint8) or -128 (int8).
        qmax: largest integer of the grid, e.g. 255 or 127.
        axis: channel axis of per-channel scales (0 for Conv/Linear weights, 1 for ConvTranspose).

    Returns:
        A tensor shaped and typed like ``x``.

    Example:
        >>> w = torch.tensor([[0.30, -0.26], [1.0, 2.0]])
        >>> quantize_dequantize(w, torch.tensor([0.1, 1.0]), torch.tensor([0, 0]), -128, 127,
        ...                     axis=0)
        tensor([[ 0.3000, -0.3000],
                [ 1.0000,  2.0000]])
    """
    _check_grid(qmin, qmax)
    xc, s, z = _prepare(x, scale, zero_point, axis)
    if torch.is_grad_enabled() and (xc.requires_grad or s.requires_grad or z.requires_grad):
        out = _FakeQuantSTE.apply(xc, s, z, qmin, qmax)
    elif qmax - qmin < _EXACT_SHIFT_LIMIT:
        # clamp(round(x/s) + z, qmin, qmax) - z == clamp(round(x/s), qmin - z, qmax - z) exactly
        # while integers stay exact in float32 (anything larger saturates either way): four
        # memory passes instead of six.
        if z.numel() == 1 and z.device.type == "cpu" and not torch.compiler.is_compiling():
            # scalar bounds take clamp's vectorized path (a tensor-bound clamp is ~10× slower
            # on CPU in eager); reading a CPU scalar costs no device sync. Under torch.compile
            # the tensor-bound chain below fuses into one loop and .item() would break the graph
            zp = z.item()
            out = _qdq_cpu_scalar(xc, s, qmin - zp, qmax - zp)
        else:
            out = torch.div(xc, s).round_().clamp_(qmin - z, qmax - z).mul_(s)
    else:
        out = torch.round(xc / s).add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | float, qmin: int, qmax: int,
             axis: int | None = None) -> Tensor:
    """ONNX QuantizeLinear: ``clamp(round_half_to_even(x / scale) + zero_point, qmin, qmax)``.

    Returns:
        int32 tensor (int64 when the grid does not fit int32, e.g. unsigned 32-bit). Saturation
        is exact in integers even where float32 cannot represent ``qmax``.

    Example:
        >>> quantize(torch.tensor([0.25, 0.75, 99.0]), 0.5, 3, 0, 7).tolist()
        [3, 5, 7]
    """
    _check_grid(qmin, qmax)
    with torch.no_grad():
        xc, s, z = _prepare(x, scale, zero_point, axis)
        q = torch.round(xc / s).add_(z).clamp_(qmin, qmax).to(torch.int64).clamp_(qmin, qmax)
    return q.to(torch.int32) if INT32_MIN <= qmin and qmax <= INT32_MAX else q


def dequantize(q: Tensor, scale: Tensor | float, zero_point: Tensor | int,
               axis: int | None = None) -> Tensor:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` with the subtraction done in integers.

    Returns:
        float32 tensor shaped like ``q``.

    Example:
        >>> dequantize(torch.tensor([3, 5, 7]), 0.5, 3).tolist()
        [0.0, 1.0, 2.0]
    """
    s = torch.as_tensor(scale).to(device=q.device, dtype=torch.float32)
    z = torch.as_tensor(zero_point).to(device=q.device)
    z = torch.round(z).to(torch.int64) if z.is_floating_point() else z.to(torch.int64)
    s, z = _along_axis(s, q, axis, "scale"), _along_axis(z, q, axis, "zero_point")
    return (q.to(torch.int64) - z).to(torch.float32) * s


def ste_round(t: Tensor) -> Tensor:
    """``round(t)`` forward, identity gradient (straight-through estimator).

    Example:
        >>> t = torch.tensor([0.4, 1.6], requires_grad=True)
        >>> ste_round(t).sum().backward()
        >>> t.grad.tolist()
        [1.0, 1.0]
    """
    return t + (torch.round(t) - t).detach()
