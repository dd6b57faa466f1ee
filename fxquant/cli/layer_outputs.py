"""``fxquant layer-outputs MODEL|ONNX --data DATA --out DIR``: every layer's output for each input,
from the float model (torch) or an ``.onnx`` file (ONNX Runtime), in AIMET's dump layout."""
from __future__ import annotations

import argparse

from fxquant.cli.specs import add_model_arguments

__all__ = ["add_parser"]

EXAMPLE = """example:
  fxquant layer-outputs torchvision:resnet18 --data images/ --out dumps/fp32 --naming onnx
  fxquant layer-outputs export/model_qdq.onnx --data images/ --out dumps/ort
  fxquant compare-outputs dumps/fp32 dumps/ort --encodings export/model.encodings"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layer-outputs", help="dump every layer's output (torch or ONNX Runtime)",
                       description="Writes every layer's output for each input instance, from "
                                   "MODEL (a float torch model; batch norms folded as the sim "
                                   "and its export do) or from an .onnx file run by ONNX Runtime "
                                   "(e.g. the _qdq.onnx of fxquant quantize).",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, onnx=True)
    p.add_argument("--data", required=True, metavar="DATA",
                   help="inputs: a folder of images, .npy/.pt, or random:SHAPE")
    p.add_argument("--out", required=True, help="dump folder (must be empty unless --overwrite)")
    p.add_argument("--naming", choices=("onnx", "pytorch"), default="onnx",
                   help="torch dumps: name tensors as in the exported ONNX graph (onnx, the "
                        "default) or by module path (pytorch)")
    p.add_argument("--limit", type=int, default=16, help="input instances to dump (16)")
    p.add_argument("--image-size", type=int, default=224, help="image folders: side (224)")
    p.add_argument("--overwrite", action="store_true", help="replace a dump already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fxquant
    from fxquant.cli.specs import SpecError, load_batches, load_model

    if args.limit < 1:
        raise SpecError(f"--limit must be positive, got {args.limit}")
    batches = load_batches(args.data, batch_size=1, image_size=args.image_size)[:args.limit]
    if args.model.endswith(".onnx"):
        import os

        if not os.path.isfile(args.model):
            raise SpecError(f"ONNX: file {args.model} not found")
        util = fxquant.onnx.LayerOutputUtil(args.model, args.out, overwrite=args.overwrite)
        written = util.generate_layer_outputs_batch([b.numpy() for b in batches])
    else:
        model = load_model(args.model, args.weights)
        util = fxquant.LayerOutputUtil(model, args.out, naming_scheme=args.naming.upper(),
                                       dummy_input=batches[0], overwrite=args.overwrite)
        written = util.generate_layer_outputs_batch(batches)
    print(f"dumped {written} input instance(s) to {args.out}")
    return 0
