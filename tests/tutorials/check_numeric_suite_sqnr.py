"""Checks tutorials/numeric_suite_sqnr.py's printed figures and files."""
from __future__ import annotations

import json
import pathlib
import re

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find


def check(out: str, folder: pathlib.Path) -> None:
    quantizers, enabled = _find(r"W8A8, (\d+) quantizers \((\d+) enabled\)", out)
    # 118 + one output quantizer per depthwise conv (17): supergroups never start at one
    assert int(quantizers) == int(enabled) == 135
    layers, mean, worst = _find(rf"weights: (\d+) layers, mean SQNR {NUMBER} dB, worst \S+ at "
                                rf"{NUMBER} dB", out)
    assert int(layers) == 53                        # 52 convs + the classifier
    assert float(mean) >= 43.0 and float(worst) >= 40.0  # measured 45.1 / 42.0
    count, first, first_layer, last, last_layer = _find(
        rf"activations \(unshadowed\): (\d+) quantized layers, SQNR falls from {NUMBER} dB at "
        rf"(\S+) to {NUMBER} dB at (\S+)", out)
    assert int(count) == 81   # 64 + mobilenet_v2's 17 depthwise convs, quantized on their own
    assert (first_layer, last_layer) == ("features.0.2", "classifier.1")
    assert float(first) >= 35.0 and float(last) >= 5.0  # measured 37.8 / 7.1
    assert float(first) > float(last) + 20.0             # the error accumulates through the net
    shadowed, unshadowed, adds, add_layer, add_sqnr = _find(
        rf"activations \(shadowed\): mean SQNR {NUMBER} dB vs {NUMBER} dB unshadowed; (\d+) "
        rf"residual adds shadowed, e\.g\. (\S+) at {NUMBER} dB", out)
    assert float(shadowed) >= 35.0 and float(unshadowed) >= 13.0  # measured 37.4 / 15.2
    assert float(shadowed) >= float(unshadowed) + 15.0  # a layer's own error is far smaller
    assert int(adds) == 10 and add_layer == "features.3.module_add"
    assert float(add_sqnr) >= 33.0                       # measured 36.6
    (table_layers,) = _find(r"'int8' vs 'fp32': (\d+) layers, 3 batch\(es\); worst first by act "
                            r"sqnr", out)
    assert int(table_layers) == 99
    rows = re.findall(rf"^\d+\s+(\S+)\s+\S+\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", out, re.M)
    assert len(rows) == 5
    act = [float(r[1]) for r in rows]
    assert act == sorted(act) and act[0] >= 3.0          # worst first; measured 4.25 dB
    assert all(float(r[3]) >= 30.0 for r in rows)       # shadowed SQNR of the same layers
    (worst_alone,) = _find(r"worst layer on its own \(shadowed\): (\S+)", out)
    assert re.fullmatch(r"features\.\d+\.conv\.\d+(\.0)?", worst_alone)  # a (depthwise) conv
    assert sorted(p.name for p in folder.iterdir()) == [
        "activations.png", "activations_shadowed.png", "report.json", "report.png", "weights.png"]
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    report = json.loads((folder / "report.json").read_text())
    assert (report["model_a"], report["model_b"], report["num_batches"]) == ("fp32", "int8", 3)
    assert len(report["layers"]) == int(table_layers) and report["unmatched"] == []
