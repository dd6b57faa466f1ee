"""Atomic file writing for export: temporary name in the destination folder, then rename."""
from __future__ import annotations

import os
import tempfile
from typing import Callable

import onnx

__all__ = ["atomic_write", "save_onnx_atomic"]


def atomic_write(path: str, write: Callable[[str], None], *, suffix: str = "") -> None:
    """Calls ``write(tmp_path)`` for a temporary file next to ``path``, then renames it to ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> atomic_write("out/model.onnx", lambda tmp: onnx.save(model, tmp), suffix=".onnx")
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_onnx_atomic(model: onnx.ModelProto, path: str) -> None:
    """Saves ``model`` (one self-contained file, no external data) atomically.

    Example:
        >>> save_onnx_atomic(model, "out/model.onnx")
    """
    atomic_write(path, lambda tmp: onnx.save_model(model, tmp), suffix=".onnx")
