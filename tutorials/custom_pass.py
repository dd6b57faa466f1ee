"""Tutorial: write your own graph pass and run it next to fxquant's.

A pass subclasses ``fxquant.Pass``, declares which state tags it needs and provides, whether it
preserves numerics and whether it works in place (``in_place``, checked on every run), and
implements ``call(gm) -> PassResult``. ``fxquant.Sequential`` composes it with the built-in passes
and keeps each pass's details under ``"<position>:<class name>"``; failures come back as
``PassError`` naming the pass, the passes before it and the node.

Run: python tutorials/custom_pass.py
"""
from __future__ import annotations

import pathlib
import sys

import torch
import torch.fx
import torchvision
from torch import nn

import fxquant

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import reestimate_batch_norm_statistics  # noqa: E402


class ReplaceHardswishWithReLU6Scaled(fxquant.Pass):
    """Rewrites hardswish(x) as x * relu6(x + 3) / 6 using modules (a target without a hardswish
    kernel). Needs the preparer's module form; numerics preserved up to float rounding."""

    requires = fxquant.PrepareModelPass.provides  # the "prepared" tag
    provides = frozenset({"no_hardswish"})
    preserves_numerics = False  # equal up to float rounding, not bit for bit
    in_place = True  # call() edits and returns the graph module it is given

    def call(self, gm: torch.fx.GraphModule) -> fxquant.PassResult:
        rewritten = []
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not isinstance(gm.get_submodule(node.target),
                                                          nn.Hardswish):
                continue
            base = str(node.target)
            gm.add_submodule(f"{base}_relu6", nn.ReLU6())
            with gm.graph.inserting_after(node):
                shifted = gm.graph.call_function(torch.add, (node.args[0], 3.0))
            with gm.graph.inserting_after(shifted):
                clipped = gm.graph.call_module(f"{base}_relu6", (shifted,))
            with gm.graph.inserting_after(clipped):
                scaled = gm.graph.call_function(torch.mul, (node.args[0], clipped))
            with gm.graph.inserting_after(scaled):
                out = gm.graph.call_function(torch.div, (scaled, 6.0))
            node.replace_all_uses_with(out)
            gm.graph.erase_node(node)
            rewritten.append(base)
        gm.delete_all_unused_submodules()
        return fxquant.PassResult(gm, bool(rewritten), {"rewritten": rewritten})


def main() -> None:
    torch.manual_seed(0)
    model = reestimate_batch_norm_statistics(torchvision.models.mobilenet_v3_small(weights=None),
                                             size=96, batches=4)
    x = torch.randn(1, 3, 96, 96)

    pipeline = fxquant.Sequential(
        fxquant.PrepareModelPass(),          # functionals -> modules, reused modules split
        fxquant.FoldBatchNormPass(),         # BN folded into the convs
        ReplaceHardswishWithReLU6Scaled(),   # ours
        fxquant.PrepareModelPass(),          # the new add/mul/div become named modules too
    )
    result = pipeline(fxquant.trace(model))
    gm = result.graph_module
    rewritten = result.details["2:ReplaceHardswishWithReLU6Scaled"]["rewritten"]
    print(f"rewrote {len(rewritten)} hardswish modules, e.g. {rewritten[:2]}")
    print(f"folded {len(result.details['1:FoldBatchNormPass']['folded'])} batch norms")
    print(f"then converted {len(result.details['3:PrepareModelPass']['converted'])} new ops "
          "to modules")
    with torch.no_grad():
        expected = model(x)
        diff = ((gm(x) - expected).norm() / expected.norm()).item()
    print(f"relative difference to the original model: {diff:.2e}")
    assert diff < 1e-5

    # Running a pass before what it requires names the problem:
    try:
        ReplaceHardswishWithReLU6Scaled()(fxquant.trace(model))
    except fxquant.PassError as err:
        print(f"as expected: {err}")


if __name__ == "__main__":
    main()
