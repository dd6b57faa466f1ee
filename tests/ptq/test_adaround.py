"""AdaRound (fxquant.ptq.adaround): accuracy on a trained MobileNet-style net, AIMET's encodings
file, the frozen-encodings round trip, the rounding itself, the argument checks. The file runs
single-threaded (once the model is trained, with tests.threads.MEASURED_THREADS, so that it is
the model the other PTQ tests measure): many small optimization steps, which two threads only
slow down."""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch
from torch import nn

from fxquant import ConfigError, QuantizationSimModel
from fxquant.core.encoding import FloatEncoding, QuantEncoding
from fxquant.core.kernels import quantize_dequantize
from fxquant.export.encodings_file import EncodingsFileError
from fxquant.ptq import adaround as adaround_module
from fxquant.ptq import adaround_optimizer
from fxquant.ptq._data import capture_layer_io
from fxquant.ptq.adaround import Adaround, AdaroundParameters
from fxquant.ptq.adaround_optimizer import (AdaroundHyperParameters, RoundingResult, _AdamState,
                                            _SoftWeight, layer_forward, optimize_rounding,
                                            rectified_sigmoid)
from tests.ptq.digits_dw import (DigitsDWNet, calibration_batches, sqnr, test_images,
                                 top1_agreement, trained_dw_net)

#: AdaRound on the digits net: 2000 Adam steps per layer (AIMET's default is 15000 below 8 bits)
#: on 4 batches of 64 calibration images; about 20-25 s of the file's run time on one core.
ITERATIONS = 2000
NUM_BATCHES = 4
DUMMY = torch.zeros(1, 1, 8, 8)

#: The conv/linear layers of DigitsDWNet (sim names), and those a ReLU6 follows.
LAYERS = ["features.0", "features.3", "features.6", "features.9", "features.12",
          "features.15.conv.0", "features.15.conv.3", "features.15.conv.6", "classifier"]
FOLLOWED_BY_RELU6 = set(LAYERS) - {"features.15.conv.6", "classifier"}

#: What aimet-torch 2.42 wrote for tiny() (below, torch.manual_seed(0)) with
#: Adaround.apply_adaround(..., default_param_bw=4) and its default config.
AIMET_TINY_ENCODINGS = """{
    "param_encodings": {
        "conv.weight": [
            {
                "bitwidth": 4,
                "dtype": "int",
                "is_symmetric": "True",
                "max": 0.2483767420053482,
                "min": -0.28385913372039795,
                "offset": -8,
                "scale": 0.035482391715049744
            },
            {
                "bitwidth": 4,
                "dtype": "int",
                "is_symmetric": "True",
                "max": 0.2704697549343109,
                "min": -0.30910828709602356,
                "offset": -8,
                "scale": 0.038638535887002945
            }
        ],
        "fc.weight": [
            {
                "bitwidth": 4,
                "dtype": "int",
                "is_symmetric": "True",
                "max": 0.16566382348537445,
                "min": -0.1893300861120224,
                "offset": -8,
                "scale": 0.0236662607640028
            },
            {
                "bitwidth": 4,
                "dtype": "int",
                "is_symmetric": "True",
                "max": 0.15964621305465698,
                "min": -0.18245281279087067,
                "offset": -8,
                "scale": 0.022806601598858833
            }
        ]
    }
}"""


def tiny() -> nn.Sequential:
    """Conv → ReLU → Linear on 4×4 inputs (the model AIMET's reference file was written for)."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3, padding=1), relu=nn.ReLU(),
                                     flat=nn.Flatten(), fc=nn.Linear(2 * 4 * 4, 2)))


def small() -> nn.Sequential:
    """Two convs and a linear head, no batch norm."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(8, 8, 3, padding=1),
        relu2=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(8, 4)))


