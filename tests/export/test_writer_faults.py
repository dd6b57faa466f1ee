"""Fault injection for every writer of exports, encodings, checkpoints and reports.

Each step of each writer (tests/core/faults.py: every ``os.replace``, ``os.link``, ``os.mkdir``,
``os.open``, ``os.fsync``, file ``write`` …) fails in turn; the destination must then hold the
previous version byte for byte (and the writer raise fxquant's own error) or the new one — never a
mix, never a temporary file or a folder left over. A real full disk (a small tmpfs) is used when
the tests run as root.
"""
from __future__ import annotations

import dataclasses
import errno
import math
import os
import pathlib
import re
from typing import Any, Callable, ClassVar, Mapping

import pytest
import torch

import fxquant.export.sim_export as sim_export
from fxquant.core.report import ComparisonReport, LayerComparison, MetricInfo
from fxquant.errors import FileWriteError
from fxquant.export import export_onnx
from fxquant.layer_outputs import DumpComparisonReport, DumpLayerComparison
from fxquant.quantsim.checkpoint import load_checkpoint, save_checkpoint
from fxquant.quantsim.quantsim import QuantizationSimModel
from tests.core.faults import FaultPlan, check_all_or_nothing, inject, small_tmpfs, tree
from tests.export.ort_parity import SmallNet

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _sim(seed: int) -> QuantizationSimModel:
    torch.manual_seed(seed)
    sim = QuantizationSimModel(SmallNet().eval(), X, quant_scheme="tf", quantize_bias=True)
    sim.compute_encodings(lambda m: m(X))
    return sim


@pytest.fixture(scope="module")
def sims() -> tuple[QuantizationSimModel, QuantizationSimModel]:
    return _sim(0), _sim(1)


