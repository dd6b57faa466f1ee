"""Errors raised by the numeric suite."""
from __future__ import annotations

from fxquant.errors import FxQuantError

__all__ = ["NumericSuiteError", "NoMatchingLayersError", "PairingError"]


class NumericSuiteError(FxQuantError, ValueError):
    """Base class of the numeric-suite errors (a ``ValueError``, as torch.ao.ns raises)."""


class NoMatchingLayersError(NumericSuiteError):
    """The two compared models have no layer in common (the message lists both models' layers
    and how layers are matched)."""


class PairingError(NumericSuiteError):
    """The two models' calls cannot be paired: they ran on different inputs, a different number
    of times, or one model's call did not reach a layer the other's did.

    Attributes:
        layer: the layer where pairing failed ("" for a whole-model check).
        call: the call index (0-based) concerned, or None.
    """

    def __init__(self, message: str, *, layer: str = "", call: int | None = None) -> None:
        super().__init__(message)
        self.layer = layer
        self.call = call
