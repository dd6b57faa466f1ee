"""Checks tutorials/seq_mse.py's printed figures."""
from __future__ import annotations

import pathlib

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find


def _row(label: str, out: str) -> tuple[float, float]:
    acc, sqnr = _find(rf"W4A8 {label} *: accuracy {NUMBER}%, logits SQNR {NUMBER} dB", out)
    return float(acc), float(sqnr)


def check(out: str, folder: pathlib.Path) -> None:
    del folder  # the tutorial writes no file
    # "measured": with 1 / 2 torch threads (the training sums in another order)
    (fp32,) = _find(rf"FP32: {NUMBER}%", out)
    assert float(fp32) >= 97.0                                         # measured 98.89 / 98.89
    acc_tf, db_tf = _row(r"min-max \(tf\)", out)
    acc_tfe, db_tfe = _row("tf_enhanced", out)
    # 4-bit weights cost: measured 98.89% 11.6 dB / 97.56% 9.8 dB (min-max),
    # 97.78% 12.0 dB / 95.78% 8.0 dB (tf_enhanced)
    assert max(db_tf, db_tfe) <= 16.0 and min(acc_tf, acc_tfe) >= 90.0
    frozen, weights = _find(r"apply_seq_mse: (\d+) of (\d+) weight encodings chosen and frozen",
                            out)
    assert int(frozen) == int(weights) == 9
    acc_seq, db_seq = _row("sequential MSE", out)
    # measured 98.22% 14.5 dB / 98.44% 13.3 dB: +2.9 / +3.5 dB over min-max, +2.5 / +5.3 over
    # tf_enhanced
    assert db_seq >= db_tf + 2.0 and db_seq >= db_tfe + 1.5
    assert acc_seq >= float(fp32) - 2.0
    channels, median, narrowest, full = _find(
        rf"chosen ranges: (\d+) channels, median {NUMBER}% of min-max, narrowest {NUMBER}%, "
        rf"(\d+) kept at 100%", out)
    assert int(channels) == 16 + 16 + 32 + 32 + 32 + 128 + 128 + 32 + 10   # per channel
    # measured median 95% / 95%, narrowest 75% / 75%, 169 / 184 at 100%
    assert 70.0 <= float(median) < 100.0 and 5.0 <= float(narrowest) < float(median)
    assert 0 < int(full) < int(channels)
    assert float(narrowest) % 5 == 0  # candidates are k/20 of min-max: multiples of 5%
