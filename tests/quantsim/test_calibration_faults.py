"""QuantizationSimModel under faults and bad input (issue 11 items 8, 9 and 12): all-or-nothing
calibration, the caller's dummy_input left alone, and library errors for meta / TorchScript
models."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fxquant.errors import CalibrationError, ConfigError, TraceError
from fxquant.quantsim.quantizer import AffineQuantizer, QuantizerBase
from fxquant.quantsim.quantsim import QuantizationSimModel


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


def _batches(seed: int, n: int = 4, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 6, 6, generator=gen) * scale for _ in range(n)]


def _run(model: nn.Module, batches: list[torch.Tensor]) -> None:
    for x in batches:
        model(x)


def _state(sim: QuantizationSimModel) -> dict[str, object]:
    """Everything observable about the quantizers: state dict, flags and analyzer statistics."""
    out: dict[str, object] = {}
    for name, tensor in sim.model.state_dict().items():
        out[name] = tensor.clone() if isinstance(tensor, torch.Tensor) else copy.deepcopy(tensor)
    for name, module in sim.model.named_modules():
        if isinstance(module, QuantizerBase):
            out[name + ":flags"] = (module.enabled, module.is_frozen, module.calibrating,
                                    getattr(module, "bitwidth", None))
            analyzer = getattr(module, "encoding_analyzer", None)
            if analyzer is not None and analyzer.has_stats:
                mn, mx = analyzer.observed_min_max()
                out[name + ":stats"] = (mn.clone(), mx.clone(), analyzer._num_batches)
    return out


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        elif isinstance(va, tuple):
            for x, y in zip(va, vb):
                assert (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y), key
        else:
            assert va == vb, key


# -- item 8: all-or-nothing compute_encodings ----------------------------------------------------
def test_failed_recalibration_leaves_the_sim_bit_identical() -> None:
    torch.manual_seed(0)
    sim = QuantizationSimModel(_Net().eval(), torch.randn(1, 3, 6, 6), quant_scheme="tf")
    sim.compute_encodings(_run, _batches(1))
    probe = torch.randn(8, 3, 6, 6)
    with torch.no_grad():
        before_out = sim.model(probe)
    before = _state(sim)

    # new data (three times wider) stops half-way: weights were already re-encoded by then
    def interrupted(model: nn.Module, batches: list[torch.Tensor]) -> None:
        model(batches[0])
        model(batches[1])
        raise OSError("dataset shard missing")

    expected = (r"running forward_pass_callback.*interrupted.*OSError: dataset shard missing.*"
                r"rolled back")
    with pytest.raises(CalibrationError, match=expected) as info:
        sim.compute_encodings(interrupted, _batches(2, scale=3.0))
    assert isinstance(info.value.__cause__, OSError)
    _assert_same(before, _state(sim))
    with torch.no_grad():
        assert torch.equal(sim.model(probe), before_out)
    # and a complete recalibration on the same data does change the encodings
    sim.compute_encodings(_run, _batches(2, scale=3.0))
    with torch.no_grad():
        assert not torch.equal(sim.model(probe), before_out)


def test_failed_first_calibration_leaves_the_sim_uncalibrated() -> None:
    sim = QuantizationSimModel(_Net().eval(), torch.randn(1, 3, 6, 6))

    def broken(model: nn.Module) -> None:
        model(torch.randn(2, 3, 6, 6))
        raise ValueError("bad batch")

    with pytest.raises(CalibrationError, match="ValueError: bad batch"):
        sim.compute_encodings(broken)
    assert all(r.quantizer.encoding is None for r in sim.quantizers())
    assert not sim._encodings_computed
    with pytest.raises(CalibrationError, match="no encoding yet"):
        sim.model(torch.randn(1, 3, 6, 6))


def test_keyboard_interrupt_and_library_errors_propagate_unchanged_after_rollback() -> None:
    sim = QuantizationSimModel(_Net().eval(), torch.randn(1, 3, 6, 6))
    sim.compute_encodings(_run, _batches(3))
    before = _state(sim)

    def ctrl_c(model: nn.Module) -> None:
        model(torch.randn(2, 3, 6, 6) * 5)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sim.compute_encodings(ctrl_c)
    _assert_same(before, _state(sim))

    # an fxquant error raised inside calibration keeps its type, with a note about the rollback;
    # flags changed by the callback are rolled back too
    def stops(model: nn.Module) -> None:
        model(torch.randn(2, 3, 6, 6) * 5)
        sim.quantizer("relu").freeze_encoding()
        sim.quantizer("fc").enabled = False
        raise CalibrationError("stop")

    with pytest.raises(CalibrationError, match="^stop") as info:
        sim.compute_encodings(stops)
    assert str(info.value) == "stop" and info.value.__cause__ is None
    assert any("rolled back" in note for note in info.value.__notes__)
    assert not sim.quantizer("relu").is_frozen and sim.quantizer("fc").enabled
    _assert_same(before, _state(sim))


def test_rollback_keeps_learned_range_parameters_the_same_objects() -> None:
    sim = QuantizationSimModel(_Net().eval(), torch.randn(1, 3, 6, 6),
                               quant_scheme="training_range_learning_with_tf_init")
    sim.compute_encodings(_run, _batches(4))
    quantizer = sim.quantizer("relu")
    assert isinstance(quantizer, AffineQuantizer) and isinstance(quantizer.scale, nn.Parameter)
    param, value = quantizer.scale, quantizer.scale.detach().clone()
    optimizer = torch.optim.SGD([param], lr=0.1)

    def fails(model: nn.Module) -> None:
        model(torch.randn(2, 3, 6, 6) * 10)
        raise RuntimeError("boom")

    with pytest.raises(CalibrationError, match="RuntimeError: boom"):
        sim.compute_encodings(fails)
    assert quantizer.scale is param and torch.equal(param.detach(), value)
    assert param.requires_grad and optimizer.param_groups[0]["params"][0] is param


# -- item 9: the caller's dummy_input is never changed -------------------------------------------
class _InPlaceInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        x.add_(1)
        torch.relu_(extra["bias"])
        return self.conv(x) + extra["bias"]


def test_building_a_sim_does_not_mutate_dummy_input() -> None:
    x = torch.randn(1, 3, 6, 6)
    extra = {"bias": torch.randn(1, 4, 4, 4)}
    x0, bias0 = x.clone(), extra["bias"].clone()
    sim = QuantizationSimModel(_InPlaceInput().eval(), (x, extra))
    assert torch.equal(x, x0) and torch.equal(extra["bias"], bias0)
    assert sim.quantizers()


def test_building_a_sim_does_not_mutate_dummy_input_relu_inplace() -> None:
    class ReluFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(nn.functional.relu(x, inplace=True))

    x = torch.randn(3, 4)
    x0 = x.clone()
    QuantizationSimModel(ReluFirst().eval(), x)
    assert torch.equal(x, x0)


# -- item 12: meta and TorchScript models ---------------------------------------------------------
def test_meta_model_is_refused_with_the_fix() -> None:
    model = _Net().eval().to("meta")
    with pytest.raises(ConfigError, match=r"parameter 'conv.weight' is on the 'meta' device.*"
                                          r"cpu/cuda with real weights.*to_empty.*load_state_dict"):
        QuantizationSimModel(model, torch.randn(1, 3, 6, 6))


def test_sim_moved_to_meta_is_refused_at_calibration() -> None:
    sim = QuantizationSimModel(_Net().eval(), torch.randn(1, 3, 6, 6))
    sim.model.to("meta")
    with pytest.raises(CalibrationError, match=r"compute_encodings: parameter .* 'meta' device.*"
                                               r"to_empty"):
        sim.compute_encodings(_run, _batches(5))


def test_script_module_is_refused_with_the_fix() -> None:
    scripted = torch.jit.script(_Net().eval())
    with pytest.raises(TraceError, match=r"the model is a TorchScript module.*cannot be traced by "
                                         r"FX: pass the original nn.Module"):
        QuantizationSimModel(scripted, torch.randn(1, 3, 6, 6))


def test_script_submodule_is_named() -> None:
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.jit.script(_Net().eval())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    with pytest.raises(TraceError, match=r"submodule 'body' is a TorchScript module") as info:
        QuantizationSimModel(Holder().eval(), torch.randn(1, 3, 6, 6))
    assert info.value.module_path == "body"
