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
from fxquant.errors import CalibrationError, FileWriteError
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
    assert payload["format"] == "fxquant.quantsim.checkpoint" and payload["version"] == 2
    assert set(payload) == {"format", "version", "settings", "config", "fold_batch_norms",
                            "quantize_bias", "enabled", "calibrated", "encodings_computed",
                            "model", "state_dict"}
    assert [(i["shape"], i["dtype"]) for i in payload["model"]["inputs"]] == [([1, 3, 8, 8],
                                                                                "float32")]


def test_save_replaces_atomically_and_a_failure_keeps_the_old_file(tmp_path, sim,
                                                                    monkeypatch) -> None:
    path = tmp_path / "sim.ckpt"
    save_checkpoint(sim, path)
    before = path.read_bytes()
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # torch.save writes through the file object it is given
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
                                              "fxquant reads versions 1, 2\\)"):
        load_checkpoint(tmp_path / "future.ckpt", _model(), X[:1])
    wider = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).eval()
    with pytest.raises(CheckpointError, match=r"(?s)ok.ckpt': state_dict.* does not fit this model: .*size "
                                              r"mismatch for 0.bias.*Load it into the float model "
                                              "architecture"):
        load_checkpoint(tmp_path / "ok.ckpt", wider, X[:1])


# -------------------------------------------------------------------------------------------------
# Issue 11 item 7: loaded state is validated as strictly as computed state
# -------------------------------------------------------------------------------------------------
_W = "0.parametrizations.weight.0"   # conv weight quantizer (per channel, 4 channels)
_A = "2.output_quantizer"            # relu output quantizer (uint8, per tensor)


def _set(key: str, value):
    return lambda p: p["state_dict"].__setitem__(key, value)


@pytest.mark.parametrize("mutate,key,fragment", [
    (_set(f"{_W}.scale", torch.tensor([0.1, float("nan"), 0.1, 0.1])), f"{_W}.scale",
     "a scale must be a finite number"),
    (_set(f"{_W}.scale", torch.tensor([0.1, float("inf"), 0.1, 0.1])), f"{_W}.scale", "finite"),
    (_set(f"{_A}.scale", torch.tensor(float("-inf"))), f"{_A}.scale", "finite"),
    (_set(f"{_A}.scale", torch.tensor(0.0)), f"{_A}.scale", "a scale must be > 0"),
    (_set(f"{_A}.scale", torch.tensor(-0.5)), f"{_A}.scale", "a scale must be > 0"),
    (_set(f"{_A}.scale", torch.tensor(1e-30)), f"{_A}.scale", "at least 1.1920928955078125e-07"),
    (_set(f"{_A}.zero_point", torch.tensor(300.0)), f"{_A}.zero_point",
     "zero points lie on the grid [0, 255]"),
    (_set(f"{_A}.zero_point", torch.tensor(3.5)), f"{_A}.zero_point", "zero points are integers"),
    (_set(f"{_W}.zero_point", torch.tensor([0.0, 1.0, 0.0, 0.0])), f"{_W}.zero_point",
     "a symmetric encoding has zero point 0"),
    (_set(f"{_W}.scale", torch.full((3,), 0.1)), f"{_W}.scale",
     "expected 4 per-channel scales for this quantizer, got 3 scales"),
    (_set(f"{_A}.scale", torch.full((2,), 0.1)), f"{_A}.scale",
     "expected one scale (per tensor) for this quantizer, got 2 scales"),
    (_set(f"{_A}._extra_state", {"grid": [99, False, False, False], "frozen": False}),
     f"{_A}._extra_state", "bit width 99 is invalid for a activation quantizer"),
    (lambda p: p["state_dict"].pop(f"{_A}.zero_point"), f"{_A}.zero_point", "missing"),
])
def test_invalid_saved_encodings_are_refused_naming_file_and_key(tmp_path, sim, mutate, key,
                                                                 fragment) -> None:
    payload = _payload(tmp_path, sim)
    mutate(payload)
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint '{tmp_path}/bad.ckpt': state_dict[\"{key}\"]") + ".*" + re.escape(fragment)):
        load_checkpoint(tmp_path / "bad.ckpt", _model(), X[:1])


