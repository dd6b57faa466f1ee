"""Sets of files replaced all or nothing: an export's files, a re-written layer dump.

Built on :mod:`fxquant.core.files` (same errors, same overwrite policy):

* :class:`StagedDirectory` / :func:`staged_directory`: files that belong together (an export) are
  staged in a hidden folder, flushed, and moved into place one by one; each previous version is
  kept first (a hard link in the staging folder, so the old file stays readable under its name
  until the new one replaces it in one step; moved aside where the file system has no hard
  links). If any step fails, the new files are taken out and the previous versions put back: the
  previous set survives any single failure byte-identical.
* :func:`replace_entries`: entries (files or folders) that replace a set of entries of a folder at
  once (a re-written layer dump) are moved in after all the previous entries were moved aside into
  a hidden folder; any failure moves everything back.

Example:
    >>> from fxquant.core import file_sets
    >>> with file_sets.staged_directory("out", overwrite=True) as stage:
    ...     stage.write_file("a.json", lambda f: f.write(b"{}"))
"""
from __future__ import annotations

import contextlib
import errno as errno_codes
import logging
import os
import pathlib
import shutil
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from fxquant.core.files import (STAGE_PREFIX, PathLike, check_destination, describe_os_error,
                                fsync_file, fsync_folder, make_temp_dir, missing_folders,
                                opened_writer, remove_empty, write_failure)
from fxquant.errors import FileWriteError, OutputExistsError

__all__ = ["replace_entries", "StagedDirectory", "staged_directory"]

logger = logging.getLogger(__name__)


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and bool(name) and os.path.basename(name) == name
            and name not in (".", "..") and not (os.altsep and os.altsep in name))


def replace_entries(directory: PathLike, source: PathLike, names: Sequence[str], *,
                    previous: Sequence[str] = (),
                    error_cls: type[FileWriteError] = FileWriteError) -> list[pathlib.Path]:
    """Replaces entries of ``directory`` by the entries ``names`` of ``source``, all or none.

    The entries (files or folders) are moved, not copied: ``source`` must be on the same file
    system (a hidden folder inside ``directory``, say). First every previous entry is moved aside
    into a hidden folder in ``directory`` (those of ``previous`` that exist, in that order, then
    those of ``names`` that exist), then the new ones are moved in, in the order of ``names``; the
    hidden folder is removed last. Order both lists so that a reader, or a run killed half-way,
    never finds a mix of old and new entries that reads as one whole: move the entry that makes
    the set exist out first and in last. If any move fails, the new entries are moved back into
    ``source`` and the previous ones put back: ``directory`` and ``source`` are as they were.

    Args:
        directory: the folder whose entries are replaced.
        source: the folder holding the new entries (each of ``names`` must exist in it).
        names: plain names of the new entries.
        previous: plain names of further entries of ``directory`` to remove with the update
            (missing ones are skipped).
        error_cls: the error an ``OSError`` becomes.

    Returns:
        The new entries' paths in ``directory``.

    Raises:
        FileWriteError: an entry could not be moved (the message names it and the fix);
            ``directory`` is as it was before.
        ValueError: a name is not a plain name (no folder, not ``.`` or ``..``).

    Example:
        >>> replace_entries("dump", "dump/.fxquant-stage-1a2b", ["manifest.json", "outputs"],
        ...                 previous=["outputs", "manifest.json"])
        [PosixPath('dump/manifest.json'), PosixPath('dump/outputs')]
    """
    folder, src = os.fspath(directory), os.fspath(source)
    bad = [n for n in [*names, *previous] if not _plain_name(n)]
    if bad:
        raise ValueError(f"entry names must be plain names without a folder, got {bad[0]!r}")
    old = list(dict.fromkeys([*previous, *names]))
    try:
        aside = make_temp_dir(folder, STAGE_PREFIX)
    except OSError as exc:
        raise describe_os_error(folder, exc, "create a hidden folder for the update in",
                                error_cls) from exc
    moved_out: list[str] = []
    moved_in: list[str] = []
    current, action = folder, "move aside the previous"
    try:
        for name in old:
            current = os.path.join(folder, name)
            if os.path.lexists(current):
                os.replace(current, os.path.join(aside, name))
                moved_out.append(name)
        action = "move into place"
        for name in names:
            current = os.path.join(folder, name)
            os.replace(os.path.join(src, name), current)
            moved_in.append(name)
    except OSError as exc:
        restored = _move_back(folder, src, moved_in) & _move_back(aside, folder, moved_out)
        if restored:
            with contextlib.suppress(OSError):
                os.rmdir(aside)
        raise describe_os_error(current, exc, action, error_cls) from exc
    fsync_folder(folder)
    try:
        shutil.rmtree(aside)
    except OSError as exc:
        logger.warning("could not remove %s (%s); it holds the replaced entries of %s (hidden, "
                       "skipped by readers) and can be deleted", aside, exc, folder)
    return [pathlib.Path(folder, name) for name in names]


def _move_back(moved_to: str, back_to: str, names: list[str]) -> bool:
    """Moves ``names`` from ``moved_to`` back to ``back_to`` (last first); False when one failed
    (logged: where it is kept)."""
    ok = True
    for name in reversed(names):
        try:
            os.replace(os.path.join(moved_to, name), os.path.join(back_to, name))
        except OSError as exc:
            ok = False
            logger.error("could not move %s back to %s (%s); it is kept in %s", name, back_to,
                         exc, moved_to)
    return ok


