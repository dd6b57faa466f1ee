"""Int32 bias simulation: the bias on the int32 grid of input scale × weight scale, and the input
quantizer found through data-movement ops."""
from __future__ import annotations

import torch
from torch import nn

from fxquant.core.encoding import INT32_MAX, INT32_MIN
from fxquant.quantsim.bias import Int32BiasQuantizer, find_input_quantizer
from fxquant.quantsim.encoding import QuantEncoding
from fxquant.quantsim.quantizer import AffineQuantizer
from fxquant.quantsim.quantsim import QuantizationSimModel


def _quantizers(per_channel: bool) -> tuple[AffineQuantizer, AffineQuantizer]:
    act = AffineQuantizer(8, name="x")
    act.set_encoding(QuantEncoding.from_min_max(0.0, 2.55, 8, symmetric=False))   # scale 0.01
    axis = 0 if per_channel else None
    weight = AffineQuantizer(8, symmetric=True, kind="param", axis=axis, name="fc.weight")
    lo = -torch.tensor([1.27, 0.127, 12.7]) if per_channel else -1.27
    weight.set_encoding(QuantEncoding.from_min_max(lo, -lo if per_channel else 1.27, 8, True,
                                                   axis=axis))
    return act, weight


def test_bias_is_rounded_to_the_int32_grid_of_input_times_weight_scale():
    act, weight = _quantizers(per_channel=True)
    bq = Int32BiasQuantizer(act, weight, "fc.bias")
    scale = bq.scale()
    expected_scale = (act.scale * weight.scale).to(torch.float32)
    assert torch.equal(scale, expected_scale) and scale.shape == (3,)
    bias = torch.tensor([0.123456, -0.0000561, 3.3333])
    out = bq(bias)
    steps = torch.round(bias / scale)             # float32, as QuantizeLinear computes it
    assert steps.tolist() == [1235.0, -6.0, 3333.0]
    assert torch.equal(out, steps * scale)
    assert not torch.equal(out, bias)
    assert "int32" in repr(bq)
    assert (INT32_MIN, INT32_MAX) == (-(2**31), 2**31 - 1)


def test_bias_saturates_at_the_int32_limits():
    act, weight = _quantizers(per_channel=False)
    bq = Int32BiasQuantizer(act, weight)
    scale = float(bq.scale())
    huge = torch.tensor([1e30, -1e30], dtype=torch.float64)
    assert bq(huge).tolist() == [INT32_MAX * scale, INT32_MIN * scale]


def test_bias_passes_through_until_both_encodings_exist_or_when_disabled():
    act, weight = _quantizers(per_channel=False)
    fresh = AffineQuantizer(8, name="no encoding yet")
    bias = torch.tensor([0.123456])
    assert Int32BiasQuantizer(fresh, weight)(bias) is bias
    assert Int32BiasQuantizer(act, fresh).scale() is None
    weight.enabled = False
    assert Int32BiasQuantizer(act, weight)(bias) is bias
    weight.enabled = True
    bq = Int32BiasQuantizer(act, weight)
    bq.enabled = False
    assert bq(bias) is bias


def test_input_quantizer_is_found_through_data_movement_ops():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.pool = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(2 * 3 * 3, 4)

        def forward(self, x):
            return self.fc(self.flatten(self.pool(torch.relu(self.conv(x)))))

    sim = QuantizationSimModel(Net().eval(), torch.randn(1, 1, 8, 8))
    gm = sim.model
    fc = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "fc")
    found = find_input_quantizer(gm, fc)
    assert isinstance(found, AffineQuantizer)
    # through flatten and max-pool (data movement): the output quantizer of the relu before them
    assert found is gm.get_submodule("module_relu.output_quantizer")
    assert found.name == "module_relu.output"
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    assert find_input_quantizer(gm, x) is None
