"""Exceptions raised by fxquant.

Every error names the culprit (module path, node, JSON path) and, where there is one, the fix.
"""
from __future__ import annotations

__all__ = ["FxQuantError", "TraceError", "PassError", "ConfigError", "CalibrationError",
           "DataDependentError", "OutputExistsError", "FileWriteError"]


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
    """A graph pass failed, or broke the pass contract.

    The message names the pass, the passes run before it and, when the failure is at a node,
    says "While executing <node>" with the node's module path, the user's source line and the
    stack trace recorded when the node was traced (as torch.fx's Interpreter does). The
    original exception is chained as ``__cause__``.

    Attributes:
        pass_name: ``repr`` of the failing pass, e.g. "FoldBatchNormPass()".
        history: ``repr`` of the passes run on the graph module before it, oldest first.
        node: ``node.format_node()`` of the node it failed at, or None.
        module_path: that node's module path ("" for the root), or None.
        source_line: that node's user source line ("file:line: code"), or None.
        stack_trace: the stack trace recorded for that node at trace time, or None.

    Example:
        >>> try:
        ...     FoldBatchNormPass()(gm)
        ... except PassError as err:
        ...     print(err.pass_name, err.module_path)
        FoldBatchNormPass() conv1
    """

    def __init__(self, message: str, *, pass_name: str = "", history: tuple[str, ...] = (),
                 node: str | None = None, module_path: str | None = None,
                 source_line: str | None = None, stack_trace: str | None = None) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.history = tuple(history)
        self.node = node
        self.module_path = module_path
        self.source_line = source_line
        self.stack_trace = stack_trace


class ConfigError(FxQuantError, ValueError):
    """An invalid configuration value. The message names the JSON path and the valid values."""


class CalibrationError(FxQuantError, RuntimeError):
    """Statistics or an encoding are needed but missing (calibration has not run or saw no data)."""


class OutputExistsError(FxQuantError, FileExistsError):
    """The destination already holds results and ``overwrite=True`` was not passed."""


class FileWriteError(FxQuantError, OSError):
    """A file could not be written (no space, no permission, a file where a folder must be …).

    ``errno`` and ``filename`` are those of the underlying ``OSError``; the message names the path
    and what to do. The previous version of the file (or directory) is left as it was.
    """

    def __init__(self, message: str, *, errno: int | None = None,
                 filename: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno
        self.filename = filename

    def __str__(self) -> str:
        return self.message
