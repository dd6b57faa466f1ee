"""The one file writer: atomic files, one overwrite policy, errors that name the path.

Every file fxquant writes (exports, encodings, checkpoints, layer dumps, reports) goes through this
module or :mod:`fxquant.core.file_sets` (sets of files replaced together, built on this one);
they are the only modules that rename files into place. The rules:

* A file is written to a hidden temporary name in its destination folder, flushed to disk
  (``os.fsync``) and then moved into place with ``os.replace``, so a reader sees the old file or the
  new one, never half of one; the folder is flushed after the move.
* Sets of files that belong together (an export, a re-written layer dump) are replaced all or
  nothing by :mod:`fxquant.core.file_sets`.
* One overwrite policy (:func:`check_destination`): an existing file, or a folder that holds
  entries, is an :class:`~fxquant.errors.OutputExistsError` unless the caller passed
  ``overwrite=True``.
* An ``OSError`` becomes a :class:`~fxquant.errors.FileWriteError` naming the path and the likely
  fix; so does the ``RuntimeError`` torch raises when ``torch.save`` cannot write
  (``[enforce fail at inline_container.cc…]``: a full disk, most often).
* A failed write removes the folders it created for the file (no empty output folder is left).
* New files and folders get the permissions the process's umask gives (not ``tempfile``'s 0600).

Example:
    >>> from fxquant.core import files
    >>> files.write_json("out/report.json", {"sqnr_db": 31.2}, overwrite=True)
    PosixPath('out/report.json')
"""
from __future__ import annotations

import contextlib
import errno as errno_codes
import json
import logging
import os
import pathlib
import re
import secrets
from typing import Any, BinaryIO, Callable

from fxquant.errors import FileWriteError, OutputExistsError

