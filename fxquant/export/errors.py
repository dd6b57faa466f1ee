"""Errors raised by export."""
from __future__ import annotations

from fxquant.errors import FxQuantError

__all__ = ["ExportError"]


class ExportError(FxQuantError, RuntimeError):
    """An export could not produce consistent files (e.g. encodings naming missing tensors).

    The message names the tensors concerned and what to do about them.
    """
