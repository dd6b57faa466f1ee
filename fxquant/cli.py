"""The ``fxquant`` command line.

``fxquant demo`` runs the main job on an embedded default (a torchvision model built with
``weights=None``, no download): trace → prepare → fold batch norms, and prints what changed.
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
    prep = result.details["PrepareModelPass()"]
    fold = result.details["FoldBatchNormPass()"]
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