__all__ = ["PathLike", "describe_os_error", "write_failure", "check_destination", "atomic_write",
           "atomic_write_file", "write_bytes", "write_text", "write_json", "make_temp_dir",
           "move_into_place", "STAGE_PREFIX", "fsync_file", "fsync_folder", "missing_folders",
           "remove_empty", "opened_writer"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

_ATTEMPTS = 100

#: Prefix of the hidden folders that hold a set of files while it is written or replaced (readers
#: skip names starting with ``"."``; a run killed half-way can leave one behind).
STAGE_PREFIX = ".fxquant-stage-"

# torch.save's C++ zip writer reports a failed write as a RuntimeError, e.g.
# "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598".
_TORCH_WRITE_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|file write failed")
_NEARLY_FULL = 1 << 20  # bytes free below which a failed torch write is reported as a full disk


def _hint(code: int | None) -> str:
    if code == errno_codes.ENOSPC or code == getattr(errno_codes, "EDQUOT", -1):
        return "the disk (or quota) is full: free space or choose another location"
    if code in (errno_codes.EACCES, errno_codes.EPERM, errno_codes.EROFS):
        return "no permission to write there: choose a writable location"
    if code in (errno_codes.ENOTDIR, errno_codes.EEXIST):
        return "a file stands where a directory is needed: choose another location"
    if code == errno_codes.EISDIR:
        return "a directory stands where the file is to be written: choose another file name"
    if code == errno_codes.ENOENT:
        return "a file or folder it needs is missing: check the path, then write again"
    return "check that the location is a writable directory with free space"


def describe_os_error(path: PathLike, exc: OSError, action: str = "write",
                      error_cls: type[FileWriteError] = FileWriteError) -> FileWriteError:
    """A :class:`FileWriteError` (or ``error_cls``) naming ``path`` and the likely fix for ``exc``.

    A ``FileWriteError`` is returned unchanged (it already names its path).

    Example:
        >>> describe_os_error("out/a.onnx", OSError(28, "No space left on device"))
        FileWriteError('cannot write out/a.onnx: No space left on device (the disk ...)')
    """
    if isinstance(exc, FileWriteError):
        return exc
    reason = exc.strerror or str(exc)
    return error_cls(f"cannot {action} {os.fspath(path)}: {reason} ({_hint(exc.errno)})",
                     errno=exc.errno, filename=os.fspath(path))


def write_failure(exc: BaseException, folder: PathLike) -> OSError | None:
    """The ``OSError`` behind a failed write, or None when ``exc`` is not a write failure.

    An ``OSError`` is returned as it is. torch's ``RuntimeError`` for a failed ``torch.save``
    (``[enforce fail at inline_container.cc…]``, ``PytorchStreamWriter failed writing file``)
    becomes the ``OSError`` chained to it when torch wrote through a Python file, else an
    ``ENOSPC`` error when ``folder`` is (nearly) full, else ``EIO`` quoting torch's message.

    Example:
        >>> write_failure(RuntimeError("[enforce fail at inline_container.cc:672] ."), "out")
        OSError(28, 'No space left on device')
    """
    if isinstance(exc, OSError):
        return exc
    if not isinstance(exc, RuntimeError) or not _TORCH_WRITE_FAILURE.search(str(exc)):
        return None
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    try:
        stats = os.statvfs(os.fspath(folder))
        free = stats.f_bavail * stats.f_frsize
    except (OSError, AttributeError):
        free = None
    if free is not None and free < _NEARLY_FULL:
        return OSError(errno_codes.ENOSPC, os.strerror(errno_codes.ENOSPC))
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OSError(errno_codes.EIO, f"torch could not write the file ({first_line})")


def fsync_file(path: str) -> None:
    """Flushes the file ``path`` to disk (its data must be there before it is moved into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    """Flushes the folder ``folder`` (the renames in it) to disk; the moves are done, so a failure
    is logged, not raised."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        level = logging.DEBUG if exc.errno in (errno_codes.EINVAL, errno_codes.ENOTSUP) else \
            logging.WARNING
        logger.log(level, "could not flush folder %s to disk (%s); the files are in place but a "
                   "power loss now could lose the update", folder, exc)


def missing_folders(folder: str) -> list[str]:
    """The folders of ``folder``'s path that do not exist yet, deepest first."""
    missing = []
    current = os.path.abspath(folder)
    while not os.path.exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return missing


def remove_empty(folders: list[str]) -> None:
    """Removes ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue  # never made (the failure came first)
        except OSError:
            break  # holds something now: keep it and its parents


def check_destination(path: PathLike, *, overwrite: bool, kind: str = "file",
                      what: str | None = None,
                      exists_cls: type[OutputExistsError] = OutputExistsError,
                      error_cls: type[FileWriteError] = FileWriteError) -> None:
    """The one overwrite policy. Checks, creating nothing, that ``path`` may be written.

    Args:
        path: the file or directory to be written.
        overwrite: whether existing results may be replaced.
        kind: ``"file"`` (``path`` is one file) or ``"directory"`` (``path`` is a folder of results;
            an empty folder counts as new).
        what: what ``path`` is, for messages (``"dump directory"``); defaults to ``kind``.
        exists_cls: the error raised when results exist (a subclass of ``OutputExistsError``).
        error_cls: the error raised when the location cannot be written.

    Raises:
        OutputExistsError: results exist at ``path`` and ``overwrite`` is False.
        FileWriteError: a file stands where a directory is needed (or the reverse), or the nearest
            existing parent folder is not writable.
        ValueError: ``kind`` is neither ``"file"`` nor ``"directory"``.

    Example:
        >>> check_destination("results/sqnr.json", overwrite=False)
    """
    if kind not in ("file", "directory"):
        raise ValueError(f"kind must be 'file' or 'directory', got {kind!r}")
    label = what or kind
    target = os.fspath(path)
    if kind == "directory":
        action = f"create the {label}"
        if os.path.exists(target) and not os.path.isdir(target):
            raise describe_os_error(target, OSError(errno_codes.ENOTDIR, "exists and is not a "
                                                    "directory"), action, error_cls)
        if os.path.isdir(target):
            entries = sorted(os.listdir(target))
            if entries and not overwrite:
                shown = ", ".join(entries[:5]) + (" …" if len(entries) > 5 else "")
                raise exists_cls(f"{label} {target} is not empty ({shown}); pass overwrite=True to "
                                 "replace the results in it, or choose an empty or new directory")
            existing = target
        else:
            existing = _nearest_existing_parent(target, action, error_cls)
    else:
        action = "write"
        if os.path.isdir(target):
            raise describe_os_error(target, OSError(errno_codes.EISDIR, "is a directory"),
                                    action, error_cls)
        if os.path.lexists(target) and not overwrite:
            raise exists_cls(f"{label} {target} already exists; pass overwrite=True to replace it, "
                             "or choose another path")
        existing = _nearest_existing_parent(target, action, error_cls)
    if existing and not os.access(existing, os.W_OK | os.X_OK):
        raise describe_os_error(target, OSError(errno_codes.EACCES, f"{existing} is not writable"),
                                action, error_cls)


def _nearest_existing_parent(target: str, action: str, error_cls: type[FileWriteError]) -> str:
    existing = os.path.dirname(os.path.abspath(target))
    while existing and not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if existing and not os.path.isdir(existing):
        raise describe_os_error(target, OSError(errno_codes.ENOTDIR, f"{existing} is a file, not "
                                                "a directory"), action, error_cls)
    return existing


def _temp_name(folder: str, prefix: str, suffix: str) -> str:
    return os.path.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")


def _new_temp_file(folder: str, prefix: str, suffix: str) -> str:
    for _ in range(_ATTEMPTS):
        name = _temp_name(folder, prefix, suffix)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(errno_codes.EEXIST, "no free temporary file name", folder)


def make_temp_dir(parent: PathLike, prefix: str) -> str:
    """Creates a new hidden-by-prefix folder in ``parent`` (umask permissions) and returns its path.

    Fill it, then :func:`move_into_place` it; readers skip names starting with ``"."``.

    Raises:
        OSError: ``parent`` does not exist or is not writable.

    Example:
        >>> tmp = make_temp_dir("dump/outputs", ".tmp-layer_outputs_3-")
        >>> move_into_place(tmp, "dump/outputs/layer_outputs_3")
    """
    folder = os.fspath(parent)
    for _ in range(_ATTEMPTS):
        name = _temp_name(folder, prefix, "")
        try:
            os.mkdir(name, 0o777)  # umask applies
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno_codes.EEXIST, "no free temporary folder name", folder)


def atomic_write(path: PathLike, write: Callable[[str], None], *, overwrite: bool = True,
                 suffix: str = "", error_cls: type[FileWriteError] = FileWriteError,
                 exists_cls: type[OutputExistsError] = OutputExistsError,
                 durable: bool = True) -> pathlib.Path:
    """Calls ``write(tmp)`` for a hidden temporary file next to ``path``, then moves it into place.

    Missing parent folders are created. The temporary file is flushed to disk before the move. On
    any failure (``write`` raising anything, the flush or the move failing) the temporary file and
    the folders created for it are removed and ``path`` is left as it was.

    Args:
        path: the destination file.
        write: writes the content to the path it is given (the file exists, empty).
        overwrite: whether an existing ``path`` may be replaced (see :func:`check_destination`).
        suffix: suffix of the temporary file, before ``.tmp`` (some writers pick the format from
            it).
        error_cls: the error an ``OSError`` becomes.
        exists_cls: the error raised when ``path`` exists and ``overwrite`` is False.
        durable: flush the file (before the move) and its folder (after) to disk; False skips
            both ``fsync`` calls for many small files that are committed together later (the move
            stays atomic, but a power loss may then lose the file).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        FileWriteError: the file could not be written or moved into place (the message names
            ``path`` and the likely fix: a full disk says so, also when torch's zip writer
            reported it).

    Example:
        >>> atomic_write("out/model.onnx", lambda tmp: onnx.save_model(model, tmp), suffix=".onnx")
        PosixPath('out/model.onnx')
    """
    target = os.fspath(path)
    check_destination(target, overwrite=overwrite, exists_cls=exists_cls, error_cls=error_cls)
    folder = os.path.dirname(os.path.abspath(target))
    created = missing_folders(folder)
    tmp = None
    done = False
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = _new_temp_file(folder, f".{os.path.basename(target)}.", suffix + ".tmp")
        write(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, target)
        tmp = None
        done = True
    except (OSError, RuntimeError) as exc:
        cause = write_failure(exc, folder)
        if cause is None:
            raise
        raise describe_os_error(target, cause, "write", error_cls) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not done:
            remove_empty(created)
    if durable:
        fsync_folder(folder)
    return pathlib.Path(target)


def atomic_write_file(path: PathLike, write: Callable[[BinaryIO], None], *,
                      overwrite: bool = True, **kwargs: Any) -> pathlib.Path:
    """Like :func:`atomic_write`, but ``write`` gets the temporary file opened for binary writing.

    Use it for writers that take a file object (``torch.save``, ``numpy.save``, ``onnx.save``):
    their writes go through Python, so a full disk is an ``OSError`` naming ``path``.

    Example:
        >>> atomic_write_file("sim.ckpt", lambda f: torch.save(payload, f))
        PosixPath('sim.ckpt')
    """
    return atomic_write(path, opened_writer(write), overwrite=overwrite, **kwargs)


def opened_writer(write: Callable[[BinaryIO], None]) -> Callable[[str], None]:
    def write_path(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return write_path


def write_bytes(path: PathLike, data: bytes, *, overwrite: bool = True,
                **kwargs: Any) -> pathlib.Path:
    """Writes ``data`` to ``path`` atomically (keyword arguments as in :func:`atomic_write`).

    Example:
        >>> write_bytes("out/plot.png", png, overwrite=True)
        PosixPath('out/plot.png')
    """
    return atomic_write_file(path, lambda f: f.write(data), overwrite=overwrite, **kwargs)


def write_text(path: PathLike, text: str, *, overwrite: bool = True,
               **kwargs: Any) -> pathlib.Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`).

    Example:
        >>> write_text("out/report.html", html, overwrite=True)
        PosixPath('out/report.html')
    """
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite, **kwargs)


def write_json(path: PathLike, data: Any, *, overwrite: bool = True, indent: int | None = 2,
               **kwargs: Any) -> pathlib.Path:
    """Writes ``data`` as strict JSON (NaN/Inf refused) to ``path`` atomically.

    Raises:
        ValueError: ``data`` holds NaN or Inf (encode them first, e.g. as strings or null);
            nothing is written.

    Example:
        >>> write_json("out/encodings.json", {"version": "1.0.0"}, overwrite=True)
        PosixPath('out/encodings.json')
    """
    text = json.dumps(data, indent=indent, allow_nan=False)
    return write_text(path, text + "\n", overwrite=overwrite, **kwargs)


def move_into_place(src: PathLike, dst: PathLike, *,
                    error_cls: type[FileWriteError] = FileWriteError) -> None:
    """Moves a finished file or folder ``src`` (same file system) to ``dst`` in one step.

    Raises:
        FileWriteError: the move failed (the message names ``dst``); ``src`` is left where it was.

    Example:
        >>> move_into_place("dump/outputs/.tmp-3", "dump/outputs/layer_outputs_3")
    """
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise describe_os_error(dst, exc, "move into place", error_cls) from exc
