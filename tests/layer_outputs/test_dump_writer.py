"""fxquant.layer_outputs.dump_writer: names, layout on disk, manifest, atomic writes, errors."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fxquant.layer_outputs.dump_writer as dump_writer
from fxquant.errors import FileWriteError, FxQuantError, OutputExistsError
from fxquant.layer_outputs import (DumpExistsError, DumpFormatError, DumpWriteError,
                                   LayerOutputDump, sanitize_names)
from fxquant.layer_outputs.dump_writer import DumpWriter, HostInstance
from tests.core.faults import POINTS, FaultPlan, check_all_or_nothing, inject, small_tmpfs, tree
from tests.layer_outputs.lo_helpers import (assert_instances_as_written, sample_instance,
                                            varying_instance)


def test_sanitize_names_never_collide() -> None:
    names = ["layer1.0.conv1", "layer1_0_conv1", "Layer1_0_conv1", "fc#0", "a/b:c", "", "x" * 300,
             "x" * 299 + "y", "con"]
    stems = sanitize_names(names)
    assert stems["layer1.0.conv1"] == "layer1_0_conv1"  # AIMET's sanitizing when unique
    assert stems["fc#0"] == "fc_0"
    assert len({s.lower() for s in stems.values()}) == len(names)  # also case-insensitively
    assert all(len(s) <= 180 and s for s in stems.values())
    assert stems["con"] != "con"  # a Windows device name


def test_layout_on_disk_and_manifest(tmp_path: os.PathLike[str]) -> None:
    writer = DumpWriter(tmp_path / "d", producer={"source": "test"})
    for k in range(2):
        assert writer.submit(sample_instance(k)) == k
    writer.close()
    root = tmp_path / "d"
    assert sorted(os.listdir(root)) == ["inputs", "instances", "layer_output_name_order.json",
                                        "manifest.json", "outputs"]
    assert sorted(os.listdir(root / "instances")) == ["instance_0.json", "instance_1.json"]
    order = json.loads((root / "layer_output_name_order.json").read_text())["layer_output_names"]
    assert order == ["conv_1", "conv_1__1", "idx"]
    assert sorted(os.listdir(root / "inputs")) == ["input_0.raw", "input_1.raw"]
    assert sorted(os.listdir(root / "outputs")) == ["layer_outputs_0", "layer_outputs_1"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["layer_output_names"] == ["conv.1", "conv_1", "idx"]
    assert manifest["tensors"]["conv.1"] == {"file": "conv_1.raw", "shape": [1, 2, 4, 5],
                                             "dtype": "float32", "source_dtype": "float32",
                                             "layout": "NCHW"}
    assert manifest["tensors"]["idx"]["source_dtype"] == "int64"
    assert [i["index"] for i in manifest["instances"]] == [0, 1]
    raw = np.fromfile(root / "outputs" / "layer_outputs_1" / "conv_1.raw", dtype=np.float32)
    np.testing.assert_array_equal(raw.reshape(1, 2, 4, 5), sample_instance(1).outputs[0][1])
    dump = LayerOutputDump(root)
    np.testing.assert_array_equal(dump.load("idx", 0), np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(dump.load_inputs(1)[0], sample_instance(1).inputs[0][1])


def test_nhwc_and_npy(tmp_path: os.PathLike[str]) -> None:
    writer = DumpWriter(tmp_path / "d", file_format="npy", layout="NHWC")
    writer.submit(sample_instance())
    writer.close()
    dump = LayerOutputDump(tmp_path / "d")
    info = dump.info("conv.1")
    assert (info.layout, info.shape, info.file) == ("NHWC", (1, 4, 5, 2), "conv_1.npy")
    np.testing.assert_array_equal(dump.load("conv.1"),
                                  np.moveaxis(sample_instance().outputs[0][1], 1, -1))
    assert dump.load("idx").dtype == np.int64  # npy keeps the dtype


def test_non_empty_dir_is_an_error_unless_overwrite(tmp_path: os.PathLike[str]) -> None:
    target = tmp_path / "d"
    writer = DumpWriter(target)
    writer.submit(sample_instance(0))
    writer.submit(sample_instance(1))
    writer.close()
    with pytest.raises(DumpExistsError, match=r"is not empty .*pass overwrite=True"):
        DumpWriter(target)
    (target / "notes.txt").write_text("keep me")
    writer = DumpWriter(target, overwrite=True)
    writer.submit(sample_instance(5))
    writer.close()
    assert os.listdir(target / "outputs") == ["layer_outputs_0"]  # the old instances are gone
    assert (target / "notes.txt").read_text() == "keep me"


def test_unwritable_target_names_the_path(tmp_path: os.PathLike[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DumpWriteError, match=r"cannot create the dump directory .*file"):
        DumpWriter(blocker / "dump")
    with pytest.raises(DumpWriteError, match="exists and is not a directory"):
        DumpWriter(blocker)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_dir(tmp_path: os.PathLike[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DumpWriteError, match=r"no permission|not writable"):
            DumpWriter(ro / "dump")
    finally:
        ro.chmod(0o700)


def test_disk_full_leaves_only_whole_files(tmp_path: os.PathLike[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    writer = DumpWriter(tmp_path / "d")
    writer.submit(sample_instance(0))
    calls = {"n": 0}
    save = DumpWriter._save

    def failing(self: DumpWriter, array: np.ndarray, path: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second tensor of instance 1
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, array, path)

    monkeypatch.setattr(DumpWriter, "_save", failing)
    with pytest.raises(DumpWriteError,
                       match=r"cannot write .*layer_outputs_1.*disk .*full") as info:
        writer.submit(sample_instance(1))
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError)
    monkeypatch.setattr(DumpWriter, "_save", save)
    writer.close()
    outputs = tmp_path / "d" / "outputs"
    assert os.listdir(outputs) == ["layer_outputs_0"]  # no partial instance, no temporary folder
    dump = LayerOutputDump(tmp_path / "d")
    assert dump.instances == [0]


def test_permission_error_names_the_path_and_fix(tmp_path: os.PathLike[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """As root (CI containers) chmod does not stop writes: simulate the refusal."""
    def refuse(path: str, exist_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr("fxquant.layer_outputs.dump_writer.os.makedirs", refuse)
    with pytest.raises(DumpWriteError, match=r"cannot create directory .*locked.*no permission to "
                                             r"write there: choose a writable location") as info:
        DumpWriter(tmp_path / "locked")
    assert info.value.errno == errno.EACCES and str(tmp_path / "locked") in info.value.filename


def test_dump_errors_are_the_core_file_errors(tmp_path: os.PathLike[str]) -> None:
    """One overwrite policy: callers can catch fxquant's file errors for dumps too."""

    assert issubclass(DumpExistsError, OutputExistsError) and issubclass(DumpExistsError,
                                                                         FileExistsError)
    assert issubclass(DumpWriteError, FileWriteError) and issubclass(DumpWriteError, OSError)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.raw").write_bytes(b"")
    with pytest.raises(OutputExistsError, match=r"dump directory .*d is not empty \(old.raw\)"):
        DumpWriter(tmp_path / "d")


