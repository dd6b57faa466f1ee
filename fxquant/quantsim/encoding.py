"""Quantization encodings, as quantsim's users import them.

The records live in the shared core (:mod:`fxquant.core.encoding`) because export writes what
quantsim computes; this module keeps the quantsim import path (AIMET users find encodings next to
the sim).

Example:
    >>> from fxquant.quantsim.encoding import QuantEncoding
    >>> enc = QuantEncoding.from_min_max(-1.0, 3.0, bitwidth=8, symmetric=False)
    >>> (enc.qmin, enc.qmax, int(enc.zero_point))
    (0, 255, 64)
"""
from __future__ import annotations

from fxquant.core.encoding import (MIN_SCALE, FloatEncoding, QuantEncoding, quant_range,
                                   scale_zero_point_from_min_max)
from fxquant.errors import CalibrationError

__all__ = [
    "QuantEncoding", "FloatEncoding", "CalibrationError", "MIN_SCALE", "quant_range",
    "scale_zero_point_from_min_max",
]