def _cached_onnx_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.onnx.export once per sim (it writes no file and takes seconds); the rest of the
    export — encodings, QDQ model, every file written — runs each time."""
    real = sim_export.export_onnx
    cache: dict[bytes, object] = {}

    def cached(gm, dummy_input, path=None, **kwargs):
        key = b"".join(t.detach().numpy().tobytes() for t in gm.state_dict().values())
        if key not in cache:
            cache[key] = real(gm, dummy_input, path, **kwargs)
        return cache[key]

    monkeypatch.setattr(sim_export, "export_onnx", cached)


def _failures_named_the_file(outcome, root: pathlib.Path) -> None:
    for err in outcome.errors:
        assert isinstance(err, FileWriteError), err
        assert str(root) in str(err) and "(" in str(err), err  # path and the hint


# -------------------------------------------------------------------------------------------------
# sim.export (export_sim, staged directory of four files)
# -------------------------------------------------------------------------------------------------
def test_reexport_fault_at_every_step_keeps_old_or_new(tmp_path, sims, monkeypatch) -> None:
    old_sim, new_sim = sims
    _cached_onnx_export(monkeypatch)
    out = tmp_path / "out"
    x = X[:1]

    def setup() -> None:
        old_sim.export(str(out), "m", x)
        (out / "notes.txt").write_text("not an export file")

    written = set(new_sim.export(str(tmp_path / "probe"), "m", x).values())
    names = {os.path.basename(p) for p in written}
    n = len(names)
    assert {"m.onnx", "m.encodings", "m_qdq.onnx", "m.pth"} <= names
    outcome = check_all_or_nothing(out, lambda: new_sim.export(str(out), "m", x), setup=setup,
                                   monkeypatch=monkeypatch)
    steps = list(range(1, n + 1))
    # each file is flushed, the previous one linked aside, the new one moved in
    assert outcome.counts["os.replace"] == n and outcome.counts["os.link"] == n
    assert outcome.raised["os.replace"] == steps
    assert outcome.counts["os.fsync"] == n + 1  # the files and the folder
    assert outcome.raised["os.fsync"] == steps
    assert outcome.survived["os.fsync"] == [n + 1]  # the folder flush after the moves only warns
    assert outcome.survived["os.link"] == steps  # falls back to moving the old file aside
    assert outcome.tried("file.write") >= n and not outcome.survived.get("file.write")
    assert outcome.leftovers == [("os.open", outcome.counts["os.open"])]  # the stage's removal
    _failures_named_the_file(outcome, out)
    assert set(os.listdir(out)) == names | {"notes.txt"}


def test_first_export_fault_at_every_step_leaves_no_folder(tmp_path, sims, monkeypatch) -> None:
    _cached_onnx_export(monkeypatch)
    out = tmp_path / "a" / "b"
    # tree(a) must stay None after each failure: every folder the export created is gone again
    outcome = check_all_or_nothing(tmp_path / "a", lambda: sims[1].export(str(out), "m", X[:1]),
                                   monkeypatch=monkeypatch, watch=tmp_path)
    assert outcome.raised["os.mkdir"] == [1, 2, 3, 4]  # a, b, the staging folder, its .previous


def test_export_onto_a_full_disk(sims) -> None:
    """A real full disk: FileWriteError naming the file and the fix; no folder left behind."""
    with small_tmpfs("32k") as disk:
        with pytest.raises(FileWriteError, match=rf"cannot write {disk}/new/m[\w.]+: No "
                                                 r"space left on device \(the disk \(or quota\) "
                                                 r"is full: free space or choose another "
                                                 "location") as info:
            sims[0].export(str(disk / "new"), "m", X[:1])
        assert info.value.errno == errno.ENOSPC
        assert os.listdir(disk) == []


def test_export_onto_a_disk_that_fills_keeps_the_previous_export(tmp_path, sims) -> None:
    with small_tmpfs("160k") as disk:
        out = disk / "out"
        sims[0].export(str(out), "m", X[:1])
        before = tree(out)
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave less room than a second copy of the export needs
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            f.write(b"\0" * max(0, free - 8192))
        with pytest.raises(FileWriteError, match=r"No space left on device \(the disk"):
            sims[1].export(str(out), "m", X[:1])
        assert tree(out) == before


# -------------------------------------------------------------------------------------------------
# export_onnx(path=...), sim.save_encodings, save_checkpoint: one atomic file each
# -------------------------------------------------------------------------------------------------
def test_export_onnx_file_fault_at_every_step(tmp_path, monkeypatch) -> None:
    out = tmp_path / "onnx"
    torch.manual_seed(0)
    old_model, new_model = SmallNet().eval(), SmallNet().eval()
    outcome = check_all_or_nothing(
        out, lambda: export_onnx(new_model, X[:1], out / "m.onnx"),
        setup=lambda: export_onnx(old_model, X[:1], out / "m.onnx"), monkeypatch=monkeypatch,
        points=("file.write", "os.fsync", "os.replace"))  # each run exports again (seconds)
    assert outcome.raised["os.replace"] == [1] and outcome.raised["file.write"] == [1]
    assert outcome.raised["os.fsync"] == [1] and outcome.survived["os.fsync"] == [2]
    _failures_named_the_file(outcome, out / "m.onnx")


def test_save_encodings_fault_at_every_step(tmp_path, sims, monkeypatch) -> None:
    out = tmp_path / "enc"
    path = out / "m.encodings"
    outcome = check_all_or_nothing(out, lambda: sims[1].save_encodings(path),
                                   setup=lambda: sims[0].save_encodings(path),
                                   monkeypatch=monkeypatch)
    assert outcome.raised["os.replace"] == [1]
    assert outcome.raised.get("file.write") and not outcome.survived.get("file.write")
    _failures_named_the_file(outcome, path)


def test_save_checkpoint_fault_at_every_step(tmp_path, sims, monkeypatch) -> None:
    out = tmp_path / "ckpt"
    path = out / "sim.ckpt"
    outcome = check_all_or_nothing(out, lambda: save_checkpoint(sims[1], path),
                                   setup=lambda: save_checkpoint(sims[0], path),
                                   monkeypatch=monkeypatch)
    assert outcome.raised["os.replace"] == [1] and outcome.raised["os.fsync"] == [1]
    assert outcome.raised["file.write"] and not outcome.survived.get("file.write")
    assert any(err.errno == errno.ENOSPC for err in outcome.errors)  # torch's RuntimeError mapped
    _failures_named_the_file(outcome, path)
    torch.manual_seed(1)
    loaded = load_checkpoint(path, SmallNet().eval(), X)  # the old one is still a good checkpoint
    assert torch.equal(loaded.model(X), sims[0].model(X))


def test_save_checkpoint_into_new_folders_leaves_none_on_failure(tmp_path, sims,
                                                                 monkeypatch) -> None:
    path = tmp_path / "a" / "b" / "sim.ckpt"
    outcome = check_all_or_nothing(tmp_path / "a", lambda: save_checkpoint(sims[1], path),
                                   monkeypatch=monkeypatch, watch=tmp_path)
    # tree(a) stays None after each failure: the folders made for the file are gone again
    assert outcome.raised["os.mkdir"] == [1, 2] and outcome.raised["os.replace"] == [1]


def test_checkpoint_onto_a_full_disk_names_the_file(sims) -> None:
    """torch's "[enforce fail at inline_container.cc]" becomes a FileWriteError naming the file."""
    with small_tmpfs("8k") as disk:
        with pytest.raises(FileWriteError, match=rf"cannot write {disk}/new/sim\.ckpt: No space "
                                                 r"left on device \(the disk \(or quota\) is "
                                                 "full: free space or choose another location"):
            save_checkpoint(sims[0], disk / "new" / "sim.ckpt")
        assert os.listdir(disk) == []


