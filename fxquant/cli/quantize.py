"""``fxquant quantize`` (calibrate, compare, export) and ``fxquant compare`` (the numeric suite's
per-layer SQNR of the W/A sim against the float model)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from fxquant.cli.specs import add_model_arguments

__all__ = ["add_parsers"]

SCHEMES = ("tf", "tf_enhanced", "percentile", "mse")
QUANTIZE_EXAMPLE = """example:
  fxquant quantize torchvision:resnet18 --weights resnet18.pt --calib images/ --out export \\
      --scheme tf_enhanced --eval labeled/
  fxquant quantize torchvision:resnet18 --calib random:4x3x64x64 --out smoke   # smoke run

writes OUT/<prefix>.onnx, OUT/<prefix>.encodings, OUT/<prefix>_qdq.onnx (runs in ONNX Runtime),
OUT/<prefix>_torch.encodings, OUT/<prefix>.pth and OUT/sqnr.json (per-layer SQNR)"""
COMPARE_EXAMPLE = """example:
  fxquant compare torchvision:resnet18 --calib images/ --scheme tf --json sqnr.json"""


def _sim_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--calib", required=True, metavar="DATA",
                   help="calibration data: a folder of images, .npy/.pt, or random:SHAPE")
    p.add_argument("--scheme", choices=SCHEMES, default="tf_enhanced",
                   help="calibration scheme (tf_enhanced)")
    p.add_argument("--param-bw", type=int, default=8, help="weight bit width (8)")
    p.add_argument("--output-bw", type=int, default=8, help="activation bit width (8)")
    p.add_argument("--config", help="AIMET quantsim config file (default: per-channel weights)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight encodings")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of the data (16)")
    p.add_argument("--image-size", type=int, default=224, help="image folders: side (224)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quantize", help="calibrate a W/A sim, compare it, export ONNX + encodings",
                       description="Builds a QuantizationSimModel of MODEL, calibrates it on "
                                   "--calib, prints the per-layer SQNR against the float model "
                                   "(and accuracies with --eval) and exports it.",
                       epilog=QUANTIZE_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _sim_arguments(q)
    q.add_argument("--out", required=True, help="export folder")
    q.add_argument("--prefix", default="model", help="file name prefix (model)")
    q.add_argument("--eval", metavar="DATA", dest="eval_data",
                   help="labeled data (class folders or .npz x, y): print FP32 and sim accuracy")
    q.set_defaults(func=_quantize)
    c = sub.add_parser("compare", help="per-layer SQNR of the sim against the float model",
                       description="The numeric suite (fxquant.compare): per-layer SQNR of the "
                                   "calibrated sim's outputs, its shadowed outputs (each layer "
                                   "fed the float model's input) and its weights.",
                       epilog=COMPARE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _sim_arguments(c)
    c.add_argument("--json", help="write the report as JSON to this file")
    c.add_argument("--top", type=int, default=10, help="rows to print, worst first (10)")
    c.set_defaults(func=_compare)


def _build(args: argparse.Namespace) -> tuple[Any, Any, list[Any]]:
    import fxquant
    from fxquant.cli.specs import SpecError, load_batches, load_model
    from fxquant.quantsim.config import load_config

    if args.batch_size < 1:
        raise SpecError(f"--batch-size must be positive, got {args.batch_size}")
    model = load_model(args.model, args.weights)
    calib = load_batches(args.calib, batch_size=args.batch_size, image_size=args.image_size)
    config = load_config(args.config, per_channel=False if args.per_tensor else None)
    sim = fxquant.QuantizationSimModel(model, calib[0][:1], quant_scheme=args.scheme,
                                       default_output_bw=args.output_bw,
                                       default_param_bw=args.param_bw, config_file=config)

    def calibrate(m: Any) -> None:
        for x in calib:
            m(x)

    sim.compute_encodings(calibrate)
    return model, sim, calib


def _accuracy(model: Any, x: Any, y: Any, batch: int) -> float:
    import torch

    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def _quantize(args: argparse.Namespace) -> int:
    import fxquant
    from fxquant.cli.specs import load_labeled

    eval_data = (load_labeled(args.eval_data, image_size=args.image_size)
                 if args.eval_data else None)
    model, sim, calib = _build(args)
    report = fxquant.compare(model, sim, calib, name_a="fp32", name_b="sim")
    files = sim.export(args.out, args.prefix, calib[0][:1])
    report.to_json(os.path.join(args.out, "sqnr.json"), overwrite=True)
    print(report.table(k=10))
    print(f"{sim!r}")
    if eval_data is not None:
        x, y = eval_data
        print(f"accuracy: FP32 {_accuracy(model, x, y, args.batch_size):.2f}%, sim "
              f"{_accuracy(sim.model, x, y, args.batch_size):.2f}% ({len(x)} inputs)")
    for kind, path in sorted(files.items()):
        print(f"{kind}: {path}")
    print(f"sqnr: {os.path.join(args.out, 'sqnr.json')}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import fxquant

    model, sim, calib = _build(args)
    report = fxquant.compare(model, sim, calib, name_a="fp32", name_b="sim")
    print(report.table(k=args.top))
    if args.json:
        report.to_json(args.json, overwrite=True)
        print(f"report: {args.json}")
    return 0