# -------------------------------------------------------------------------------------------------
# Issue 11 item 8: the calibration state travels with the checkpoint
# -------------------------------------------------------------------------------------------------
def test_an_uncalibrated_sim_loads_uncalibrated(tmp_path) -> None:
    raw = QuantizationSimModel(_model(), X[:1])
    save_checkpoint(raw, tmp_path / "raw.ckpt")
    payload = torch.load(tmp_path / "raw.ckpt", weights_only=True)
    assert payload["encodings_computed"] is False
    assert not any(payload["calibrated"][r.name] for r in raw.quantizers())
    loaded = load_checkpoint(tmp_path / "raw.ckpt", _model(), X[:1])
    assert loaded._encodings_computed is False
    assert all(r.quantizer.encoding is None for r in loaded.quantizers())
    with pytest.raises(CalibrationError, match="has no encoding yet: call sim.compute_encodings"):
        loaded.model(X)
    # the flags must agree with the state they describe
    payload["calibrated"]["2"] = True
    torch.save(payload, tmp_path / "lie.ckpt")
    with pytest.raises(CheckpointError, match=r"lie.ckpt': calibrated\[\"2\"\]|lie.ckpt': "
                                              r"calibrated.2: says calibrated, but the state dict "
                                              r"lacks '2.output_quantizer.scale'"):
        load_checkpoint(tmp_path / "lie.ckpt", _model(), X[:1])


def test_a_version_1_checkpoint_still_loads_with_its_state_inferred(tmp_path, sim) -> None:
    payload = _payload(tmp_path, sim)
    for key in ("calibrated", "encodings_computed", "model"):
        payload.pop(key)
    payload["version"] = 1
    torch.save(payload, tmp_path / "v1.ckpt")
    loaded = load_checkpoint(tmp_path / "v1.ckpt", _model(), X[:1])
    assert loaded._encodings_computed is True
    with torch.no_grad():
        assert torch.equal(loaded.model(X), sim.model(X))


# -------------------------------------------------------------------------------------------------
# Issue 11 item 10 and notes: missing keys and embedded config errors name the checkpoint
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["settings", "config", "fold_batch_norms", "quantize_bias",
                                 "enabled", "calibrated", "encodings_computed", "state_dict"])
def test_a_payload_lacking_a_key_is_a_checkpoint_error(tmp_path, sim, key: str) -> None:
    payload = _payload(tmp_path, sim)
    payload.pop(key)
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{tmp_path}/bad.ckpt': {key}: missing"):
        load_checkpoint(tmp_path / "bad.ckpt", _model(), X[:1])


def test_flags_for_quantizers_the_sim_lacks_are_errors(tmp_path, sim) -> None:
    payload = _payload(tmp_path, sim)
    payload["enabled"]["ghost"] = True
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"bad.ckpt': enabled.ghost: no quantizer of this sim "
                                              r"is named 'ghost'"):
        load_checkpoint(tmp_path / "bad.ckpt", _model(), X[:1])
    payload["enabled"].pop("ghost")
    payload["enabled"].pop("2")
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"bad.ckpt': enabled: no entry for quantizer\(s\) "
                                              r"\['2'\]"):
        load_checkpoint(tmp_path / "bad.ckpt", _model(), X[:1])


def test_embedded_config_errors_name_the_checkpoint(tmp_path, sim) -> None:
    payload = _payload(tmp_path, sim)
    payload["config"]["defaults"]["ops"]["is_output_quantized"] = 1
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint '{tmp_path}/bad.ckpt': config: defaults.ops.is_output_quantized: "
            "invalid value 1")):
        load_checkpoint(tmp_path / "bad.ckpt", _model(), X[:1])
    payload = _payload(tmp_path, sim)
    payload["settings"]["quant_scheme"] = "bogus"
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{tmp_path}/bad.ckpt': settings: .*"
                                              "bogus"):
        load_checkpoint(tmp_path / "bad.ckpt", _model(), X[:1])


