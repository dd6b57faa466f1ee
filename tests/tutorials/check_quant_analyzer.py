"""Checks tutorials/quant_analyzer.py's printed figures and the analysis files it wrote."""
from __future__ import annotations

import json
import pathlib
import re

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

LAYERS = ["conv1", "relu1", "conv2", "relu2", "conv3", "relu3", "module_pool", "fc"]


def check(out: str, folder: pathlib.Path) -> None:
    (same,) = _find(r"FP32 outputs identical to the trained model: (\w+)", out)
    assert same == "True"   # the planted channel changes nothing in float
    fp32, w8a8, loss = (float(v) for v in _find(
        rf"accuracy: FP32 {NUMBER}%, W8A8 {NUMBER}%: quantization loses {NUMBER}%", out))
    assert fp32 >= 96.0                      # measured 98.00 (5 epochs)
    assert w8a8 <= 20.0                      # measured 10.89: chance level for 10 classes
    assert abs(fp32 - w8a8 - loss) < 0.02
    (evaluations,) = _find(r"analysis: (\d+) evaluations in [\d.]+ s", out)
    # 4 sensitivity scores + 8 layers enabled + 8 disabled + 10 what-ifs
    assert int(evaluations) == 30

    w_alone, a_alone, v_fp32, v_both = (float(v) for v in _find(
        rf"verdict: activations hurt more: W8 alone keeps {NUMBER}, A8 alone {NUMBER} "
        rf"\(FP32 {NUMBER}, both {NUMBER}\)", out))
    assert abs(v_fp32 * 100 - fp32) < 0.01 and abs(v_both * 100 - w8a8) < 0.01
    assert w_alone >= v_fp32 - 0.01          # weights cost nothing: measured 0.98 / 0.98
    assert a_alone <= 0.2                    # the activations are the whole loss: measured 0.1089

    (ranked,) = _find(r"(\d+) layers ranked, worst first:", out)
    assert int(ranked) == len(LAYERS)
    ranking = re.findall(rf"\n  (\S+) +left in float: {NUMBER}%, alone quantized: {NUMBER}%",
                         out)
    # relu1 first; the others tie (each alone in float leaves relu1 broken) and keep graph order
    assert [r[0] for r in ranking] == ["relu1", "conv1", "conv2"]
    _, worst_disabled, worst_enabled = ranking[0]
    assert float(worst_disabled) >= fp32 - 1.0   # relu1 alone in float recovers it all
    assert float(worst_enabled) <= 20.0          # relu1 alone quantized breaks it all
    mse_conv1, mse_relu1, mse_conv2 = (float(v) for v in _find(
        rf"output MSE in graph order: conv1 {NUMBER} -> relu1 {NUMBER} -> conv2 {NUMBER}", out))
    assert mse_conv1 < 1e-3 and mse_relu1 > 0.1      # measured 1.87e-05 / 0.284
    assert mse_relu1 > 1000 * mse_conv1 and mse_conv2 > mse_relu1  # starts at relu1, propagates
    low, high, step = (float(v) for v in _find(
        rf"worst layer: relu1, its 8-bit output encoding spans \[{NUMBER}, {NUMBER}\], a step "
        rf"of {NUMBER}", out))
    assert low == 0.0 and abs(high - 2000.0) < 2.0 and abs(step - 2000.0 / 255) < 0.01

    whatifs, best_score, changed = _find(
        rf"measured (\d+) what-ifs; best: relu1 at 16-bit activations -> {NUMBER}% \((\d+) "
        r"quantizer changed\)", out)
    # what-ifs for the 3 worst: relu1 (no weights) A16; conv1, conv2: A16, W16, W16A16; the
    # three together: A16, W16, W16A16
    assert int(whatifs) == 10 and int(changed) == 1
    assert float(best_score) >= fp32 - 1.0           # measured 98.00
    (layers_section,) = _find(r"suggested_config\.json layers section: (.+)", out)
    assert json.loads(layers_section) == {"relu1": {"activation_bw": 16}}
    recovered, relu1_bits, other_bits = _find(
        rf"fresh sim with the suggested config: {NUMBER}% \(FP32 [\d.]+%, W8A8 [\d.]+%\); relu1 "
        r"output at (\d+) bits, the other activations at (\d+)", out)
    assert (int(relu1_bits), int(other_bits)) == (16, 8)
    assert float(recovered) >= fp32 - 1.0            # measured 98.00: everything recovered
    assert abs(float(recovered) - float(best_score)) < 0.5   # the what-if predicted it

    (count,) = _find(r"(\d+) analysis files in \S+: open index\.html", out)
    results = folder / "analysis"
    files = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert int(count) == len(files) == 16
    top = [f"per_layer_{k}.{ext}" for k in ("mse_loss", "quant_disabled", "quant_enabled")
           for ext in ("html", "json")]
    assert [f for f in files if "/" not in f] == sorted(
        ["index.html", "suggested_config.json", "summary.json", *top])
    assert "<html" in (results / "index.html").read_text().lower()
    summary = json.loads((results / "summary.json").read_text())
    assert summary["culprits"][0] == "relu1" and sorted(summary["culprits"]) == sorted(LAYERS)
    assert summary["evaluations"] == int(evaluations)
    assert summary["best_suggestion"]["layers"] == ["relu1"]
    enabled = json.loads((results / "per_layer_quant_enabled.json").read_text())
    assert list(enabled) == LAYERS
    acts = json.loads((results / "min_max_ranges/activations.json").read_text())
    assert abs(acts["relu1_output_0"][1] - 2000.0) < 2.0
    config = json.loads((results / "suggested_config.json").read_text())
    assert config["layers"] == {"relu1": {"activation_bw": 16}} and "defaults" in config
