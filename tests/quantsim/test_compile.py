"""Compiled sims: ``sim.compile()`` (quantizers as one compiled loop each) is bit-identical to the
eager sim; ``torch.compile(sim.model)`` traces without graph breaks and never uses stale
quantizer state.

``sim.compile()`` is checked bit for bit against the eager sim on the tiny model zoo and resnet18,
with saturation and rounding ties planted, after toggling ``enabled`` and after
``load_encodings``. Whole-model ``torch.compile`` is checked with dynamo's own ``explain`` (graph
breaks), with the ``eager`` and ``aot_eager`` backends (dynamo's guards and AOTAutograd's backward
without inductor's re-implementation of float ops, so results must be bit-identical) and once
with inductor on a conv/linear net.
"""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import fxquant
from fxquant.core import kernels
from fxquant.core.kernels import quantize_dequantize
from tests.models import ConvBnNet, ConvTransposeNet, FunctionalNet, SameConvBnReLU6


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that take the compiled loop (so a test cannot pass on the eager path)."""
    calls: list[int] = []
    original = kernels._fused_qdq

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "_fused_qdq", spy)
    return calls


# -- the kernel -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["per_tensor_u8", "per_tensor_s8", "per_channel_axis0",
                                  "per_channel_axis1", "u16", "float64", "strict_4bit"])
def test_compiled_loop_is_bit_identical_with_ties_and_saturation(case: str,
                                                                  fused_calls: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    scale, zp, qmin, qmax, axis = torch.tensor(0.02), torch.tensor(-37.0), 0, 255, None
    x = torch.randn(4, 6, 5, 7, generator=gen) * 3.0   # ±9: saturates the 8-bit grids
    if case == "per_tensor_s8":
        zp, qmin, qmax = torch.tensor(0.0), -128, 127
    elif case.startswith("per_channel"):
        axis = int(case[-1])
        scale = torch.rand(x.shape[axis], generator=gen) * 0.05 + 0.001
        zp, qmin, qmax = torch.zeros(x.shape[axis]), -128, 127
    elif case == "u16":
        qmax = 65535
    elif case == "float64":
        x = x.double()
    elif case == "strict_4bit":
        zp, qmin, qmax = torch.tensor(0.0), -7, 7
    # plant exact ties (k + 1/2) * scale and values exactly on the clamp bounds
    s = scale if axis is None else scale.view([-1 if d == axis else 1 for d in range(4)])
    k = torch.randint(-200, 200, x.shape, generator=gen).to(x.dtype)
    ties = (k + 0.5) * s.to(x.dtype)
    mask = torch.rand(x.shape, generator=gen) < 0.3
    x = torch.where(mask, ties, x)
    x.view(-1)[:3] = torch.tensor([qmin, qmax, qmax + 1], dtype=x.dtype) * float(scale.max())
    eager = quantize_dequantize(x, scale, zp, qmin, qmax, axis=axis)
    fused = quantize_dequantize(x, scale, zp, qmin, qmax, axis=axis, fused=True)
    assert fused_calls, "the compiled loop did not run"
    assert fused.dtype == eager.dtype and fused.shape == eager.shape
    assert torch.equal(fused, eager)


def test_compiled_loop_is_skipped_where_it_does_not_apply(fused_calls: list[int]) -> None:
    x = torch.randn(4, 8, 3)
    quantize_dequantize(x.transpose(0, 2), torch.tensor(0.1), torch.tensor(0.0), -128, 127,
                        fused=True)                           # not contiguous
    quantize_dequantize(x.requires_grad_(), torch.tensor(0.1), torch.tensor(0.0), -128, 127,
                        fused=True)                           # autograd: the STE path
    assert not fused_calls


# -- sim.compile() ----------------------------------------------------------------------------------
def _sim(model: nn.Module, x: torch.Tensor, **kwargs) -> fxquant.QuantizationSimModel:
    sim = fxquant.QuantizationSimModel(model.eval(), x[:1], **kwargs)
    sim.compute_encodings(lambda m: m(x * 0.5))   # calibrated on half the range: x saturates
    return sim


def _outputs(sim: fxquant.QuantizationSimModel, x: torch.Tensor, fused: bool) -> torch.Tensor:
    sim.compile(enabled=fused)
    with torch.no_grad():
        return sim.model(x)


ZOO = {"functional": (FunctionalNet, (2, 3, 16, 16)), "conv_bn": (ConvBnNet, (2, 3, 12, 12)),
       "conv_transpose": (ConvTransposeNet, (2, 3, 8, 8)),
       "same_conv": (SameConvBnReLU6, (2, 3, 15, 15))}


@pytest.mark.parametrize("config", ["default", "per_tensor"])
@pytest.mark.parametrize("name", list(ZOO))
def test_sim_compile_is_bit_identical_to_the_eager_sim(name: str, config: str,
                                                       fused_calls: list[int]) -> None:
    torch.manual_seed(0)
    factory, shape = ZOO[name]
    x = torch.randn(shape) * 2.0
    sim = _sim(factory(), x, quant_scheme="tf", config_file=config)
    eager = _outputs(sim, x, fused=False)
    assert not fused_calls
    fused = _outputs(sim, x, fused=True)
    assert fused_calls
    assert torch.equal(fused, eager)


def test_sim_compile_follows_enabled_and_new_encodings(tmp_path, fused_calls: list[int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16) * 2.0
    sim = _sim(FunctionalNet(), x, quant_scheme="tf_enhanced")
    reference = _outputs(sim, x, fused=False)
    names = [q.name for q in sim.quantizers()]
    for name in names[1:4]:
        sim.quantizer(name).enabled = False
    disabled = _outputs(sim, x, fused=False)
    assert not torch.equal(disabled, reference)
    assert torch.equal(_outputs(sim, x, fused=True), disabled)
    for name in names[1:4]:
        sim.quantizer(name).enabled = True
    assert torch.equal(_outputs(sim, x, fused=True), reference)

    sim.save_encodings(tmp_path / "e.encodings")
    doc = json.loads((tmp_path / "e.encodings").read_text())
    for entry in doc["activation_encodings"][1:]:
        entry["scale"] = [s * 1.5 for s in entry["scale"]]
    sim.load_encodings(doc)
    changed_fused = _outputs(sim, x, fused=True)
    assert not torch.equal(changed_fused, reference)
    assert torch.equal(changed_fused, _outputs(sim, x, fused=False))


def test_sim_compile_is_bit_identical_on_resnet18(fused_calls: list[int]) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(2, 3, 64, 64)
    for config in ("default", "per_tensor"):
        sim = _sim(model, x, quant_scheme="tf_enhanced", config_file=config)
        assert torch.equal(_outputs(sim, x, fused=True), _outputs(sim, x, fused=False))
    assert len(fused_calls) > 40


def test_sim_compile_returns_the_sim_and_leaves_qat_on_the_eager_path(
        fused_calls: list[int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    sim = _sim(ConvBnNet(), x, quant_scheme="training_range_learning_with_tf_init")
    assert sim.compile() is sim
    sim.model(x).sum().backward()        # gradients flow through the straight-through path
    assert not fused_calls
    assert all(p.grad is not None for p in sim.model.parameters() if p.requires_grad)


# -- torch.compile(sim.model) -----------------------------------------------------------------------
class _Net(nn.Module):
    """Conv, Linear, ReLU, add and flatten: ops inductor computes as eager does (below)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.flatten(torch.relu(self.conv(x)), 1)
        return self.fc2(torch.relu(self.fc1(y)) + 1.0)