# -------------------------------------------------------------------------------------------------
# Issue 10 item 3: AIMET's one-argument load_checkpoint, and the pickled opt-in
# -------------------------------------------------------------------------------------------------
def test_the_one_argument_call_says_exactly_what_to_pass(tmp_path, sim) -> None:
    save_checkpoint(sim, tmp_path / "sim.ckpt")
    with pytest.raises(CheckpointError, match=re.escape(
            f"so model and dummy_input must be passed: load_checkpoint('{tmp_path}/sim.ckpt', "
            "model=<a Sequential built as before, in eval mode>, "
            "dummy_input=torch.randn(1, 3, 8, 8)). Or save it with save_checkpoint(sim, path, "
            "include_model=True)")):
        load_checkpoint(tmp_path / "sim.ckpt")
    with pytest.raises(CheckpointError, match="so dummy_input must be passed"):
        load_checkpoint(tmp_path / "sim.ckpt", _model())
    with pytest.raises(CheckpointError, match="model and dummy_input must be passed"):
        load_checkpoint(tmp_path / "sim.ckpt", weights_only=False)   # no model in the file


def test_one_argument_load_of_a_trusted_file_with_weights_only_false(tmp_path, sim,
                                                                      caplog) -> None:
    sim.quantizer("2").enabled = False
    save_checkpoint(sim, tmp_path / "sim.ckpt", include_model=True)
    assert torch.load(tmp_path / "sim.ckpt", weights_only=True)["pickled_model"].dtype == \
        torch.uint8  # the default, safe load still reads the file: the model is only bytes
    with pytest.raises(CheckpointError, match=re.escape(
            "The file also embeds the pickled float model (save_checkpoint(..., "
            f"include_model=True)): if you trust the file, load_checkpoint('{tmp_path}/sim.ckpt', "
            "weights_only=False) rebuilds the sim from it.")):
        load_checkpoint(tmp_path / "sim.ckpt")
    with caplog.at_level("WARNING", logger="fxquant.quantsim.checkpoint"):
        loaded = load_checkpoint(tmp_path / "sim.ckpt", weights_only=False)
    assert "weights_only=False" in caplog.text and "trust" in caplog.text
    assert not loaded.quantizer("2").enabled
    with torch.no_grad():
        assert torch.equal(loaded.model(X), sim.model(X))
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match=r"module.pth' holds a torch.nn.modules.linear.Linear, "
                                              "not an fxquant QuantizationSimModel"):
        load_checkpoint(tmp_path / "module.pth", weights_only=False)
    with pytest.raises(CheckpointError, match=r"module.pth': it holds pickled Python objects "
                                              r"\(code\), .*load_checkpoint\(path, "
                                              r"weights_only=False\)"):
        load_checkpoint(tmp_path / "module.pth")


# -------------------------------------------------------------------------------------------------
# Issue 10 item 3: export -> load_encodings_to_sim round trip
# -------------------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _Net().eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    sim = QuantizationSimModel(_net(), X[:1], default_param_bw=4)
    sim.compute_encodings(lambda m: m(X))
    sim.quantizer("relu").enabled = False
    files = sim.export(out, "net", X[:1])
    return sim, files


@pytest.mark.parametrize("key", ["torch_encodings", "encodings"])
def test_export_then_load_encodings_to_sim_is_bit_identical(exported, key: str) -> None:
    from fxquant import load_encodings_to_sim as top_level
    from fxquant.quantsim import load_encodings_to_sim

    assert top_level is load_encodings_to_sim
    sim, files = exported
    assert files["torch_encodings"].endswith("net_torch.encodings")
    fresh = QuantizationSimModel(_net(), X[:1], default_param_bw=8)   # bit widths come from the file
    loaded = load_encodings_to_sim(fresh, files[key])
    assert sorted(loaded) == sorted(r.name for r in sim.quantizers() if r.quantizer.enabled)
    assert not fresh.quantizer("relu").enabled   # absent from the file: disabled, as exported
    with torch.no_grad():
        assert torch.equal(fresh.model(X), sim.model(X))
    assert fresh.quantizer("conv.weight").encoding == sim.quantizer("conv.weight").encoding


