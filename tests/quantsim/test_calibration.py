"""fxquant.quantsim.calibration: parameter encodings from the float weights (what
``compute_encodings``, AdaRound and sequential MSE share); the all-or-nothing calibration itself is
tested through ``compute_encodings`` in test_calibration_faults.py and test_quantsim.py."""
from __future__ import annotations

import torch
from torch import nn

from fxquant.core.kernels import quantize_dequantize
from fxquant.core.layers import float_param
from fxquant.quantsim.calibration import compute_param_encodings
from fxquant.quantsim.quantsim import QuantizationSimModel


def _sim() -> QuantizationSimModel:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    return QuantizationSimModel(model.eval(), torch.randn(1, 3, 6, 6), quant_scheme="tf")


def test_param_encodings_come_from_the_float_weights() -> None:
    sim = _sim()
    compute_param_encodings(sim.model, sim.quantizers())
    refs = sim.quantizers()
    params = [r for r in refs if r.kind == "param"]
    assert [r.name for r in params] == ["0.weight", "3.weight"]
    for ref in params:
        weight = float_param(sim.model.get_submodule(ref.layer), "weight")
        enc = ref.quantizer.encoding
        # min-max: each channel's grid ends at its largest |weight| (8-bit symmetric: 127 steps
        # up, 128 down)
        span = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
        assert bool((span >= enc.scale * 127 * (1 - 1e-6)).all())
        assert bool((span <= enc.scale * 128 * (1 + 1e-6)).all())
        fq = quantize_dequantize(weight, enc.scale, enc.zero_point, enc.qmin, enc.qmax,
                                 axis=enc.axis)
        assert torch.equal(sim.model.get_submodule(ref.layer).weight, fq)
    # activation quantizers are not touched
    assert all(not r.quantizer.is_initialized for r in refs if r.kind != "param")


def test_only_missing_and_frozen_encodings_are_kept() -> None:
    sim = _sim()
    conv_q, fc_q = sim.quantizer("0.weight"), sim.quantizer("3.weight")
    compute_param_encodings(sim.model, sim.quantizers())
    before = conv_q.encoding
    with torch.no_grad():
        sim.model.get_submodule("0").parametrizations.weight.original.mul_(3)
    compute_param_encodings(sim.model, sim.quantizers(), only_missing=True)
    assert torch.equal(conv_q.encoding.scale, before.scale)        # had one: kept
    compute_param_encodings(sim.model, sim.quantizers())
    assert torch.allclose(conv_q.encoding.scale, before.scale * 3)  # recomputed
    fc_before = fc_q.encoding
    fc_q.freeze_encoding()
    with torch.no_grad():
        sim.model.get_submodule("3").parametrizations.weight.original.mul_(2)
    compute_param_encodings(sim.model, sim.quantizers())
    assert torch.equal(fc_q.encoding.scale, fc_before.scale)       # frozen: kept
