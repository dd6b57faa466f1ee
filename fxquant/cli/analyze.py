"""``fxquant analyze MODEL --calib DATA --eval DATA --results-dir DIR``: the QuantAnalyzer (see
:class:`fxquant.QuantAnalyzer`) with top-1 accuracy on the labeled ``--eval`` data as its score."""
from __future__ import annotations

import argparse

from fxquant.cli.specs import add_model_arguments

__all__ = ["add_parser"]

EXAMPLE = """example:
  fxquant analyze torchvision:resnet18 --weights resnet18.pt --calib images/ \\
      --eval labeled/ --results-dir analysis --scheme tf_enhanced
  then open analysis/index.html; analysis/suggested_config.json is the suggested quantsim config

DATA: a folder of images, an .npy/.pt tensor file, or random:SHAPE; --eval: a folder of class
subfolders or an .npz with x and y"""

SCHEMES = ("tf", "tf_enhanced", "percentile", "mse")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="per-layer quantization sensitivity and what to do",
                       description="Runs the QuantAnalyzer: calibrates a W/A sim on --calib, "
                                   "scores FP32, weight-only, activation-only and per-layer "
                                   "quantization with top-1 accuracy on --eval, and writes "
                                   "AIMET's files, index.html and suggested_config.json.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data")
    p.add_argument("--eval", required=True, metavar="DATA", dest="eval_data",
                   help="labeled evaluation data")
    p.add_argument("--results-dir", required=True, help="where the analysis is written")
    p.add_argument("--scheme", choices=SCHEMES, default="tf_enhanced",
                   help="calibration scheme (tf_enhanced)")
    p.add_argument("--param-bw", type=int, default=8, help="weight bit width (8)")
    p.add_argument("--output-bw", type=int, default=8, help="activation bit width (8)")
    p.add_argument("--config", help="AIMET quantsim config file")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of the data (16)")
    p.add_argument("--image-size", type=int, default=224, help="image folders: side (224)")
    p.add_argument("--mse-batches", type=int, default=2,
                   help="calibration batches for the per-layer MSE, 0 to skip it (2)")
    p.add_argument("--suggestions", type=int, default=3,
                   help="worst layers to try at 16 bits (3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import fxquant
    from fxquant.cli.specs import SpecError, load_batches, load_labeled, load_model

    if args.batch_size < 1:
        raise SpecError(f"--batch-size must be positive, got {args.batch_size}")
    model = load_model(args.model, args.weights)
    calib = load_batches(args.calib, batch_size=args.batch_size, image_size=args.image_size)
    x_eval, y_eval = load_labeled(args.eval_data, image_size=args.image_size)

    def calibrate(m: torch.nn.Module) -> None:
        for x in calib:
            m(x)

    def evaluate(m: torch.nn.Module) -> float:
        correct = 0
        for i in range(0, len(x_eval), args.batch_size):
            logits = m(x_eval[i:i + args.batch_size])
            correct += int((logits.argmax(1) == y_eval[i:i + args.batch_size]).sum())
        return correct / len(x_eval)

    analyzer = fxquant.QuantAnalyzer(model, calib[0][:1], calibrate, evaluate)
    if args.mse_batches > 0:
        analyzer.enable_per_layer_mse_loss(calib, min(args.mse_batches, len(calib)))
    results = analyzer.analyze(quant_scheme=args.scheme, default_param_bw=args.param_bw,
                               default_output_bw=args.output_bw, config_file=args.config,
                               results_dir=args.results_dir, num_suggestions=args.suggestions)
    print(results.verdict())
    if results.culprits:
        print(f"worst layers: {', '.join(results.culprits[:args.suggestions or 3])}")
    if results.best is not None:
        print(f"suggested: {results.best.describe()} -> {results.best.score:.4g} "
              f"({args.results_dir}/suggested_config.json)")
    print(f"report: {args.results_dir}/index.html")
    return 0
