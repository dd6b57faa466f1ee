"""Checks tutorials/cross_layer_equalization.py's printed figures."""
from __future__ import annotations

import pathlib

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

PAIRS = ("features.0 -> features.3, features.3 -> features.6, features.6 -> features.9, "
         "features.9 -> features.12, features.15.conv.0 -> features.15.conv.3, "
         "features.15.conv.3 -> features.15.conv.6")


def check(out: str, folder: pathlib.Path) -> None:
    del folder  # the tutorial writes no file
    # "measured": with 1 / 2 torch threads (the training sums in another order)
    fp32, spread, _ = _find(rf"FP32 \(ReLU net\): {NUMBER}%; per-channel weight ranges after BN "
                            rf"folding at most {NUMBER}x apart \((\S+)\)", out)
    assert float(fp32) >= 97.0                                     # measured 98.22 / 98.44
    assert 2.0 <= float(spread) <= 20.0   # a trained net's channels are fairly even: 5.0 / 4.8
    acc_before, db_before = _find(rf"per-tensor W8A8 before CLE: {NUMBER}%, logits SQNR "
                                  rf"{NUMBER} dB", out)
    assert float(acc_before) >= float(fp32) - 1.5                  # measured 98.44 / 98.44
    assert float(db_before) >= 25.0                                # measured 27.7 / 28.3
    folded, scaled, absorbed = _find(r"equalize_model: (\d+) batch norms folded, (\d+) pairs "
                                     r"scaled, (\d+) high biases absorbed", out)
    assert (int(folded), int(scaled), int(absorbed)) == (8, 6, 0)
    (pairs,) = _find(r"scaled pairs: (.*)", out)
    assert pairs == PAIRS
    diff, largest = _find(rf"float logits after CLE: max abs difference {NUMBER} \(logits up "
                          rf"to {NUMBER}\)", out)
    assert float(diff) <= 1e-4 * float(largest)  # the float model unchanged: 4.8e-06 of 12.1
    acc_after, db_after, spread_after, _ = _find(
        rf"per-tensor W8A8 after CLE: {NUMBER}%, logits SQNR {NUMBER} dB; ranges at most "
        rf"{NUMBER}x apart \((\S+)\)", out)
    assert float(acc_after) >= float(fp32) - 1.5                   # measured 98.00 / 98.44
    # "under a dB, either way": measured 27.7 -> 28.4 / 28.3 -> 27.9
    assert abs(float(db_after) - float(db_before)) <= 1.5 and float(db_after) >= 25.0
    assert float(spread_after) < float(spread)                     # measured 2.0 / 2.1

    rescaled, low, high, diff, spread_imb, worst = _find(
        rf"rescaled (\d+) batch norms' channels by factors in \[1/{NUMBER}, {NUMBER}\] \(and "
        rf"the next convs' inputs by the inverse\): float logits max abs difference {NUMBER}; "
        rf"ranges after BN folding at most {NUMBER}x apart \((\S+)\)", out)
    assert int(rescaled) == 6 and low == high == "10"
    assert float(diff) <= 1e-4 * float(largest)    # function-preserving: 3.1e-06 / 3.0e-06
    assert float(spread_imb) >= 500.0              # measured 5024 / 4840 (a depthwise layer)
    assert worst.startswith("features.")
    acc_imb, db_imb = _find(rf"imbalanced, per-tensor W8A8 before CLE: {NUMBER}%, logits SQNR "
                            rf"{NUMBER} dB", out)
    assert float(acc_imb) <= 50.0 and float(db_imb) <= 5.0  # measured 13.11% -1.7 / 22.89% -1.2
    scaled, acc_rec, db_rec, spread_rec, _, diff = _find(
        rf"imbalanced, per-tensor W8A8 after CLE \((\d+) pairs scaled\): {NUMBER}%, logits SQNR "
        rf"{NUMBER} dB; ranges at most {NUMBER}x apart \((\S+)\); float logits max abs "
        rf"difference {NUMBER}", out)
    assert int(scaled) == 6 and float(diff) <= 1e-4 * float(largest)
    assert float(db_rec) >= float(db_imb) + 20.0 and float(acc_rec) >= float(fp32) - 1.5
    # CLE undoes the planted factors: back to the equalized trained net (measured equal)
    assert abs(float(db_rec) - float(db_after)) <= 0.3 and float(spread_rec) <= 3.0

    fp32_6, db_6 = _find(rf"FP32 \(ReLU6 net\): {NUMBER}%; per-tensor W8A8 without CLE: logits "
                         rf"SQNR {NUMBER} dB", out)
    assert float(fp32_6) >= 97.0 and float(db_6) >= 25.0   # measured 98.44 29.5 / 98.89 30.1
    scaled, skipped, first, second, reason = _find(
        r"ReLU6, default \(AIMET 2\.4\+\): (\d+) pairs scaled, (\d+) left alone, e\.g\. (\S+) -> "
        r"(\S+) \((.*)\)\n", out)
    assert (int(scaled), int(skipped)) == (0, 6)
    assert (first, second) == ("features.0", "features.3") and "ReLU6" in reason
    (warning,) = _find(r"logged WARNING: (.*)", out)
    assert warning.startswith("cross-layer equalization left 6 layer pair(s) alone because a "
                              "ReLU6 sits between them") and "relu6_to_relu=True" in warning
    (diff,) = _find(rf"ReLU6, default: float logits max abs difference {NUMBER}", out)
    assert float(diff) <= 1e-4 * float(largest)                  # measured 5.0e-06 / 4.4e-06
    replaced, scaled = _find(r"ReLU6, relu6_to_relu=True \(AIMET < 2\.4\): (\d+) ReLU6 "
                             r"replaced, (\d+) pairs scaled", out)
    assert (int(replaced), int(scaled)) == (7, 6)
    acc_6, acc_relu, db_float, agree = _find(
        rf"float effect of ReLU6 -> ReLU: accuracy {NUMBER}% -> {NUMBER}%, logits SQNR vs the "
        rf"ReLU6 net {NUMBER} dB, same prediction on {NUMBER}% of the test images", out)
    assert acc_6 == fp32_6 and abs(float(acc_relu) - float(acc_6)) <= 1.0  # 98.44->98.22 / =
    # the float model changed (pre-activations above 6 exist), a little: 35.3 dB / 35.3 dB
    assert 25.0 <= float(db_float) <= 60.0 and float(agree) >= 99.0   # 99.78% / 100.00%
    acc_q, db_q = _find(rf"ReLU6 -> ReLU \+ CLE, per-tensor W8A8: {NUMBER}%, logits SQNR "
                        rf"{NUMBER} dB vs the ReLU6 net", out)
    assert float(acc_q) >= float(fp32_6) - 1.5 and float(db_q) >= 22.0   # 98.22 27.0 / 98.89 27.0
    assert float(db_q) < float(db_6)  # "here the trade does not pay": 27.0 < 29.5 / 27.0 < 30.1
