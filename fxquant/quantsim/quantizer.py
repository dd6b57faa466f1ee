"""Quantizer modules: affine (integer) and float16 fake quantizers with calibrated encodings.

The arithmetic is :mod:`fxquant.core.kernels` (ONNX QuantizeLinear/DequantizeLinear bit for bit,
straight-through / LSQ gradients); the kernels are re-exported here for convenience.

Example:
    >>> import torch
    >>> q = AffineQuantizer(8, symmetric=False, name="act")
    >>> with q.calibration():
    ...     _ = q(torch.tensor([0.0, 2.55]))
    >>> q(torch.tensor([0.123, 9.0]))
    tensor([0.1200, 2.5500])
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from fxquant.core.encoding import MIN_SCALE, QuantEncoding, quant_range
from fxquant.core.kernels import dequantize, quantize, quantize_dequantize, ste_round
from fxquant.errors import CalibrationError, ConfigError
from fxquant.quantsim.encoding_analyzer import EncodingAnalyzer, get_encoding_analyzer
from fxquant.quantsim.quant_scheme import QuantizationDataType, QuantScheme
from fxquant.quantsim.quantizer_base import (BITWIDTH_RANGES, Grid, QuantizerBase,
                                             QuantizerSnapshot, validate_bitwidth)

__all__ = [
    "quantize_dequantize", "quantize", "dequantize", "QuantizerBase", "AffineQuantizer",
    "FloatQuantizer", "create_quantizer", "BITWIDTH_RANGES", "CalibrationError",
    "QuantizerSnapshot",
]

logger = logging.getLogger(__name__)

class AffineQuantizer(QuantizerBase):
    """Integer (affine) fake quantizer with a calibrated, optionally learned, encoding.

    ``scale`` and ``zero_point`` are registered as float32 buffers (the zero point holds integer
    values) so that ``state_dict()`` round-trips them; with ``learn_range=True`` they are
    ``nn.Parameter``s trained by any optimizer (the zero point only for asymmetric encodings; it is
    rounded in the forward pass with a straight-through gradient). Both are None until an encoding
    is computed or set. The grid (bit width, signedness, symmetry) of the stored encoding and the
    frozen flag travel in the state dict's extra state.

    Args:
        bitwidth: integer bit width; params 2-32, activations 4-32.
        symmetric: symmetric encodings (zero point 0, signed grid unless ``signed=False``).
        strict_symmetric: drop the most negative value of the signed symmetric grid.
        signed: force a signed/unsigned grid; None = signed iff symmetric.
        unsigned_symmetric: symmetric encodings of non-negative data use the unsigned grid (AIMET).
        axis: per-channel axis (0 for Conv/Linear weights, 1 for ConvTranspose weights), None =
            per tensor.
        quant_scheme: calibration scheme (``QuantScheme`` or "tf", "min_max", "tf_enhanced",
            "percentile", "mse"); range-learning schemes imply ``learn_range=True``.
        encoding_analyzer: an analyzer to use instead of the one ``quant_scheme`` selects.
        learn_range: make scale and zero point trainable; None = as the scheme says.
        kind: "param" or "activation".
        name: name used in messages.
        enabled: False makes the quantizer the identity.

    Changing ``bitwidth``, ``symmetric``, ``strict_symmetric`` or ``signed`` drops the current
    encoding (compute it again); on a frozen quantizer it is an error.

    Example:
        >>> q = AffineQuantizer(8, symmetric=True, axis=0, kind="param", name="conv.weight")
        >>> w = torch.randn(4, 3, 3, 3)
        >>> with q.calibration():
        ...     _ = q(w)
        >>> bool((q(w) - w).abs().max() <= q.encoding.scale.max() / 2)
        True
    """

    data_type = QuantizationDataType.int

    def __init__(self, bitwidth: int = 8, *, symmetric: bool = False,
                 strict_symmetric: bool = False, signed: bool | None = None,
                 unsigned_symmetric: bool = False, axis: int | None = None,
                 quant_scheme: QuantScheme | str = QuantScheme.post_training_tf,
                 encoding_analyzer: EncodingAnalyzer | None = None,
                 learn_range: bool | None = None, kind: str = "activation", name: str = "",
                 enabled: bool = True) -> None:
        super().__init__(kind=kind, name=name, enabled=enabled)
        scheme = QuantScheme.parse(quant_scheme)
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ConfigError(f"{self._label()}: axis must be an int or None, got {axis!r}")
        self._bitwidth = validate_bitwidth(bitwidth, kind, self._label())
        self._symmetric = bool(symmetric)
        self._strict = bool(strict_symmetric)
        self._signed = None if signed is None else bool(signed)
        self.unsigned_symmetric = bool(unsigned_symmetric)
        self.axis = axis
        self.quant_scheme = scheme
        if encoding_analyzer is None:
            encoding_analyzer = get_encoding_analyzer(scheme, axis=axis, name=name or None)
        self.encoding_analyzer = encoding_analyzer
        self._learn_range = scheme.learns_range if learn_range is None else bool(learn_range)
        self._grid: Grid | None = None
        self._qrange = (0, 0)
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)
        # follows .to(device) so that encodings set later land on the module's device; not saved
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    # -- configuration ----------------------------------------------------------------------------
    def _config_changes(self, what: str, old: Any, new: Any) -> None:
        if old == new:
            return
        if self._frozen:
            raise ConfigError(f"{self._label()} has a frozen encoding; call unfreeze_encoding() "
                              f"before changing {what}")
        if self.scale is not None:
            logger.info("%s: %s changed from %r to %r; its encoding was dropped, compute it again",
                        self._label(), what, old, new)
            self._drop_encoding()

    @property
    def bitwidth(self) -> int:
        """Integer bit width (params 2-32, activations 4-32)."""
        return self._bitwidth

    @bitwidth.setter
    def bitwidth(self, value: int) -> None:
        value = validate_bitwidth(value, self.kind, self._label())
        self._config_changes("bitwidth", self._bitwidth, value)
        self._bitwidth = value

    @property
    def symmetric(self) -> bool:
        """Symmetric encodings (zero point 0)."""
        return self._symmetric

    @symmetric.setter
    def symmetric(self, value: bool) -> None:
        self._config_changes("symmetric", self._symmetric, bool(value))
        self._symmetric = bool(value)

    @property
    def strict_symmetric(self) -> bool:
        """Strict symmetric grid (no most negative value)."""
        return self._strict

    @strict_symmetric.setter
    def strict_symmetric(self, value: bool) -> None:
        self._config_changes("strict_symmetric", self._strict, bool(value))
        self._strict = bool(value)

    @property
    def signed(self) -> bool | None:
        """Forced grid signedness, or None (signed iff symmetric)."""
        return self._signed

    @signed.setter
    def signed(self, value: bool | None) -> None:
        value = None if value is None else bool(value)
        self._config_changes("signed", self._signed, value)
        self._signed = value

    @property
    def learn_range(self) -> bool:
        """Scale (and the asymmetric zero point) are trainable ``nn.Parameter``s."""
        return self._learn_range

    @learn_range.setter
    def learn_range(self, value: bool) -> None:
        self._learn_range = bool(value)
        if self.scale is not None:
            self._store(self.scale.detach().clone(), self.zero_point.detach().clone())

    # -- encoding ---------------------------------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        return self.scale is not None

    @property
    def encoding(self) -> QuantEncoding | None:
        if self.scale is None or self._grid is None:
            return None
        qmin, qmax = self._qrange
        grid = self._grid
        # a learned scale is used clamped to MIN_SCALE by forward(); report what forward uses
        scale = self.scale.detach().clamp_min(MIN_SCALE) if isinstance(self.scale, nn.Parameter) \
            else self.scale.detach().clone()
        return QuantEncoding(scale=scale,
                             zero_point=torch.round(self.zero_point.detach()).clamp(qmin, qmax),
                             bitwidth=grid.bitwidth, signed=grid.signed, symmetric=grid.symmetric,
                             strict=grid.strict, axis=self.axis)

    @property
    def qmin(self) -> int:
        """Smallest grid integer of the current encoding (of the configuration without one)."""
        return self._qrange[0] if self._grid is not None else quant_range(*self._config_grid())[0]

    @property
    def qmax(self) -> int:
        """Largest grid integer of the current encoding (of the configuration without one)."""
        return self._qrange[1] if self._grid is not None else quant_range(*self._config_grid())[1]

    def _config_grid(self) -> tuple[int, bool, bool, bool]:
        signed = self._symmetric if self._signed is None else self._signed
        return self._bitwidth, signed, self._symmetric, self._strict

    def set_encoding(self, encoding: QuantEncoding) -> None:
        """Install ``encoding``; the quantizer adopts its bit width, signedness and symmetry.

        Raises:
            ConfigError: the encoding's axis differs from the quantizer's, or its bit width is
                invalid for this kind of quantizer.

        Example:
            >>> q = AffineQuantizer(8, name="x")
            >>> q.set_encoding(QuantEncoding.from_min_max(0.0, 2.55, bitwidth=8, symmetric=False))
            >>> q(torch.tensor([0.123, 9.0]))
            tensor([0.1200, 2.5500])
        """
        if not isinstance(encoding, QuantEncoding):
            raise ConfigError(f"{self._label()}: set_encoding expects a QuantEncoding, got "
                              f"{type(encoding).__name__}")
        if encoding.axis != self.axis:
            raise ConfigError(f"{self._label()} quantizes along axis {self.axis}, but the "
                              f"encoding has axis {encoding.axis}")
        validate_bitwidth(encoding.bitwidth, self.kind, self._label())
        self._bitwidth, self._symmetric = encoding.bitwidth, encoding.symmetric
        if encoding.symmetric and encoding.signed:
            self._strict = encoding.strict
        self._set_grid(Grid(encoding.bitwidth, encoding.signed, encoding.symmetric,
                             encoding.strict))
        self._store(encoding.scale, encoding.zero_point.to(torch.float32))

    def _set_grid(self, grid: Grid) -> None:
        self._grid = grid
        self._qrange = quant_range(grid.bitwidth, grid.signed, grid.symmetric, grid.strict)

    def _store(self, scale: Tensor, zero_point: Tensor) -> None:
        device = self._device_anchor.device
        symmetric = self._grid.symmetric if self._grid is not None else self._symmetric
        self._store_one("scale", scale.to(device=device, dtype=torch.float32), self._learn_range)
        self._store_one("zero_point", zero_point.to(device=device, dtype=torch.float32),
                        self._learn_range and not symmetric)

    def _store_one(self, name: str, value: Tensor, learnable: bool) -> None:
        current = getattr(self, name)
        if (current is not None and current.shape == value.shape
                and isinstance(current, nn.Parameter) == learnable):
            with torch.no_grad():
                current.copy_(value)
            return
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        if learnable:
            param = nn.Parameter(value.detach().clone(), requires_grad=not self._frozen)
            self.register_parameter(name, param)
        else:
            self.register_buffer(name, value.detach().clone())

    def _drop_encoding(self) -> None:
        for name in ("scale", "zero_point"):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
            self.register_buffer(name, None)
        self._grid = None

    def freeze_encoding(self) -> None:
        """Keep the current encoding (also stops range learning on it).

        Raises:
            CalibrationError: there is no encoding to freeze.
        """
        if self.scale is None:
            raise CalibrationError(f"{self._label()} has no encoding to freeze; compute or set "
                                   f"one first")
        super().freeze_encoding()
        for p in (self.scale, self.zero_point):
            if isinstance(p, nn.Parameter):
                p.requires_grad_(False)

    def unfreeze_encoding(self) -> None:
        super().unfreeze_encoding()
        for p in (self.scale, self.zero_point):
            if isinstance(p, nn.Parameter):
                p.requires_grad_(True)

    def _resolve_signed(self) -> bool:
        if self._signed is not None:
            return self._signed
        if self._symmetric and self.unsigned_symmetric:
            observed_min, _ = self.encoding_analyzer.observed_min_max()
            return not bool((observed_min >= 0).all())
        return self._symmetric

    def compute_encoding(self) -> None:
        """Compute and install the encoding from the analyzer's statistics (no-op when frozen).

        Raises:
            CalibrationError: no statistics were collected (the quantizer saw no data).
        """
        if self._frozen:
            logger.debug("%s is frozen; compute_encoding keeps its encoding", self._label())
            return
        if not self.encoding_analyzer.has_stats:
            raise CalibrationError(
                f"{self._label()} collected no statistics: run calibration data through the model "
                f"inside sim.compute_encodings(...) (the quantizer must be reached by the forward "
                f"pass) before computing its encoding")
        encoding = self.encoding_analyzer.compute_encoding(
            self._bitwidth, self._symmetric, strict=self._strict, signed=self._resolve_signed())
        self.set_encoding(encoding)

    def _start_calibration(self) -> None:
        if not self._frozen:
            self.encoding_analyzer.reset()

    def _finish_calibration(self) -> None:
        if self._frozen:
            return
        if not self.encoding_analyzer.has_stats:
            if self.enabled:       # a disabled quantizer sees nothing by design
                logger.warning("%s saw no data during calibration; its encoding was left %s",
                               self._label(), "unchanged" if self.scale is not None else "unset")
            return
        self.compute_encoding()

    # -- state dict -------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        grid = None if self._grid is None else list(self._grid)
        return {"grid": grid, "frozen": self._frozen}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        grid = state.get("grid")
        if grid is not None:
            self._set_grid(Grid(int(grid[0]), bool(grid[1]), bool(grid[2]), bool(grid[3])))
        frozen = bool(state.get("frozen", False))
        if frozen and self.scale is not None:
            self.freeze_encoding()
        elif not frozen and self._frozen:
            self.unfreeze_encoding()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # Materialise scale/zero_point (absent until an encoding exists) so that the default
        # loader can copy into them; the grid comes from the extra state.
        extra = state_dict.get(prefix + "_extra_state")
        if isinstance(extra, dict) and extra.get("grid") is not None:
            self._frozen = False
            self.set_extra_state({"grid": extra["grid"]})
        scale = state_dict.get(prefix + "scale")
        zero_point = state_dict.get(prefix + "zero_point")
        if isinstance(scale, Tensor) and isinstance(zero_point, Tensor):
            if self._grid is None:
                self._set_grid(Grid(*self._config_grid()))
            self._store(torch.zeros(scale.shape), torch.zeros(zero_point.shape))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x`` (identity when disabled; pass-through plus statistics when
        calibrating).

        Raises:
            CalibrationError: no encoding yet (call ``sim.compute_encodings`` first).
        """
        if not self.enabled:
            return x
        if self.calibrating:
            if not self._frozen:
                self.encoding_analyzer.update_stats(x.detach())
            return x
        scale, zero_point = self.scale, self.zero_point
        if scale is None:
            raise CalibrationError(
                f"{self._label()} has no encoding yet: call sim.compute_encodings(...) (or "
                f"calibrate it and call compute_encoding(), or set_encoding()) before running the "
                f"model")
        qmin, qmax = self._qrange
        if isinstance(scale, nn.Parameter):
            scale = scale.clamp_min(MIN_SCALE)
        if isinstance(zero_point, nn.Parameter):
            zero_point = ste_round(zero_point).clamp(qmin, qmax)
        return quantize_dequantize(x, scale, zero_point, qmin, qmax, axis=self.axis)

    def extra_repr(self) -> str:
        parts = [f"bitwidth={self._bitwidth}", f"symmetric={self._symmetric}"]
        if self._strict:
            parts.append("strict_symmetric=True")
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        if self._learn_range:
            parts.append("learn_range=True")
        parts.append(f"scheme={self.quant_scheme.name}")
        if self.scale is None:
            parts.append("encoding=None")
        if self._frozen:
            parts.append("frozen=True")
        return f"{super().extra_repr()}, " + ", ".join(parts)


