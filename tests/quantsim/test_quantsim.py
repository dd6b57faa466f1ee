"""QuantizationSimModel end to end: construction, calibration, accuracy on real data, QAT,
checkpoints and the error paths."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxquant
from fxquant.quantsim.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fxquant.quantsim.quant_scheme import QuantScheme
from fxquant.quantsim.quantizer import CalibrationError
from fxquant.quantsim.quantsim import QuantizationSimModel
from tests.quantsim.digits import accuracy, digits, train, trained_net


def _calibrate(model: nn.Module) -> None:
    x, _, _, _ = digits()
    with torch.no_grad():
        for i in range(0, 512, 128):
            model(x[i:i + 128])


def test_sim_code_shows_quantizers_and_caller_model_is_untouched() -> None:
    model = torchvision.models.resnet18().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sim = QuantizationSimModel(model, torch.randn(1, 3, 64, 64))
    assert "output_quantizer" in sim.model.code and "input_quantizers.x" in sim.model.code
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sim.model.modules())
    names = [(q.name, q.kind) for q in sim.quantizers()]
    assert names[:3] == [("x", "input"), ("conv1.weight", "param"), ("relu", "output")]
    assert sim.quantizer("layer1.0.conv2").name == "layer1.0.conv2.output"
    with pytest.raises(KeyError, match=r"no quantizer named 'layer1.0.conv9'.*layer1.0.conv"):
        sim.quantizer("layer1.0.conv9")


@pytest.mark.parametrize("scheme", ["tf", "min_max", "tf_enhanced", "percentile", "mse",
                                    QuantScheme.post_training_tf_enhanced])
def test_w8a8_ptq_keeps_digits_accuracy_within_one_point(scheme) -> None:
    model = trained_net()
    fp32 = accuracy(model)
    sim = QuantizationSimModel(model, torch.randn(1, 1, 8, 8), quant_scheme=scheme)
    sim.compute_encodings(_calibrate)
    ptq = accuracy(sim.model)
    figures = f"digits {scheme}: FP32 {fp32:.2f}%  W8A8 {ptq:.2f}%"  # measured: 97.33 / >= 96.67
    assert fp32 > 95, figures
    assert fp32 - 1.0 <= ptq <= fp32 + 1.0, figures
    x = digits()[0][:128]
    with torch.no_grad():  # the figure is a quantized one: the sim's outputs differ from FP32's
        assert not torch.equal(sim.model(x), model(x))


def test_qat_recovers_w3a8_accuracy() -> None:
    # (4-bit per-tensor weights cost this well-trained net under a point: 97.3% -> 96.4%; 3 bits
    # cost 25 points, so recovering them means something)
    model = trained_net()
    fp32 = accuracy(model)
    sim = QuantizationSimModel(model, torch.randn(1, 1, 8, 8), default_param_bw=3,
                               config_file="per_tensor",
                               quant_scheme=QuantScheme.training_range_learning_with_tf_init)
    sim.compute_encodings(_calibrate)
    ptq = accuracy(sim.model)
    learned = [p for n, p in sim.model.named_parameters() if n.endswith(("scale", "zero_point"))]
    assert learned, "range learning makes scales trainable"
    scale_before = learned[0].detach().clone()
    train(sim.model, epochs=4, lr=1e-3, seed=1)
    qat = accuracy(sim.model)
    figures = f"digits W3A8: FP32 {fp32:.2f}%  PTQ {ptq:.2f}%  QAT {qat:.2f}%"  # 97.3 / 72.0 / 96.9
    assert ptq <= fp32 - 10.0, figures  # 3-bit weights really hurt, so recovery means something
    assert qat >= fp32 - 1.0, figures   # QAT recovers to within a point of FP32
    assert not torch.equal(scale_before, learned[0].detach())


def test_checkpoint_round_trip_is_bit_identical(tmp_path) -> None:
    model = trained_net()
    sim = QuantizationSimModel(model, torch.randn(1, 1, 8, 8), quant_scheme="tf_enhanced")
    sim.compute_encodings(_calibrate)
    sim.quantizer("fc").enabled = False
    path = tmp_path / "sim.ckpt"
    save_checkpoint(sim, path)
    assert [p.name for p in tmp_path.iterdir()] == ["sim.ckpt"]
    loaded = load_checkpoint(path, trained_net(), torch.randn(1, 1, 8, 8))
    x = digits()[2][:64]
    with torch.no_grad():
        assert torch.equal(loaded.model(x), sim.model(x))
    assert not loaded.quantizer("fc").enabled


def test_checkpoint_errors(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(CheckpointError, match=r"is not an fxquant QuantSim checkpoint"):
        load_checkpoint(bad, trained_net(), torch.randn(1, 1, 8, 8))
    sim = QuantizationSimModel(trained_net(), torch.randn(1, 1, 8, 8))
    sim.compute_encodings(_calibrate)
    save_checkpoint(sim, tmp_path / "ok.ckpt")
    with pytest.raises(CheckpointError, match=r"does not fit this model"):
        load_checkpoint(tmp_path / "ok.ckpt", torchvision.models.resnet18().eval(),
                        torch.randn(1, 3, 32, 32))


def test_int32_bias_simulation() -> None:
    model = trained_net()
    sim = QuantizationSimModel(model, torch.randn(1, 1, 8, 8), quantize_bias=True)
    sim.compute_encodings(_calibrate)
    biases = sim.bias_quantizers()
    assert set(biases) >= {"conv1.bias", "conv2.bias", "fc.bias"}
    fc = sim.model.fc
    scale = biases["fc.bias"].scale()
    # The simulated bias sits on the int32 grid of input × weight scale: it is round(b/s)·s in
    # float32, so dividing by s again gives the integer to within float32 rounding (1 ulp of q).
    q = fc.bias.detach().double() / scale.detach().double()
    ulp = torch.finfo(torch.float32).eps * q.abs().clamp_min(1)
    assert torch.all((q - q.round()).abs() <= ulp), (q - q.round()).abs().max()
    assert q.abs().max() > 100  # on a grid much finer than the bias values: a real check
    assert accuracy(sim.model) >= accuracy(model) - 1.0


def test_forward_before_compute_encodings_is_an_error() -> None:
    sim = QuantizationSimModel(trained_net(), torch.randn(1, 1, 8, 8))
    with pytest.raises(CalibrationError, match=r"'x.*no encoding yet: call sim.compute_encodings"):
        sim.model(torch.randn(1, 1, 8, 8))


def test_dummy_input_not_matching_the_model_shows_the_signature() -> None:
    with pytest.raises(ValueError, match=r"dummy_input does not match the model's forward.*"
                                         r"Expected DigitsNet.forward\(x: '?torch.Tensor'?\)"):
        QuantizationSimModel(trained_net(), (torch.randn(1, 1, 8, 8), torch.randn(1)))
    with pytest.raises(ValueError, match=r"cannot run on dummy_input.*DigitsNet.forward.*"
                                         r"got \(Tensor\(1, 3, 8, 8\)\)"):
        QuantizationSimModel(trained_net(), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("kwargs, match", [
    ({"default_param_bw": 1}, r"bit.?width.*1.*2.*32"),
    ({"default_output_bw": 3}, r"bit.?width.*3.*4.*32"),
    ({"quant_scheme": "kmeans"}, r"kmeans.*tf.*tf_enhanced.*percentile"),
    ({"config_file": {"defaults": {}}}, r"missing.*params"),
])
def test_bad_arguments_name_the_valid_values(kwargs, match) -> None:
    with pytest.raises(fxquant.ConfigError, match=match):
        QuantizationSimModel(trained_net(), torch.randn(1, 1, 8, 8), **kwargs)


def test_set_percentile_value() -> None:
    sim = QuantizationSimModel(trained_net(), torch.randn(1, 1, 8, 8), quant_scheme="percentile")
    sim.set_percentile_value(99.5)
    assert sim.quantizer("fc").encoding_analyzer.percentile == 99.5
    with pytest.raises(fxquant.ConfigError, match=r"percentile must be in \(50, 100\], got 40"):
        sim.set_percentile_value(40)


def test_sim_runs_on_cuda_when_available(device: torch.device) -> None:
    model = trained_net().to(device)
    sim = QuantizationSimModel(model, torch.randn(1, 1, 8, 8, device=device))
    x = digits()[0][:128].to(device)
    sim.compute_encodings(lambda m: m(x))
    y = sim.model(x)
    assert y.device == x.device
    encodings = [q.quantizer.encoding for q in sim.quantizers() if q.quantizer.encoding is not None]
    assert len(encodings) == len(list(sim.quantizers())) > 0, "calibration left quantizers empty"
    assert all(e.scale.device.type == device.type for e in encodings)


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1", "2.0.0"])
def test_save_and_load_encodings_round_trip(tmp_path, version: str) -> None:
    sim = QuantizationSimModel(trained_net(), torch.randn(1, 1, 8, 8), quant_scheme="tf_enhanced")
    sim.compute_encodings(_calibrate)
    path = tmp_path / "sim.encodings"
    sim.save_encodings(path, version=version)
    other = QuantizationSimModel(trained_net(), torch.randn(1, 1, 8, 8), quant_scheme="tf")
    loaded = other.load_encodings(path, freeze=True)
    assert set(loaded) == {r.name for r in sim.quantizers()}
    x = digits()[2][:64]
    with torch.no_grad():
        assert torch.equal(other.model(x), sim.model(x))
    other.compute_encodings(_calibrate)  # frozen: kept
    with torch.no_grad():
        assert torch.equal(other.model(x), sim.model(x))


def test_load_encodings_names_unknown_tensors(tmp_path) -> None:
    sim = QuantizationSimModel(trained_net(), torch.randn(1, 1, 8, 8))
    sim.compute_encodings(_calibrate)
    path = tmp_path / "e.json"
    sim.save_encodings(path)
    data = __import__("json").loads(path.read_text())
    data["activation_encodings"][0]["name"] = "conv7"
    with pytest.raises(fxquant.ConfigError, match=r"1 entry names no quantizer of this sim: \[.conv7.\]"):
        sim.load_encodings(data)
    assert "conv7" not in sim.load_encodings(data, strict=False)


def test_a_refused_encodings_file_installs_nothing(tmp_path) -> None:
    sim = QuantizationSimModel(trained_net(), torch.randn(1, 1, 8, 8))
    sim.compute_encodings(_calibrate)
    path = tmp_path / "e.json"
    sim.save_encodings(path)
    data = __import__("json").loads(path.read_text())
    before = {r.name: r.quantizer.encoding for r in sim.quantizers()}
    for entry in data["activation_encodings"]:
        entry["scale"] = [s * 2 for s in entry["scale"]]      # would change every activation
    data["activation_encodings"][-1]["name"] = "conv7"        # ... but one names no quantizer
    with pytest.raises(fxquant.ConfigError, match=r"names no quantizer of this sim"):
        sim.load_encodings(data)
    assert all(r.quantizer.encoding == before[r.name] for r in sim.quantizers())


# -- AIMET call shapes (issue 10 items 2 and 8) ---------------------------------------------------
class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


def test_compute_encodings_passes_args_whenever_given_even_none() -> None:
    sim = QuantizationSimModel(_TinyNet().eval(), torch.randn(1, 1, 8, 8))
    calls = []

    def two_args(model, args):           # AIMET's documented callback shape
        calls.append(("two", args))
        model(torch.randn(2, 1, 8, 8))

    def one_arg(model):
        calls.append(("one",))
        model(torch.randn(2, 1, 8, 8))

    sim.compute_encodings(two_args, None)
    sim.compute_encodings(two_args, forward_pass_callback_args=None)
    sim.compute_encodings(two_args, 7)
    sim.compute_encodings(one_arg)
    assert calls == [("two", None), ("two", None), ("two", 7), ("one",)]
    # AIMET's CallbackFunc holder runs func(model, args)
    holder = fxquant.CallbackFunc(two_args, func_callback_args=5)
    holder(sim.model)
    assert calls[-1] == ("two", 5) and (holder.func, holder.args) == (two_args, 5)
    with pytest.raises(fxquant.ConfigError, match="CallbackFunc: func must be callable"):
        fxquant.CallbackFunc(3)


def test_training_range_learning_is_range_learning_with_min_max_init() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    torch.manual_seed(1)
    model_state = _TinyNet().eval().state_dict()
    sims = {scheme: QuantizationSimModel(_fresh(model_state), torch.randn(1, 1, 8, 8),
                                         quant_scheme=scheme)
            for scheme in (QuantScheme.training_range_learning, "tf")}
    for sim in sims.values():
        sim.compute_encodings(lambda m: [m(b) for b in batches])
    learned, minmax = sims[QuantScheme.training_range_learning], sims["tf"]
    assert QuantScheme.parse("training_range_learning") is QuantScheme.training_range_learning
    assert isinstance(learned.quantizer("relu").scale, nn.Parameter)
    assert not isinstance(minmax.quantizer("relu").scale, nn.Parameter)
    for ref in minmax.quantizers():
        assert torch.equal(learned.quantizer(ref.name).encoding.scale, ref.quantizer.encoding.scale)


def _fresh(state: dict[str, torch.Tensor]) -> nn.Module:
    model = _TinyNet().eval()
    model.load_state_dict(state)
    return model


def test_deepcopy_gives_an_independent_sim_with_identical_outputs() -> None:
    import copy

    sim = QuantizationSimModel(_TinyNet().eval(), torch.randn(1, 1, 8, 8), quantize_bias=True)
    sim.compute_encodings(lambda m: m(torch.randn(8, 1, 8, 8)))
    twin = copy.deepcopy(sim)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(twin.model(x), sim.model(x))
    assert twin.model is not sim.model and twin.config is sim.config
    assert [r.name for r in twin.quantizers()] == [r.name for r in sim.quantizers()]
    for a, b in zip(twin.quantizers(), sim.quantizers()):
        assert a.quantizer is not b.quantizer
    # the copy's int32 bias follows the copy's quantizers, not the original's
    bias_twin = twin.bias_quantizers()["fc.bias"]
    assert all(any(src is r.quantizer for r in twin.quantizers()) for src in bias_twin._sources)
    # changing the copy leaves the original alone (quantizers and node metadata)
    with torch.no_grad():
        before = sim.model(x)
        twin.quantizer("relu").scale.mul_(4)
        twin.quantizer("fc").enabled = False
        assert torch.equal(sim.model(x), before) and not torch.equal(twin.model(x), before)
    node = next(n for n in twin.model.graph.nodes if n.op == "call_module")
    fxquant._meta.set(node, "probe", 1)
    assert all(fxquant._meta.get(n, "probe") is None for n in sim.model.graph.nodes)


def test_export_accepts_aimet_onnx_export_api_args(tmp_path) -> None:
    import onnx

    sim = QuantizationSimModel(_TinyNet().eval(), torch.randn(1, 1, 8, 8))
    sim.compute_encodings(lambda m: m(torch.randn(8, 1, 8, 8)))
    files = sim.export(str(tmp_path), "tiny", torch.randn(1, 1, 8, 8),
                       onnx_export_args=fxquant.OnnxExportApiArgs(opset_version=20))
    model = onnx.load(files["onnx"])
    assert [i.version for i in model.opset_import if i.domain in ("", "ai.onnx")] == [20]
    with pytest.raises(fxquant.ConfigError, match=r"OnnxExportApiArgs.input_names=\['in'\]: "
                                                  r"fxquant names the ONNX inputs"):
        sim.export(str(tmp_path / "b"), "tiny", torch.randn(1, 1, 8, 8),
                   onnx_export_args=fxquant.OnnxExportApiArgs(input_names=["in"]))


def test_rounding_mode_nearest_is_accepted_and_stochastic_refused() -> None:
    x = torch.randn(1, 1, 8, 8)
    sim = QuantizationSimModel(_TinyNet().eval(), x, rounding_mode="nearest")  # AIMET 1.x's call
    assert sim.quantizers()
    with pytest.raises(fxquant.ConfigError,
                       match=r"rounding_mode='stochastic' is not supported; valid values: 'nearest'"):
        QuantizationSimModel(_TinyNet().eval(), x, rounding_mode="stochastic")


def test_compute_encodings_logs_the_number_of_forward_passes(caplog):
    from tests.models import ConvBnNet

    sim = QuantizationSimModel(ConvBnNet().eval(), torch.randn(1, 3, 8, 8))
    with caplog.at_level("INFO", logger="fxquant.quantsim.calibration"):
        sim.compute_encodings(lambda m: [m(torch.randn(2, 3, 8, 8)) for _ in range(3)])
    assert "over 3 forward passes" in caplog.text
