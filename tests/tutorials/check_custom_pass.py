"""Checks tutorials/custom_pass.py's printed figures."""
from __future__ import annotations

import pathlib

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find


def check(out: str, folder: pathlib.Path) -> None:
    (rewritten,) = _find(r"rewrote (\d+) hardswish modules, e\.g\. \['features\.0\.2', ", out)
    assert int(rewritten) == 19  # every Hardswish of mobilenet_v3_small
    (folded,) = _find(r"folded (\d+) batch norms", out)
    assert int(folded) == 34
    (converted,) = _find(r"then converted (\d+) new ops to modules", out)
    assert int(converted) == 3 * int(rewritten)  # add, mul, div per rewritten hardswish
    (diff,) = _find(rf"relative difference to the original model: {NUMBER}", out)
    assert 0.0 < float(diff) < 1e-5  # measured 1.9e-06: equal up to float rounding, not bit-exact
    _find(r"as expected: ReplaceHardswishWithReLU6Scaled\(\) requires \['prepared'\] but the graph "
          r"module has \[\] \(passes run so far: none\)", out)
