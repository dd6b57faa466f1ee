"""Model validator time against one trace + one ONNX export of the same model (goal: < 2x).

Prints, per model, the median (after one warm-up) of ``fxquant.trace`` + ``fxquant.export_onnx``
of the prepared model (the baseline) and of ``fxquant.validate`` (every check, the export
included), interleaved so a slow spell hits both, and the ratio validate / (trace + export).
With ``--all`` it also validates every torchvision classifier once and prints its counts (the
full sweep CI leaves to this script: the export takes 3-10 s a model).

Run: .venv/bin/python benchmarks/bench_validator.py [--models resnet18 mobilenet_v2] [--all]
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_ratios  # noqa: E402

import fxquant  # noqa: E402


def _baseline(model: torch.nn.Module, x: torch.Tensor) -> None:
    fxquant.trace(model)
    fxquant.export_onnx(fxquant.prepare_model(model), x)


def sweep() -> None:
    for name in sorted(torchvision.models.list_models(module=torchvision.models)):
        kwargs = {"aux_logits": False, "init_weights": False} if name in (
            "inception_v3", "googlenet") else {}
        model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
        size = 224 if name.startswith(("vit", "swin", "maxvit")) else (
            80 if name == "inception_v3" else 64)
        report = fxquant.validate(model, torch.randn(1, 3, size, size))
        print(f"{name:<22}{report.summary()}", flush=True)
        for finding in report.errors:
            print(f"    {finding}")
        del model, report
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all", action="store_true", help="also validate every classifier")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # the validator logs its findings; timings only here
    print(f"{'model':<14}{'trace+export':>14}{'validate':>10}{'ratio':>8}")
    for name in args.models:
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        out = interleaved_ratios({"baseline": lambda: _baseline(model, x),
                                  "validate": lambda: fxquant.validate(model, x)},
                                 "baseline", args.rounds)
        base = out["baseline"]
        print(f"{name:<14}{base:>13.2f}s{base * out['validate']:>9.2f}s"
              f"{out['validate']:>8.2f}", flush=True)
    if args.all:
        sweep()


if __name__ == "__main__":
    main()
