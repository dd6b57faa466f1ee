"""Exceptions raised by fxquant.

Every error names the culprit (module path, node, JSON path) and, where there is one, the fix.
"""
from __future__ import annotations

__all__ = ["FxQuantError", "TraceError", "PassError", "ConfigError", "CalibrationError",
           "DataDependentError"]


class FxQuantError(Exception):
    """Base class of every error fxquant raises on purpose."""


class TraceError(FxQuantError):
    """A model (or one of its submodules) could not be symbolically traced.

    Attributes:
        module_path: dotted path of the innermost module that failed ("" for the root).
        module_class: qualified class name of that module.
        source_line: the user's source line that failed, as "file:line: code", when known.
    """

    def __init__(self, message: str, *, module_path: str = "", module_class: str = "",
                 source_line: str | None = None) -> None:
        super().__init__(message)
        self.module_path = module_path
        self.module_class = module_class
        self.source_line = source_line


class DataDependentError(TraceError):
    """Python control flow in the traced code depends on tensor data, so it cannot be specialized.

    Under :func:`fxquant.trace` with the default ``strict=False`` the enclosing module (or method)
    becomes opaque instead.
    """


class PassError(FxQuantError):
    """A graph pass failed. The message names the pass, the passes run before it and the node."""

    def __init__(self, message: str, *, pass_name: str = "", node: str | None = None,
                 module_path: str | None = None) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.node = node
        self.module_path = module_path


class ConfigError(FxQuantError, ValueError):
    """An invalid configuration value. The message names the JSON path and the valid values."""


class CalibrationError(FxQuantError, RuntimeError):
    """Statistics or an encoding are needed but missing (calibration has not run or saw no data)."""
