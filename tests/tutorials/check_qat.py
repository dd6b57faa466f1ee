"""Checks tutorials/qat.py's printed figures and exported files."""
from __future__ import annotations

import json
import pathlib

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

SQNR = r"(inf|-?[\d.]+)"  # the trained sim and ONNX Runtime are bit-equal here: "inf dB"


def check(out: str, folder: pathlib.Path) -> None:
    # measured with 1 / 2 torch threads (training sums in a different order): 97.56 / 96.67 FP32
    fp32, w8a8, w3a8 = _find(rf"FP32 {NUMBER}%; PTQ \(min-max calibration, per-tensor weights\): "
                             rf"W8A8 {NUMBER}%, W3A8 {NUMBER}%", out)
    assert float(fp32) >= 96.0 and float(w8a8) >= float(fp32) - 1.0  # measured 97.56 / 96.89
    assert float(w3a8) <= float(fp32) - 10.0  # 3-bit weights cost PTQ: measured 80.44 / 72.67
    epochs, start, fixed = _find(rf"QAT, fixed ranges \((\d+) epochs\): W3A8 {NUMBER}% -> "
                                 rf"{NUMBER}%", out)
    assert int(epochs) == 4 and start == w3a8
    assert float(fixed) >= 95.0 and float(fixed) >= float(fp32) - 2.0  # measured 96.67 / 97.78
    epochs, learned, start, qat = _find(
        rf"QAT, learned ranges \((\d+) epochs, (\d+) trainable scales and offsets\): W3A8 "
        rf"{NUMBER}% -> {NUMBER}%", out)
    assert int(epochs) == 4 and start == w3a8  # range learning starts from min-max ranges
    assert int(learned) == 11 + 7  # a scale per quantizer, an offset per asymmetric activation
    assert float(qat) >= 95.0 and float(qat) >= float(fp32) - 2.0    # measured 96.22 / 96.89
    most, most_name, before, after, median = _find(
        rf"scales moved by up to {NUMBER}% \((\S+): {NUMBER} -> {NUMBER}\), median {NUMBER}%",
        out)
    assert 1.0 <= float(most) <= 50.0 and most_name == "x"  # measured 11.5% / 16.7%
    assert float(median) < float(most)                         # measured 0.6% / 0.5%
    assert float(before) == 0.0039216  # 1/255: min-max of images in [0, 1], 8 bits

    opset, stored, low, high, activations = _find(
        r"QDQ model \(opset (\d+)\): conv2\.weight stored as (\w+) in \[(-?\d+), (-?\d+)\], "
        r"activations quantized to (\w+)", out)
    assert int(opset) >= 21 and stored == "INT8" and activations == "UINT8"
    assert -4 <= int(low) < 0 < int(high) <= 3  # 3-bit signed symmetric weights
    ort_acc, sim_acc, agree, sqnr = _find(
        rf"ONNX Runtime \(QDQ, ORT_DISABLE_ALL\): {NUMBER}% \(sim {NUMBER}%\), same prediction "
        rf"on {NUMBER}% of the test images, logits SQNR {SQNR} dB", out)
    assert sim_acc == qat and abs(float(ort_acc) - float(sim_acc)) <= 0.5
    assert float(agree) >= 99.5 and float(sqnr) >= 40.0     # measured 100.00% / inf: bit-equal
    export = folder / "export"
    assert sorted(p.name for p in export.iterdir()) == [
        "digits_w3a8_qat.encodings", "digits_w3a8_qat.onnx", "digits_w3a8_qat.pth",
        "digits_w3a8_qat_qdq.onnx", "digits_w3a8_qat_torch.encodings"]
    encodings = json.loads((export / "digits_w3a8_qat.encodings").read_text())
    assert {e["bw"] for e in encodings["param_encodings"]} == {3}
    assert {e["bw"] for e in encodings["activation_encodings"]} == {8}
    assert all(e["enc_type"] == "PER_TENSOR" for e in encodings["param_encodings"])
    assert encodings["quantizer_args"]["quant_scheme"] == "training_range_learning_with_tf_init"
    x = next(e for e in encodings["activation_encodings"] if e["name"] == "x")
    assert f"{x['scale'][0]:.5g}" == after  # the learned scale is what was exported
