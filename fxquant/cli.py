"""The ``fxquant`` command line.

``fxquant demo`` runs the main job on an embedded default (a torchvision model built with
``weights=None``, no download): trace → prepare → fold batch norms, and prints what changed.
``fxquant compare-outputs A B`` compares two layer-output dumps and names the first divergence.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from typing import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import torch
    import torchvision

    from fxquant import auto_leaves, trace
    from fxquant.passes import FoldBatchNormPass, PrepareModelPass, Sequential

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    print(f"fxquant demo: {args.model} (weights=None), input {tuple(x.shape)}")
    start = time.perf_counter()
    gm = trace(copy.deepcopy(model))  # trace shares modules with its input; folding edits them
    traced_s = time.perf_counter() - start
    nodes = sum(1 for _ in gm.graph.nodes)
    print(f"  trace   {traced_s * 1e3:7.1f} ms  {nodes} nodes, "
          f"{len(auto_leaves(gm))} submodule(s) made leaves automatically")
    for leaf in auto_leaves(gm):
        print(f"            leaf: {leaf}")
    start = time.perf_counter()
    result = Sequential(PrepareModelPass(), FoldBatchNormPass())(gm)
    passes_s = time.perf_counter() - start
    prep = result.details["0:PrepareModelPass"]
    fold = result.details["1:FoldBatchNormPass"]
    print(f"  prepare + fold {passes_s * 1e3:7.1f} ms")
    print(f"  functionals -> modules: {len(prep['converted'])}")
    for node_name, module_name in prep["converted"][: args.show]:
        kind = type(result.graph_module.get_submodule(module_name)).__name__
        print(f"            {node_name:<24} -> {module_name} ({kind})")
    print(f"  reused modules split:   {len(prep['split'])}")
    for original, clone in prep["split"][: args.show]:
        print(f"            {original} -> + {clone}")
    print(f"  batch norms folded:     {len(fold['folded'])}")
    for layer, bn in fold["folded"][: args.show]:
        print(f"            {bn} -> {layer}")
    with torch.no_grad():
        diff = (result.graph_module(x) - model(x)).abs().max().item()
    print(f"  max |output - eager| after folding: {diff:.3g}")
    return 0


def _compare_outputs(args: argparse.Namespace) -> int:
    from fxquant.errors import FxQuantError, OutputExistsError
    from fxquant.layer_outputs import compare_layer_outputs

    try:
        report = compare_layer_outputs(args.dir_a, args.dir_b, encodings=args.encodings,
                                       sqnr_threshold=args.threshold, layout_a=args.layout_a,
                                       layout_b=args.layout_b)
        if args.json:
            report.to_json(args.json, overwrite=args.overwrite)
        if args.plot:
            report.plot(args.plot, overwrite=args.overwrite)
    except OutputExistsError as exc:
        print(f"fxquant compare-outputs: error: {exc} (on the command line: --overwrite)",
              file=sys.stderr)
        return 2
    except (FxQuantError, OSError, ValueError) as exc:
        print(f"fxquant compare-outputs: error: {exc}", file=sys.stderr)
        return 2
    print(report.format(limit=None if args.all else args.top))
    print(report.summary())
    if args.json:
        print(f"report: {args.json}")
    if args.plot:
        print(f"plot: {args.plot}")
    return 1 if args.check and report.first_divergence is not None else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fxquant`` console script.

    Example:
        $ fxquant demo --model mobilenet_v2
    """
    parser = argparse.ArgumentParser(prog="fxquant", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="trace, prepare and fold a torchvision model")
    demo.add_argument("--model", default="resnet18", help="torchvision model name (resnet18)")
    demo.add_argument("--size", type=int, default=224, help="input height and width (224)")
    demo.add_argument("--show", type=int, default=5, help="rows to show per section (5)")
    demo.set_defaults(func=_demo)
    cmp = sub.add_parser(
        "compare-outputs", help="compare two layer-output dumps and find the first divergence",
        description="Compares two layer-output dumps (fxquant.LayerOutputUtil, "
                    "fxquant.onnx.LayerOutputUtil or AIMET layout) tensor by tensor: SQNR, max "
                    "|diff|, max |diff| in LSBs with --encodings; names the first tensor below "
                    "the threshold. NCHW/NHWC are aligned automatically.")
    cmp.add_argument("dir_a", help="reference dump directory (e.g. the QuantSim's)")
    cmp.add_argument("dir_b", help="dump directory to check (e.g. ONNX Runtime's)")
    cmp.add_argument("--encodings", help="encodings file of sim.export, for LSB differences")
    cmp.add_argument("--threshold", type=float, default=20.0,
                     help="SQNR (dB) below which a tensor has diverged (20)")
    cmp.add_argument("--layout-a", type=str.upper,
                     help="layout of dir_a's tensors when it has no manifest")
    cmp.add_argument("--layout-b", type=str.upper,
                     help="layout of dir_b's tensors when it has no manifest (e.g. NHWC)")
    cmp.add_argument("--json", help="write the report as JSON to this file")
    cmp.add_argument("--plot", help="write a plot of SQNR per tensor to this file (.png, .svg …)")
    cmp.add_argument("--overwrite", action="store_true",
                     help="replace existing --json / --plot files (default: refuse)")
    cmp.add_argument("--top", type=int, default=10, help="rows to print, worst first (10)")
    cmp.add_argument("--all", action="store_true", help="print every tensor in order")
    cmp.add_argument("--check", action="store_true",
                     help="exit with status 1 when a tensor is below the threshold")
    cmp.set_defaults(func=_compare_outputs)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
