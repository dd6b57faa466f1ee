"""Tests of the one file writer (fxquant/core/files.py): every path, every error."""
from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import re
import stat

import pytest

from fxquant.core import file_sets, files
from fxquant.errors import FileWriteError, OutputExistsError


class _Exists(OutputExistsError):
    pass


class _WriteError(FileWriteError):
    pass


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its bytes."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = pathlib.Path(dirpath, name)
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


# -------------------------------------------------------------------------------------------------
# describe_os_error
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, hint", [
    (errno.ENOSPC, "the disk (or quota) is full"),
    (errno.EACCES, "no permission to write there"),
    (errno.EROFS, "no permission to write there"),
    (errno.ENOTDIR, "a file stands where a directory is needed"),
    (errno.EISDIR, "a directory stands where the file is to be written"),
    (errno.ENOENT, "a file or folder it needs is missing"),
    (errno.EIO, "check that the location is a writable directory"),
])
def test_describe_os_error_names_path_reason_and_fix(code: int, hint: str) -> None:
    err = files.describe_os_error("out/a.onnx", OSError(code, os.strerror(code)))
    assert isinstance(err, FileWriteError) and isinstance(err, OSError)
    assert str(err).startswith(f"cannot write out/a.onnx: {os.strerror(code)} ({hint}")
    assert (err.errno, err.filename) == (code, "out/a.onnx")


def test_describe_os_error_keeps_a_file_write_error_and_uses_the_class_given() -> None:
    first = FileWriteError("cannot write x: full", errno=errno.ENOSPC, filename="x")
    assert files.describe_os_error("y", first) is first
    err = files.describe_os_error("d", OSError("plain message"), "move into place", _WriteError)
    assert type(err) is _WriteError
    assert str(err) == ("cannot move into place d: plain message (check that the location is a "
                        "writable directory with free space)")


