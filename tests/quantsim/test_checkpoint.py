"""Checkpoints (fxquant/quantsim/checkpoint.py): bit-identical round trip, atomic writes, no
pickled code, and every error path naming the file."""
from __future__ import annotations

import errno
import os
import re

import pytest
import torch
from torch import nn

import fxquant.quantsim.checkpoint as checkpoint
from fxquant.errors import FileWriteError
from fxquant.quantsim.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fxquant.quantsim.quantsim import QuantizationSimModel

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()


@pytest.fixture()
def sim() -> QuantizationSimModel:
    s = QuantizationSimModel(_model(), X[:1], quant_scheme="tf_enhanced", default_param_bw=4)
    s.compute_encodings(lambda m: m(X))
    return s


def test_round_trip_is_bit_identical_with_flags(tmp_path, sim) -> None:
    off = next(ref.name for ref in sim.quantizers() if ref.kind == "output")
    sim.quantizer(off).enabled = False
    path = tmp_path / "deeper" / "sim.ckpt"  # missing folders are created
    save_checkpoint(sim, path)
    assert os.listdir(path.parent) == ["sim.ckpt"]
    loaded = load_checkpoint(path, _model(), X[:1])
    with torch.no_grad():
        expected = sim.model(X)
        assert torch.equal(loaded.model(X), expected)
    assert not loaded.quantizer(off).enabled
    assert [(r.name, r.kind, bool(r.quantizer.enabled)) for r in loaded.quantizers()] == \
        [(r.name, r.kind, bool(r.quantizer.enabled)) for r in sim.quantizers()]
    assert loaded.settings.default_param_bw == 4
    # the 4-bit weights really are on the grid: the sim is not the float model
    with torch.no_grad():
        assert not torch.allclose(_model()(X), expected, atol=1e-3)


def test_the_file_holds_no_code(tmp_path, sim) -> None:
    path = tmp_path / "sim.ckpt"
    save_checkpoint(sim, path)
    payload = torch.load(path, weights_only=True)  # refuses anything but tensors and plain data
    assert payload["format"] == "fxquant.quantsim.checkpoint" and payload["version"] == 1
    assert set(payload) == {"format", "version", "settings", "config", "fold_batch_norms",
                            "quantize_bias", "enabled", "state_dict"}


def test_save_replaces_atomically_and_a_failure_keeps_the_old_file(tmp_path, sim,
                                                                    monkeypatch) -> None:
    path = tmp_path / "sim.ckpt"
    save_checkpoint(sim, path)
    before = path.read_bytes()
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(FileWriteError, match=rf"cannot write {path}: No space left on device "
                                             r"\(the disk") as info:
        save_checkpoint(sim, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["sim.ckpt"]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    sim.quantizer(sim.quantizers()[-1].name).enabled = False
    save_checkpoint(sim, path)  # overwriting is the API's behaviour
    assert os.listdir(tmp_path) == ["sim.ckpt"]
    assert not load_checkpoint(path, _model(), X[:1]).quantizers()[-1].quantizer.enabled


def test_save_where_a_folder_stands(tmp_path, sim) -> None:
    (tmp_path / "sim.ckpt").mkdir()
    with pytest.raises(FileWriteError, match=rf"cannot write {tmp_path}/sim.ckpt: is a directory"):
        save_checkpoint(sim, tmp_path / "sim.ckpt")


def _payload(tmp_path, sim) -> dict:
    save_checkpoint(sim, tmp_path / "ok.ckpt")
    return torch.load(tmp_path / "ok.ckpt", weights_only=True)


@pytest.mark.parametrize("mutate, fragments", [
    (lambda p: p.pop("settings"), "settings: missing; expected object"),
    (lambda p: p["settings"].update(default_param_bw="8"),
     "settings.default_param_bw: expected integer, got string '8'"),
    (lambda p: p.update(fold_batch_norms="True"), "fold_batch_norms: expected boolean"),
    (lambda p: p.update(config=["default"]), "config: expected object, got array"),
    (lambda p: p["enabled"].update({"conv.weight": 1}),
     "enabled[\"conv.weight\"]: expected a boolean, got 1"),
    (lambda p: p.pop("state_dict"), "state_dict: missing"),
])
def test_malformed_fields_name_the_file_and_field(tmp_path, sim, mutate, fragments: str) -> None:
    payload = _payload(tmp_path, sim)
    mutate(payload)
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{tmp_path}/bad.ckpt': "
                                              rf"{re.escape(fragments)}"):
        load_checkpoint(tmp_path / "bad.ckpt", _model(), X[:1])


def test_load_errors(tmp_path, sim) -> None:
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint '{tmp_path}/missing.ckpt'"):
        load_checkpoint(tmp_path / "missing.ckpt", _model(), X[:1])
    torch.save(_model(), tmp_path / "pickled.pt")  # a pickled module: code, refused
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*pickled.pt"):
        load_checkpoint(tmp_path / "pickled.pt", _model(), X[:1])
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt' is not an fxquant QuantSim checkpoint "
                                              r"\(write one with fxquant.save_checkpoint"):
        load_checkpoint(tmp_path / "other.pt", _model(), X[:1])
    payload = _payload(tmp_path, sim)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match=r"checkpoint version 99 is not supported \(this "
                                              "fxquant reads version 1\\)"):
        load_checkpoint(tmp_path / "future.ckpt", _model(), X[:1])
    wider = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).eval()
    with pytest.raises(CheckpointError, match=r"(?s)ok.ckpt' does not fit this model: .*size "
                                              r"mismatch for 0.bias.*Load it into the float model "
                                              "architecture"):
        load_checkpoint(tmp_path / "ok.ckpt", wider, X[:1])