def test_instance_folders_get_umask_permissions(tmp_path: os.PathLike[str]) -> None:
    old = os.umask(0o022)
    try:
        writer = DumpWriter(tmp_path / "d")
        writer.submit(sample_instance(0))
        writer.close()
    finally:
        os.umask(old)
    folder = tmp_path / "d" / "outputs" / "layer_outputs_0"
    assert folder.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    assert (folder / "conv_1.raw").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d" / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_failed_move_of_an_instance_leaves_no_partialsample_instance(
        tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    writer = DumpWriter(tmp_path / "d")
    writer.submit(sample_instance(0))
    real = os.replace

    def refuse(src: str, dst: str) -> None:
        if os.path.basename(os.fspath(dst)) == "layer_outputs_1":
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(DumpWriteError, match=r"cannot move into place .*outputs/layer_outputs_1: "
                                             r"Input/output error") as info:
        writer.submit(sample_instance(1))
    assert info.value.filename.endswith(os.path.join("outputs", "layer_outputs_1"))
    monkeypatch.setattr(os, "replace", real)
    writer.close()
    assert os.listdir(tmp_path / "d" / "outputs") == ["layer_outputs_0"]
    assert LayerOutputDump(tmp_path / "d").instances == [0]


def test_several_inputs_and_their_failure(tmp_path: os.PathLike[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1, 2)).astype(np.float32), np.arange(3, dtype=np.int64)
    writer = DumpWriter(tmp_path / "d", file_format="npy")
    writer.submit(HostInstance([("a", a), ("b", b)], [("y", a * 2)]))
    assert sorted(os.listdir(tmp_path / "d" / "inputs" / "input_0")) == ["0.npy", "1.npy"]
    save = DumpWriter._save

    def failing(self: DumpWriter, array: np.ndarray, path: str) -> None:
        if os.path.basename(path) == "1.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, array, path)

    monkeypatch.setattr(DumpWriter, "_save", failing)
    with pytest.raises(DumpWriteError, match=r"cannot write .*inputs/input_1/1.npy: No space"):
        writer.submit(HostInstance([("a", a), ("b", b)], [("y", a * 3)]))
    monkeypatch.setattr(DumpWriter, "_save", save)
    writer.close()
    assert sorted(os.listdir(tmp_path / "d" / "inputs")) == ["input_0"]  # no temporary folder
    loaded = LayerOutputDump(tmp_path / "d").load_inputs(0)
    np.testing.assert_array_equal(loaded[0], a)
    np.testing.assert_array_equal(loaded[1], b)