class FloatQuantizer(QuantizerBase):
    """Float16 simulation: a float16 cast round trip (``x.half().float()``); needs no encoding.

    Example:
        >>> FloatQuantizer(16)(torch.tensor([1.0 + 2 ** -12])).item()
        1.0
    """

    data_type = QuantizationDataType.float

    def __init__(self, bitwidth: int = 16, *, kind: str = "activation", name: str = "",
                 enabled: bool = True) -> None:
        super().__init__(kind=kind, name=name, enabled=enabled)
        if bitwidth != 16:
            raise ConfigError(f"{self._label()}: data_type='float' supports bitwidth 16 (float16) "
                              f"only, got {bitwidth!r}")
        self.bitwidth = 16

    def forward(self, x: Tensor) -> Tensor:
        if (not self.enabled or self.calibrating or not x.is_floating_point()
                or x.dtype == torch.float16):
            return x
        return x.to(torch.float16).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bitwidth=16, data_type=float"


def create_quantizer(bitwidth: int = 8, *,
                     data_type: QuantizationDataType | str = QuantizationDataType.int,
                     **kwargs: Any) -> QuantizerBase:
    """Build an ``AffineQuantizer`` (``data_type="int"``) or a ``FloatQuantizer`` (``"float"``,
    bitwidth 16).

    Float quantizers take only the ``kind``, ``name`` and ``enabled`` keyword arguments; the others
    are ignored for them.

    Example:
        >>> type(create_quantizer(16, data_type="float")).__name__
        'FloatQuantizer'
    """
    if QuantizationDataType.parse(data_type) is QuantizationDataType.float:
        common = {k: kwargs[k] for k in ("kind", "name", "enabled") if k in kwargs}
        return FloatQuantizer(bitwidth, **common)
    return AffineQuantizer(bitwidth, **kwargs)