# -------------------------------------------------------------------------------------------------
# check_destination: the one overwrite policy
# -------------------------------------------------------------------------------------------------
def test_existing_file_needs_overwrite(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "report.json"
    files.check_destination(target, overwrite=False)  # new file: fine
    target.write_text("{}")
    with pytest.raises(OutputExistsError, match=rf"file {target} already exists; pass "
                                                r"overwrite=True to replace it"):
        files.check_destination(target, overwrite=False)
    with pytest.raises(_Exists, match="sim report"):
        files.check_destination(target, overwrite=False, what="sim report", exists_cls=_Exists)
    files.check_destination(target, overwrite=True)


def test_directory_where_the_file_goes(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}: is a directory \(a "
                                             "directory stands where the file") as info:
        files.check_destination(tmp_path, overwrite=True)
    assert info.value.errno == errno.EISDIR


def test_file_where_a_directory_is_needed(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FileWriteError, match=rf"cannot write {blocker}/sub/a.json: {blocker} is a "
                                             "file, not a directory") as info:
        files.check_destination(blocker / "sub" / "a.json", overwrite=True)
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(_WriteError, match=rf"cannot create the dump directory {blocker}: exists "
                                          "and is not a directory"):
        files.check_destination(blocker, overwrite=True, kind="directory", what="dump directory",
                                error_cls=_WriteError)
    with pytest.raises(FileWriteError, match=rf"cannot create the directory {blocker}/d: {blocker} "
                                             "is a file"):
        files.check_destination(blocker / "d", overwrite=True, kind="directory")


def test_directory_of_results(tmp_path: pathlib.Path) -> None:
    files.check_destination(tmp_path / "new" / "deeper", overwrite=False, kind="directory")
    files.check_destination(tmp_path, overwrite=False, kind="directory")  # empty: new
    for i in range(7):
        (tmp_path / f"f{i}.raw").write_bytes(b"")
    with pytest.raises(OutputExistsError, match=rf"directory {tmp_path} is not empty \(f0.raw, "
                                                r"f1.raw, f2.raw, f3.raw, f4.raw …\); pass "
                                                "overwrite=True"):
        files.check_destination(tmp_path, overwrite=False, kind="directory")
    files.check_destination(tmp_path, overwrite=True, kind="directory")


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind must be 'file' or 'directory', got 'folder'"):
        files.check_destination("x", overwrite=True, kind="folder")


def test_not_writable_parent_simulated(tmp_path: pathlib.Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """os.access says no (as for a read-only folder when not running as root)."""
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/new/a.json: {tmp_path} "
                                             r"is not writable \(no permission to write") as info:
        files.check_destination(tmp_path / "new" / "a.json", overwrite=True)
    assert info.value.errno == errno.EACCES
    with pytest.raises(FileWriteError, match=rf"cannot create the directory {tmp_path}: {tmp_path} "
                                             "is not writable"):
        files.check_destination(tmp_path, overwrite=True, kind="directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_not_writable_parent(tmp_path: pathlib.Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.json").write_text("old")
    ro.chmod(0o500)
    try:
        with pytest.raises(FileWriteError, match=rf"{ro} is not writable"):
            files.check_destination(ro / "a.json", overwrite=True)
        with pytest.raises(FileWriteError, match="not writable"):
            files.write_text(ro / "old.json", "new")
        assert (ro / "old.json").read_text() == "old"
    finally:
        ro.chmod(0o700)


# -------------------------------------------------------------------------------------------------
# atomic_write and the write_* helpers
# -------------------------------------------------------------------------------------------------
def test_atomic_write_creates_parents_and_respects_the_umask(tmp_path: pathlib.Path) -> None:
    old_umask = os.umask(0o022)
    try:
        path = files.atomic_write(tmp_path / "a" / "b" / "x.bin",
                                  lambda tmp: pathlib.Path(tmp).write_bytes(b"\x00\x01"))
    finally:
        os.umask(old_umask)
    assert path == tmp_path / "a" / "b" / "x.bin" and isinstance(path, pathlib.Path)
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert os.listdir(path.parent) == ["x.bin"]


def test_atomic_write_passes_a_temporary_name_with_the_suffix(tmp_path: pathlib.Path) -> None:
    seen = []
    files.atomic_write(tmp_path / "m.onnx", lambda tmp: seen.append(tmp) or open(tmp, "w").close(),
                       suffix=".onnx")
    name = os.path.basename(seen[0])
    assert name.startswith(".m.onnx.") and name.endswith(".onnx.tmp")
    assert os.path.dirname(seen[0]) == str(tmp_path)  # same folder: os.replace is atomic


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 ValueError("bad data")])
def test_atomic_write_failure_leaves_the_old_file(tmp_path: pathlib.Path, exc: Exception) -> None:
    target = tmp_path / "enc.json"
    target.write_text("old")

    def write(tmp: str) -> None:
        pathlib.Path(tmp).write_text("half")
        raise exc

    expected = FileWriteError if isinstance(exc, OSError) else ValueError
    with pytest.raises(expected, match=(rf"cannot write {target}: No space left on device \(the "
                                        "disk") if isinstance(exc, OSError) else "bad data"):
        files.atomic_write(target, write)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["enc.json"]  # the temporary file is gone


