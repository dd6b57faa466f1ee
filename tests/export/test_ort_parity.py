"""Sim vs ONNX Runtime: per layer with identical inputs, and end to end on resnet18.

Per layer (ORT_DISABLE_ALL: QDQ evaluated in float): each output-quantized layer's subgraph of
the QDQ model is fed the sim's own captured inputs. Float convolutions sum in a different order in
torch and ORT, so a value within rounding noise of a grid boundary can land one step apart
(SPEC §1); the bar: over all layers ≥ 99.99% bit-equal at 8 bits, every difference exactly 1 LSB.
At 16-bit activations the grid is 256× finer, so the same float noise flips ~0.2% of values
(measured); there the bar is ≤ 1 LSB and ≥ 99.5% bit-equal.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision

from tests.export.ort_parity import (DISABLE_ALL, ENABLE_ALL, SmallNet, build_sim, export_for_parity,
                                     per_layer_parity, reestimate_batch_norms, session, sqnr_db)

CONFIGS = {"w8a8_per_channel": {}, "w8a8_per_tensor": {"config_file": "per_tensor"},
           "w8a16": {"default_output_bw": 16}, "w4a8": {"default_param_bw": 4},
           "w8a8_int32_bias": {"quantize_bias": True}}
MODELS = {"small": (SmallNet, (2, 3, 16, 16)),
          "resnet18": (torchvision.models.resnet18, (1, 3, 64, 64)),
          "mobilenet_v2": (torchvision.models.mobilenet_v2, (1, 3, 64, 64))}
#: Output-quantized layers per model (the same in every config): each is compared. mobilenet_v2's
#: 17 depthwise convs have their own output quantizer (AIMET's supergroups never start at a
#: depthwise conv), hence 64 + 17.
LAYERS = {"small": 7, "resnet18": 30, "mobilenet_v2": 81}
#: Floors on the worst single layer's bit-equal fraction (measured: 100% at 8-bit activations,
#: 99.53% at w8a16 on mobilenet_v2's features.15.conv.2, 99.66% on resnet18's layer4.1.conv2).
WORST_LAYER_8BIT = 0.999
WORST_LAYER_W8A16 = 0.99


def _check(name: str, config: str) -> None:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = reestimate_batch_norms(factory().eval(), (4, *shape[1:]))
    sim = build_sim(model, shape, **CONFIGS[config])
    ex = export_for_parity(sim, torch.randn(*shape))
    results, skipped = per_layer_parity(ex, torch.randn(*shape, generator=torch.Generator().manual_seed(3)))
    assert not skipped, f"layers without a feedable subgraph: {skipped}"
    # every enabled output quantizer's layer was compared, no more, no fewer
    quantized = sorted(q.name for q in sim.quantizers() if q.kind == "output" and q.quantizer.enabled)
    assert sorted(r.layer for r in results) == quantized
    assert len(results) == LAYERS[name]
    assert all(r.elements > 0 for r in results)
    total = sum(r.elements for r in results)
    equal = sum(r.equal_fraction * r.elements for r in results) / total
    worst = min(results, key=lambda r: r.equal_fraction)
    max_lsb = max(r.max_lsb for r in results)
    figures = (f"{name} {config}: {len(results)} layers, {100 * equal:.4f}% bit-equal overall, worst "
               f"layer {worst.layer} {100 * worst.equal_fraction:.4f}%, max {max_lsb:.0f} LSB")
    sixteen = config == "w8a16"
    assert max_lsb <= 1, figures
    assert equal >= (0.995 if sixteen else 0.9999), figures
    assert worst.equal_fraction >= (WORST_LAYER_W8A16 if sixteen else WORST_LAYER_8BIT), figures


@pytest.mark.parametrize("config", list(CONFIGS))
def test_per_layer_small(config: str) -> None:
    _check("small", config)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["w8a8_per_channel", "w8a8_per_tensor", "w8a16"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_per_layer_torchvision(name: str, config: str) -> None:
    _check(name, config)


def test_per_layer_resnet18_default() -> None:
    _check("resnet18", "w8a8_per_channel")


@pytest.mark.slow
def test_end_to_end_resnet18() -> None:
    model = reestimate_batch_norms(torchvision.models.resnet18().eval(), (8, 3, 224, 224), batches=3)
    sim = build_sim(model, (8, 3, 224, 224), batches=2)
    x = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ex = export_for_parity(sim, x)
    with torch.no_grad():
        ref = sim.model(x).numpy()
    lsb = float(sim.quantizer("fc").encoding.scale)
    # measured: SQNR 35.8 / 32.5 dB, max 3 / 4 LSB, 60.9% / 42.0% bit-equal (DISABLE / ENABLE_ALL)
    # on a CPU with VNNI (or AVX512-VNNI) integer dot products
    bars = {DISABLE_ALL: (33.0, 4.0, 0.5), ENABLE_ALL: (30.0, 6.0, 0.3)}
    outs = {level: session(ex.qdq.model, level).run(None, {"x": x.numpy()})[0] for level in bars}
    # ORT's integer kernels against its own float evaluation of the same QDQ model. On x86 CPUs
    # without VNNI (AVX2 only) ONNX Runtime's u8s8 QLinearConv adds pairs of products in int16
    # with saturation (vpmaddubsw), so ORT disagrees with itself: measured on an AVX2-only AMD
    # EPYC, 21.3 dB and max 15 LSB (the sim against it: the same, argmax 62%). No simulator of the QDQ arithmetic can match that
    # machine closer than ORT matches itself; there the ENABLE_ALL bars are ORT's own figures.
    self_sqnr = sqnr_db(outs[DISABLE_ALL], outs[ENABLE_ALL])
    self_lsbs = float(np.abs(outs[DISABLE_ALL] - outs[ENABLE_ALL]).max() / lsb)
    print(f"\nORT ENABLE_ALL vs its own DISABLE_ALL: {self_sqnr:.1f} dB, max {self_lsbs:.1f} LSB")
    for level, (min_sqnr, max_lsb, min_equal) in bars.items():
        out = outs[level]
        sqnr = sqnr_db(ref, out)
        agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
        lsbs = float(np.abs(out - ref).max() / lsb)
        equal = float(np.mean(out == ref))
        figures = (f"resnet18 e2e {level}: SQNR {sqnr:.1f} dB, argmax agreement {agree:.0%}, "
                   f"max {lsbs:.1f} LSB, {equal:.1%} bit-equal")
        print(figures)
        if level == ENABLE_ALL and self_sqnr < min_sqnr:   # saturating integer kernels
            assert sqnr >= self_sqnr - 3.0, figures
            assert lsbs <= self_lsbs + max_lsb, figures
            continue
        assert agree == 1.0, figures
        assert sqnr >= min_sqnr, figures
        assert lsbs <= max_lsb + 1e-3, figures  # the logits' LSB, up to float32 rounding
        assert equal >= min_equal, figures


def _conv_and_exact_output() -> tuple[torch.nn.Conv2d, torch.Tensor, torch.Tensor]:
    """A 64-channel 3×3 conv, a ReLU-like input and the exactly rounded (float64-accumulated)
    output."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.relu(torch.randn(4, 64, 28, 28))
    with torch.no_grad():
        y64 = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(),
                                         padding=1).float()
    return conv, x, y64


