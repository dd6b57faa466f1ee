"""Compiled sims: ``torch.compile(sim.model)`` / ``sim.compile()`` trace without graph breaks,
never use stale quantizer state, and keep the eager sim's numerics where inductor keeps the float
ops.

Checked with dynamo's own ``explain`` (graph breaks), with the ``eager`` and ``aot_eager`` backends
(dynamo's guards and AOTAutograd's backward without inductor's re-implementation of float ops, so
results must be bit-identical to the eager sim) and with inductor on a conv/linear net.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fxquant


def _sim(model: nn.Module, x: torch.Tensor, **kwargs) -> fxquant.QuantizationSimModel:
    sim = fxquant.QuantizationSimModel(model.eval(), x[:1], **kwargs)
    sim.compute_encodings(lambda m: m(x * 0.5))   # calibrated on half the range: x saturates
    return sim


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


def _grads(model: nn.Module, params: list[nn.Parameter], x: torch.Tensor) -> list[torch.Tensor]:
    """The gradients of ``params`` after one QAT-style step (mean square of the output)."""
    for p in params:
        p.grad = None
    model(x).square().mean().backward()
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("scheme", ["tf", "training_range_learning_with_tf_init"])
def test_compiled_qat_step_has_the_eager_gradients(scheme: str) -> None:
    """AOTAutograd traces the straight-through / LSQ backward; with eager kernels (aot_eager) the
    gradients of every weight, scale and offset equal the eager step's bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8) * 2.0
    sim = _sim(_Net(), x, quant_scheme=scheme)
    params = [p for p in sim.model.parameters() if p.requires_grad]

    eager = _grads(sim.model, params, x)
    torch._dynamo.reset()
    compiled = _grads(torch.compile(sim.model, backend="aot_eager"), params, x)
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

    for a, b in zip(_grads(sim.model, params, x), _grads(compiled, params, x)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert torch.equal(a == 0, b == 0)   # the same straight-through masks


@pytest.mark.slow
def test_sim_compile_compiles_in_place_and_the_sim_keeps_working(tmp_path) -> None:
    """``sim.compile()`` is ``nn.Module.compile`` on ``sim.model``: the same module object, so
    quantizers, flags and export keep working; outputs bit-identical to the eager sim here."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8) * 2.0
    sim = _sim(_Net(), x, quant_scheme="tf_enhanced")
    model = sim.model
    with torch.no_grad():
        eager = sim.model(x)
    sim.quantizer("module_add").enabled = False
    with torch.no_grad():
        eager_disabled = sim.model(x)
    sim.quantizer("module_add").enabled = True
    torch._dynamo.reset()
    assert sim.compile(options={"layout_optimization": False}) is sim and sim.model is model
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.no_grad():
        assert torch.equal(sim.model(x), eager)
        sim.quantizer("module_add").enabled = False
        assert torch.equal(sim.model(x), eager_disabled)
    assert counters["stats"]["unique_graphs"] == 2      # it ran compiled, once per flag state
    sim.quantizer("module_add").enabled = True
    files = sim.export(str(tmp_path), "net", x[:1])
    reloaded = fxquant.QuantizationSimModel(_Net().eval(), x[:1], quant_scheme="tf_enhanced")
    reloaded.model.load_state_dict(sim.model.state_dict())
    fxquant.load_encodings_to_sim(reloaded, files["torch_encodings"])
    with torch.no_grad():
        assert torch.equal(reloaded.model(x), eager)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_sims_trace_as_one_graph(name: str) -> None:
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    sim = _sim(torchvision.models.get_model(name, weights=None), x, quant_scheme="tf_enhanced")
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(sim.model)(x)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
