"""export_sim files: all-or-nothing, no temp files, overwrite, clear errors."""
from __future__ import annotations

import copy
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

FILES = {"m.onnx", "m.encodings", "m_qdq.onnx", "m.pth", "m_torch.encodings"}
ORDER = ["m.onnx", "m.encodings", "m_qdq.onnx", "m.pth", "m_torch.encodings"]  # commit order


@pytest.fixture()
def sim() -> QuantizationSimModel:
    x = torch.randn(2, 3, 16, 16)
    s = QuantizationSimModel(SmallNet().eval(), x, quant_scheme="tf", quantize_bias=True)
    s.compute_encodings(lambda m: m(x))
    return s


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1", "2.0.0"])
def test_success_leaves_exactly_the_export_files(tmp_path, sim, version: str) -> None:
    out = tmp_path / "new" / "dir"
    files = sim.export(str(out), "m", torch.randn(1, 3, 16, 16), encoding_version=version)
    assert set(os.listdir(out)) == FILES
    assert {"onnx", "encodings", "qdq_onnx", "pth"} <= set(files)
    assert {os.path.basename(p) for p in files.values()} == FILES
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


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4, 5])
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
    # commit: per file, the old version hard-linked aside, the new one moved in (one os.replace)
    culprit = ORDER[failing_call - 1]
    with pytest.raises(FileWriteError, match=rf"cannot move into place .*{re.escape(culprit)}: "
                                             r"injected I/O error") as info:
        sim.export(str(out), "m", x, encoding_version="2.0.0")
    assert info.value.filename == str(out / culprit)
    # every file moved in before the failure was replaced by its previous version again
    assert len(calls) == 2 * failing_call - 1
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_sim_exports_in_float32(tmp_path, dtype, caplog) -> None:
    """Issue 11 item 12: a bfloat16 sim export raised numpy's TypeError (no bfloat16 in numpy)."""
    import numpy as np
    import onnxruntime as ort

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    torch.manual_seed(0)
    s = QuantizationSimModel(SmallNet().eval().to(dtype), x, quant_scheme="tf")
    s.compute_encodings(lambda m: m(x))
    with caplog.at_level("WARNING", logger="fxquant.export.sim_export"):
        files = s.export(str(tmp_path), "m", x[:1])
    assert any(f"is in {str(dtype).replace('torch.', '')}; it is exported in float32" in
               r.getMessage() for r in caplog.records)
    float_model, qdq = onnx.load(files["onnx"]), onnx.load(files["qdq_onnx"])
    assert {t.data_type for t in float_model.graph.initializer} == {onnx.TensorProto.FLOAT}
    assert float_model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    state = torch.load(files["pth"], weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {dtype}  # model's own
    # ONNX Runtime evaluates the QDQ model in float32 (graph optimizations off: no integer
    # kernels); the same sim run in float32 (its bf16/fp16 weights are exact in float32) must
    # agree bit for bit up to summation order, and the sim in its own dtype within 2 output steps
    # (measured: 0 steps in float32; 0.95 (bfloat16) and 0.03 (float16) in the model's dtype)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(qdq.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:1].float().numpy()})[0]
    with torch.no_grad():
        want = s.model(x[:1]).float().numpy()
        want32 = copy.deepcopy(s.model).float()(x[:1].float()).numpy()
    step = float(s.quantizer("fc").encoding.scale)  # the output quantizer's step
    assert got.shape == want.shape
    assert np.abs(got - want32).max() <= 1.0001 * step
    assert np.abs(got - want).max() <= 2 * step
    assert float(np.abs(want).max()) > 0
