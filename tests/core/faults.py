"""Fault injection for writers: every step of a write fails, one at a time, and the destination
must then hold the previous version or the new one, byte for byte, never a mix.

:func:`check_all_or_nothing` runs a writer once cleanly to count its steps, then once per step with
that step failing, restoring the previous version before each run. The steps are the calls of

* ``os.replace``, ``os.link``, ``os.mkdir``, ``os.open`` and ``os.unlink`` on paths under the
  destination folder;
* ``os.fsync`` and ``os.write`` (any descriptor: only the writer runs);
* ``write`` of a file opened for writing under the destination folder (``builtins.open``), failing
  with ``ENOSPC`` (the disk filling up) — this is how torch, onnx and json write through Python.

A run that raises must raise one of the expected error classes (fxquant's own) and leave the
previous version; a run that succeeds despite the fault (a step with a fallback) must leave the new
one. :func:`small_tmpfs` mounts a real, tiny file system for disk-full tests when the test runs as
root, and skips with the reason otherwise.

Example:
    >>> outcome = check_all_or_nothing(tmp_path / "out", lambda: write(v2), setup=lambda: write(v1))
    >>> outcome.raised["os.replace"]
    [1, 2, 3]
"""
from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any, Callable, Iterator

import pytest

from fxquant.errors import FxQuantError

__all__ = ["POINTS", "Outcome", "FaultPlan", "inject", "tree", "check_all_or_nothing",
           "small_tmpfs"]

#: The steps that are failed, one at a time.
POINTS = ("os.mkdir", "os.open", "file.write", "os.write", "os.fsync", "os.link", "os.replace",
          "os.unlink")

STAGE_PREFIX = ".fxquant-stage-"
_ERRNO = {"file.write": errno.ENOSPC}  # everything else fails with EIO


def tree(root: pathlib.Path) -> dict[str, bytes | None] | None:
    """Every file (with its bytes) and folder (``None``) under ``root``, hidden ones included;
    ``None`` when ``root`` does not exist."""
    if not os.path.lexists(root):
        return None
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, names in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = None
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@dataclasses.dataclass
class FaultPlan:
    """Counts the calls of each step under ``root`` and fails call ``fail_at`` of ``point``."""

    root: str
    point: str | None = None
    fail_at: int = 0
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    fired: bool = False

    def hit(self, point: str, path: Any = None) -> None:
        if path is not None and not self._inside(path):
            return
        n = self.counts.get(point, 0) + 1
        self.counts[point] = n
        if point == self.point and n == self.fail_at:
            self.fired = True
            code = _ERRNO.get(point, errno.EIO)
            raise OSError(code, f"injected: {os.strerror(code)}",
                          os.fspath(path) if path is not None else None)

    def _inside(self, path: Any) -> bool:
        if isinstance(path, int):
            return False
        try:
            full = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return full == self.root or full.startswith(self.root + os.sep)


class _FailingFile:
    """A file object whose ``write`` goes through the plan first."""

    def __init__(self, f: Any, plan: FaultPlan) -> None:
        self._f = f
        self._plan = plan

    def write(self, data: Any) -> int:
        self._plan.hit("file.write")
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "_FailingFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._f)


