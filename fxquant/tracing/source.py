"""The user's source line: where in the model's code a node, a question or a failure comes from.

Frames in torch and fxquant are never "the user's source line". Every place is shown the same
way, ``"file:line: code"`` (:func:`format_source`), whether it comes from the live stack
(:func:`caller_source`), an fx stack-trace string (:func:`innermost_source`) or an exception's
traceback (:func:`innermost_module_frame`).

Example:
    >>> format_source("model.py", 12)        # the code is shown when the file can be read
    'model.py:12'
"""
from __future__ import annotations

import linecache
import os
import sys
import traceback
from typing import Mapping

import torch
from torch import nn

__all__ = ["format_source", "is_internal_file", "caller_source", "innermost_source",
           "innermost_module_frame"]

# Frames in these packages are never "the user's source line".
_INTERNAL_DIRS = tuple(os.path.dirname(os.path.abspath(mod.__file__)) + os.sep
                       for mod in (torch, sys.modules[__name__.split(".")[0]]))


def format_source(filename: str, lineno: int) -> str:
    """``"file:line: code"`` (just ``"file:line"`` when the code cannot be read)."""
    where = f"{filename}:{lineno}"
    code = linecache.getline(filename, lineno).strip()
    return f"{where}: {code}" if code else where


def is_internal_file(filename: str) -> bool:
    """Whether ``filename`` belongs to torch or fxquant (so it is not the user's source)."""
    return os.path.abspath(filename).startswith(_INTERNAL_DIRS)


def caller_source() -> str | None:
    """The innermost frame on the current stack outside torch and fxquant, as
    ``"file:line: code"``; the search starts at the caller's caller."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_internal_file(filename):
            return format_source(filename, frame.f_lineno)
        frame = frame.f_back
    return None


def innermost_source(stack_trace: str | None) -> str | None:
    """The innermost user frame of an fx stack-trace string (``node.meta["stack_trace"]``)."""
    if not stack_trace:
        return None
    lines = [ln.strip() for ln in stack_trace.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if not line.startswith('File "') or ", line " not in line:
            continue
        file_part, line_part = line.split(", line ", 1)
        filename = file_part[len('File "'):-1]
        lineno = line_part.split(",")[0]
        if not is_internal_file(filename) and lineno.isdigit():
            return format_source(filename, int(lineno))
    return None


def innermost_module_frame(exc: BaseException, modules: Mapping[int, str]
                           ) -> tuple[str, str, str | None] | None:
    """(module path, function name, source line) of the innermost frame whose ``self`` is one of
    the model's modules (``modules``: ``id(module) -> path``), walking the traceback of ``exc``
    from the raise point outwards."""
    for frame, lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
        code = frame.f_code
        owner = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(owner, nn.Module) and id(owner) in modules:
            return modules[id(owner)], code.co_name, format_source(code.co_filename, lineno)
    return None
