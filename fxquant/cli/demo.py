"""``fxquant demo``: the whole pipeline on real data, in about half a minute on two CPU cores.

scikit-learn's digits (shipped with the package, no download) → a small CNN with BatchNorm,
trained here (seeded) → model validator → W8A8 QuantSim (prepare, BN fold, TF-enhanced,
per-channel weights) → numeric-suite SQNR → QuantAnalyzer → export (ONNX, encodings, QDQ) → the
QDQ model in ONNX Runtime → layer dumps of the sim and of ONNX Runtime → the dump diff. Prints one
summary and writes ``OUT/index.html`` linking every report.

Example:
    $ fxquant demo --out demo
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

__all__ = ["add_parser", "DigitsCNN", "digits_split", "run_demo", "train_digits_cnn"]

EXAMPLE = """example:
  fxquant demo --out demo        # then open demo/index.html
  make demo                      # the same, after installing"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on real data (digits), with a report",
                       description=__doc__.split("\n\n")[1].replace("\n", " "),
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fxquant-demo",
                   help="output folder (fxquant-demo); a previous demo there is replaced")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (15)")
    p.add_argument("--dump-inputs", type=int, default=16,
                   help="test images dumped layer by layer on both sides (16)")
    p.set_defaults(func=lambda args: run_demo(args.out, epochs=args.epochs,
                                              dump_inputs=args.dump_inputs)["status"])


