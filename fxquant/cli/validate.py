"""``fxquant validate MODEL``: the model validator's report (see :func:`fxquant.validate`)."""
from __future__ import annotations

import argparse

from fxquant.cli.specs import add_model_arguments

__all__ = ["add_parser"]

EXAMPLE = """example:
  fxquant validate torchvision:resnet18 --input-shape 1x3x224x224 --json findings.json
  fxquant validate models/net.py:build --weights net.pt --skip onnx_export

exit status: 0 no error finding, 1 error findings, 2 bad input"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="say what in a model will not quantize or export well",
                       description="Runs the model validator (fxquant.validate) on MODEL with a "
                                   "random input of --input-shape and prints one finding per "
                                   "problem: check, module, source line, severity and fix.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--input-shape", default="1x3x224x224",
                   help="shape of the random example input (1x3x224x224)")
    p.add_argument("--skip", nargs="+", default=(), metavar="CHECK",
                   help="checks to leave out (e.g. onnx_export)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import fxquant
    from fxquant.cli.specs import load_model, parse_shape

    model = load_model(args.model, args.weights)
    x = torch.randn(parse_shape(args.input_shape), generator=torch.Generator().manual_seed(0))
    report = fxquant.validate(model, x, skip=tuple(args.skip))
    print(report.table())
    if args.json:
        report.to_json(args.json, overwrite=args.overwrite)
        print(f"report: {args.json}")
    return 0 if report.ok else 1