def test_atomic_write_failing_move_leaves_the_old_file(tmp_path: pathlib.Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "enc.json"
    target.write_text("old")

    def refuse(src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(_WriteError, match=rf"cannot write {target}: Invalid cross-device link"):
        files.write_text(target, "new", error_cls=_WriteError)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["enc.json"]


def test_overwrite_false_refuses_and_touches_nothing(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "r.json"
    files.write_json(target, {"a": 1}, overwrite=False)  # new: fine
    with pytest.raises(OutputExistsError, match=rf"{target} already exists; pass overwrite=True"):
        files.write_json(target, {"a": 2}, overwrite=False)
    with pytest.raises(_Exists):
        files.write_bytes(target, b"x", overwrite=False, exists_cls=_Exists)
    assert json.loads(target.read_text()) == {"a": 1}
    files.write_json(target, {"a": 3}, overwrite=True)
    assert json.loads(target.read_text()) == {"a": 3}


def test_write_helpers_content(tmp_path: pathlib.Path) -> None:
    assert files.write_bytes(tmp_path / "b", b"\xff\x00").read_bytes() == b"\xff\x00"
    assert files.write_text(tmp_path / "t", "µ").read_bytes() == "µ".encode("utf-8")
    path = files.write_json(tmp_path / "j", {"x": [1.5, None]}, indent=None)
    assert path.read_text() == '{"x": [1.5, null]}\n'


def test_write_json_refuses_nan_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        files.write_json(tmp_path / "j.json", {"sqnr": float("nan")})
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------------------------------------
# make_temp_dir and move_into_place
# -------------------------------------------------------------------------------------------------
def test_temp_dir_moved_into_place(tmp_path: pathlib.Path) -> None:
    tmp = files.make_temp_dir(tmp_path, ".tmp-layer_outputs_3-")
    assert os.path.basename(tmp).startswith(".tmp-layer_outputs_3-") and os.path.isdir(tmp)
    assert files.make_temp_dir(tmp_path, ".tmp-layer_outputs_3-") != tmp
    pathlib.Path(tmp, "a.raw").write_bytes(b"1234")
    files.move_into_place(tmp, tmp_path / "layer_outputs_3")
    assert (tmp_path / "layer_outputs_3" / "a.raw").read_bytes() == b"1234"
    assert not os.path.exists(tmp)


def test_move_into_place_failure_names_the_destination(tmp_path: pathlib.Path) -> None:
    src = files.make_temp_dir(tmp_path, ".tmp-")
    pathlib.Path(src, "a").write_text("new")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "old").write_text("old")  # a non-empty folder cannot be replaced
    with pytest.raises(_WriteError, match=rf"cannot move into place {tmp_path}/dst: ") as info:
        files.move_into_place(src, tmp_path / "dst", error_cls=_WriteError)
    assert info.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    assert pathlib.Path(src, "a").read_text() == "new"
    assert (tmp_path / "dst" / "old").read_text() == "old"
    with pytest.raises(FileWriteError, match="a file or folder it needs is missing"):
        files.move_into_place(tmp_path / "missing", tmp_path / "x")


# -------------------------------------------------------------------------------------------------
# staged_directory: the atomic directory update
# -------------------------------------------------------------------------------------------------
NAMES = ("m.onnx", "m.encodings", "m.pth")


def _export(directory: pathlib.Path, tag: str, **kwargs) -> list[pathlib.Path]:
    with file_sets.staged_directory(directory, **kwargs) as stage:
        for name in NAMES:
            pathlib.Path(stage.path(name)).write_text(f"{tag}:{name}")
    return [directory / name for name in NAMES]


def test_staged_update_replaces_same_names_only(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "new" / "out"
    _export(out, "v1", overwrite=False)
    (out / "notes.txt").write_text("mine")
    _export(out, "v2", overwrite=True)
    assert _tree(out) == {"notes.txt": b"mine", **{n: f"v2:{n}".encode() for n in NAMES}}


def test_staged_update_without_overwrite_refuses_existing_names(tmp_path: pathlib.Path) -> None:
    _export(tmp_path, "v1", overwrite=True)
    before = _tree(tmp_path)
    with pytest.raises(_Exists, match=rf"{tmp_path}/m.onnx already exists; pass overwrite=True"):
        _export(tmp_path, "v2", overwrite=False, exists_cls=_Exists)
    assert _tree(tmp_path) == before  # no staging folder left either


@pytest.mark.parametrize("failing_call", range(1, 4))
def test_failed_move_restores_previous_versions(tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                failing_call: int) -> None:
    _export(tmp_path, "v1", overwrite=True)
    (tmp_path / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    real = os.replace
    calls = []

    def flaky(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", flaky)
    culprit = NAMES[failing_call - 1]  # per name: previous version linked aside, new one moved in
    with pytest.raises(_WriteError, match=rf"cannot move into place {tmp_path}/{culprit}: "
                                          "Input/output error") as info:
        _export(tmp_path, "v2", overwrite=True, error_cls=_WriteError)
    assert info.value.filename == str(tmp_path / culprit)
    assert _tree(tmp_path) == before  # byte-identical, no staging folder
    assert len(calls) == 2 * failing_call - 1  # the names moved in before were put back


def test_previous_version_stays_readable_during_the_update(tmp_path: pathlib.Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The old file is linked aside, not moved: at every move each name holds a whole file."""
    _export(tmp_path, "v1", overwrite=True)
    real = os.replace
    seen = []

    def watching(src: str, dst: str) -> None:
        seen.append({n: (tmp_path / n).read_text() for n in NAMES})  # raises if one is missing
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", watching)
    _export(tmp_path, "v2", overwrite=True)
    assert seen == [{n: ("v2" if i < k else "v1") + f":{n}" for i, n in enumerate(NAMES)}
                    for k in range(3)]


@pytest.mark.parametrize("failing_call", range(1, 4))
def test_without_hard_links_the_previous_versions_are_moved_aside(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, failing_call: int) -> None:
    _export(tmp_path, "v1", overwrite=True)
    before = _tree(tmp_path)

    def no_links(src: str, dst: str, **kwargs) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    _export(tmp_path, "v2", overwrite=True)  # falls back: old aside, new in
    assert _tree(tmp_path) == {n: f"v2:{n}".encode() for n in NAMES}
    for name in NAMES:
        (tmp_path / name).write_text(f"v1:{name}")
    real = os.replace
    calls = []

    def flaky(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2 * failing_call:  # the move-in of the failing_call-th name
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", flaky)
    with pytest.raises(FileWriteError, match=rf"{NAMES[failing_call - 1]}: Input/output error"):
        _export(tmp_path, "v2", overwrite=True)
    assert _tree(tmp_path) == before


def test_failed_restore_keeps_the_previous_version_in_the_stage(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Two faults (a move, then the restore of an earlier name) cannot be undone: the previous
    version is kept in the staging folder and the log says where."""
    _export(tmp_path, "v1", overwrite=True)
    real = os.replace
    calls = []

    def flaky(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2 or str(src).endswith(os.path.join(".previous", "m.onnx")):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", flaky)
    with caplog.at_level(logging.ERROR, logger="fxquant.core.files"):
        with pytest.raises(FileWriteError, match="m.encodings: Input/output error"):
            _export(tmp_path, "v2", overwrite=True)
    kept = [e for e in os.listdir(tmp_path) if e.startswith(".fxquant-stage-")]
    assert len(kept) == 1
    assert (tmp_path / kept[0] / ".previous" / "m.onnx").read_text() == "v1:m.onnx"
    assert (tmp_path / "m.encodings").read_text() == "v1:m.encodings"  # never replaced
    assert any("could not restore the previous" in r.getMessage() and "m.onnx" in r.getMessage()
               for r in caplog.records)


def test_failed_flush_of_a_staged_file_touches_nothing(tmp_path: pathlib.Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _export(tmp_path, "v1", overwrite=True)
    before = _tree(tmp_path)

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", broken)
    with pytest.raises(FileWriteError, match=rf"cannot move into place {tmp_path}/m.onnx: "
                                             "Input/output error"):
        _export(tmp_path, "v2", overwrite=True)
    assert _tree(tmp_path) == before


def test_failed_folder_flush_after_the_moves_only_warns(tmp_path: pathlib.Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    with caplog.at_level(logging.WARNING, logger="fxquant.core.files"):
        _export(tmp_path, "v2", overwrite=True)
        files.write_text(tmp_path / "r.txt", "new")
    assert _tree(tmp_path) == {"r.txt": b"new", **{n: f"v2:{n}".encode() for n in NAMES}}
    assert sum(f"could not flush folder {tmp_path} to disk" in r.getMessage()
               for r in caplog.records) == 2


def test_exception_in_the_block_touches_nothing(tmp_path: pathlib.Path) -> None:
    _export(tmp_path / "out", "v1", overwrite=True)
    before = _tree(tmp_path)
    with pytest.raises(RuntimeError, match="model broke"):
        with file_sets.staged_directory(tmp_path / "out", overwrite=True) as stage:
            pathlib.Path(stage.path("m.onnx")).write_text("v2")
            raise RuntimeError("model broke")
    assert _tree(tmp_path) == before
    with pytest.raises(RuntimeError, match="model broke"):
        with file_sets.staged_directory(tmp_path / "a" / "b", overwrite=True) as stage:
            pathlib.Path(stage.path("m.onnx")).write_text("v2")
            raise RuntimeError("model broke")
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the folders made for the update are gone


def test_a_staged_file_never_written_fails_the_update(tmp_path: pathlib.Path) -> None:
    _export(tmp_path, "v1", overwrite=True)
    before = _tree(tmp_path)
    with pytest.raises(FileWriteError, match=rf"cannot move into place {tmp_path}/m.pth: the "
                                             "writer did not create it"):
        with file_sets.staged_directory(tmp_path, overwrite=True) as stage:
            pathlib.Path(stage.path("m.onnx")).write_text("v2")
            stage.path("m.pth")
    assert _tree(tmp_path) == before


def test_stage_write_names_the_final_path(tmp_path: pathlib.Path) -> None:
    def full(tmp: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/m.pth: No space left"):
        with file_sets.staged_directory(tmp_path, overwrite=True) as stage:
            assert stage.write("m.onnx", lambda t: pathlib.Path(t).write_text("x")) == \
                tmp_path / "m.onnx"
            stage.write("m.pth", full)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, message", [
    ("a/b.onnx", "must be a plain file name without a folder, got 'a/b.onnx'"),
    ("", "must be a plain file name without a folder, got ''"),
    ("..", "must be a plain file name without a folder, got '..'"),
    (".", "must be a plain file name without a folder, got '.'"),
])
def test_path_validation(tmp_path: pathlib.Path, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        with file_sets.staged_directory(tmp_path, overwrite=True) as stage:
            stage.path(name)
    assert os.listdir(tmp_path) == []


def test_path_twice_and_outside_the_block(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="staged file 'm.onnx' was already requested"):
        with file_sets.staged_directory(tmp_path, overwrite=True) as stage:
            stage.path("m.onnx")
            stage.path("m.onnx")
    with pytest.raises(RuntimeError, match=r"called outside its `with` block"):
        stage.path("x.onnx")
    with pytest.raises(RuntimeError, match=r"commit\(\) called outside its `with` block"):
        stage.commit()
    assert os.listdir(tmp_path) == []


def test_staged_directory_where_a_file_stands(tmp_path: pathlib.Path) -> None:
    (tmp_path / "out").write_text("")
    with pytest.raises(_WriteError, match=rf"cannot create the directory {tmp_path}/out: exists "
                                          "and is not a directory"):
        with file_sets.staged_directory(tmp_path / "out", overwrite=True, error_cls=_WriteError):
            pass
    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/d/m.onnx: is a directory"):
        (tmp_path / "d" / "m.onnx").mkdir(parents=True)
        with file_sets.staged_directory(tmp_path / "d", overwrite=True) as stage:
            stage.path("m.onnx")
    assert os.listdir(tmp_path / "d") == ["m.onnx"]


def test_staging_folder_cannot_be_created(tmp_path: pathlib.Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, mode: int = 0o777) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(files.os, "mkdir", refuse)
    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/new: Permission denied "
                                             r"\(no permission to write there"):
        with file_sets.staged_directory(tmp_path / "new", overwrite=True):
            pass
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------------------------------------
# write failures: torch's RuntimeError, full disks, folders created for a failed write
# -------------------------------------------------------------------------------------------------
_TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def test_write_failure_finds_the_os_error_torch_wrapped(tmp_path: pathlib.Path) -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError(_TORCH_FULL)
    except RuntimeError as exc:
        wrapped = exc
    found = files.write_failure(wrapped, tmp_path)
    assert isinstance(found, OSError) and found.errno == errno.ENOSPC
    plain = OSError(errno.EIO, "x")
    assert files.write_failure(plain, tmp_path) is plain
    assert files.write_failure(RuntimeError("shapes do not match"), tmp_path) is None
    assert files.write_failure(ValueError(_TORCH_FULL), tmp_path) is None


@pytest.mark.parametrize("free, code, reason", [
    (0, errno.ENOSPC, "No space left on device"),
    (1 << 30, errno.EIO, rf"torch could not write the file \({re.escape(_TORCH_FULL)}\)"),
])
def test_torch_write_failure_without_an_os_error(tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch, free: int,
                                                 code: int, reason: str) -> None:
    real = os.statvfs

    class _Stats:
        f_bavail, f_frsize = free, 1

    monkeypatch.setattr(files.os, "statvfs", lambda p: _Stats() if str(p) == str(tmp_path)
                        else real(p))
    target = tmp_path / "sim.ckpt"
    target.write_bytes(b"old")

    def torch_save(tmp: str) -> None:
        pathlib.Path(tmp).write_bytes(b"partial")
        raise RuntimeError(_TORCH_FULL)

    with pytest.raises(FileWriteError, match=rf"cannot write {target}: {reason}") as info:
        files.atomic_write(target, torch_save)
    assert info.value.errno == code and isinstance(info.value.__cause__, RuntimeError)
    assert _tree(tmp_path) == {"sim.ckpt": b"old"}


def test_other_runtime_errors_pass_through(tmp_path: pathlib.Path) -> None:
    def broken(tmp: str) -> None:
        raise RuntimeError("model broke")

    with pytest.raises(RuntimeError, match="^model broke$"):
        files.atomic_write(tmp_path / "new" / "f", broken)
    with pytest.raises(RuntimeError, match="^model broke$"):
        with file_sets.staged_directory(tmp_path / "new", overwrite=True) as stage:
            stage.write("f", broken)
    assert os.listdir(tmp_path) == []


def test_failed_write_removes_the_folders_it_created(tmp_path: pathlib.Path) -> None:
    """Issue 11: a full disk left an empty output folder behind."""
    (tmp_path / "kept").mkdir()

    def full(f) -> None:
        f.write(b"some")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/kept/a/b/f.pth: No space "
                                             r"left on device \(the disk \(or quota\) is full: "
                                             "free space or choose another location"):
        files.atomic_write_file(tmp_path / "kept" / "a" / "b" / "f.pth", full)
    assert _tree(tmp_path) == {} and os.listdir(tmp_path) == ["kept"]


def test_atomic_write_file_and_stage_write_file(tmp_path: pathlib.Path) -> None:
    assert files.atomic_write_file(tmp_path / "x" / "a.bin", lambda f: f.write(b"\x00\x01")) == \
        tmp_path / "x" / "a.bin"
    with file_sets.staged_directory(tmp_path / "x", overwrite=True) as stage:
        assert stage.write_file("b.bin", lambda f: f.write(b"b")) == tmp_path / "x" / "b.bin"
        stage.write_file("a.bin", lambda f: f.write(b"new"))
    assert _tree(tmp_path / "x") == {"a.bin": b"new", "b.bin": b"b"}


def test_real_full_disk(tmp_path: pathlib.Path) -> None:
    """torch.save onto a full tmpfs: torch's RuntimeError becomes a FileWriteError naming the file;
    the folders made for it are gone."""
    import torch

    from tests.core.faults import small_tmpfs

    with small_tmpfs("64k") as disk:
        big = {"w": torch.zeros(100_000)}

        def through_python(tmp: str) -> None:
            with open(tmp, "wb") as f:
                torch.save(big, f)

        for write in (lambda tmp: torch.save(big, tmp), through_python):
            with pytest.raises(FileWriteError, match=rf"cannot write {disk}/new/m.pth: No space "
                                                     r"left on device \(the disk"):
                files.atomic_write(disk / "new" / "m.pth", write)
            assert os.listdir(disk) == []
        (disk / "old.pth").write_bytes(b"old")
        with pytest.raises(FileWriteError, match=r"old.pth: No space left on device"):
            files.atomic_write_file(disk / "old.pth", lambda f: torch.save(big, f))
        assert _tree(disk) == {"old.pth": b"old"}


# -------------------------------------------------------------------------------------------------
# every step of each writer failing in turn (tests/core/faults.py)
# -------------------------------------------------------------------------------------------------
def test_fault_at_every_step_of_a_staged_update(tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.core.faults import check_all_or_nothing

    out = tmp_path / "out"

    def write(tag: str) -> None:
        with file_sets.staged_directory(out, overwrite=True) as stage:
            for name in NAMES:
                stage.write_file(name, lambda f, n=name: f.write(f"{tag}:{n}".encode()))

    outcome = check_all_or_nothing(out, lambda: write("v2"), setup=lambda: write("v1"),
                                   monkeypatch=monkeypatch)
    assert outcome.raised["os.replace"] == [1, 2, 3] and outcome.raised["file.write"] == [1, 2, 3]
    assert outcome.raised["os.fsync"] == [1, 2, 3] and outcome.survived["os.fsync"] == [4]
    assert outcome.survived["os.link"] == [1, 2, 3]


@pytest.mark.parametrize("helper", ["write_text", "write_json", "write_bytes"])
def test_fault_at_every_step_of_an_atomic_file(tmp_path: pathlib.Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               helper: str) -> None:
    from tests.core.faults import check_all_or_nothing

    path = tmp_path / "out" / "new" / "f"
    value = {"write_text": "{}", "write_json": {"a": 1}, "write_bytes": b"\x00"}[helper]
    newer = {"write_text": "[]", "write_json": {"a": 2}, "write_bytes": b"\x01"}[helper]
    outcome = check_all_or_nothing(tmp_path / "out",
                                   lambda: getattr(files, helper)(path, newer),
                                   setup=lambda: getattr(files, helper)(path, value),
                                   monkeypatch=monkeypatch)
    assert outcome.raised["os.replace"] == [1] and outcome.raised["file.write"] == [1]
    first = check_all_or_nothing(tmp_path / "fresh", lambda: getattr(files, helper)(
        tmp_path / "fresh" / "a" / "f", newer), monkeypatch=monkeypatch, watch=tmp_path)
    assert first.raised["os.mkdir"] == [1, 2]  # and tree(fresh) stayed None each time


def test_fault_harness_catches_a_writer_that_is_not_atomic(tmp_path: pathlib.Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself can fail: files rewritten in place are half-written when a write fails."""
    from tests.core.faults import check_all_or_nothing

    out = tmp_path / "out"

    def naive(tag: str) -> None:
        out.mkdir(exist_ok=True)
        for name in NAMES:
            try:
                with open(out / name, "wb") as f:
                    f.write(f"{tag}:{name}".encode())
            except OSError as exc:
                raise files.describe_os_error(out / name, exc) from exc

    with pytest.raises(AssertionError, match=r"file\.write call 1 failed .* not the previous "
                                             "version"):
        check_all_or_nothing(out, lambda: naive("v2"), setup=lambda: naive("v1"),
                             monkeypatch=monkeypatch, points=("file.write",))


def test_durable_false_skips_the_flushes(tmp_path: pathlib.Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fsync
    calls = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    files.write_bytes(tmp_path / "a", b"x", durable=False)
    assert calls == [] and (tmp_path / "a").read_bytes() == b"x"
    files.write_bytes(tmp_path / "a", b"y")
    assert len(calls) == 2 and (tmp_path / "a").read_bytes() == b"y"  # the file, then the folder


# -------------------------------------------------------------------------------------------------
# replace_entries: a set of entries (files and folders) replaced at once
# -------------------------------------------------------------------------------------------------
def _entries(root: pathlib.Path, tag: str) -> None:
    """A set of entries: a folder that makes the set exist, and an index file."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "0.bin").write_text(f"{tag}:0")
    (root / "index.json").write_text(f'{{"tag": "{tag}"}}')


def test_replace_entries_moves_the_previous_out_first_and_the_new_in(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, src = tmp_path / "d", tmp_path / "d" / ".new"
    _entries(root, "old")
    (root / ".left.tmp").write_text("what a killed run left")
    (root / "notes.txt").write_text("not ours")
    _entries(src, "new")
    moves = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moves.append((os.path.relpath(a, root),
                                                                   os.path.relpath(b, root))),
                                                     real(a, b))[1])
    paths = file_sets.replace_entries(root, src, ["index.json", "data"],
                                  previous=["data", ".left.tmp"])
    assert paths == [root / "index.json", root / "data"]
    aside = moves[0][1].split("/")[0]
    assert aside.startswith(files.STAGE_PREFIX)
    assert moves == [("data", f"{aside}/data"), (".left.tmp", f"{aside}/.left.tmp"),
                     ("index.json", f"{aside}/index.json"),
                     (".new/index.json", "index.json"), (".new/data", "data")]
    assert _tree(root) == {"data/0.bin": b"new:0", "index.json": b'{"tag": "new"}',
                           "notes.txt": b"not ours"}
    assert sorted(os.listdir(root)) == [".new", "data", "index.json", "notes.txt"]


def test_replace_entries_fault_at_every_step(tmp_path: pathlib.Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.core.faults import check_all_or_nothing, tree

    root, src = tmp_path / "d", tmp_path / "new"

    def replace() -> None:
        if src.exists():
            import shutil
            shutil.rmtree(src)
        _entries(src, "new")  # outside the watched folder: never failed
        file_sets.replace_entries(root, src, ["index.json", "data"], previous=["data"])

    outcome = check_all_or_nothing(root, replace, setup=lambda: _entries(root, "old"),
                                   monkeypatch=monkeypatch, watch=root)
    assert outcome.raised["os.replace"] == [1, 2, 3, 4]  # two out, two in
    assert outcome.raised["os.mkdir"] == [1]  # the hidden folder
    assert outcome.survived["os.fsync"] == [1]  # the folder flush after the moves only warns
    assert outcome.leftovers == [("os.open", outcome.counts["os.open"])]  # its removal
    assert all(isinstance(e, FileWriteError) and str(root) in str(e) for e in outcome.errors)
    assert tree(src) is not None and sorted(os.listdir(src)) == ["data", "index.json"]


def test_replace_entries_errors(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    root, src = tmp_path / "d", tmp_path / "new"
    _entries(root, "old")
    _entries(src, "new")
    before = _tree(root)
    with pytest.raises(ValueError, match=r"entry names must be plain names without a folder, "
                                         r"got 'data/0.bin'"):
        file_sets.replace_entries(root, src, ["data/0.bin"])
    with pytest.raises(_WriteError, match=rf"cannot move into place {root}/missing: No such file"):
        file_sets.replace_entries(root, src, ["index.json", "missing"], previous=["data"],
                              error_cls=_WriteError)
    assert _tree(root) == before and sorted(os.listdir(root)) == ["data", "index.json"]
    assert sorted(os.listdir(src)) == ["data", "index.json"]  # the new entries moved back
    real_mkdir = os.mkdir

    def refuse(path: str, *args: object) -> None:
        if os.path.basename(path).startswith(files.STAGE_PREFIX):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        real_mkdir(path, *args)

    monkeypatch.setattr(os, "mkdir", refuse)
    with pytest.raises(FileWriteError, match=rf"cannot create a hidden folder for the update in "
                                             rf"{root}: Permission denied \(no permission"):
        file_sets.replace_entries(root, src, ["index.json"])
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    # the move of the new data/ fails, and so does putting the previous index.json back: the
    # error is raised, the previous entry's place is logged and its hidden folder kept
    real = os.replace
    calls = []

    def failing(a: str, b: str) -> None:
        calls.append(b)
        if b == os.path.join(root, "data") or (len(calls) > 4 and b.endswith("index.json")
                                               and os.fspath(root) == os.path.dirname(b)):
            raise OSError(errno.EIO, "Input/output error")
        real(a, b)

    monkeypatch.setattr(os, "replace", failing)
    with caplog.at_level(logging.ERROR, logger="fxquant.core.files"):
        with pytest.raises(FileWriteError, match=rf"cannot move into place {root}/data: "
                                                 "Input/output error"):
            file_sets.replace_entries(root, src, ["index.json", "data"], previous=["data"])
    assert re.search(r"could not move index.json back to .*d \(.*\); it is kept in "
                     rf"{root}/\.fxquant-stage-", caplog.text)