def test_torch_encodings_are_keyed_by_module_and_parameter_names(exported) -> None:
    import json

    sim, files = exported
    with open(files["torch_encodings"], encoding="utf-8") as f:
        data = json.load(f)
    assert data["version"] == "1.0.0"
    assert set(data["activation_encodings"]) == {"conv", "fc"}   # relu disabled; x feeds conv
    assert set(data["activation_encodings"]["conv"]) == {"input"}
    assert data["activation_encodings"]["fc"]["output"]["0"]["bitwidth"] == 8
    assert set(data["param_encodings"]) == {"conv.weight", "fc.weight"}
    assert len(data["param_encodings"]["conv.weight"]) == 4       # one entry per channel
    assert data["param_encodings"]["conv.weight"][0]["bitwidth"] == 4


def _torch_file(exported, tmp_path, mutate) -> str:
    import json

    with open(exported[1]["torch_encodings"], encoding="utf-8") as f:
        data = json.load(f)
    mutate(data)
    path = tmp_path / "bad_torch.encodings"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d["param_encodings"].__setitem__("conv.weight", d["param_encodings"]["conv.weight"][:3]),
     "param_encodings[\"conv.weight\"]: .*expected 4 per-channel scales for this quantizer, got 3"),
    (lambda d: d["param_encodings"]["fc.weight"][0].update(scale=1e39),
     "param_encodings[\"fc.weight\"][0].scale: invalid value [1e+39]; a scale must be finite in "
     "float32"),
    (lambda d: d["activation_encodings"]["fc"]["output"]["0"].update(scale=1e-45),
     "activation_encodings.fc.output[\"0\"].scale: invalid value [1e-45]; "
     "a scale must be at least"),
    (lambda d: d["activation_encodings"]["fc"]["output"]["0"].update(min=-100.0),
     "activation_encodings.fc.output[\"0\"].min: -100.0 contradicts the entry's scale and offset"),
    (lambda d: d["activation_encodings"].__setitem__("ghost", {"output": {"0": d["activation_encodings"]["fc"]["output"]["0"]}}),
     "activation_encodings.ghost.output[\"0\"]: 1 entry names no quantizer of this sim: "
     "['ghost']"),
    (lambda d: d["param_encodings"]["conv.weight"][0].update(bitwidth=64),
     "param_encodings[\"conv.weight\"][0].bitwidth: invalid value 64"),
])
def test_load_encodings_to_sim_refuses_what_does_not_fit(exported, tmp_path, mutate,
                                                         fragment: str) -> None:
    from fxquant.quantsim import EncodingsFileError, load_encodings_to_sim

    path = _torch_file(exported, tmp_path, mutate)
    fresh = QuantizationSimModel(_net(), X[:1])
    before = [r.quantizer.encoding for r in fresh.quantizers()]
    pattern = re.escape(f"encodings file {path}: ") + ".*".join(
        re.escape(part) for part in fragment.split(".*"))
    with pytest.raises(EncodingsFileError, match=pattern):
        load_encodings_to_sim(fresh, path)
    assert [r.quantizer.encoding for r in fresh.quantizers()] == before   # nothing installed


def test_load_encodings_to_sim_2_0_0_axis_and_kinds(exported, tmp_path) -> None:
    import json

    from fxquant.export.encodings_file import encodings_dict
    from fxquant.quantsim import EncodingsFileError, load_encodings_to_sim

    sim, _ = exported
    data = encodings_dict(sim.quantizers(), version="2.0.0")
    conv = next(e for e in data["encodings"] if e["name"] == "conv.weight")
    conv["axis"] = 3
    path = tmp_path / "axis.encodings"
    path.write_text(json.dumps(data))
    with pytest.raises(EncodingsFileError, match=re.escape(
            f"encodings file {path}: encodings[") + r"\d+" + re.escape(
            "].axis: the file quantizes 'conv.weight' along axis 3, but its quantizer "
            "quantizes along axis 0")):
        load_encodings_to_sim(QuantizationSimModel(_net(), X[:1]), path)
    (tmp_path / "latin1.encodings").write_bytes(b'{"version": "1.0.0", "x": "\xe9"}')
    with pytest.raises(EncodingsFileError, match=r"latin1.encodings: not UTF-8 text"):
        load_encodings_to_sim(QuantizationSimModel(_net(), X[:1]), tmp_path / "latin1.encodings")
    fp16 = QuantizationSimModel(_net(), X[:1], default_output_bw=16, default_param_bw=16,
                                default_data_type="float")
    with pytest.raises(EncodingsFileError, match=r"net_torch.encodings: activation_encodings\.conv\.input\[\"0\"\]: "
                                                 r"'x': an integer entry, but the "
                                                 "quantizer is a float16 quantizer"):
        load_encodings_to_sim(fp16, exported[1]["torch_encodings"])