def _torch_modules() -> Any:
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        """Conv-BN-ReLU ×2 with a residual add, a strided conv, pooling and a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(16)
            self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.bn3 = nn.BatchNorm2d(32)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)) + x)
            x = torch.relu(self.bn3(self.conv3(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return DigitsCNN


def DigitsCNN() -> Any:  # noqa: N802  (a factory named like the class it builds)
    """A fresh digits CNN (``fxquant.cli.demo:DigitsCNN`` works as a CLI MODEL)."""
    return _torch_modules()()


def digits_split() -> tuple[Any, Any, Any, Any]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``: 8×8 images scaled to
    [0, 1] (N×1×8×8 float32), a fixed 75/25 split (1347 / 450 images).

    Example:
        >>> x_train, y_train, x_test, y_test = digits_split()
        >>> tuple(x_test.shape)
        (450, 1, 8, 8)
    """
    import torch
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    split = int(0.75 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def train_digits_cnn(model: Any, x: Any, y: Any, epochs: int = 15) -> Any:
    """Adam (lr 1e-2, batch 64, seeded) for ``epochs``, then the BN statistics re-estimated over
    all of ``x``; returns ``model`` in eval mode.

    Example:
        >>> x, y, _, _ = digits_split()
        >>> model = train_digits_cnn(DigitsCNN(), x, y, epochs=15)   # ~97% test accuracy
    """
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in tqdm(range(epochs), desc="training", unit="epoch", leave=False, disable=None):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():   # BN statistics over the whole training set, not the last batches
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None
        for i in range(0, len(x), 256):
            model(x[i:i + 256])
    return model.eval()


def run_demo(out: str, *, epochs: int = 15, dump_inputs: int = 16,
             quiet: bool = False) -> dict[str, Any]:
    """Runs the pipeline (see the module docstring); returns the summary figures (``status``: the
    exit status, 0).

    Example:
        >>> summary = run_demo("demo", epochs=5)
        >>> summary["fp32_accuracy"] - summary["sim_accuracy"] < 1.0
        True
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    from tqdm.auto import tqdm

    import fxquant
    from fxquant.cli.demo_report import write_index
    from fxquant.core.metrics import PairAccumulator

    say = (lambda *a: None) if quiet else print
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_split()
    model = train_digits_cnn(DigitsCNN(), x_train, y_train, epochs)
    dummy = x_test[:1]

    def accuracy(m: Any) -> float:
        with torch.no_grad():
            return 100.0 * float((m(x_test).argmax(1) == y_test).float().mean())

    def calibrate(m: Any) -> None:
        for i in range(0, 512, 128):
            m(x_train[i:i + 128])

    fp32 = accuracy(model)
    say(f"[1/7] trained a digits CNN: FP32 accuracy {fp32:.2f}% on {len(x_test)} test images")
    report = fxquant.validate(model, dummy)
    say(f"[2/7] validated: {report.summary()}")
    report.to_json(os.path.join(out, "validation.json"), overwrite=True)

    sim = fxquant.QuantizationSimModel(model, dummy, quant_scheme="tf_enhanced")
    sim.compute_encodings(calibrate)
    sim_acc = accuracy(sim.model)
    say(f"[3/7] W8A8 sim (BNs folded, TF-enhanced, per-channel weights): {sim_acc:.2f}%")

    ns = fxquant.compare(model, sim, [x_test[:256]], name_a="fp32", name_b="sim")
    ns.to_json(os.path.join(out, "numeric_suite.json"), overwrite=True)
    ns.plot(os.path.join(out, "numeric_suite.png"), overwrite=True)

    analyzer = fxquant.QuantAnalyzer(model, dummy, calibrate, lambda m: accuracy(m) / 100.0)
    analyzer.enable_per_layer_mse_loss([x_train[i:i + 128] for i in range(0, 256, 128)], 2)
    analysis = analyzer.analyze(quant_scheme="tf_enhanced", results_dir=os.path.join(out,
                                                                                     "analysis"))
    say(f"[4/7] numeric suite and QuantAnalyzer: {analysis.verdict()}")

    export_dir = os.path.join(out, "export")
    files = sim.export(export_dir, "digits", dummy)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(files["qdq_onnx"], options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    ort_logits = torch.from_numpy(np.concatenate([   # exported with batch 1, like the dummy
        session.run(None, {feed: x_test[i:i + 1].numpy()})[0]
        for i in tqdm(range(len(x_test)), desc="ONNX Runtime", unit="image", leave=False,
                      disable=True if quiet else None)]))
    with torch.no_grad():
        sim_logits = sim.model(x_test)
    ort_acc = 100.0 * float((ort_logits.argmax(1) == y_test).float().mean())
    agreement = 100.0 * float((ort_logits.argmax(1) == sim_logits.argmax(1)).float().mean())
    logits_sqnr = PairAccumulator.of(sim_logits, ort_logits).result().sqnr_db
    say(f"[5/7] exported and ran the QDQ model in ONNX Runtime: {ort_acc:.2f}%, the sim's "
        f"prediction on {agreement:.2f}% of the test images")

    dumps = os.path.join(out, "dumps")
    images = [x_test[i:i + 1] for i in range(dump_inputs)]
    fxquant.LayerOutputUtil(sim, os.path.join(dumps, "sim"), fxquant.NamingScheme.ONNX,
                            dummy_input=dummy, overwrite=True
                            ).generate_layer_outputs_batch(images, progress=not quiet)
    fxquant.onnx.LayerOutputUtil(files["qdq_onnx"], os.path.join(dumps, "ort"),
                                 session_options=options, overwrite=True
                                 ).generate_layer_outputs_batch([i.numpy() for i in images],
                                                                progress=not quiet)
    diff = fxquant.compare_layer_outputs(os.path.join(dumps, "sim"), os.path.join(dumps, "ort"),
                                         encodings=files["encodings"])
    diff.to_html(os.path.join(out, "dump_diff.html"), overwrite=True)
    diff.to_json(os.path.join(out, "dump_diff.json"), overwrite=True)
    say(f"[6/7] layer dumps, sim vs ONNX Runtime: {len(diff.layers)} tensors, lowest SQNR "
        f"{diff.min_sqnr[1]:.1f} dB" if diff.min_sqnr else "[6/7] layer dumps compared")

    summary = {
        "status": 0, "fp32_accuracy": fp32, "sim_accuracy": sim_acc, "ort_accuracy": ort_acc,
        "sim_ort_agreement": agreement, "logits_sqnr_db": logits_sqnr,
        "worst_sqnr_layers": [(r.name, r.value("activation", "sqnr")) for r in ns.worst(3)],
        # layers that cost accuracy: quantized alone they lose some, or in float alone they
        # recover some (with nothing lost the ranking is a tie and means nothing)
        "worst_analyzer_layers": [
            layer for layer in analysis.culprits
            if analysis.enabled.get(layer, analysis.fp32) < analysis.fp32
            or analysis.disabled.get(layer, analysis.quantized) > analysis.quantized][:3],
        "validation": report.summary(), "verdict": analysis.verdict(),
        "suggestion": None if analysis.best is None else analysis.best.describe(),
        "files": {"export": export_dir, "analysis": os.path.join(out, "analysis", "index.html"),
                  "numeric_suite": os.path.join(out, "numeric_suite.json"),
                  "dump_diff": os.path.join(out, "dump_diff.html"),
                  "index": os.path.join(out, "index.html")},
        "seconds": time.perf_counter() - start,
    }
    write_index(out, summary, files, ns, diff, report)
    say("[7/7] report written\n")
    say(_table(summary))
    return summary


def _table(s: dict[str, Any]) -> str:
    worst = ", ".join(f"{n} ({v:.1f} dB)" for n, v in s["worst_sqnr_layers"])
    rows = [("FP32 accuracy", f"{s['fp32_accuracy']:.2f}%"),
            ("sim accuracy (W8A8)", f"{s['sim_accuracy']:.2f}%"),
            ("ONNX Runtime accuracy (QDQ)", f"{s['ort_accuracy']:.2f}%"),
            ("sim vs ONNX Runtime: same prediction", f"{s['sim_ort_agreement']:.2f}%"),
            ("sim vs ONNX Runtime: logits SQNR", f"{s['logits_sqnr_db']:.1f} dB"),
            ("worst layers by SQNR", worst),
            ("worst layers by analyzer", ", ".join(s["worst_analyzer_layers"])
             or "none: no single layer costs accuracy"),
            ("analyzer verdict", s["verdict"]),
            ("suggested change", s["suggestion"] or "none needed"),
            ("report", s["files"]["index"]),
            ("time", f"{s['seconds']:.0f} s")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
