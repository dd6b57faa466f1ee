"""Quantization encodings: a scale, an integer zero point and the integer grid they live on.

The data records every feature package shares (quantsim computes them, export writes them):
:class:`QuantEncoding` (affine integer grid), :class:`FloatEncoding` (a float16 cast) and the
int32 grid of simulated biases (:data:`INT32_MIN`, :data:`INT32_MAX`).

Grids (``SPEC.md`` §1): unsigned ``[0, 2^b - 1]``; signed ``[-2^(b-1), 2^(b-1) - 1]``; strict
symmetric drops the most negative value, ``[-2^(b-1) + 1, 2^(b-1) - 1]``. Symmetric encodings have
zero point 0. A real value ``x`` maps to
``q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`` and back to
``(q - zero_point) * scale``.

Example:
    >>> import torch
    >>> enc = QuantEncoding.from_min_max(-1.0, 3.0, bitwidth=8, symmetric=False)
    >>> (enc.qmin, enc.qmax, int(enc.zero_point))
    (0, 255, 64)
    >>> float(enc.min) <= -1.0 + 1e-6 and float(enc.max) >= 3.0 - 0.02
    True
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from fxquant.errors import ConfigError

__all__ = [
    "QuantEncoding", "FloatEncoding", "AnyEncoding", "MIN_SCALE", "INT32_MIN", "INT32_MAX",
    "quant_range", "scale_zero_point_from_min_max", "encoding_problem",
]

#: Smallest scale any computed encoding gets (AIMET's choice: float32 machine epsilon). It keeps
#: all-zero and constant tensors valid; values closer to 0 than this resolution quantize to 0.
MIN_SCALE: float = float(torch.finfo(torch.float32).eps)

#: The int32 grid: simulated biases (scale = input scale x weight scale, zero point 0) and the
#: widest integer type QuantizeLinear produces.
INT32_MIN: int = -(2**31)
INT32_MAX: int = 2**31 - 1

_MIN_BITWIDTH, _MAX_BITWIDTH = 2, 32


def _check_bitwidth(bitwidth: int) -> int:
    if isinstance(bitwidth, bool) or not isinstance(bitwidth, int) or not (
            _MIN_BITWIDTH <= bitwidth <= _MAX_BITWIDTH):
        raise ConfigError(f"bitwidth {bitwidth!r} is invalid; integer encodings support bit "
                          f"widths {_MIN_BITWIDTH}-{_MAX_BITWIDTH}")
    return bitwidth


def quant_range(bitwidth: int, signed: bool, symmetric: bool = False,
                strict: bool = False) -> tuple[int, int]:
    """Return ``(qmin, qmax)`` of the integer grid.

    Args:
        bitwidth: 2-32.
        signed: signed grid ``[-2^(b-1), 2^(b-1) - 1]`` instead of ``[0, 2^b - 1]``.
        symmetric: whether the encoding is symmetric (only matters together with ``strict``).
        strict: strict symmetric: drop the most negative value of a signed symmetric grid.

    Example:
        >>> quant_range(8, signed=True, symmetric=True, strict=True)
        (-127, 127)
    """
    _check_bitwidth(bitwidth)
    if signed:
        qmin, qmax = -(1 << (bitwidth - 1)), (1 << (bitwidth - 1)) - 1
        if strict and symmetric:
            qmin += 1
        return qmin, qmax
    return 0, (1 << bitwidth) - 1


def _as_float64(value: Tensor | float) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def scale_zero_point_from_min_max(min_val: Tensor, max_val: Tensor, qmin: int, qmax: int, *,
                                  symmetric: bool, signed: bool) -> tuple[Tensor, Tensor]:
    """Vectorised range -> (scale, zero point) on the grid ``[qmin, qmax]``; any tensor shape.

    The range is widened to include 0. Asymmetric: ``scale = (max - min) / (qmax - qmin)`` and the
    zero point is ``qmin - round(min / scale)``, an integer inside the grid, so 0.0 is exact.
    Symmetric signed: the smallest scale whose grid ``[qmin, qmax] * scale`` covers the range (zero
    point 0). Symmetric unsigned: ``scale = max / qmax`` (zero point 0; negative values clip to 0).
    Scales are at least ``MIN_SCALE``. The arithmetic runs in float64; the scale is then rounded to
    float32 and the zero point derived from that float32 scale.

    Returns:
        ``(scale, zero_point)``: float32 scale and float64 integer-valued zero point, shaped like
        the (broadcast) inputs.

    Example:
        >>> s, z = scale_zero_point_from_min_max(torch.tensor(0.), torch.tensor(2.55), 0, 255,
        ...                                      symmetric=False, signed=False)
        >>> (round(float(s), 6), float(z))
        (0.01, 0.0)
    """
    f32 = torch.finfo(torch.float32)
    mn = torch.nan_to_num(_as_float64(min_val), nan=0.0).clamp(min=f32.min, max=0.0)
    mx = torch.nan_to_num(_as_float64(max_val), nan=0.0).clamp(min=0.0, max=f32.max)
    mn, mx = torch.broadcast_tensors(mn, mx)
    if symmetric:
        if signed:
            scale = torch.maximum(mx / qmax, mn / qmin)       # qmin < 0: mn / qmin >= 0
        else:
            scale = mx / qmax
        scale = scale.clamp(min=MIN_SCALE, max=f32.max).to(torch.float32)
        return scale, torch.zeros_like(scale, dtype=torch.float64)
    steps = qmax - qmin
    scale = (mx / steps - mn / steps).clamp(min=MIN_SCALE, max=f32.max).to(torch.float32)
    zero_point = (qmin - torch.round(mn / scale.to(torch.float64))).clamp(qmin, qmax)
    return scale, zero_point


def _show_values(values: Tensor, mask: Tensor) -> str:
    bad = values[mask].reshape(-1)[:5].tolist()
    more = " ..." if int(mask.sum()) > 5 else ""
    return f"{[float(b) for b in bad]}{more}"


def _cpu_float64(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def encoding_problem(scale: Any, zero_point: Any, *, qmin: int, qmax: int, symmetric: bool,
                     shape: tuple[int, ...] | None = None, learned_scale: bool = False,
                     learned_zero_point: bool = False) -> tuple[str, str] | None:
    """The first way ``(scale, zero_point)`` is not a valid encoding, or None when it is one.

    The one definition of a valid encoding, applied to everything loaded (checkpoints, encodings
    files) exactly as strictly as to what calibration computes: every scale is finite, positive,
    finite in float32 and at least :data:`MIN_SCALE`; every zero point is an integer on the grid
    ``[qmin, qmax]`` (0 when ``symmetric``); zero point and scale have the same shape, and that
    shape is ``shape`` when given (``()`` per tensor, ``(C,)`` per channel). Learned ranges
    (``learned_scale`` / ``learned_zero_point``, which the forward pass clamps and rounds) need
    only be finite (and the scale > 0).

    Args:
        scale: a tensor, number or list of numbers.
        zero_point: a tensor, number or list of numbers.
        qmin: smallest grid integer; qmax: largest.
        symmetric: the encoding is symmetric (zero point 0).
        shape: the expected shape of the scale, or None to accept any 0-D / 1-D shape.
        learned_scale: the scale is a trained ``nn.Parameter``.
        learned_zero_point: the zero point is a trained ``nn.Parameter``.

    Returns:
        None, or ``(field, message)`` where ``field`` is ``"scale"`` or ``"zero_point"``; the
        caller names the file and key and raises its own error class.

    Example:
        >>> encoding_problem(1e39, 0, qmin=0, qmax=255, symmetric=False)[1]
        'invalid value [1e+39]; a scale must be finite in float32 (at most 3.4028234663852886e+38)'
        >>> encoding_problem(0.1, 3.5, qmin=0, qmax=255, symmetric=False)
        ('zero_point', 'invalid value [3.5]; zero points are integers')
        >>> encoding_problem([0.1, 0.2], [0, 0], qmin=-128, qmax=127, symmetric=True) is None
        True
    """
    try:
        s = _cpu_float64(scale)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        return "scale", f"expected numbers, got {type(scale).__name__} ({exc})"
    try:
        z = _cpu_float64(zero_point)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        return "zero_point", f"expected numbers, got {type(zero_point).__name__} ({exc})"
    if s.dim() > 1:
        return "scale", ("expected one scale or a 1-D list of per-channel scales, got shape "
                         f"{tuple(s.shape)}")
    if shape is not None and tuple(s.shape) != tuple(shape):
        if len(shape) == 0:
            want = "one scale (per tensor)"
        else:
            want = f"{shape[0]} per-channel scales"
        got_ = "one scale (per tensor)" if s.dim() == 0 else f"{s.numel()} scales"
        return "scale", f"expected {want} for this quantizer, got {got_}"
    f32 = torch.finfo(torch.float32)
    bad = ~torch.isfinite(s)
    if bool(bad.any()):
        return "scale", f"invalid value {_show_values(s, bad)}; a scale must be a finite number"
    bad = s <= 0
    if bool(bad.any()):
        return "scale", f"invalid value {_show_values(s, bad)}; a scale must be > 0"
    bad = s > f32.max
    if bool(bad.any()):
        return "scale", (f"invalid value {_show_values(s, bad)}; a scale must be finite in float32 "
                         f"(at most {f32.max})")
    if not learned_scale:
        bad = s.to(torch.float32) < MIN_SCALE
        if bool(bad.any()):
            return "scale", (f"invalid value {_show_values(s, bad)}; a scale must be at least "
                             f"{MIN_SCALE} (float32 eps, the smallest scale calibration produces)")
    if z.numel() == 1 and s.numel() != 1 and z.dim() == 0:
        z = z.expand(s.shape)
    if tuple(z.shape) != tuple(s.shape):
        return "zero_point", (f"shape {tuple(z.shape)} does not match the scale's "
                              f"{tuple(s.shape)}")
    bad = ~torch.isfinite(z)
    if bool(bad.any()):
        return "zero_point", f"invalid value {_show_values(z, bad)}; a zero point must be finite"
    if learned_zero_point:
        return None
    bad = z != torch.round(z)
    if bool(bad.any()):
        return "zero_point", f"invalid value {_show_values(z, bad)}; zero points are integers"
    if symmetric:
        bad = z != 0
        if bool(bad.any()):
            return "zero_point", (f"invalid value {_show_values(z, bad)}; a symmetric encoding has "
                                  "zero point 0")
    bad = (z < qmin) | (z > qmax)
    if bool(bad.any()):
        return "zero_point", (f"invalid value {_show_values(z, bad)}; zero points lie on the grid "
                              f"[{qmin}, {qmax}]")
    return None


@dataclass(frozen=True, eq=False)
class QuantEncoding:
    """An immutable affine encoding.

    Attributes:
        scale: float32 tensor, shape ``[]`` (per tensor) or ``[C]`` (per channel along ``axis``).
        zero_point: int64 tensor of the same shape; an integer inside ``[qmin, qmax]``.
        bitwidth: 2-32.
        signed: signed grid (int8-like) or unsigned (uint8-like).
        symmetric: zero point fixed at 0.
        strict: strict symmetric (signed grid without its most negative value). Normalised to
            False unless the encoding is signed and symmetric.
        axis: the channel axis of a per-channel encoding, None for per tensor.

    The constructor coerces ``scale`` to float32 and ``zero_point`` to int64 (keeping their
    device) and broadcasts a scalar zero point to the scale's shape.

    Example:
        >>> enc = QuantEncoding(scale=torch.tensor([0.1, 0.2]), zero_point=0, bitwidth=8,
        ...                     signed=True, symmetric=True, axis=0)
        >>> enc.max.tolist()
        [12.699999809265137, 25.399999618530273]
    """

    scale: Tensor
    zero_point: Tensor
    bitwidth: int
    signed: bool
    symmetric: bool
    strict: bool = False
    axis: int | None = None

    def __post_init__(self) -> None:
        _check_bitwidth(self.bitwidth)
        scale = torch.as_tensor(self.scale)
        if not scale.is_floating_point():
            scale = scale.to(torch.float32)
        scale = scale.detach().to(torch.float32)
        zp = torch.as_tensor(self.zero_point, device=scale.device).detach()
        if zp.is_floating_point():
            zp = torch.round(zp.to(torch.float64))
        zp = zp.to(torch.int64)
        if self.axis is None:
            if scale.numel() != 1:
                raise ConfigError(f"a per-tensor QuantEncoding (axis=None) needs one scale, got "
                                  f"shape {tuple(scale.shape)}; pass axis=<channel axis> for "
                                  f"per-channel scales")
            scale = scale.reshape(())
        else:
            if isinstance(self.axis, bool) or not isinstance(self.axis, int):
                raise ConfigError(f"QuantEncoding axis must be an int or None, got {self.axis!r}")
            if scale.dim() != 1:
                raise ConfigError(f"a per-channel QuantEncoding (axis={self.axis}) needs a 1-D "
                                  f"scale, got shape {tuple(scale.shape)}")
        if zp.numel() == 1:
            zp = zp.reshape(()).expand(scale.shape).clone()
        if zp.shape != scale.shape:
            raise ConfigError(f"QuantEncoding zero_point shape {tuple(zp.shape)} does not match "
                              f"scale shape {tuple(scale.shape)}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)
        object.__setattr__(self, "signed", bool(self.signed))
        object.__setattr__(self, "symmetric", bool(self.symmetric))
        object.__setattr__(self, "strict", bool(self.strict and self.symmetric and self.signed))

    @classmethod
    def from_min_max(cls, min: Tensor | float, max: Tensor | float,  # noqa: A002
                     bitwidth: int, symmetric: bool, strict: bool = False,
                     signed: bool | None = None, axis: int | None = None) -> QuantEncoding:
        """Build the encoding that covers ``[min, max]`` (widened to include 0).

        Args:
            min: range minimum, a float or a tensor (shape ``[]``, or ``[C]`` with ``axis``).
            max: range maximum, same shape as ``min``.
            bitwidth: 2-32.
            symmetric: zero point 0 and a grid symmetric around 0.
            strict: strict symmetric grid (signed symmetric only).
            signed: signed grid; default ``symmetric`` (symmetric -> int8-like, asymmetric ->
                uint8-like).
            axis: channel axis for per-channel ranges.

        A range of zero width (e.g. an all-zero tensor) gets the valid scale ``MIN_SCALE``.

        Example:
            >>> enc = QuantEncoding.from_min_max(torch.tensor([-1.0, 0.0]),
            ...                                  torch.tensor([1.0, 0.0]), 8, True, axis=0)
            >>> enc.zero_point.tolist(), enc.scale[1].item() > 0
            ([0, 0], True)
        """
        signed = symmetric if signed is None else bool(signed)
        qmin, qmax = quant_range(bitwidth, signed, symmetric, strict)
        scale, zp = scale_zero_point_from_min_max(_as_float64(min), _as_float64(max), qmin, qmax,
                                                  symmetric=symmetric, signed=signed)
        return cls(scale=scale, zero_point=zp, bitwidth=bitwidth, signed=signed,
                   symmetric=symmetric, strict=strict, axis=axis)

    @property
    def qmin(self) -> int:
        """Smallest integer of the grid."""
        return quant_range(self.bitwidth, self.signed, self.symmetric, self.strict)[0]

    @property
    def qmax(self) -> int:
        """Largest integer of the grid."""
        return quant_range(self.bitwidth, self.signed, self.symmetric, self.strict)[1]

    @property
    def num_steps(self) -> int:
        """``qmax - qmin``."""
        return self.qmax - self.qmin

    @property
    def min(self) -> Tensor:
        """Smallest representable value, ``(qmin - zero_point) * scale`` (float32)."""
        return (self.qmin - self.zero_point).to(torch.float32) * self.scale

    @property
    def max(self) -> Tensor:
        """Largest representable value, ``(qmax - zero_point) * scale`` (float32)."""
        return (self.qmax - self.zero_point).to(torch.float32) * self.scale

    @property
    def offset(self) -> Tensor:
        """AIMET's offset, ``qmin - zero_point`` (int64): -161 for uint8 zero point 161, -128 for
        int8 symmetric."""
        return self.qmin - self.zero_point

    @property
    def is_per_channel(self) -> bool:
        """True when the encoding has one scale per channel along ``axis``."""
        return self.axis is not None

    @property
    def device(self) -> torch.device:
        """Device of the scale and zero point."""
        return self.scale.device

    def to(self, device: torch.device | str) -> QuantEncoding:
        """Return a copy whose tensors live on ``device``."""
        return dataclasses.replace(self, scale=self.scale.to(device),
                                   zero_point=self.zero_point.to(device))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantEncoding):
            return NotImplemented
        meta = ("bitwidth", "signed", "symmetric", "strict", "axis")
        if any(getattr(self, k) != getattr(other, k) for k in meta):
            return False
        return (torch.equal(self.scale.cpu(), other.scale.cpu())
                and torch.equal(self.zero_point.cpu(), other.zero_point.cpu()))

    __hash__ = None  # type: ignore[assignment]  # holds tensors: compare with ==, do not hash

    def __repr__(self) -> str:
        if self.axis is None:
            tensors = f"scale={self.scale.item():.9g}, zero_point={int(self.zero_point)}"
        else:
            tensors = f"scale=<{self.scale.numel()} per-channel values>, axis={self.axis}"
        return (f"QuantEncoding({tensors}, bitwidth={self.bitwidth}, signed={self.signed}, "
                f"symmetric={self.symmetric}, strict={self.strict})")


@dataclass(frozen=True)
class FloatEncoding:
    """A float (cast) encoding: the tensor is rounded to ``float<bitwidth>`` (16 only).

    Example:
        >>> FloatEncoding().bitwidth
        16
    """

    bitwidth: int = 16


#: Either kind of encoding a quantizer can have.
AnyEncoding = Union[QuantEncoding, FloatEncoding]
