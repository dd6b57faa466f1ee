"""Tests of the one file writer (fxquant/core/files.py): every path, every error."""
from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import stat

import pytest

from fxquant.core import files
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
    with files.staged_directory(directory, **kwargs) as stage:
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


@pytest.mark.parametrize("failing_call", range(1, 7))
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
    culprit = NAMES[(failing_call - 1) // 2]  # per name: old version aside, new one in
    with pytest.raises(_WriteError, match=rf"cannot move into place {tmp_path}/{culprit}: "
                                          "Input/output error") as info:
        _export(tmp_path, "v2", overwrite=True, error_cls=_WriteError)
    assert info.value.filename == str(tmp_path / culprit)
    assert _tree(tmp_path) == before  # byte-identical, no staging folder
    assert len(calls) == failing_call + failing_call // 2  # the set-aside versions moved back


def test_failed_restore_keeps_the_previous_version_in_the_stage(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _export(tmp_path, "v1", overwrite=True)
    real = os.replace
    calls = []

    def flaky(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 4 or (len(calls) > 4 and str(src).endswith(os.path.join(".previous",
                                                                                "m.onnx"))):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", flaky)
    with caplog.at_level(logging.ERROR, logger="fxquant.core.files"):
        with pytest.raises(FileWriteError, match="m.encodings: Input/output error"):
            _export(tmp_path, "v2", overwrite=True)
    kept = [e for e in os.listdir(tmp_path) if e.startswith(".fxquant-stage-")]
    assert len(kept) == 1
    assert (tmp_path / kept[0] / ".previous" / "m.onnx").read_text() == "v1:m.onnx"
    assert (tmp_path / "m.encodings").read_text() == "v1:m.encodings"  # restored
    assert any("could not restore the previous" in r.getMessage() and "m.onnx" in r.getMessage()
               for r in caplog.records)


def test_exception_in_the_block_touches_nothing(tmp_path: pathlib.Path) -> None:
    _export(tmp_path / "out", "v1", overwrite=True)
    before = _tree(tmp_path)
    with pytest.raises(RuntimeError, match="model broke"):
        with files.staged_directory(tmp_path / "out", overwrite=True) as stage:
            pathlib.Path(stage.path("m.onnx")).write_text("v2")
            raise RuntimeError("model broke")
    assert _tree(tmp_path) == before
    with pytest.raises(RuntimeError, match="model broke"):
        with files.staged_directory(tmp_path / "a" / "b", overwrite=True) as stage:
            pathlib.Path(stage.path("m.onnx")).write_text("v2")
            raise RuntimeError("model broke")
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the folders made for the update are gone


def test_a_staged_file_never_written_fails_the_update(tmp_path: pathlib.Path) -> None:
    _export(tmp_path, "v1", overwrite=True)
    before = _tree(tmp_path)
    with pytest.raises(FileWriteError, match=rf"cannot move into place {tmp_path}/m.pth: the "
                                             "writer did not create it"):
        with files.staged_directory(tmp_path, overwrite=True) as stage:
            pathlib.Path(stage.path("m.onnx")).write_text("v2")
            stage.path("m.pth")
    assert _tree(tmp_path) == before


def test_stage_write_names_the_final_path(tmp_path: pathlib.Path) -> None:
    def full(tmp: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/m.pth: No space left"):
        with files.staged_directory(tmp_path, overwrite=True) as stage:
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
        with files.staged_directory(tmp_path, overwrite=True) as stage:
            stage.path(name)
    assert os.listdir(tmp_path) == []


def test_path_twice_and_outside_the_block(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="staged file 'm.onnx' was already requested"):
        with files.staged_directory(tmp_path, overwrite=True) as stage:
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
        with files.staged_directory(tmp_path / "out", overwrite=True, error_cls=_WriteError):
            pass
    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/d/m.onnx: is a directory"):
        (tmp_path / "d" / "m.onnx").mkdir(parents=True)
        with files.staged_directory(tmp_path / "d", overwrite=True) as stage:
            stage.path("m.onnx")
    assert os.listdir(tmp_path / "d") == ["m.onnx"]


def test_staging_folder_cannot_be_created(tmp_path: pathlib.Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, mode: int = 0o777) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(files.os, "mkdir", refuse)
    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/new: Permission denied "
                                             r"\(no permission to write there"):
        with files.staged_directory(tmp_path / "new", overwrite=True):
            pass
    assert os.listdir(tmp_path) == []
