"""Checks tutorials/bias_correction.py's printed figures."""
from __future__ import annotations

import pathlib
import re

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

LAYERS = ["features.0", "features.3", "features.6", "features.9", "features.12",
          "features.15.conv.0", "features.15.conv.3", "features.15.conv.6", "classifier"]


def _row(label: str, out: str) -> tuple[float, float, float]:
    acc, sqnr, error, layers = _find(
        rf"{label}: accuracy {NUMBER}%, logits SQNR {NUMBER} dB, per-channel mean error "
        rf"{NUMBER} \(RMS over channels, root-sum-square over (\d+) layers\)", out)
    assert int(layers) == len(LAYERS)
    return float(acc), float(sqnr), float(error)


def check(out: str, folder: pathlib.Path) -> None:
    del folder  # the tutorial writes no file
    # "measured": with 1 / 2 torch threads (the training sums in another order)
    (fp32,) = _find(rf"FP32: {NUMBER}%", out)
    assert float(fp32) >= 97.0                                       # measured 98.44 / 98.89
    acc_0, db_0, err_0 = _row("W4A8 per-tensor, no correction", out)
    # W4 per-tensor costs: measured 95.33% 7.9 dB 0.842 / 95.56% 8.3 dB 0.954
    assert db_0 <= 15.0 and err_0 >= 0.4
    acc_e, db_e, err_e = _row("W4A8 per-tensor, empirical correction", out)
    # measured 97.11% 12.4 dB 0.087 / 97.11% 12.8 dB 0.071 (9.7x / 13.4x less error)
    assert err_e <= err_0 / 6 and db_e >= db_0 + 3.0 and acc_e >= acc_0
    analytical, measured, which = _find(r"analytical: (\d+) layers from their batch norm, (\d+) "
                                        r"measured \((.*)\)", out)
    assert (int(analytical), int(measured)) == (7, 2)
    assert which == "features.0 (empirical), classifier (empirical)"
    acc_a, db_a, err_a = _row("W4A8 per-tensor, analytical correction", out)
    # measured 97.11% 12.3 dB 0.233 / 97.11% 12.3 dB 0.250 (3.6x / 3.8x less error)
    assert err_a <= err_0 / 2.5 and db_a >= db_0 + 3.0 and acc_a >= acc_0
    assert err_e < err_a  # the measured correction is the closer one on this net

    _find(r"layer +none +empirical +analytical", out)
    rows = re.findall(rf"^(\S+) +{NUMBER} +{NUMBER} +{NUMBER}$", out, re.M)
    assert [r[0] for r in rows] == LAYERS
    for name, none, emp, ana in rows:
        none, emp, ana = float(none), float(emp), float(ana)
        assert none >= 0.04, name                  # a real shift everywhere: >= 0.073 measured
        assert emp <= none / 5, name               # measured 8.8x (classifier) to 190x
        assert ana < none, name                    # measured 1.4x (features.12) to 76x
    assert float(rows[-1][1]) > float(rows[0][1])  # the shifts add up: 0.712 vs 0.094 / 0.832

    changed, total, biases, example = _find(
        r"changed by the empirical correction: (\d+) of (\d+) tensors, all biases: (\w+) \(e\.g\. "
        r"(.*)\)", out)
    assert int(changed) == len(LAYERS) and int(total) == 50 and biases == "True"
    assert example == "classifier.bias, features.1.bias, features.10.bias"  # convs: BN's β