def test_overwrite_removes_what_a_killed_run_left(tmp_path: os.PathLike[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    writer = DumpWriter(tmp_path / "d")
    writer.submit(sample_instance(0))
    writer.close()
    (tmp_path / "d" / ".manifest.json.0123abcd.tmp").write_text("{")  # a killed atomic write
    (tmp_path / "d" / ".tmp-abc").mkdir()
    with caplog.at_level("WARNING", logger="fxquant.layer_outputs.dump_writer"):
        DumpWriter(tmp_path / "d", overwrite=True).close()
    assert sorted(os.listdir(tmp_path / "d")) == ["inputs", "instances", "manifest.json", "outputs"]
    assert not caplog.records  # nothing reported as "not part of a dump"


# ------------------------------------------------------------------------------------------------
# Killed runs, per-instance shapes, fault injection (issue 11, items 2 and 3; acceptance)
# ------------------------------------------------------------------------------------------------


def test_input_shapes_vary_between_instances(tmp_path: os.PathLike[str]) -> None:
    """Issue 11 item 3: load_inputs(k) of every instance, not only the first."""
    writer = DumpWriter(tmp_path / "d")
    writer.submit_all(range(3), varying_instance, desc="t", progress=False)
    writer.close()
    assert assert_instances_as_written(tmp_path / "d") == [0, 1, 2]
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert [e["input_shapes"] for e in manifest["instances"]] == [
        [[1, 3, 4, 5]], [[1, 3, 6, 6]], [[1, 3, 8, 7]]]
    assert manifest["instances"][2]["shapes"] == {"conv.1": [1, 2, 8, 7]}


def test_version_1_manifest_is_still_read(tmp_path: os.PathLike[str]) -> None:
    """A dump written before per-instance input shapes reads as before; where its one input shape
    cannot fit, the error says why and what to do."""
    writer = DumpWriter(tmp_path / "d")
    writer.submit_all(range(2), varying_instance, desc="t", progress=False)
    writer.close()
    path = tmp_path / "d" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] = 1
    for entry in manifest["instances"]:
        del entry["input_shapes"]
    path.write_text(json.dumps(manifest))
    shutil.rmtree(tmp_path / "d" / "instances")
    dump = LayerOutputDump(tmp_path / "d")
    np.testing.assert_array_equal(dump.load_inputs(0)[0], varying_instance(0).inputs[0][1])
    np.testing.assert_array_equal(dump.load("conv.1", 1), varying_instance(1).outputs[0][1])
    with pytest.raises(DumpFormatError, match=r"input_1.raw holds 108 float32 values but the "
                                              r"manifest's shape \[1, 3, 4, 5\] needs 60.*"
                                              r"version-1 manifest records the first instance's "
                                              r"input"):
        dump.load_inputs(1)


_KILLED_WRITER = r'''
import os, sys, time
from fxquant.layer_outputs.dump_writer import DumpWriter
from tests.layer_outputs.lo_helpers import varying_instance

target, marker, when = sys.argv[1:4]
if when == "after":  # instance 1 is complete: say so, then hang until killed
    real = DumpWriter._write_instance

    def write_instance(self, index, instance):
        real(self, index, instance)
        if index == 1:
            open(marker, "w").close()
            time.sleep(600)
    DumpWriter._write_instance = write_instance
else:  # half-way through instance 1's files (instance 0's when overwriting a dump)
    folder = "layer_outputs_0" if when == "overwrite" else "layer_outputs_1"
    real_save = DumpWriter._save
    calls = []

    def save(self, array, path):
        calls.append(path)
        if folder in path and len([c for c in calls if folder in c]) == 2:
            open(marker, "w").close()
            time.sleep(600)
        real_save(self, array, path)
    DumpWriter._save = save
writer = DumpWriter(target, overwrite=when == "overwrite")
writer.submit_all(range(5), varying_instance, desc="killed", progress=False)
'''


def _write_and_kill(tmp_path: os.PathLike[str], when: str) -> None:
    """Runs _KILLED_WRITER into ``tmp_path/d`` and kills it (SIGKILL) at its marker."""

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "d"),
                             str(marker), when], cwd=root, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the writer never reached the marker"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("when, complete", [("after", [0, 1]), ("during", [0])])
