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


@pytest.mark.slow
def test_efficientnet_b0_shadow_results_hold_both_models_at_every_layer() -> None:
    """torchvision's EfficientNet-B0 (SiLU activations, squeeze-excitation muls, residual adds):
    every layer of the shadow results has both models' entries, so torch's
    extend_logger_results_with_comparison runs; ~30 s on 2 CPU cores."""
    import torch.ao.ns._numeric_suite_fx as tns
    from torch.ao.ns.fx.utils import compute_sqnr

    torch.manual_seed(0)
    model = reestimate_batch_norms(torchvision.models.efficientnet_b0(weights=None),
                                   (4, 3, 64, 64), batches=2)
    sim = calibrated_sim(model, (1, 3, 64, 64), batches=1)
    shadow = ns.add_shadow_loggers("float", model, "int8", sim)
    with torch.no_grad():
        shadow(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    results = ns.extract_shadow_logger_info(shadow, ns.OutputLogger, "int8")
    assert set(results) == quantized_layer_names(sim) and not results.unmatched
    assert all(set(v["node_output"]) == {"float", "int8"} for v in results.values())
    tns.extend_logger_results_with_comparison(results, "float", "int8", compute_sqnr, "sqnr")
    sqnr = [float(v["node_output"]["int8"][0]["sqnr"][0]) for v in results.values()]
    assert all(not math.isnan(s) for s in sqnr) and statistics.median(sqnr) > 20
    types = {v["node_output"]["int8"][0]["prev_node_target_type"] for v in results.values()}
    assert "torch.nn.modules.activation.SiLU" in types and not any("Quantizer" in t
                                                                    for t in types)
