"""export_sim files: all-or-nothing, no temp files, overwrite, clear errors."""
from __future__ import annotations

import errno
import os
import re

import onnx
import pytest
import torch

import fxquant.export.sim_export as sim_export
from fxquant.errors import ConfigError, FileWriteError
from fxquant.export import ExportError
from fxquant.quantsim.quantsim import QuantizationSimModel
from tests.export.ort_parity import SmallNet

FILES = {"m.onnx", "m.encodings", "m_qdq.onnx", "m.pth"}


@pytest.fixture()
def sim() -> QuantizationSimModel:
    x = torch.randn(2, 3, 16, 16)
    s = QuantizationSimModel(SmallNet().eval(), x, quant_scheme="tf", quantize_bias=True)
    s.compute_encodings(lambda m: m(x))
    return s


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1", "2.0.0"])
def test_success_leaves_exactly_four_files(tmp_path, sim, version: str) -> None:
    out = tmp_path / "new" / "dir"
    files = sim.export(str(out), "m", torch.randn(1, 3, 16, 16), encoding_version=version)
    assert set(os.listdir(out)) == FILES
    assert set(files) == {"onnx", "encodings", "qdq_onnx", "pth"}
    state = torch.load(files["pth"], weights_only=True)
    assert "conv.weight" in state and not any("quantizer" in k for k in state)
    onnx.checker.check_model(onnx.load(files["qdq_onnx"]))
    # overwrite is allowed
    sim.export(str(out), "m", torch.randn(1, 3, 16, 16), encoding_version=version)
    assert set(os.listdir(out)) == FILES


def test_failure_leaves_nothing(tmp_path, sim, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sim_export.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        sim.export(str(tmp_path), "m", torch.randn(1, 3, 16, 16))
    assert os.listdir(tmp_path) == []


def test_failure_during_rename_leaves_nothing(tmp_path, sim, monkeypatch) -> None:
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(sim_export.os, "replace", flaky)
    with pytest.raises(OSError, match="rename failed"):
        sim.export(str(tmp_path), "m", torch.randn(1, 3, 16, 16))
    assert os.listdir(tmp_path) == []


def test_missing_keys_raise(tmp_path, sim, monkeypatch) -> None:
    monkeypatch.setattr(sim_export, "tensor_names", lambda model: {"x"})
    with pytest.raises(ExportError, match=r"not tensors of the exported ONNX model: \['relu'"):
        sim.export(str(tmp_path), "m", torch.randn(1, 3, 16, 16))
    assert os.listdir(tmp_path) == []


def test_bad_prefix_and_uncalibrated(tmp_path) -> None:
    x = torch.randn(1, 3, 16, 16)
    s = QuantizationSimModel(SmallNet().eval(), x, quant_scheme="tf")
    with pytest.raises(ValueError, match="filename_prefix"):
        s.export(str(tmp_path), "a/b", x)
    with pytest.raises(ConfigError, match=r"quantizer 'x' \(input\) is enabled but has no "
                                          r"encoding; run sim\.compute_encodings\(\.\.\.\) before "
                                          r"exporting, or disable it"):
        s.export(str(tmp_path), "m", x)
    assert os.listdir(tmp_path) == []


def _perturb(sim: QuantizationSimModel) -> None:
    """Changes the float biases so that every file of a new export differs from the old one."""
    with torch.no_grad():
        for name, p in sim.model.named_parameters():
            if "bias" in name.split("."):  # conv.parametrizations.bias.original
                p.add_(0.25)


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4, 8])
def test_failed_reexport_keeps_the_previous_export(tmp_path, sim, monkeypatch,
                                                   failing_call: int) -> None:
    """Data-loss regression: a re-export whose move into place fails keeps the old files."""
    out = tmp_path / "out"
    x = torch.randn(1, 3, 16, 16)
    sim.export(str(out), "m", x)
    (out / "notes.txt").write_text("not an export file")
    before = {name: (out / name).read_bytes() for name in FILES}
    _perturb(sim)
    real = os.replace
    calls: list[str] = []

    def flaky(src, dst):
        if str(out) in os.fspath(dst):
            calls.append(os.fspath(dst))
            if len(calls) == failing_call:
                raise OSError(errno.EIO, "injected I/O error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    # commit order: (old m.onnx aside, new m.onnx in), (m.encodings …), (m_qdq.onnx …), (m.pth …)
    culprit = ["m.onnx", "m.encodings", "m_qdq.onnx", "m.pth"][(failing_call - 1) // 2]
    with pytest.raises(FileWriteError, match=rf"cannot move into place .*{re.escape(culprit)}: "
                                             r"injected I/O error") as info:
        sim.export(str(out), "m", x, encoding_version="2.0.0")
    assert info.value.filename == str(out / culprit)
    # every previous version set aside before the failure was moved back
    assert len(calls) == failing_call + failing_call // 2
    assert set(os.listdir(out)) == FILES | {"notes.txt"}  # no staging folder, no temporary file
    assert {name: (out / name).read_bytes() for name in FILES} == before
    assert (out / "notes.txt").read_text() == "not an export file"
    monkeypatch.setattr(os, "replace", real)
    sim.export(str(out), "m", x, encoding_version="2.0.0")  # the same update, now succeeding
    after = {name: (out / name).read_bytes() for name in FILES}
    assert all(after[name] != before[name] for name in FILES)  # so the check above could fail
    assert set(os.listdir(out)) == FILES | {"notes.txt"}


def test_failed_export_into_a_new_folder_leaves_no_folder(tmp_path, sim, monkeypatch) -> None:
    real = os.replace

    def broken(src, dst):
        if os.fspath(dst).endswith("m.encodings"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(FileWriteError, match=r"m\.encodings: No space left on device \(the disk"):
        sim.export(str(tmp_path / "new" / "dir"), "m", torch.randn(1, 3, 16, 16))
    assert os.listdir(tmp_path) == []


def test_write_error_names_the_file(tmp_path, sim, monkeypatch) -> None:
    def broken(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sim_export.torch, "save", broken)
    with pytest.raises(FileWriteError, match=r"cannot write .*m\.pth: No space left") as info:
        sim.export(str(tmp_path), "m", torch.randn(1, 3, 16, 16))
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_export_where_a_file_blocks_the_folder(tmp_path, sim) -> None:
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(FileWriteError, match=r"out: exists and is not a directory"):
        sim.export(str(tmp_path / "out"), "m", torch.randn(1, 3, 16, 16))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "m.onnx").mkdir()  # a folder where the file goes
    with pytest.raises(FileWriteError, match=r"m\.onnx: is a directory"):
        sim.export(str(tmp_path / "dir"), "m", torch.randn(1, 3, 16, 16))
    assert os.listdir(tmp_path / "dir") == ["m.onnx"]