def test_dump_killed_by_sigkill_reads_back_its_complete_instances(
        tmp_path: os.PathLike[str], when: str, complete: list[int]) -> None:
    """Issue 11 item 2: a dump killed (SIGKILL) within its first second, before the manifest's
    periodic rewrite, reads back as the complete instances it finished, shapes and all."""
    _write_and_kill(tmp_path, when)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["tensors"]["conv.1"]["shape"] == [1, 2, 4, 5]  # written with instance 0
    assert assert_instances_as_written(tmp_path / "d") == complete
    dump = LayerOutputDump(tmp_path / "d")
    last = complete[-1]
    assert dump.info("conv.1", last).shape == varying_instance(last).outputs[0][1].shape


@pytest.mark.parametrize("which", [0, 1])
def test_a_failure_at_any_step_leaves_a_readable_prefix(
        tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch, which: int) -> None:
    """Acceptance: each step of writing instance ``which`` fails in turn (os.replace, mkdir, open,
    write (ENOSPC), fsync, unlink …); the dump then lists only complete instances, before and
    after the writer is closed, and every error is fxquant's, naming a path (at most 6 calls per
    step, first and last included)."""

    def attempt(root: str, plan: FaultPlan | None) -> BaseException | None:
        writer = DumpWriter(root)
        for k in range(which):
            writer.submit(varying_instance(k))
        error = None
        try:
            if plan is None:
                writer.submit(varying_instance(which))
            else:
                with inject(monkeypatch, plan):
                    writer.submit(varying_instance(which))
        except FxQuantError as exc:
            error = exc
        if os.listdir(os.path.join(root, "outputs")) or which:
            listed = assert_instances_as_written(root)  # as a killed run would leave it
            assert listed in ([*range(which)], [*range(which + 1)])
        writer.close()
        if os.listdir(os.path.join(root, "outputs")) or which:
            listed = assert_instances_as_written(root)
            assert listed in ([*range(which)], [*range(which + 1)])
        return error

    clean = FaultPlan(os.path.abspath(tmp_path / "clean"))
    attempt(str(tmp_path / "clean"), None)
    counting = FaultPlan(os.path.abspath(tmp_path / "count"))
    writer = DumpWriter(tmp_path / "count")
    for k in range(which):
        writer.submit(varying_instance(k))
    with inject(monkeypatch, counting):
        writer.submit(varying_instance(which))
    writer.close()
    assert clean.counts == {}
    assert counting.counts.get("os.replace", 0) >= 3 and counting.counts.get("file.write", 0) >= 4
    tried = raised = 0
    for point in POINTS:
        count = counting.counts.get(point, 0)
        spread = sorted({1 + round(i * (count - 1) / 5) for i in range(6)}) if count > 6 else \
            range(1, count + 1)  # first, last and evenly between: at most 6 per step
        for n in spread:
            root = os.path.abspath(tmp_path / f"{point}-{n}")
            plan = FaultPlan(root, point, n)
            error = attempt(root, plan)
            tried += 1
            if error is not None:
                raised += 1
                assert plan.fired
                assert isinstance(error, DumpWriteError) and str(tmp_path) in str(error), error
    assert tried >= 10 and raised >= 5


def test_disk_full_on_a_real_small_disk(tmp_path: os.PathLike[str]) -> None:
    """A real full disk (tmpfs, when root): the error names the path and says the disk is full;
    what was written reads back complete."""

    def big(k: int) -> HostInstance:
        rng = np.random.default_rng(k)
        return HostInstance([("x", rng.standard_normal((1, 8)).astype(np.float32))],
                            [("y", rng.standard_normal((64, 64)).astype(np.float32))])

    with small_tmpfs("256k") as disk:
        writer = DumpWriter(disk / "d")
        with pytest.raises(DumpWriteError, match=r"disk .*full") as info:
            for k in range(100):
                writer.submit(big(k))
        assert info.value.errno == errno.ENOSPC and str(disk) in str(info.value)
        try:
            writer.close()  # the final manifest may not fit either
        except DumpWriteError as exc:
            assert exc.errno == errno.ENOSPC
        listed = assert_instances_as_written(disk / "d", big)
        assert len(listed) >= 3