def _same_step_rates(y: torch.Tensor, exact: torch.Tensor, grid_from: torch.Tensor
                     ) -> dict[int, float]:
    """Fraction of elements of ``y`` and ``exact`` on the same step of the 8- and 16-bit min-max
    grids of ``grid_from``; asserts the rest are 1 step apart."""
    rates = {}
    for bits in (8, 16):
        scale = ((grid_from.max() - grid_from.min()) / (2**bits - 1)).float()
        zp = torch.round(-grid_from.min() / scale)
        a, b = torch.round(y / scale) + zp, torch.round(exact / scale) + zp
        rates[bits] = (a == b).float().mean().item()
        assert (a - b).abs().max() <= 1
    return rates


def test_16bit_grid_is_finer_than_float32_summation_noise() -> None:
    """Why the 16-bit bar is 99.5%: torch against itself, with the same conv accumulated in
    float64 instead of float32, already disagrees on far more than 0.01% of 16-bit outputs
    (all by 1 LSB) while agreeing on ≥ 99.99% of 8-bit outputs. No float32 runtime can do
    better than that without summing in torch's own order."""
    conv, x, y64 = _conv_and_exact_output()
    with torch.no_grad():
        y32 = conv(x)
    rates = _same_step_rates(y32, y64, grid_from=y32)
    print(f"\ntorch float32 vs float64 accumulation: 8-bit {100 * rates[8]:.4f}% equal, "
          f"16-bit {100 * rates[16]:.4f}% equal")
    assert rates[8] >= 0.9999
    assert rates[16] < 0.9999


def test_ort_itself_is_not_99_99_percent_exact_at_16_bits() -> None:
    """The bound on any simulator: ONNX Runtime's own float32 Conv, against the exactly rounded
    result (float64 accumulation) of the same conv on the same inputs, lands on the same 16-bit
    grid step for fewer than 99.99% of outputs, all others 1 LSB apart; at 8 bits it agrees on
    ≥ 99.99%. A simulator computing every layer exactly would therefore still miss the 99.99%
    bar against ORT at 16 bits; only reproducing ORT's own summation order could meet it."""
    conv, x, y64 = _conv_and_exact_output()
    w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    y_ort = torch.from_numpy(session(model).run(None, {"x": x.numpy()})[0])
    rates = _same_step_rates(y_ort, y64, grid_from=y64)
    print(f"\nONNX Runtime float32 Conv vs exact: 8-bit {100 * rates[8]:.4f}% equal, "
          f"16-bit {100 * rates[16]:.4f}% equal")
    assert rates[8] >= 0.9999
    assert rates[16] < 0.9999