def test_checkpoint_disk_full_message_everywhere(tmp_path, sims, monkeypatch) -> None:
    """The same message without a tmpfs: every write fails with ENOSPC."""
    plan = FaultPlan(str(tmp_path), "file.write", 1)
    path = tmp_path / "new" / "sim.ckpt"
    with inject(monkeypatch, plan):
        with pytest.raises(FileWriteError, match=rf"cannot write {path}: injected: No space left "
                                                 r"on device \(the disk \(or quota\) is full: "
                                                 "free space or choose another location"):
            save_checkpoint(sims[0], path)
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------------------------------------
# report writers (core/report.py: to_json, plot; layer_outputs report: to_html)
# -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Row(LayerComparison):
    KINDS: ClassVar[tuple[str, ...]] = ("out",)
    out: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def values(self, kind: str) -> Mapping[str, float]:
        return self.out


def _report(sqnr: float) -> ComparisonReport:
    return ComparisonReport([_Row("conv", {"sqnr": sqnr}), _Row("fc", {"sqnr": math.inf})],
                            [MetricInfo("sqnr", True, "dB")])


@pytest.mark.parametrize("writer", ["to_json", "plot"])
def test_report_writers_fault_at_every_step(tmp_path, monkeypatch, writer: str) -> None:
    out = tmp_path / "reports"
    path = out / ("r.json" if writer == "to_json" else "r.png")
    outcome = check_all_or_nothing(
        out, lambda: getattr(_report(12.5), writer)(path, overwrite=True),
        setup=lambda: getattr(_report(30.0), writer)(path, overwrite=True),
        monkeypatch=monkeypatch)
    assert outcome.raised["os.replace"] == [1] and outcome.raised["file.write"] == [1]
    _failures_named_the_file(outcome, path)


def _dump_report(sqnr: float) -> DumpComparisonReport:
    return DumpComparisonReport(
        "a", "b", [DumpLayerComparison("x", sqnr_db=sqnr, max_abs_diff=0.5, mean_abs_diff=0.1,
                                       equal_fraction=0.5, status="below_threshold")],
        [], [], [0], 20.0, "x")


def test_dump_report_html_writer_fault_at_every_step(tmp_path, monkeypatch) -> None:
    report = _dump_report
    out = tmp_path / "html"
    path = out / "r.html"
    outcome = check_all_or_nothing(out, lambda: report(12.0).to_html(path, overwrite=True),
                                   setup=lambda: report(3.0).to_html(path, overwrite=True),
                                   monkeypatch=monkeypatch)
    assert outcome.raised["os.replace"] == [1] and outcome.raised["file.write"] == [1]
    _failures_named_the_file(outcome, path)


# -------------------------------------------------------------------------------------------------
# a real full disk (a small tmpfs, when root) for the one-file writers: encodings and reports
# -------------------------------------------------------------------------------------------------
def _fill(disk: pathlib.Path) -> None:
    """Fills the file system of ``disk``: a filler file grows until it refuses more."""
    with open(disk / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError) as info:
            while True:
                f.write(b"\0" * 4096)
    assert info.value.errno == errno.ENOSPC


#: file name, and writer(path, version) for the versions 0 (previous) and 1 (new)
_ONE_FILE_WRITERS: dict[str, tuple[str, Callable[[Any, pathlib.Path, int], Any]]] = {
    "save_encodings": ("m.encodings", lambda sims, path, v: sims[v].save_encodings(path)),
    "to_json": ("r.json", lambda sims, path, v: _report((30.0, 12.5)[v]).to_json(
        path, overwrite=True)),
    "plot": ("r.png", lambda sims, path, v: _report((30.0, 12.5)[v]).plot(path, overwrite=True)),
    "dump_report_html": ("r.html", lambda sims, path, v: _dump_report((3.0, 12.0)[v]).to_html(
        path, overwrite=True)),
}


@pytest.mark.parametrize("writer", list(_ONE_FILE_WRITERS))
def test_one_file_writers_onto_a_full_disk(sims, writer: str) -> None:
    """The disk fills after the previous version was written: the new one is refused with a
    FileWriteError naming the file and saying the disk is full; the previous version is byte for
    byte as it was, no temporary file is left, and a first write into a new folder leaves no
    folder."""
    name, write = _ONE_FILE_WRITERS[writer]
    with small_tmpfs("256k") as disk:
        path = disk / "out" / name
        write(sims, path, 0)
        before = tree(disk / "out")
        _fill(disk)
        full = (r": No space left on device \(the disk \(or quota\) is full: free space or "
                "choose another location")
        with pytest.raises(FileWriteError, match=rf"cannot write {re.escape(str(path))}{full}"
                           ) as info:
            write(sims, path, 1)
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
        assert tree(disk / "out") == before  # the previous file, and nothing else
        fresh = disk / "new" / "sub" / name
        with pytest.raises(FileWriteError, match=rf"cannot write {re.escape(str(fresh))}{full}"):
            write(sims, fresh, 1)
        assert sorted(os.listdir(disk)) == ["filler", "out"]