# ------------------------------------------------------------------------------------------------
# Overwriting a dump, closing (issue 11, acceptance: a fault at every step of every writer)
# ------------------------------------------------------------------------------------------------


def _old_dump(root: os.PathLike[str]) -> None:
    """The previous dump: two instances of ``sample_instance`` (other names than the new one's)."""
    writer = DumpWriter(root)
    writer.submit(sample_instance(0))
    writer.submit(sample_instance(1))
    writer.close()


def _overwrite(root: os.PathLike[str], instances: int = 1) -> None:
    """Overwrites the dump at ``root`` with ``instances`` instances of ``varying_instance``."""
    writer = DumpWriter(root, overwrite=True)
    try:
        for k in range(instances):
            writer.submit(varying_instance(k))
    finally:
        writer.close()


def _hidden(root: os.PathLike[str]) -> list[str]:
    return sorted(e for e in os.listdir(root) if e.startswith("."))


def test_overwrite_fault_at_every_step_keeps_the_previous_dump_or_writes_the_new(
        tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step of overwriting a dump fails in turn (creating the hidden stage, writing the new
    dump's files and first instance into it, moving the previous dump's entries aside, the new
    ones in): the directory then holds the previous dump byte for byte (and the writer raised
    DumpWriteError naming the path) or the new one, never a mix of their instances."""

    root = tmp_path / "d"
    outcome = check_all_or_nothing(root, lambda: _overwrite(root), setup=lambda: _old_dump(root),
                                   monkeypatch=monkeypatch)
    for err in outcome.errors:
        assert isinstance(err, DumpWriteError) and str(root) in str(err), err
    # the previous entries are moved aside (outputs/ first) and the new ones in (outputs/ last)
    # with one os.replace each, after the instance folder's and the JSON files' own moves: a
    # failure of any of them puts the previous dump back
    assert outcome.raised["os.replace"] == list(range(1, outcome.counts["os.replace"] + 1))
    assert outcome.counts["os.replace"] >= 5 + 5 + 1
    assert outcome.raised["os.mkdir"]  # the stage and its folders
    assert outcome.raised["file.write"] and not outcome.survived.get("file.write")
    # only the removal of the hidden folders after the update may fail without undoing it
    assert {point for point, _ in outcome.leftovers} <= {"os.open"}
    _overwrite(root)
    assert assert_instances_as_written(root) == [0]
    assert sorted(os.listdir(root)) == ["inputs", "instances", "layer_output_name_order.json",
                                        "manifest.json", "outputs"]


def test_overwrite_closed_without_instances_fault_at_every_step(
        tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer closed without a failure and without instances replaces the previous dump with an
    empty one, in close(): every step of that fails in turn, all or nothing."""

    root = tmp_path / "d"
    outcome = check_all_or_nothing(root, lambda: _overwrite(root, instances=0),
                                   setup=lambda: _old_dump(root), monkeypatch=monkeypatch)
    assert outcome.raised["os.replace"] == list(range(1, outcome.counts["os.replace"] + 1))
    for err in outcome.errors:
        assert isinstance(err, DumpWriteError) and str(root) in str(err), err
    _overwrite(root, instances=0)
    assert sorted(os.listdir(root)) == ["inputs", "instances", "manifest.json", "outputs"]
    with pytest.raises(DumpFormatError, match=r"holds no complete instance"):
        LayerOutputDump(root)


def test_overwrite_keeps_the_previous_dump_until_the_first_instance_is_complete(
        tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:

    root = tmp_path / "d"
    _old_dump(root)
    before = tree(root)
    writer = DumpWriter(root, overwrite=True)
    assert assert_instances_as_written(root, sample_instance) == [0, 1]  # still the old dump
    save = DumpWriter._save

    def full(self: DumpWriter, array: np.ndarray, path: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DumpWriter, "_save", full)
    with pytest.raises(DumpWriteError, match=r"cannot write .*d/\.fxquant-stage-\w+/inputs/"
                                             r"input_0\.raw: No space left on device \(the disk"):
        writer.submit(varying_instance(0))
    assert assert_instances_as_written(root, sample_instance) == [0, 1]
    with caplog.at_level("WARNING", logger="fxquant.layer_outputs.dump_writer"):
        writer.close()
    assert tree(root) == before  # byte for byte, no hidden stage left
    assert "the previous dump there is kept as it was" in caplog.text
    # the first instance fails, the second succeeds: it is the new dump's first instance
    writer = DumpWriter(root, overwrite=True)
    with pytest.raises(DumpWriteError, match="No space left"):
        writer.submit(varying_instance(0))
    monkeypatch.setattr(DumpWriter, "_save", save)
    writer.submit(varying_instance(1))
    writer.close()
    assert assert_instances_as_written(root) == [1]
    assert os.listdir(root / "outputs") == ["layer_outputs_1"]
    assert _hidden(root) == []


def test_overwrite_onto_a_full_disk_keeps_the_previous_dump() -> None:
    """A real full disk (tmpfs, when root): the new dump's first instance does not fit beside the
    previous dump; the error names the path and says the disk is full, and the previous dump is
    as it was, byte for byte, with no hidden folder left."""

    def big(k: int) -> HostInstance:  # 121 KiB: one fits the disk, two do not
        return HostInstance([("x", np.full((1, 8), k, np.float32))],
                            [("y", np.full((176, 176), k, np.float32))])

    with small_tmpfs("256k") as disk:
        root = disk / "d"
        writer = DumpWriter(root)
        writer.submit(big(0))
        writer.close()
        before = tree(root)
        writer = DumpWriter(root, overwrite=True)
        with pytest.raises(DumpWriteError, match=rf"cannot write {root}/\.fxquant-stage-\w+/"
                                                 r".*No space left on device \(the disk \(or "
                                                 r"quota\) is full") as info:
            writer.submit(big(1))
        assert info.value.errno == errno.ENOSPC
        writer.close()
        assert tree(root) == before
        assert assert_instances_as_written(root, big) == [0]


def test_overwrite_killed_before_its_first_instance_keeps_the_previous_dump(
        tmp_path: os.PathLike[str]) -> None:
    """SIGKILL half-way through the new dump's first instance: the previous dump reads back
    whole; the next overwrite removes the hidden stage the killed run left."""

    root = tmp_path / "d"
    _old_dump(root)
    before = tree(root)
    _write_and_kill(tmp_path, "overwrite")
    stage = _hidden(root)
    assert len(stage) == 1 and stage[0].startswith(".fxquant-stage-")
    assert {k: v for k, v in tree(root).items() if not k.startswith(stage[0])} == before
    assert assert_instances_as_written(root, sample_instance) == [0, 1]
    _overwrite(root)
    assert _hidden(root) == [] and assert_instances_as_written(root) == [0]


def test_a_failure_in_close_leaves_complete_instances(tmp_path: os.PathLike[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The last instance is queued (wait=False) and close() waits for it and rewrites the
    manifest: each step fails in turn (at most 6 calls per step). The dump then reads back as its
    complete instances, the error is DumpWriteError naming a path, and a second close() writes the
    manifest that lists them."""

    monkeypatch.setattr(dump_writer, "MANIFEST_INTERVAL_S", 1e9)  # the manifest only in close()

    def attempt(root: str, plan: FaultPlan) -> BaseException | None:
        writer = DumpWriter(root)
        writer.submit(varying_instance(0))
        error = None
        try:
            with inject(monkeypatch, plan):
                writer.submit(varying_instance(1), wait=False)
                writer.close()
        except DumpWriteError as exc:
            error = exc
            assert plan.fired and str(tmp_path) in str(exc), exc
            assert assert_instances_as_written(root) in ([0], [0, 1])
            writer.close()  # again: the manifest is rewritten
        listed = [e["index"] for e in json.loads(
            open(os.path.join(root, "manifest.json"), encoding="utf-8").read())["instances"]]
        assert listed == assert_instances_as_written(root)
        return error

    counting = FaultPlan(os.path.abspath(tmp_path / "count"))
    attempt(str(tmp_path / "count"), counting)
    assert counting.counts["os.replace"] == 4  # input, entry, instance folder, manifest
    raised = []
    for point in POINTS:
        count = counting.counts.get(point, 0)
        for n in sorted({1 + round(i * (count - 1) / 5) for i in range(6)}) if count else ():
            root = os.path.abspath(tmp_path / f"{point}-{n}")
            if attempt(root, FaultPlan(root, point, n)) is not None:
                raised.append((point, n))
    assert ("os.replace", 4) in raised  # close()'s manifest rewrite
    assert len(raised) >= 8