@contextlib.contextmanager
def inject(monkeypatch: pytest.MonkeyPatch, plan: FaultPlan) -> Iterator[FaultPlan]:
    """Patches the steps of :data:`POINTS` to go through ``plan`` while the block runs."""
    real = {name: getattr(os, name) for name in ("replace", "link", "mkdir", "open", "unlink",
                                                 "fsync", "write")}
    real_open = builtins.open

    def two_paths(name: str) -> Callable[..., Any]:
        def patched(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            plan.hit(f"os.{name}", dst)
            return real[name](src, dst, *args, **kwargs)
        return patched

    def one_path(name: str) -> Callable[..., Any]:
        def patched(path: Any, *args: Any, **kwargs: Any) -> Any:
            plan.hit(f"os.{name}", path)
            return real[name](path, *args, **kwargs)
        return patched

    def on_fd(name: str) -> Callable[..., Any]:
        def patched(fd: int, *args: Any) -> Any:
            plan.hit(f"os.{name}")
            return real[name](fd, *args)
        return patched

    def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and plan._inside(file):
            return _FailingFile(f, plan)
        return f

    with monkeypatch.context() as m:
        for name in ("replace", "link"):
            m.setattr(os, name, two_paths(name))
        for name in ("mkdir", "open", "unlink"):
            m.setattr(os, name, one_path(name))
        for name in ("fsync", "write"):
            m.setattr(os, name, on_fd(name))
        m.setattr(builtins, "open", opened)
        yield plan


@dataclasses.dataclass
class Outcome:
    """What :func:`check_all_or_nothing` saw: per step, the calls that were tried, the ones whose
    failure made the writer raise (the previous version was left) and the ones it survived (the
    new version was written)."""

    counts: dict[str, int]
    raised: dict[str, list[int]]
    survived: dict[str, list[int]]
    errors: list[BaseException]
    #: (step, call) whose failure left a hidden staging folder next to the new version (its
    #: removal failed after the update was complete; logged)
    leftovers: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    def tried(self, point: str) -> int:
        return len(self.raised.get(point, ())) + len(self.survived.get(point, ()))


def _without_stage(files: dict[str, bytes | None] | None) -> dict[str, bytes | None] | None:
    if files is None:
        return None
    return {k: v for k, v in files.items()
            if not any(part.startswith(STAGE_PREFIX) for part in k.split("/"))}


def _snapshot(root: pathlib.Path, into: pathlib.Path) -> None:
    if os.path.lexists(root):
        shutil.copytree(root, into, symlinks=True)


def _restore(root: pathlib.Path, saved: pathlib.Path) -> None:
    if os.path.lexists(root):
        shutil.rmtree(root)
    if os.path.lexists(saved):
        shutil.copytree(saved, root, symlinks=True)


def _calls_to_try(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(1, count + 1))
    step = (count - 1) / (limit - 1)
    return sorted({1 + round(i * step) for i in range(limit)})


def check_all_or_nothing(root: pathlib.Path, write_new: Callable[[], Any], *,
                         setup: Callable[[], Any] | None = None,
                         monkeypatch: pytest.MonkeyPatch,
                         expected: tuple[type[BaseException], ...] = (FxQuantError,),
                         points: tuple[str, ...] = POINTS, limit: int = 25,
                         watch: pathlib.Path | None = None) -> Outcome:
    """Runs ``write_new`` with each step (see :data:`POINTS`) failing in turn; asserts the folder
    ``root`` then holds the previous version (when it raised) or the new one (when it did not).

    Args:
        root: the folder the writer writes into (compared byte for byte; hidden files count).
        write_new: writes the new version (must write the same bytes every time).
        setup: writes the previous version into ``root`` (None: ``root`` starts as it is).
        monkeypatch: the test's fixture.
        expected: the error classes a failed write may raise.
        points: the steps to fail.
        limit: at most this many calls tried per step (spread over all of them, first and last
            included).
        watch: the folder whose paths count as the writer's (default ``root``'s parent, so that
            folders the writer creates are seen).

    Returns:
        The :class:`Outcome`.
    """
    root = pathlib.Path(root)
    watch_dir = os.path.abspath(watch or root.parent)
    if setup is not None:
        setup()
    old = tree(root)
    with tempfile.TemporaryDirectory(prefix="fxquant-faults-") as keep:
        saved = pathlib.Path(keep, "old")
        _snapshot(root, saved)
        with inject(monkeypatch, FaultPlan(watch_dir)) as plan:
            write_new()
        new = tree(root)
        assert new != old, "the new version must differ from the previous one, or the check " \
                           "could not fail"
        counts = dict(plan.counts)
        outcome = Outcome(counts, {}, {}, [])
        for point in points:
            for k in _calls_to_try(counts.get(point, 0), limit):
                _restore(root, saved)
                assert tree(root) == old
                plan = FaultPlan(watch_dir, point, k)
                try:
                    with inject(monkeypatch, plan):
                        write_new()
                except expected as exc:
                    assert plan.fired, f"{point} call {k}: raised without the injected fault: {exc}"
                    assert tree(root) == old, (f"{point} call {k} failed ({exc}) and the folder "
                                               "is not the previous version")
                    outcome.raised.setdefault(point, []).append(k)
                    outcome.errors.append(exc)
                else:
                    now = tree(root)
                    if now != new and _without_stage(now) == new:
                        outcome.leftovers.append((point, k))
                        now = new
                    assert now == new, (f"{point} call {k} failed silently and the folder is not "
                                        "the new version")
                    outcome.survived.setdefault(point, []).append(k)
        _restore(root, saved)
    return outcome


@contextlib.contextmanager
def small_tmpfs(size: str = "256k") -> Iterator[pathlib.Path]:
    """A freshly mounted tmpfs of ``size`` (a real full disk); skips unless root may mount.

    Example:
        >>> with small_tmpfs("64k") as disk:
        ...     write_big_file(disk / "x")  # ENOSPC
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
    mount_point = tempfile.mkdtemp(prefix="fxquant-tmpfs-")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount_point],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        os.rmdir(mount_point)
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")
    try:
        yield pathlib.Path(mount_point)
    finally:
        if subprocess.run(["umount", mount_point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mount_point)