def _keep_previous(final: str, kept: str) -> bool:
    """Keeps the previous ``final`` at ``kept``: a hard link (``final`` stays in place), or, where
    the file system refuses links, ``final`` moved there. Returns True when it was moved."""
    try:
        os.link(final, kept, follow_symlinks=False)
        return False
    except OSError as exc:
        logger.debug("cannot hard-link %s (%s); moving it aside for the update", final, exc)
    os.replace(final, kept)
    return True


class StagedDirectory:
    """Files that belong together, written into a hidden folder and then moved into place at once.

    Use :func:`staged_directory`. ``path(name)`` gives the staged path of one output file (or
    :meth:`write` / :meth:`write_file` write it); when the ``with`` block ends without an
    exception, :meth:`commit` flushes every staged file to disk and moves it into the destination
    folder, keeping each previous version first (a hard link in the staging folder; moved aside
    where hard links fail). If any step fails, the new files are taken out again and the previous
    versions put back: the folder is as it was before the update, and the error names the file
    that failed. If the block raises, nothing in the destination is touched (a destination folder
    created for the update is removed again).
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
        self._created = missing_folders(self.directory)
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._stage = make_temp_dir(self.directory, STAGE_PREFIX)
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
            FileWriteError: ``write`` raised an ``OSError`` or torch's write-failure
                ``RuntimeError`` (the message names the final path and the fix).
            ValueError, OutputExistsError: as :meth:`path`.

        Example:
            >>> with staged_directory("out", overwrite=True) as stage:
            ...     stage.write("model.onnx", lambda tmp: onnx.save_model(model, tmp))
        """
        staged = self.path(name)
        final = os.path.join(self.directory, name)
        try:
            write(staged)
        except (OSError, RuntimeError) as exc:
            cause = write_failure(exc, self.directory)
            if cause is None:
                raise
            raise describe_os_error(final, cause, "write", self.error_cls) from exc
        return pathlib.Path(final)

    def write_file(self, name: str, write: Callable[[BinaryIO], None]) -> pathlib.Path:
        """Like :meth:`write`, but ``write`` gets the staged file opened for binary writing.

        Example:
            >>> with staged_directory("out", overwrite=True) as stage:
            ...     stage.write_file("model.pth", lambda f: torch.save(state, f))
        """
        return self.write(name, opened_writer(write))

    def commit(self) -> list[pathlib.Path]:
        """Flushes every staged file and moves it into place (all or none); returns the final paths.

        Per file: the previous version is kept as a hard link in the staging folder (it stays in
        place until the new file replaces it with one ``os.replace``), or moved aside where the
        file system refuses the link; then the new file is moved in. Any failure takes the new
        files out again and puts the previous versions back.

        Raises:
            FileWriteError: a staged file is missing or could not be flushed or moved; the
                destination is as it was before (the message names the file).
        """
        if self._stage is None:
            raise RuntimeError("StagedDirectory.commit() called outside its `with` block")
        backup = os.path.join(self._stage, ".previous")
        moved: list[str] = []           # names now in place from this update
        kept: dict[str, bool] = {}      # name -> its previous version was moved aside (not linked)
        current = ""
        try:
            for name in self.names:
                current = name
                staged = os.path.join(self._stage, name)
                if not os.path.exists(staged):
                    raise FileNotFoundError(errno_codes.ENOENT, "the writer did not create it",
                                            staged)
                fsync_file(staged)
            os.makedirs(backup)
            for name in self.names:
                current = name
                final = os.path.join(self.directory, name)
                if os.path.lexists(final):
                    kept[name] = _keep_previous(final, os.path.join(backup, name))
                os.replace(os.path.join(self._stage, name), final)
                moved.append(name)
        except OSError as exc:
            self._roll_back(moved, kept, backup)
            raise describe_os_error(os.path.join(self.directory, current), exc, "move into place",
                                    self.error_cls) from exc
        fsync_folder(self.directory)
        return [pathlib.Path(self.directory, name) for name in self.names]

    def _roll_back(self, moved: list[str], kept: dict[str, bool], backup: str) -> None:
        for name in reversed(self.names):
            final = os.path.join(self.directory, name)
            if name in kept and (name in moved or kept[name]):
                try:
                    os.replace(os.path.join(backup, name), final)  # over the new file in one step
                except OSError as exc:
                    logger.error("could not restore the previous %s (%s); it is kept in %s",
                                 final, exc, backup)
                    self._keep = True
            elif name in moved:
                try:
                    os.unlink(final)
                except OSError as exc:
                    logger.error("could not remove the new %s of the failed update (%s); remove "
                                 "it by hand", final, exc)

    def close(self, failed: bool = False) -> None:
        """Removes the staging folder (kept when a previous version could not be restored) and,
        after a failed update, the destination folders created for it."""
        if self._stage is not None and not self._keep:
            try:
                shutil.rmtree(self._stage)
            except OSError as exc:
                logger.warning("could not remove the staging folder %s (%s); the update is %s, "
                               "the folder (hidden, skipped by readers) can be deleted",
                               self._stage, exc, "undone" if failed else "complete")
        self._stage = None
        if failed and not self._keep:
            self._remove_created()

    def _remove_created(self) -> None:
        remove_empty(self._created)
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
