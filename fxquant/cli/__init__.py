"""The ``fxquant`` command line.

``fxquant demo`` runs the whole pipeline on real data and writes a report
(:mod:`fxquant.cli.demo`); ``fxquant prepare`` traces, prepares and folds a torchvision model
(``weights=None``, no download) and prints what changed.
``fxquant compare-outputs A B`` compares two layer-output dumps and names the first divergence.
``fxquant validate MODEL`` runs the model validator; ``fxquant analyze MODEL --calib DATA --eval
DATA --results-dir DIR`` the QuantAnalyzer (MODEL and DATA: :mod:`fxquant.cli.specs`). Bad input
is one line on stderr and exit status 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
from typing import NoReturn, Sequence

from fxquant.cli import analyze, demo, layer_outputs, quantize, validate
from fxquant.errors import FxQuantError

__all__ = ["main"]


def _prepare(args: argparse.Namespace) -> int:
    import torch
    import torchvision

    from fxquant import auto_leaves, trace
    from fxquant.passes import FoldBatchNormPass, PrepareModelPass, Sequential

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    print(f"fxquant prepare: {args.model} (weights=None), input {tuple(x.shape)}")
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


def _finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (dB), got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number (dB), got {text!r}")
    return value


def _compare_outputs(args: argparse.Namespace) -> int:
    from fxquant.errors import FxQuantError, OutputExistsError
    from fxquant.layer_outputs import compare_layer_outputs

    try:
        report = compare_layer_outputs(args.dir_a, args.dir_b, encodings=args.encodings,
                                       sqnr_threshold=args.threshold, layout_a=args.layout_a,
                                       layout_b=args.layout_b)
        if args.json:
            report.to_json(args.json, overwrite=args.overwrite)
        if args.html:
            report.to_html(args.html, overwrite=args.overwrite)
        if args.plot:
            report.plot(args.plot, overwrite=args.overwrite)
    except OutputExistsError as exc:
        print(f"fxquant compare-outputs: error: {exc} (on the command line: --overwrite)",
              file=sys.stderr)
        return 2
    except (FxQuantError, OSError, ValueError, TypeError) as exc:
        print(f"fxquant compare-outputs: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(report.format(limit=None if args.all else args.top))
    print(report.summary())
    for label, path in (("report", args.json), ("html", args.html), ("plot", args.plot)):
        if path:
            print(f"{label}: {path}")
    if not args.check:
        return 0
    failures = report.check_failures(allow_missing=args.allow_missing)
    if failures:
        print(f"check failed ({len(failures)}):", file=sys.stderr)
        for line in failures[:20]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 2000 else text[:1997] + "..."


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``fxquant quantize: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fxquant`` console script.

    Example:
        $ fxquant demo --out demo
    """
    parser = _Parser(prog="fxquant", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo.add_parser(sub)
    prep = sub.add_parser("prepare", help="trace, prepare and fold a torchvision model, and "
                                          "print what changed")
    prep.add_argument("--model", default="resnet18", help="torchvision model name (resnet18)")
    prep.add_argument("--size", type=int, default=224, help="input height and width (224)")
    prep.add_argument("--show", type=int, default=5, help="rows to show per section (5)")
    prep.set_defaults(func=_prepare)
    cmp = sub.add_parser(
        "compare-outputs", help="compare two layer-output dumps and find the first divergence",
        description="Compares two layer-output dumps (fxquant.LayerOutputUtil, "
                    "fxquant.onnx.LayerOutputUtil or AIMET layout) tensor by tensor: SQNR, max "
                    "|diff|, max |diff| in LSBs with --encodings; names the first tensor below "
                    "the threshold. NCHW/NHWC are aligned automatically.")
    cmp.add_argument("dir_a", help="reference dump directory (e.g. the QuantSim's)")
    cmp.add_argument("dir_b", help="dump directory to check (e.g. ONNX Runtime's)")
    cmp.add_argument("--encodings", help="encodings file of sim.export, for LSB differences")
    cmp.add_argument("--threshold", type=_finite_float, default=20.0,
                     help="SQNR (dB) below which a tensor has diverged (20)")
    cmp.add_argument("--layout-a", type=str.upper,
                     help="layout of dir_a's tensors when it has no manifest")
    cmp.add_argument("--layout-b", type=str.upper,
                     help="layout of dir_b's tensors when it has no manifest (e.g. NHWC)")
    cmp.add_argument("--json", help="write the report as JSON to this file")
    cmp.add_argument("--html", help="write the report as an HTML page to this file")
    cmp.add_argument("--plot", help="write a plot of SQNR per tensor to this file (.png, .svg …)")
    cmp.add_argument("--overwrite", action="store_true",
                     help="replace existing --json / --plot files (default: refuse)")
    cmp.add_argument("--top", type=int, default=10, help="rows to print, worst first (10)")
    cmp.add_argument("--all", action="store_true", help="print every tensor in order")
    cmp.add_argument("--check", action="store_true",
                     help="exit with status 1 when a tensor is below the threshold, or on any "
                          "finding: NaN/Inf values, tensors or instances on one side only, "
                          "tensors not compared, size mismatches")
    cmp.add_argument("--allow-missing", action="store_true",
                     help="with --check: tensors and instances one side lacks do not fail it "
                          "(they are still reported)")
    cmp.set_defaults(func=_compare_outputs)
    quantize.add_parsers(sub)
    layer_outputs.add_parser(sub)
    validate.add_parser(sub)
    analyze.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FxQuantError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"fxquant {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
