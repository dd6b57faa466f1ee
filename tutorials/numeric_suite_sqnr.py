"""Tutorial: where does a quantized MobileNetV2 depart from its float original?

The flow of PyTorch's "FX Graph Mode Quantization Numeric Suite" tutorial, done on an fxquant
sim with ``fxquant.numeric_suite`` (short name ``fxquant.ns``), which keeps torch's call shapes:

1. quantize MobileNetV2 (an fxquant W8A8 sim);
2. compare the weights: ``extract_weights`` + SQNR per layer, and plot it;
3. compare the activations, unshadowed: ``add_loggers`` — each layer's output in the sim vs the
   float model, both run on the same data (the error includes what earlier layers propagate);
4. compare the activations, shadowed: ``add_shadow_loggers`` — each sim layer fed the float
   model's values (the layer's own error), add layers included;
5. all of it in one call: ``compare`` → a report with a table, JSON and a plot.

Plots are written as PNG files without a display, to $FXQUANT_TUTORIAL_OUT or a new temporary
directory.

Run: python tutorials/numeric_suite_sqnr.py
"""
from __future__ import annotations

import os
import pathlib
import statistics
import sys
import tempfile

import torch
import torchvision
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import fxquant
import fxquant.ns as ns

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import reestimate_batch_norm_statistics  # noqa: E402

SIZE = 64  # small images keep the tutorial quick; use 224 for real data


def plot_sqnr(results: dict, model_name: str, kind: str, title: str,
              path: pathlib.Path) -> None:
    """Per-layer SQNR from torch-shaped results, as the torch tutorial plots it."""
    layers = list(results)
    values = [float(results[layer][kind][model_name][0]["sqnr"][0]) for layer in layers]
    fig = Figure(figsize=(12, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(range(len(values)), values, "o-", markersize=3)
    ax.set_title(title)
    ax.set_ylabel("SQNR (dB)")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=90, fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    torch.manual_seed(0)
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT")
                       or tempfile.mkdtemp(prefix="fxquant_ns_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. The float model and its W8A8 simulation -------------------------------------------
    float_model = reestimate_batch_norm_statistics(torchvision.models.mobilenet_v2(weights=None),
                                                   size=SIZE, batches=3)
    data = [torch.randn(4, 3, SIZE, SIZE) for _ in range(3)]
    sim = fxquant.QuantizationSimModel(float_model, torch.randn(1, 3, SIZE, SIZE),
                                       quant_scheme="tf")
    sim.compute_encodings(lambda model: [model(x) for x in data[:2]])
    print(sim)

    # 2. Weights ------------------------------------------------------------------------------
    weights = ns.extract_weights("fp32", float_model, "int8", sim)
    ns.extend_logger_results_with_comparison(weights, "fp32", "int8", ns.compute_sqnr, "sqnr")
    sqnr = {layer: float(v["weight"]["int8"][0]["sqnr"][0]) for layer, v in weights.items()}
    worst = min(sqnr, key=sqnr.get)
    print(f"weights: {len(sqnr)} layers, mean SQNR {statistics.mean(sqnr.values()):.1f} dB, "
          f"worst {worst} at {sqnr[worst]:.1f} dB")
    plot_sqnr(weights, "int8", "weight", "MobileNetV2 weights: int8 vs fp32", out / "weights.png")

    # 3. Activations, unshadowed --------------------------------------------------------------
    fp32_ns, int8_ns = ns.add_loggers("fp32", float_model, "int8", sim, ns.OutputLogger)
    with torch.no_grad():
        for x in data:  # run both models on each batch in turn: the loggers compare as they go
            fp32_ns(x)
            int8_ns(x)
    activations = ns.extract_logger_info(fp32_ns, int8_ns, ns.OutputLogger, "fp32")
    ns.extend_logger_results_with_comparison(activations, "fp32", "int8", ns.compute_sqnr,
                                             "sqnr")
    unshadowed = {k: float(v["node_output"]["int8"][0]["sqnr"][0])
                  for k, v in activations.items()}
    print(f"activations (unshadowed): {len(unshadowed)} quantized layers, SQNR falls from "
          f"{next(iter(unshadowed.values())):.1f} dB at {next(iter(unshadowed))} to "
          f"{list(unshadowed.values())[-1]:.1f} dB at {list(unshadowed)[-1]}")
    plot_sqnr(activations, "int8", "node_output", "MobileNetV2 activations (unshadowed)",
              out / "activations.png")

    # 4. Activations, shadowed ----------------------------------------------------------------
    shadow = ns.add_shadow_loggers("fp32", float_model, "int8", sim, ns.OutputLogger)
    with torch.no_grad():
        for x in data:
            shadow(x)
    shadowed_results = ns.extract_shadow_logger_info(shadow, ns.OutputLogger, "fp32")
    ns.extend_logger_results_with_comparison(shadowed_results, "fp32", "int8", ns.compute_sqnr,
                                             "sqnr")
    shadowed = {k: float(v["node_output"]["int8"][0]["sqnr"][0])
                for k, v in shadowed_results.items()}
    adds = [k for k in shadowed if k.endswith("module_add")]
    print(f"activations (shadowed): mean SQNR {statistics.mean(shadowed.values()):.1f} dB vs "
          f"{statistics.mean(unshadowed.values()):.1f} dB unshadowed; {len(adds)} residual adds "
          f"shadowed, e.g. {adds[0]} at {shadowed[adds[0]]:.1f} dB")
    plot_sqnr(shadowed_results, "int8", "node_output", "MobileNetV2 activations (shadowed)",
              out / "activations_shadowed.png")
    assert set(shadowed) == set(unshadowed)
    assert statistics.mean(shadowed.values()) >= statistics.mean(unshadowed.values()) - 0.5

    # 5. One call -----------------------------------------------------------------------------
    report = ns.compare(float_model, sim, data, metrics=("sqnr", "cosine_similarity"),
                        name_a="fp32", name_b="int8")
    print(report.table(k=5))
    print(f"worst layer on its own (shadowed): {report.worst(1, kind='shadowed')[0].name}")
    report.to_json(out / "report.json", overwrite=True)
    png = report.plot(out / "report.png", overwrite=True)
    assert png.read_bytes()[:4] == b"\x89PNG"
    print(f"plots and report written to {out}")


if __name__ == "__main__":
    main()