SCHEMES = ["tf", "tf_enhanced", "training_range_learning_with_tf_init"]


@pytest.mark.parametrize("config", ["default", "per_tensor"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_torch_compile_of_the_sim_has_no_graph_break(scheme: str, config: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    sim = _sim(_Net(), x, quant_scheme=scheme, config_file=config)
    sim.quantizer("module_add").enabled = False
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(sim.model)(x)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_torch_compile_of_the_sim_never_uses_stale_quantizer_state(tmp_path) -> None:
    """The eager backend runs dynamo's graph with eager kernels: any difference from the eager
    sim is a stale guard or a value baked in at compile time."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8) * 2.0
    sim = _sim(_Net(), x, quant_scheme="tf", config_file="per_tensor")
    torch._dynamo.reset()
    compiled = torch.compile(sim.model, backend="eager")

    def same() -> bool:
        with torch.no_grad():
            return torch.equal(compiled(x), sim.model(x))

    assert same()
    sim.quantizer("module_add").enabled = False   # a guarded Python attribute: recompiles
    assert same()
    sim.quantizer("module_add").enabled = True
    with torch.no_grad():
        sim.quantizer("fc2").scale.mul_(3.0)       # an in-place change of a buffer
    assert same()
    sim.save_encodings(tmp_path / "e.encodings")
    doc = json.loads((tmp_path / "e.encodings").read_text())
    for entry in doc["param_encodings"]:
        entry["scale"] = [s * 2.0 for s in entry["scale"]]
    sim.load_encodings(doc)                        # new encodings through the public loader
    assert same()
    sim.compile()                                  # fused flag on: compiled code keeps eager ops
    assert same()


@pytest.mark.parametrize("scheme", ["tf", "training_range_learning_with_tf_init"])
def test_compiled_qat_step_has_the_eager_gradients(scheme: str) -> None:
    """AOTAutograd traces the straight-through / LSQ backward; with eager kernels (aot_eager) the
    gradients of every weight, scale and offset equal the eager step's bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8) * 2.0
    sim = _sim(_Net(), x, quant_scheme=scheme)
    params = [p for p in sim.model.parameters() if p.requires_grad]

    def grads(model: nn.Module) -> list[torch.Tensor]:
        for p in params:
            p.grad = None
        model(x).square().mean().backward()
        return [p.grad.clone() for p in params]

    eager = grads(sim.model)
    torch._dynamo.reset()
    compiled = grads(torch.compile(sim.model, backend="aot_eager"))
    assert len(eager) == len(params) >= (6 if scheme == "tf" else 12)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_inductor_compiled_sim_matches_the_eager_sim_on_conv_and_linear() -> None:
    """With inductor. Its float ops are its own: with layout_optimization off, convolutions and
    GEMMs run the same kernels on the same layouts, so forward outputs are bit-identical; the
    backward's reductions (bias and scale gradients) are summed in another order (1 ulp-level)."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8) * 2.0
    sim = _sim(_Net(), x, quant_scheme="training_range_learning_with_tf_init")
    torch._dynamo.reset()
    compiled = torch.compile(sim.model, options={"layout_optimization": False})
    with torch.no_grad():
        assert torch.equal(compiled(x), sim.model(x))
    params = [p for p in sim.model.parameters() if p.requires_grad]

    def grads(model: nn.Module) -> list[torch.Tensor]:
        for p in params:
            p.grad = None
        model(x).square().mean().backward()
        return [p.grad.clone() for p in params]

    for a, b in zip(grads(sim.model), grads(compiled)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert torch.equal(a == 0, b == 0)   # the same straight-through masks


# -- calibration statistics -------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["tf_enhanced", "percentile", "mse"])
@pytest.mark.parametrize("axis", [None, 1])
def test_fused_histograms_count_exactly_as_the_eager_loop(scheme: str, axis: int | None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Several batches (the extent widens, old counts are re-binned), ReLU zeros, values exactly
    on bin edges: counts, edges and the encoding are identical with and without the fused pass."""
    from fxquant.quantsim import histogram_analyzers
    from fxquant.quantsim.encoding_analyzer import get_encoding_analyzer

    calls: list[int] = []
    original = histogram_analyzers._fused_histogram_index
    monkeypatch.setattr(histogram_analyzers, "_fused_histogram_index",
                        lambda *a: calls.append(1) or original(*a))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 6, 9, 9, generator=gen).relu() * (1 + k) for k in range(3)]
    batches[1].view(-1)[:50] = torch.linspace(0, float(batches[0].max()), 50)  # on the edges
    analyzers = [get_encoding_analyzer(scheme, axis=axis, name="t") for _ in range(2)]
    analyzers[1].fused = True
    for analyzer in analyzers:
        for x in batches:
            analyzer.update_stats(x)
    assert len(calls) == len(batches)
    (counts_a, edges_a), (counts_b, edges_b) = (a.histogram() for a in analyzers)
    assert torch.equal(counts_a, counts_b) and torch.equal(edges_a, edges_b)
    assert float(counts_a.sum()) == pytest.approx(batches[0].numel() * len(batches))  # re-binned
    enc_a, enc_b = (a.compute_encoding(8, symmetric=False) for a in analyzers)
    assert torch.equal(enc_a.scale, enc_b.scale) and torch.equal(enc_a.zero_point,
                                                                  enc_b.zero_point)


def test_sim_compile_before_calibration_gives_the_same_encodings() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    sims = [fxquant.QuantizationSimModel(model, x[:1], quant_scheme="tf_enhanced")
            for _ in range(2)]
    sims[1].compile()
    for sim in sims:
        sim.compute_encodings(lambda m: [m(x), m(x * 1.5)])
    for a, b in zip(sims[0].quantizers(), sims[1].quantizers()):
        ea, eb = a.quantizer.encoding, b.quantizer.encoding
        assert a.name == b.name
        assert torch.equal(ea.scale, eb.scale) and torch.equal(ea.zero_point, eb.zero_point)