class Reuse(nn.Module):
    """Calls one conv twice (the sim splits it into conv and conv_1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.relu(self.conv(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    trained_dw_net()  # trained (and cached) first, with tests.threads.MEASURED_THREADS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _calibrate(model: nn.Module) -> None:
    for batch in calibration_batches():
        model(batch)


@pytest.fixture(scope="module")
def adarounded(_one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    model = trained_dw_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("adaround")
    torch.manual_seed(0)
    params = AdaroundParameters(calibration_batches(NUM_BATCHES, 64), NUM_BATCHES,
                                default_num_iterations=ITERATIONS)
    ada = Adaround.apply_adaround(model, DUMMY, params, folder, "dw", default_param_bw=4)
    return SimpleNamespace(model=model, before=before, ada=ada, path=folder / "dw.encodings")


def _w4a8(model: nn.Module, encodings: Any = None) -> QuantizationSimModel:
    sim = QuantizationSimModel(model, DUMMY, default_param_bw=4, default_output_bw=8)
    if encodings is not None:
        sim.set_and_freeze_param_encodings(encodings)
    sim.compute_encodings(_calibrate)
    return sim


def _quick(model: nn.Module, folder: Any, prefix: str = "m", iterations: int = 20,
           data: list[torch.Tensor] | None = None, **kwargs: Any) -> nn.Module:
    batches = data if data is not None else [torch.randn(8, 3, 6, 6) for _ in range(2)]
    params = AdaroundParameters(batches, len(batches), default_num_iterations=iterations)
    return Adaround.apply_adaround(model, batches[0][:1], params, folder, prefix, **kwargs)


# -- Accuracy on the trained digits net ------------------------------------------------------------
@torch.no_grad()
def test_adaround_w4a8_beats_nearest_rounding_by_10_db(adarounded: SimpleNamespace) -> None:
    x = test_images()
    reference = adarounded.model(x)
    nearest = _w4a8(adarounded.model).model(x)
    ada = _w4a8(adarounded.ada, adarounded.path).model(x)
    near_db, ada_db = sqnr(reference, nearest), sqnr(reference, ada)
    near_agree, ada_agree = top1_agreement(reference, nearest), top1_agreement(reference, ada)
    # measured: nearest 8.0 dB / 0.969, AdaRound 18.9 dB / 0.996
    assert ada_db - near_db >= 10.0, f"nearest {near_db:.2f} dB, AdaRound {ada_db:.2f} dB"
    assert ada_agree >= max(near_agree, 0.99), f"nearest {near_agree}, AdaRound {ada_agree}"


@torch.no_grad()
def test_adaround_reduces_every_layers_reconstruction_error(adarounded: SimpleNamespace) -> None:
    """Measured apart from the optimizer: each layer's output (after its ReLU6) on the calibration
    data, inputs from the W4 sim with the earlier layers AdaRounded, against the float model."""
    fp = QuantizationSimModel(adarounded.model, DUMMY, default_param_bw=4)
    sim = QuantizationSimModel(adarounded.ada, DUMMY, default_param_bw=4)
    sim.set_and_freeze_param_encodings(adarounded.path)
    for ref in fp.quantizers():
        ref.quantizer.enabled = False                     # the float model, batch norms folded
    for ref in sim.quantizers():
        ref.quantizer.enabled = ref.kind == "param"       # weights only, as during AdaRound
    batches = calibration_batches(NUM_BATCHES, 64)
    errors = {}
    for name in LAYERS:
        _, targets = capture_layer_io(fp.model, name, batches, inputs=False)
        inputs, _ = capture_layer_io(sim.model, name, batches, outputs=False)
        x, y = torch.cat(inputs), torch.cat(targets)
        layer = sim.model.get_submodule(name)
        float_weight = fp.model.get_submodule(name).parametrizations.weight.original
        nearest = layer.parametrizations.weight[0](float_weight)   # the same grid, rounded
        act = nn.ReLU6() if name in FOLLOWED_BY_RELU6 else nn.Identity()

        def mse(weight: torch.Tensor) -> float:
            out = act(layer_forward(layer, x, weight, layer.bias))
            return float((out - act(y)).pow(2).mean())

        errors[name] = (mse(nearest), mse(layer.weight))
    worse = {n: e for n, e in errors.items() if not e[1] < e[0]}
    assert not worse, f"(nearest, AdaRound) MSE: {errors}"
    assert sum(e[1] / e[0] for e in errors.values()) / len(errors) < 0.85, errors  # 0.75


# -- The file and the frozen encodings -------------------------------------------------------------
def test_encodings_file_holds_every_weight_grid(adarounded: SimpleNamespace) -> None:
    text = adarounded.path.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=4)   # AIMET's json.dump layout
    assert list(data) == ["param_encodings"]
    params = data["param_encodings"]
    assert sorted(params) == sorted(f"{n}.weight" for n in LAYERS)
    for name, entries in params.items():
        layer = adarounded.ada.get_submodule(name.rsplit(".", 1)[0])
        assert len(entries) == layer.weight.shape[0], name          # per channel
        for entry in entries:
            assert set(entry) == {"bitwidth", "dtype", "is_symmetric", "max", "min", "offset",
                                  "scale"}
            assert (entry["bitwidth"], entry["dtype"], entry["is_symmetric"], entry["offset"]) \
                == (4, "int", "True", -8)
            scale = torch.tensor(entry["scale"], dtype=torch.float32)
            assert entry["min"] == float(-8 * scale) and entry["max"] == float(7 * scale)


def _skeleton(text: str) -> str:
    return re.sub(r"-?\d+\.\d+(e-?\d+)?", "<float>", text)


def test_file_layout_matches_aimets_own_output(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = tiny().eval()     # the same weights AIMET's file was computed from
    batches = [torch.randn(4, 1, 4, 4)]
    _quick(model, tmp_path, "tiny", iterations=10, data=batches, default_param_bw=4)
    ours = (tmp_path / "tiny.encodings").read_text()
    assert _skeleton(ours) == _skeleton(AIMET_TINY_ENCODINGS)
    theirs = json.loads(AIMET_TINY_ENCODINGS)["param_encodings"]
    for name, entries in json.loads(ours)["param_encodings"].items():
        for mine, aimet in zip(entries, theirs[name]):
            for key in ("scale", "min", "max"):  # the weights' tf_enhanced ranges, to 1 ulp
                assert mine[key] == pytest.approx(aimet[key], rel=1e-6), (name, key)
    # and AIMET's file loads as ours does
    (tmp_path / "aimet.encodings").write_text(AIMET_TINY_ENCODINGS)
    sim = QuantizationSimModel(tiny().eval(), batches[0][:1], default_param_bw=4)
    assert sorted(sim.set_and_freeze_param_encodings(tmp_path / "aimet.encodings")) == [
        "conv.weight", "fc.weight"]
    assert sim.quantizer("conv.weight").is_frozen
    assert float(sim.quantizer("fc.weight").encoding.scale[1]) == theirs["fc.weight"][1]["scale"]


def test_frozen_encodings_reproduce_the_adarounded_weights_bit_for_bit(
        adarounded: SimpleNamespace) -> None:
    assert isinstance(adarounded.ada, DigitsDWNet)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in adarounded.ada.modules())  # folded
    sim = QuantizationSimModel(adarounded.ada, DUMMY, default_param_bw=4)
    loaded = sim.set_and_freeze_param_encodings(adarounded.path)
    assert sorted(loaded) == sorted(f"{n}.weight" for n in LAYERS)
    file = json.loads(adarounded.path.read_text())["param_encodings"]

    def check() -> None:
        for name in LAYERS:
            layer = sim.model.get_submodule(name)
            quantizer = layer.parametrizations.weight[0]
            weight = layer.parametrizations.weight.original
            assert quantizer.is_frozen, name
            assert quantizer.encoding.scale.tolist() == [e["scale"] for e in file[f"{name}.weight"]]
            assert torch.equal(weight, adarounded.ada.get_submodule(name).weight.detach())
            assert torch.equal(quantizer(weight), weight), name      # quantizing is the identity

    check()
    sim.compute_encodings(_calibrate)     # computes the activations' encodings, keeps the weights'
    check()


@torch.no_grad()
def test_each_weight_is_rounded_down_or_up(adarounded: SimpleNamespace) -> None:
    fp = QuantizationSimModel(adarounded.model, DUMMY, default_param_bw=4)  # folded float weights
    file = json.loads(adarounded.path.read_text())["param_encodings"]
    changed = total = 0
    for name in LAYERS:
        w = fp.model.get_submodule(name).parametrizations.weight.original
        scale = torch.tensor([e["scale"] for e in file[f"{name}.weight"]])
        scale = scale.reshape(-1, *[1] * (w.dim() - 1))
        weight = adarounded.ada.get_submodule(name).weight
        steps = torch.round(weight / scale)
        assert torch.equal(steps * scale, weight), name                 # on the grid
        down = torch.floor(w / scale).clamp(-8, 7)
        up = torch.ceil(w / scale).clamp(-8, 7)
        assert bool(((steps == down) | (steps == up)).all()), name
        changed += int((steps != torch.round(w / scale).clamp(-8, 7)).sum())
        total += w.numel()
    assert 0.02 < changed / total < 0.5, f"{changed} of {total} weights rounded against nearest"


def test_the_input_model_is_unchanged(adarounded: SimpleNamespace) -> None:
    state = adarounded.model.state_dict()
    assert state.keys() == adarounded.before.keys()
    assert all(torch.equal(state[k], adarounded.before[k]) for k in state)
    assert isinstance(adarounded.model.features[1], nn.BatchNorm2d)
    assert adarounded.ada is not adarounded.model


def test_set_and_freeze_param_encodings_ignores_activation_entries(tmp_path: Any) -> None:
    model = small().eval()
    x = torch.randn(8, 3, 6, 6)
    full = QuantizationSimModel(model, x[:1])
    full.compute_encodings(lambda m: m(x))
    full.save_encodings(tmp_path / "full.encodings")   # activations and params
    sim = QuantizationSimModel(model, x[:1])
    loaded = sim.set_and_freeze_param_encodings(tmp_path / "full.encodings")
    assert sorted(loaded) == ["conv1.weight", "conv2.weight", "fc.weight"]
    for ref in sim.quantizers():
        if ref.kind == "param":
            assert ref.quantizer.is_frozen
            assert ref.quantizer.encoding == full.quantizer(ref.name).encoding
        else:
            assert ref.quantizer.encoding is None and not ref.quantizer.is_frozen, ref.name


# -- Options, determinism, other model shapes ------------------------------------------------------
def test_same_seed_same_result(tmp_path: Any) -> None:
    data = [torch.randn(8, 3, 6, 6) for _ in range(2)]
    model = small().eval()
    runs = []
    for run in ("a", "b"):
        torch.manual_seed(7)
        ada = _quick(model, tmp_path, run, iterations=40, data=data)
        runs.append((ada.state_dict(), (tmp_path / f"{run}.encodings").read_bytes()))
    (state_a, file_a), (state_b, file_b) = runs
    assert file_a == file_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_ignore_and_bit_width_override_lists(tmp_path: Any) -> None:
    model = small().eval()
    ada = _quick(model, tmp_path, ignore_quant_ops_list=[model.conv2],
                 param_bw_override_list=[(model.fc, 8)], default_param_bw=4)
    params = json.loads((tmp_path / "m.encodings").read_text())["param_encodings"]
    assert sorted(params) == ["conv1.weight", "fc.weight"]     # conv2 left out
    assert {(e["bitwidth"], e["offset"]) for e in params["fc.weight"]} == {(8, -128)}
    assert {(e["bitwidth"], e["offset"]) for e in params["conv1.weight"]} == {(4, -8)}
    assert torch.equal(ada.conv2.weight, model.conv2.weight)   # not rounded at all
    assert not torch.equal(ada.conv1.weight, model.conv1.weight)
    sim = QuantizationSimModel(ada, torch.zeros(1, 3, 6, 6), default_param_bw=4)
    sim.set_and_freeze_param_encodings(tmp_path / "m.encodings")
    sim.compute_encodings(lambda m: m(torch.randn(8, 3, 6, 6)))
    assert not sim.quantizer("conv2.weight").is_frozen          # nearest rounding, as computed
    assert sim.quantizer("conv2.weight").bitwidth == 4 and sim.quantizer("fc.weight").bitwidth == 8


def test_a_data_loader_a_forward_fn_and_a_missing_folder(tmp_path: Any) -> None:
    model = small().eval()
    dataset = torch.utils.data.TensorDataset(torch.randn(16, 3, 6, 6), torch.zeros(16))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)     # (images, labels) batches
    params = AdaroundParameters(loader, 2, default_num_iterations=2)
    Adaround.apply_adaround(model, torch.zeros(1, 3, 6, 6), params, tmp_path / "new" / "dir", "m")
    assert list(json.loads((tmp_path / "new" / "dir" / "m.encodings").read_text())) == [
        "param_encodings"]
    seen = []

    def forward(net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(batch["image"].shape[0])
        return net(batch["image"])

    params = AdaroundParameters([{"image": torch.randn(5, 3, 6, 6)}], 1,
                                default_num_iterations=2, forward_fn=forward)
    Adaround.apply_adaround(model, torch.zeros(1, 3, 6, 6), params, tmp_path, "f")
    assert seen and set(seen) == {5} and (tmp_path / "f.encodings").exists()


def test_a_reused_layer_gives_back_the_sims_graph_module(tmp_path: Any) -> None:
    model = Reuse().eval()
    ada = _quick(model, tmp_path)
    assert isinstance(ada, torch.fx.GraphModule) and not isinstance(ada, Reuse)
    params = json.loads((tmp_path / "m.encodings").read_text())["param_encodings"]
    assert sorted(params) == ["conv.weight", "conv_1.weight", "fc.weight"]
    sim = QuantizationSimModel(ada, torch.zeros(1, 3, 6, 6), default_param_bw=4)
    assert sorted(sim.set_and_freeze_param_encodings(tmp_path / "m.encodings")) == sorted(params)
    for name in ("conv", "conv_1", "fc"):
        layer = sim.model.get_submodule(name)
        weight = layer.parametrizations.weight.original
        assert torch.equal(layer.parametrizations.weight[0](weight), weight), name


@pytest.mark.parametrize(("bits", "override", "expected"), [
    (4, None, 15000), (8, None, 10000), (8, 4, 15000)])
def test_default_iterations_are_aimets(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, bits: int,
                                       override: int | None, expected: int) -> None:
    seen = []

    def record(layer: nn.Module, weight: torch.Tensor, encoding: QuantEncoding, *args: Any,
               **kwargs: Any) -> RoundingResult:
        seen.append(args[-1].num_iterations)
        return RoundingResult(weight=weight.detach().clone(), rounded_up=weight > 0,
                              nearest_mse=0.0, adaround_mse=0.0, changed_fraction=0.0,
                              num_iterations=0)

    monkeypatch.setattr(adaround_module, "optimize_rounding", record)
    model = small().eval()
    data = [torch.randn(4, 3, 6, 6)]
    params = AdaroundParameters(data, 1)
    assert params.num_iterations is None and params.beta_range == (20.0, 2.0)
    overrides = [(model.fc, override)] if override else None
    Adaround.apply_adaround(model, data[0][:1], params, tmp_path, "m", default_param_bw=bits,
                            param_bw_override_list=overrides)
    assert seen == [expected] * 3


# -- The per-layer optimizer -----------------------------------------------------------------------
def _linear_case(on_grid: int = 0) -> tuple[nn.Linear, QuantEncoding, torch.Tensor, torch.Tensor]:
    fc = nn.Linear(16, 8)
    with torch.no_grad():
        absmax = fc.weight.abs().amax(1)
        encoding = QuantEncoding.from_min_max(-absmax, absmax, 4, True, axis=0)
        if on_grid:   # some weights exactly on the grid: floor == ceil, they must not move
            steps = torch.tensor([-3.0, 0.0, 2.0][:on_grid])
            fc.weight[:, :on_grid] = encoding.scale[:, None] * steps
    # correlated inputs (for white ones, round-to-nearest is already optimal)
    x = torch.randn(256, 4) @ torch.randn(4, 16) + 0.1 * torch.randn(256, 16)
    with torch.no_grad():
        y = fc(x)
    return fc, encoding, x, y


def test_optimize_rounding_improves_a_linear_layer() -> None:
    fc, encoding, x, y = _linear_case(on_grid=3)
    result = optimize_rounding(fc, fc.weight, encoding, x, y,
                               AdaroundHyperParameters(num_iterations=300), bias=fc.bias)
    assert result.adaround_mse < result.nearest_mse
    assert 0 < result.changed_fraction < 0.5
    scale = encoding.scale[:, None]
    assert torch.equal(quantize_dequantize(result.weight, encoding.scale, encoding.zero_point,
                                           encoding.qmin, encoding.qmax, axis=0), result.weight)
    steps = torch.round(result.weight / scale)
    assert torch.equal(steps * scale, result.weight)
    assert torch.equal(steps, (torch.floor(fc.weight / scale) + result.rounded_up).clamp(-8, 7))
    assert torch.equal(result.weight[:, :3], fc.weight[:, :3].detach())   # on the grid: kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [None, 20.0, 2.5])
@pytest.mark.parametrize("masked", [False, True])
def test_soft_weight_node_matches_autograd(dtype: torch.dtype, beta: float | None,
                                           masked: bool) -> None:
    """The fused soft-rounding node gives the values of the op-by-op composition bit for bit, and
    its gradient (rtol 1e-5), also where the clamps saturate (V = ±10; weights at the grid ends)."""
    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn(6, 40, generator=gen) * 3
    v0[:, :4] = torch.tensor([10.0, -10.0, 0.0, 2.3])
    base = torch.randint(-9, 8, (6, 40), generator=gen).to(dtype)   # some below qmin / at qmax
    zero_point = torch.zeros((), dtype=dtype)
    scale = (torch.rand(6, 1, generator=gen) + 0.5).to(dtype)
    mask = (torch.rand(6, 40, generator=gen) > 0.2).to(dtype) if masked else None
    upstream = torch.randn(6, 40, generator=gen)

    def composed(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = rectified_sigmoid(v).to(dtype)
        if mask is not None:
            h = h * mask
        weight = ((torch.clamp(base + h, -8, 7) - zero_point) * scale).to(torch.float32)
        reg = (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum() if beta is not None else None
        return weight, reg

    v_ref, v_new = v0.clone().requires_grad_(), v0.clone().requires_grad_()
    w_ref, reg_ref = composed(v_ref)
    w_new, reg_new = _SoftWeight.apply(v_new, base, zero_point, scale, mask, -8, 7, beta,
                                       torch.float32)
    assert torch.equal(w_new, w_ref)
    loss_ref = (w_ref * upstream).sum()
    loss_new = (w_new * upstream).sum()
    if beta is not None:
        assert torch.equal(reg_new, reg_ref)
        loss_ref = loss_ref + 0.01 * reg_ref
        loss_new = loss_new + 0.01 * reg_new
    loss_ref.backward()
    loss_new.backward()
    torch.testing.assert_close(v_new.grad, v_ref.grad, rtol=1e-5, atol=1e-7)
    assert v_new.grad.abs().sum() > 0


@pytest.mark.parametrize("fused", [True, False])
def test_adam_state_steps_as_torch_optim_adam(fused: bool) -> None:
    """The loop's functional Adam moves the parameter exactly as ``torch.optim.Adam`` (same
    kernel: fused on CPU/CUDA, the single-tensor one elsewhere) over 30 steps."""
    gen = torch.Generator().manual_seed(0)
    ours = nn.Parameter(torch.randn(8, 5, generator=gen))
    ref = nn.Parameter(ours.detach().clone())
    start = ours.detach().clone()
    state = _AdamState(ours, fused=fused)
    optimizer = torch.optim.Adam([ref], lr=0.01, fused=fused, foreach=False)
    for _ in range(30):
        grad = torch.randn(8, 5, generator=gen)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        state.step(0.01)
        optimizer.step()
    assert torch.equal(ours, ref)
    assert bool((ours != start).all())     # every entry moved


@pytest.mark.parametrize("layer", [
    nn.Conv2d(6, 5, 1), nn.Conv2d(6, 5, 1, stride=2, bias=False),
    nn.Conv2d(6, 5, 1, padding="same"), nn.Conv1d(6, 5, 1, stride=3, padding="valid"),
    nn.Conv3d(6, 5, (1, 1, 1), stride=(1, 2, 2))],
    ids=["conv2d", "stride2", "same", "conv1d", "conv3d"])
@pytest.mark.parametrize("activation", [None, nn.ReLU6(), nn.PReLU(5, init=0.1)],
                         ids=["none", "relu6", "per-channel-prelu"])
def test_pointwise_convolution_steps_as_a_matrix_product(layer: nn.Module,
                                                         activation: nn.Module | None) -> None:
    """A 1x1 convolution's loop runs it as F.linear on channels-last copies: loss and gradient
    equal the convolution's (float32 summation order aside), with the activation seeing channels
    on dim 1 (a per-channel PReLU) and the stride subsampling the positions."""
    gen = torch.Generator().manual_seed(0)
    spatial = {nn.Conv1d: (9,), nn.Conv2d: (7, 9), nn.Conv3d: (3, 7, 9)}[type(layer)]
    inputs = torch.randn(12, 6, *spatial, generator=gen)
    with torch.no_grad():
        goal = layer(inputs) + 0.1 * torch.randn(layer(inputs).shape, generator=gen)
    data = adaround_optimizer._StepData(layer, inputs, goal, layer.bias, activation)
    assert data.pointwise
    index = torch.tensor([3, 0, 7, 11])
    weight_ours = layer.weight.detach().clone().requires_grad_()
    weight_ref = layer.weight.detach().clone().requires_grad_()
    ours = data.loss(index, weight_ours)
    out = layer_forward(layer, inputs[index], weight_ref, layer.bias)
    ref = adaround_optimizer.reconstruction_loss(
        out if activation is None else activation(out), goal[index])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(weight_ours.grad, weight_ref.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", [nn.Conv2d(6, 6, 3), nn.Conv2d(6, 6, 1, groups=2),
                                   nn.Conv2d(6, 6, 1, padding=1), nn.Linear(6, 5),
                                   nn.ConvTranspose2d(6, 5, 1)])
def test_other_layers_step_through_their_own_forward(layer: nn.Module) -> None:
    assert not adaround_optimizer._is_pointwise(layer)


def _host_reads(iterations: int) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        reads = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            if func is torch.ops.aten._local_scalar_dense.default:
                Count.reads += 1
            return func(*args, **(kwargs or {}))

    fc, encoding, x, y = _linear_case()
    with Count():
        optimize_rounding(fc, fc.weight, encoding, x, y,
                          AdaroundHyperParameters(num_iterations=iterations), bias=fc.bias,
                          activation=nn.ReLU())
    return Count.reads


def test_no_host_read_per_iteration() -> None:
    """``.item()`` / ``float(t)`` (what syncs a GPU) happen only after the loop, not per step."""
    assert _host_reads(5) == _host_reads(50)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_cuda_synchronization_inside_the_loop() -> None:
    import warnings

    def syncs(iterations: int) -> int:
        fc, encoding, x, y = _linear_case()
        fc, x, y = fc.cuda(), x.cuda(), y.cuda()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                optimize_rounding(fc, fc.weight, encoding.to("cuda"), x, y,
                                  AdaroundHyperParameters(num_iterations=iterations),
                                  bias=fc.bias)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(5) == syncs(50)


# -- Errors ----------------------------------------------------------------------------------------
_DATA = [torch.randn(2, 3, 6, 6)]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"data_loader": 3}, r"data_loader must be iterable .* got int"),
    ({"num_batches": 0}, r"num_batches must be a positive int, got 0"),
    ({"num_batches": True}, r"num_batches must be a positive int, got True"),
    ({"num_batches": 2}, r"num_batches=2 is larger than the data loader, which has 1 batch"),
    ({"default_num_iterations": 0}, r"default_num_iterations must be a positive int or None"),
    ({"default_reg_param": -1.0}, r"default_reg_param must be a number >= 0, got -1.0"),
    ({"default_beta_range": (20,)}, r"default_beta_range must be a \(start, end\) pair"),
    ({"default_beta_range": (20, 0)}, r"default_beta_range must be a \(start, end\) pair"),
    ({"default_warm_start": 1.0}, r"default_warm_start must be a number in \[0, 1\), got 1.0"),
    ({"forward_fn": "model"}, r"forward_fn must be a callable forward_fn\(model, batch\)"),
])
def test_adaround_parameters_are_validated(kwargs: dict[str, Any], match: str) -> None:
    args = {"data_loader": _DATA, "num_batches": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        AdaroundParameters(**args)


def test_adaround_parameters_are_frozen() -> None:
    params = AdaroundParameters(_DATA, 1, default_beta_range=[10, 1])
    assert params.beta_range == (10.0, 1.0) and params.reg_param == 0.01
    with pytest.raises(AttributeError):
        params.num_batches = 2  # type: ignore[misc]


def _not_a_dir(folder: Any) -> Any:
    (folder / "not_a_dir").write_text("")
    return folder / "not_a_dir"


@pytest.mark.parametrize(("change", "match"), [
    (lambda m, t: {"params": {"data_loader": _DATA}},
     r"params must be an AdaroundParameters, got dict"),
    (lambda m, t: {"path": 3}, r"path must be a folder path \(str or os.PathLike\), got int"),
    (lambda m, t: {"path": _not_a_dir(t)}, r"path '.*not_a_dir' is a file, not a directory"),
    (lambda m, t: {"filename_prefix": "a/b"},
     r"filename_prefix must be a non-empty file name without a folder .*got 'a/b'"),
    (lambda m, t: {"filename_prefix": ""}, r"filename_prefix must be a non-empty file name .*''"),
    (lambda m, t: {"model": m.train()}, r"the model is in training mode; .* call model.eval"),
    (lambda m, t: {"params": AdaroundParameters(iter(_DATA), 2)},   # no len(): seen when read
     r"num_batches=2 is larger than the data loader, which yielded 1 batch"),
    (lambda m, t: {"param_bw_override_list": [(nn.Conv2d(3, 8, 3), 8)]},
     r"param_bw_override_list\[0\]\[0\] \(Conv2d\) is not a submodule of the model"),
    (lambda m, t: {"param_bw_override_list": [(m.conv1, 1)]},
     r"param_bw_override_list\[0\]: bit width 1 for 'conv1' is invalid; weights take 2-32 bits"),
    (lambda m, t: {"param_bw_override_list": [m.conv1]},
     r"param_bw_override_list\[0\] must be a \(module, bit width\) pair"),
    (lambda m, t: {"param_bw_override_list": [(m.relu1, 8)]},
     r"param_bw_override_list\[0\]: 'relu1' \(ReLU\) has no integer weight quantizer in the sim"),
    (lambda m, t: {"ignore_quant_ops_list": ["conv1"]},
     r"ignore_quant_ops_list\[0\] must be a module of the model, got str"),
    (lambda m, t: {"default_param_bw": 1}, r"bitwidth 1 is not valid for a param quantizer"),
])
def test_apply_adaround_errors_name_the_culprit(tmp_path: Any, change: Any, match: str) -> None:
    model = small().eval()
    args = {"model": model, "dummy_input": _DATA[0][:1], "path": tmp_path, "filename_prefix": "m",
            "params": AdaroundParameters(_DATA, 1, default_num_iterations=1),
            **change(model, tmp_path)}
    with pytest.raises(ConfigError, match=match):
        Adaround.apply_adaround(**args)
    assert not (tmp_path / "m.encodings").exists()


def test_batches_of_different_shapes_are_refused(tmp_path: Any) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    data = [torch.randn(2, 3, 6, 6), torch.randn(2, 3, 8, 8)]
    with pytest.raises(ConfigError, match=r"layer '0': its inputs differ in shape across batches"):
        _quick(model, tmp_path, data=data)


def test_optimizer_errors_name_the_layer() -> None:
    fc, encoding, x, y = _linear_case()
    hyper = AdaroundHyperParameters(num_iterations=1)
    with pytest.raises(ConfigError, match=r"layer 'emb': AdaRound optimizes the weights of .* "
                                          r"not of a Embedding"):
        optimize_rounding(nn.Embedding(4, 4), fc.weight, encoding, x, y, hyper, name="emb")
    with pytest.raises(ConfigError, match=r"layer 'fc': 256 cached inputs but 10 cached outputs"):
        optimize_rounding(fc, fc.weight, encoding, x, y[:10], hyper, name="fc")
    with pytest.raises(ConfigError, match=r"layer 'fc': the encoding has 8 channels along axis 0, "
                                          r"the weight has shape \(4, 16\)"):
        optimize_rounding(fc, fc.weight[:4], encoding, x, y, hyper, name="fc")
    with pytest.raises(ConfigError, match=r"layer 'fc': AdaRound needs an integer encoding of "
                                          r"the weight, got FloatEncoding"):
        optimize_rounding(fc, fc.weight, FloatEncoding(), x, y, hyper, name="fc")
    conv = nn.Conv2d(2, 2, 3)
    images = torch.randn(4, 2, 6, 6)
    with pytest.raises(ConfigError, match=r"layer 'conv': recomputing the layer gives outputs of "
                                          r"shape \(2, 4, 4\) per row, the model gave \(2, 6, 6\)"):
        optimize_rounding(conv, conv.weight, QuantEncoding.from_min_max(
            -torch.ones(2), torch.ones(2), 4, True, axis=0), images, images, hyper, name="conv")
    with pytest.raises(ConfigError, match=r"AdaRound optimizes the weights of .* not of a ReLU"):
        layer_forward(nn.ReLU(), x, fc.weight, None)
    with pytest.raises(ConfigError, match=r"AdaroundHyperParameters.batch_size must be a positive "
                                          r"int, got 0"):
        AdaroundHyperParameters(num_iterations=1, batch_size=0)
    with pytest.raises(ConfigError, match=r"AdaroundHyperParameters.learning_rate must be a "
                                          r"number > 0, got 0"):
        AdaroundHyperParameters(num_iterations=1, learning_rate=0)


def test_set_and_freeze_param_encodings_errors(tmp_path: Any) -> None:
    sim = QuantizationSimModel(small().eval(), torch.zeros(1, 3, 6, 6))
    with pytest.raises(EncodingsFileError, match=r"encodings file .*missing.encodings not found"):
        sim.set_and_freeze_param_encodings(tmp_path / "missing.encodings")
    entry = json.loads(AIMET_TINY_ENCODINGS)["param_encodings"]["fc.weight"]
    (tmp_path / "stranger.encodings").write_text(json.dumps({"param_encodings": {
        "conv9.weight": entry}}))
    with pytest.raises(EncodingsFileError, match=r"1 entry names no quantizer of this sim: "
                                                 r"\['conv9.weight'\]"):
        sim.set_and_freeze_param_encodings(tmp_path / "stranger.encodings")
    assert all(not r.quantizer.is_frozen for r in sim.quantizers())   # nothing installed
