"""Acceptance on torchvision models (slow): resnet18 — where torch's add_loggers raises KeyError —
and mobilenet_v2, float vs an fxquant W8A8 sim. Every quantized layer has an activation SQNR
(unshadowed and shadowed) and every weight-quantized layer a weight SQNR, keyed by canonical
names; shadowing removes propagated error; add layers are shadowed."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
import torchvision

import fxquant.ns as ns
from fxquant.passes.insert_shadows import shadow_nodes
from tests.numeric_suite.ns_helpers import (calibrated_sim, quantized_layer_names,
                                            reestimate_batch_norms, weight_quantized_layer_names)

SHAPE = (2, 3, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_float_vs_w8a8_sim(name: str, device: torch.device) -> None:
    torch.manual_seed(0)
    model = reestimate_batch_norms(torchvision.models.get_model(name, weights=None),
                                   (8, 3, 64, 64)).to(device)
    sim = calibrated_sim(model, SHAPE, device)
    gen = torch.Generator().manual_seed(5)
    data = [torch.randn(*SHAPE, generator=gen) for _ in range(3)]
    report = ns.compare(model, sim, data, name_a="float", name_b="int8")

    quantized = quantized_layer_names(sim)
    assert {r.name for r in report.layers if r.activation} == quantized
    assert {r.name for r in report.layers if r.shadowed} == quantized
    assert set(report.results["activation"]) == quantized
    assert {r.name for r in report.layers if r.weight} == weight_quantized_layer_names(sim)
    assert not report.unmatched
    rows = [r for r in report.layers if r.activation]
    assert all(math.isfinite(r.activation["sqnr"]) and math.isfinite(r.shadowed["sqnr"])
               for r in rows)
    assert all(math.isfinite(r.weight["sqnr"]) and r.weight["sqnr"] > 30
               for r in report.layers if r.weight)
    shadowed = statistics.mean(r.shadowed["sqnr"] for r in rows)
    unshadowed = statistics.mean(r.activation["sqnr"] for r in rows)
    assert shadowed >= unshadowed - 0.5
    assert shadowed > 30  # a W8A8 layer on its own stays far above the propagated error

    shadow = ns.add_shadow_loggers("float", model, "int8", sim)
    shadowed_ops = {str(n.target) for n in shadow_nodes(shadow)}
    assert any(t.endswith("module_add") for t in shadowed_ops)  # residual adds are shadowed
    if name == "mobilenet_v2":  # its adds are not fused with a ReLU: quantized layers of their own
        assert any(layer.endswith("module_add") for layer in quantized)
