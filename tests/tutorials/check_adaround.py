"""Checks tutorials/adaround.py's printed figures and the encodings file it wrote."""
from __future__ import annotations

import json
import math
import pathlib
import re

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

LAYERS = {"features.0": 144, "features.3": 144, "features.6": 512, "features.9": 288,
          "features.12": 1024, "features.15.conv.0": 4096, "features.15.conv.3": 1152,
          "features.15.conv.6": 4096, "classifier": 320}


def check(out: str, folder: pathlib.Path) -> None:
    # "measured": with 1 / 2 torch threads (the training sums in another order; AdaRound itself
    # runs on one thread either way)
    (fp32,) = _find(rf"FP32: {NUMBER}%", out)
    assert float(fp32) >= 97.0                                         # measured 98.44 / 98.89
    acc_near, db_near = _find(rf"W4A8 nearest : accuracy {NUMBER}%, logits SQNR {NUMBER} dB",
                              out)
    assert float(db_near) <= 15.0                 # 4-bit weights cost: measured 12.3 / 10.8 dB
    (frozen,) = _find(r"set_and_freeze_param_encodings: (\d+) weight encodings frozen", out)
    assert int(frozen) == len(LAYERS)
    acc_ada, db_ada = _find(rf"W4A8 AdaRound: accuracy {NUMBER}%, logits SQNR {NUMBER} dB", out)
    # measured 97.78% 12.3 dB -> 98.44% 16.2 dB / 97.56% 10.8 dB -> 98.67% 16.4 dB (400 steps)
    assert float(db_ada) >= float(db_near) + 3.0
    assert float(acc_ada) >= float(acc_near) and float(acc_ada) >= float(fp32) - 1.5

    wrote, size = _find(r"AdaRound wrote: (\S+) \((\d+) bytes\)\n", out)
    assert wrote == "adaround/digits.encodings"                      # the only file
    path = folder / "adaround" / "digits.encodings"
    assert sorted(p.name for p in path.parent.iterdir()) == ["digits.encodings"]
    assert int(size) == path.stat().st_size                          # measured 125587 / 125586
    data = json.loads(path.read_text())
    assert list(data) == ["param_encodings"]
    params = data["param_encodings"]
    assert sorted(params) == sorted(f"{name}.weight" for name in LAYERS)
    weights, channels = _find(r"(\d+) weights, (\d+) channel encodings; ", out)
    assert int(weights) == len(LAYERS)
    assert int(channels) == sum(len(e) for e in params.values()) == 426   # per channel
    (entry,) = _find(r"features\.3\.weight channel 0: (.*)", out)
    fields = dict(re.findall(r"(\w+)=(\S+?)(?:,|$)", entry))
    assert sorted(fields) == ["bitwidth", "dtype", "is_symmetric", "max", "min", "offset",
                              "scale"]
    assert (fields["bitwidth"], fields["dtype"], fields["is_symmetric"], fields["offset"]) == (
        "4", "int", "True", "-8")
    first = params["features.3.weight"][0]
    assert float(fields["scale"]) == first["scale"]
    scale = float(fields["scale"])                  # a symmetric 4-bit grid: -8 .. 7 steps
    assert math.isclose(float(fields["min"]), -8 * scale, rel_tol=1e-6)
    assert math.isclose(float(fields["max"]), 7 * scale, rel_tol=1e-6)
    assert all({e["bitwidth"] for e in v} == {4} for v in params.values())

    _find(r"layer +weights +on grid +not nearest", out)
    rows = re.findall(rf"^(\S+) +(\d+) +(\w+) +{NUMBER}%$", out, re.M)
    assert [(name, int(n)) for name, n, _, _ in rows] == list(LAYERS.items())
    for name, _, on_grid, pct in rows:
        assert on_grid == "True", name
        assert 1.0 <= float(pct) <= 20.0, (name, pct)  # measured 3.5-6.8% / 5.0-8.3%
    flipped, total, pct = _find(rf"rounded the other way: (\d+) of (\d+) weights \({NUMBER}%\)",
                                out)
    assert int(total) == sum(LAYERS.values())
    assert 2.0 <= float(pct) <= 15.0                    # measured 625 (5.3%) / 630 (5.3%)
    assert math.isclose(100 * int(flipped) / int(total), float(pct), abs_tol=0.06)
