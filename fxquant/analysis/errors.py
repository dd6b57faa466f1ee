"""The analyzer's errors."""
from __future__ import annotations

from fxquant.errors import FxQuantError

__all__ = ["AnalysisError"]


class AnalysisError(FxQuantError, RuntimeError):
    """An analysis could not be completed (the message names the analysis and the cause); nothing
    of it was written."""
