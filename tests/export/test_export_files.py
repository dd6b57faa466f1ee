"""export_sim files: all-or-nothing, no temp files, overwrite, clear errors."""
from __future__ import annotations

import os

import onnx
import pytest
import torch

import fxquant.export.sim_export as sim_export
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
    with pytest.raises(Exception, match="compute_encodings"):
        s.export(str(tmp_path), "m", x)
    assert os.listdir(tmp_path) == []