def test_sim_load_encodings_checks_per_channel_counts_naming_the_file(exported, tmp_path) -> None:
    from fxquant.export.encodings_file import encodings_dict
    from fxquant.quantsim import EncodingsFileError

    import json

    data = encodings_dict(exported[0].quantizers())
    conv = next(e for e in data["param_encodings"] if e["name"] == "conv.weight")
    conv["scale"], conv["offset"] = conv["scale"][:3], conv["offset"][:3]
    path = tmp_path / "three.encodings"
    path.write_text(json.dumps(data))
    with pytest.raises(EncodingsFileError, match=re.escape(f"encodings file {path}: param_encodings[")
                       + r"\d\]\.scale: expected 4 per-channel scales for this quantizer, got 3"):
        QuantizationSimModel(_net(), X[:1]).load_encodings(path)


class _Residual(nn.Module):
    """conv1 → relu → conv2, added to relu's output, relu again (a reused module), fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv1(x))
        b = self.relu(self.conv2(a) + a)
        return self.fc(b.mean((2, 3)))


def test_a_torch_encodings_file_in_aimets_names_loads(tmp_path) -> None:
    """aimet-torch's ``_torch.encodings`` keys its own preparer's layer names (``module_relu_1``
    for our ``relu_1``), and lists a tensor that one layer's output quantizer and the next
    layer's input quantizer both quantize under both (one encoding). Both load into the one
    quantizer fxquant has for that tensor."""
    import json
    from pathlib import Path

    import fxquant
    from fxquant.core.layers import aimet_layer_names

    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    sim = QuantizationSimModel(_Residual().eval(), x, quant_scheme="tf")
    sim.compute_encodings(lambda m: m(x))
    files = sim.export(str(tmp_path), "net", x[:1])
    data = json.loads(Path(files["torch_encodings"]).read_text())
    ours_to_aimet = {ours: aimet for aimet, ours in aimet_layer_names(sim.model).items()}
    assert ours_to_aimet == {"relu_1": "module_relu_1"}
    renamed = {ours_to_aimet.get(layer, layer): ios
               for layer, ios in data["activation_encodings"].items()}
    assert "module_relu_1" in renamed and "relu_1" not in renamed
    relu_out = renamed["relu"]["output"]["0"]            # relu's output also feeds conv2
    renamed.setdefault("conv2", {})["input"] = {"0": relu_out}
    data["activation_encodings"] = renamed
    path = tmp_path / "aimet_named_torch.encodings"
    path.write_text(json.dumps(data))
    fresh = QuantizationSimModel(_Residual().eval(), x, quant_scheme="tf")
    fresh.model.load_state_dict(sim.model.state_dict())
    loaded = fxquant.load_encodings_to_sim(fresh, str(path))
    assert sorted(loaded) == sorted(r.name for r in sim.quantizers() if r.quantizer.enabled)
    with torch.no_grad():
        assert torch.equal(fresh.model(x), sim.model(x))
    # the same tensor given two different encodings is refused, naming the entry
    renamed["conv2"]["input"] = {"0": dict(relu_out, scale=relu_out["scale"] * 2,
                                           min=relu_out["min"] * 2, max=relu_out["max"] * 2)}
    path.write_text(json.dumps(data))
    with pytest.raises(fxquant.EncodingsFileError,
                       match=r'aimet_named_torch.encodings: activation_encodings.conv2.input'
                             r'\["0"\]: the quantizer \'relu\' is given two different encodings'):
        fxquant.load_encodings_to_sim(fresh, str(path))
