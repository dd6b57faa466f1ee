"""The one file writer: atomic files, atomic directory updates, one overwrite policy.

Every file fxquant writes (exports, encodings, checkpoints, layer dumps, reports) goes through this
module, and this is the only module that renames files into place. The rules:

* A file is written to a hidden temporary name in its destination folder and then moved into place
  with ``os.replace``, so a reader sees the old file or the new one, never half of one.
* A set of files that belong together (an export) is staged in a hidden folder and moved into place
  one by one; the previous versions are set aside first, and if any move fails, the new files are
  taken out and the previous versions put back, so the previous version survives any failure.
* One overwrite policy (:func:`check_destination`): an existing file, or a folder that holds
  entries, is an :class:`~fxquant.errors.OutputExistsError` unless the caller passed
  ``overwrite=True``.
* An ``OSError`` becomes a :class:`~fxquant.errors.FileWriteError` naming the path and the likely
  fix.
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
import secrets
import shutil
from typing import Any, Callable, Iterator

from fxquant.errors import FileWriteError, OutputExistsError

__all__ = ["PathLike", "describe_os_error", "check_destination", "atomic_write", "write_bytes",
           "write_text", "write_json", "make_temp_dir", "move_into_place", "StagedDirectory",
           "staged_directory"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

_ATTEMPTS = 100


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
                 exists_cls: type[OutputExistsError] = OutputExistsError) -> pathlib.Path:
    """Calls ``write(tmp)`` for a hidden temporary file next to ``path``, then moves it into place.

    Missing parent folders are created. On any failure (``write`` raising anything, or the move
    failing) the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the destination file.
        write: writes the content to the path it is given (the file exists, empty).
        overwrite: whether an existing ``path`` may be replaced (see :func:`check_destination`).
        suffix: suffix of the temporary file, before ``.tmp`` (some writers pick the format from
            it).
        error_cls: the error an ``OSError`` becomes.
        exists_cls: the error raised when ``path`` exists and ``overwrite`` is False.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        FileWriteError: the file could not be written or moved into place (the message names
            ``path`` and the likely fix).

    Example:
        >>> atomic_write("out/model.onnx", lambda tmp: onnx.save_model(model, tmp), suffix=".onnx")
        PosixPath('out/model.onnx')
    """
    target = os.fspath(path)
    check_destination(target, overwrite=overwrite, exists_cls=exists_cls, error_cls=error_cls)
    folder = os.path.dirname(os.path.abspath(target))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = _new_temp_file(folder, f".{os.path.basename(target)}.", suffix + ".tmp")
        write(tmp)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise describe_os_error(target, exc, "write", error_cls) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return pathlib.Path(target)


def write_bytes(path: PathLike, data: bytes, *, overwrite: bool = True,
                **kwargs: Any) -> pathlib.Path:
    """Writes ``data`` to ``path`` atomically (keyword arguments as in :func:`atomic_write`).

    Example:
        >>> write_bytes("out/plot.png", png, overwrite=True)
        PosixPath('out/plot.png')
    """
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write, overwrite=overwrite, **kwargs)


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


class StagedDirectory:
    """Files that belong together, written into a hidden folder and then moved into place at once.

    Use :func:`staged_directory`. ``path(name)`` gives the staged path of one output file; when the
    ``with`` block ends without an exception, :meth:`commit` moves every staged file into the
    destination folder, setting each previous version aside first. If a move fails, the new files
    are taken out again and the previous versions put back: the folder is as it was before the
    update, and the error names the file that failed. If the block raises, nothing in the
    destination is touched (a destination folder created for the update is removed again).
    """

    def __init__(self, directory: PathLike, *, overwrite: bool,
                 error_cls: type[FileWriteError] = FileWriteError,
                 exists_cls: type[OutputExistsError] = OutputExistsError) -> None:
        self.directory = os.fspath(directory)
        self.overwrite = overwrite
        self.error_cls = error_cls
        self.exists_cls = exists_cls
        self.names: list[str] = []
        self._stage: str | None = None
        self._created: list[str] = []   # folders made for this update, deepest first
        self._keep = False              # a previous version could not be restored: keep the stage

    def open(self) -> "StagedDirectory":
        """Creates the destination folder (when missing) and the hidden staging folder in it."""
        check_destination(self.directory, overwrite=True, kind="directory",
                          exists_cls=self.exists_cls, error_cls=self.error_cls)
        missing = os.path.abspath(self.directory)
        while not os.path.exists(missing):
            self._created.append(missing)
            missing = os.path.dirname(missing)
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._stage = make_temp_dir(self.directory, ".fxquant-stage-")
        except OSError as exc:
            self._remove_created()
            raise describe_os_error(self.directory, exc, "write", self.error_cls) from exc
        return self

    def path(self, name: str) -> str:
        """The staged path to write the output file ``name`` (a plain file name) to.

        Raises:
            RuntimeError: called outside the ``with`` block.
            ValueError: ``name`` is not a plain file name, or was given twice.
            OutputExistsError: ``<directory>/<name>`` exists and ``overwrite`` is False.

        Example:
            >>> with staged_directory("out", overwrite=True) as stage:
            ...     torch.save(state, stage.path("model.pth"))
        """
        if self._stage is None:
            raise RuntimeError("StagedDirectory.path() called outside its `with` block; write the "
                               "files inside `with staged_directory(...) as stage:`")
        if (not isinstance(name, str) or not name or os.path.basename(name) != name
                or name in (".", "..") or (os.altsep and os.altsep in name)):
            raise ValueError(f"staged file name must be a plain file name without a folder, got "
                             f"{name!r}")
        if name in self.names:
            raise ValueError(f"staged file {name!r} was already requested; each name is written "
                             "once per update")
        check_destination(os.path.join(self.directory, name), overwrite=self.overwrite,
                          exists_cls=self.exists_cls, error_cls=self.error_cls)
        self.names.append(name)
        return os.path.join(self._stage, name)

    def write(self, name: str, write: Callable[[str], None]) -> pathlib.Path:
        """Calls ``write(staged_path)`` for the output file ``name``; returns its final path.

        Raises:
            FileWriteError: ``write`` raised an ``OSError`` (the message names the final path).
            ValueError, OutputExistsError: as :meth:`path`.

        Example:
            >>> with staged_directory("out", overwrite=True) as stage:
            ...     stage.write("model.onnx", lambda tmp: onnx.save_model(model, tmp))
        """
        staged = self.path(name)
        final = os.path.join(self.directory, name)
        try:
            write(staged)
        except OSError as exc:
            raise describe_os_error(final, exc, "write", self.error_cls) from exc
        return pathlib.Path(final)

    def commit(self) -> list[pathlib.Path]:
        """Moves every staged file into place (all or none); returns the final paths.

        Raises:
            FileWriteError: a staged file is missing or could not be moved; the destination is as
                it was before (the message names the file).
        """
        if self._stage is None:
            raise RuntimeError("StagedDirectory.commit() called outside its `with` block")
        backup = os.path.join(self._stage, ".previous")
        moved: list[str] = []       # names now in place from this update
        saved: list[str] = []       # names whose previous version sits in ``backup``
        current = ""
        try:
            for name in self.names:
                if not os.path.exists(os.path.join(self._stage, name)):
                    current = name
                    raise FileNotFoundError(errno_codes.ENOENT, "the writer did not create it",
                                            os.path.join(self._stage, name))
            os.makedirs(backup)
            for name in self.names:
                current = name
                final = os.path.join(self.directory, name)
                if os.path.lexists(final):
                    os.replace(final, os.path.join(backup, name))
                    saved.append(name)
                os.replace(os.path.join(self._stage, name), final)
                moved.append(name)
        except OSError as exc:
            self._roll_back(moved, saved, backup)
            raise describe_os_error(os.path.join(self.directory, current), exc, "move into place",
                                    self.error_cls) from exc
        return [pathlib.Path(self.directory, name) for name in self.names]

    def _roll_back(self, moved: list[str], saved: list[str], backup: str) -> None:
        for name in moved:
            if name not in saved:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))
        for name in saved:
            final = os.path.join(self.directory, name)
            try:
                os.replace(os.path.join(backup, name), final)  # over the new file in one step
            except OSError as exc:
                logger.error("could not restore the previous %s (%s); it is kept in %s", final,
                             exc, backup)
                self._keep = True

    def close(self, failed: bool = False) -> None:
        """Removes the staging folder (kept when a previous version could not be restored) and,
        after a failed update, the destination folders created for it."""
        if self._stage is not None and not self._keep:
            shutil.rmtree(self._stage, ignore_errors=True)
        self._stage = None
        if failed and not self._keep:
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:
            try:
                os.rmdir(folder)  # only when empty
            except OSError:
                break
        self._created = []


@contextlib.contextmanager
def staged_directory(directory: PathLike, *, overwrite: bool,
                     error_cls: type[FileWriteError] = FileWriteError,
                     exists_cls: type[OutputExistsError] = OutputExistsError
                     ) -> Iterator[StagedDirectory]:
    """Stages files in a hidden folder inside ``directory``; moves them into place on success.

    Args:
        directory: the destination folder (created when missing).
        overwrite: whether files of the same names may be replaced (other files in ``directory``
            are never touched).
        error_cls: the error an ``OSError`` becomes.
        exists_cls: the error raised for an existing file when ``overwrite`` is False.

    Raises:
        OutputExistsError: a file to be written exists and ``overwrite`` is False.
        FileWriteError: ``directory`` cannot be written, or a file could not be moved into place
            (the previous versions are then back in place).

    Example:
        >>> with staged_directory("out", overwrite=True) as stage:
        ...     onnx.save_model(model, stage.path("model.onnx"))
        ...     write_json(stage.path("model.encodings"), encodings)
    """
    stage = StagedDirectory(directory, overwrite=overwrite, error_cls=error_cls,
                            exists_cls=exists_cls).open()
    failed = True
    try:
        yield stage
        stage.commit()
        failed = False
    finally:
        stage.close(failed=failed)
