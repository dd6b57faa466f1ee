"""Checks tutorials/ptq_export_ort.py's printed figures and exported files."""
from __future__ import annotations

import json
import math
import pathlib
import re

import onnx
from onnx import numpy_helper

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

SQNR = r"(inf|-?[\d.]+)"  # the sim and ONNX Runtime are bit-equal here: "inf dB"


def check(out: str, folder: pathlib.Path) -> None:
    # "measured" figures: with 1 / 2 torch threads (the training sums in another order)
    fp32, images = _find(rf"FP32 accuracy: {NUMBER}% on (\d+) test images", out)
    assert int(images) == 450 and float(fp32) >= 96.0           # measured 97.56 / 96.67
    quantizers, enabled = _find(r"tf_enhanced, W8A8, (\d+) quantizers \((\d+) enabled\)", out)
    assert int(quantizers) == int(enabled) == 11  # input, 4 weights, 6 activations (supergroups)
    (listing,) = _find(r"quantizers: (.*)", out)
    assert listing == ("x (input), conv1.weight (param), module_relu (output), conv2.weight "
                       "(param), conv2 (output), module_relu_1 (output), conv3.weight (param), "
                       "module_relu_2 (output), module_pool (output), fc.weight (param), "
                       "fc (output)")
    (sim_acc,) = _find(rf"W8A8 sim \(tf_enhanced\) accuracy: {NUMBER}%", out)
    assert float(sim_acc) >= float(fp32) - 1.0                  # measured 97.56 / 96.67
    schemes = re.findall(rf"^scheme (\S+) +accuracy {NUMBER}%, logits SQNR vs FP32 {NUMBER} dB",
                         out, re.M)
    assert [s[0] for s in schemes] == ["tf", "tf_enhanced", "percentile", "mse"]
    assert all(float(acc) >= 96.0 for _, acc, _ in schemes)    # measured 97.33+ / 96.67
    assert all(float(sqnr) >= 33.0 for _, _, sqnr in schemes)  # measured 36.8+ / 35.8+
    assert dict((s, a) for s, a, _ in schemes)["tf_enhanced"] == sim_acc

    (exported,) = _find(r"exported: (.*)", out)
    assert exported == ("encodings=digits.encodings, onnx=digits.onnx, pth=digits.pth, "
                        "qdq_onnx=digits_qdq.onnx, torch_encodings=digits_torch.encodings")
    export = folder / "export"
    assert sorted(p.name for p in export.iterdir()) == [
        "digits.encodings", "digits.onnx", "digits.pth", "digits_qdq.onnx",
        "digits_torch.encodings"]

    bw, scale, offset, low, high = _find(
        rf"encoding of 'conv2': bitwidth (\d+), scale {NUMBER}, offset (-?\d+), symmetric False: "
        rf"256 steps from {NUMBER} to {NUMBER}", out)
    assert int(bw) == 8 and float(low) < 0.0 < float(high)  # conv2 is before the ReLU
    assert math.isclose(float(high) - float(low), 255 * float(scale), rel_tol=1e-3)
    encodings = json.loads((export / "digits.encodings").read_text())
    assert encodings["version"] == "1.0.0"
    conv2 = next(e for e in encodings["activation_encodings"] if e["name"] == "conv2")
    assert math.isclose(conv2["scale"][0], float(scale), rel_tol=1e-5)
    assert conv2["offset"] == [int(offset)] and conv2["bw"] == 8
    count, named, op, inputs = _find(
        r"(\d+) encodings, (\d+) of them named by a tensor of digits\.onnx; 'conv2' is the "
        r"output of its (\w+) node \(inputs (\[.*?\])\)", out)
    assert int(count) == int(named) == int(quantizers)  # every enabled quantizer, every name
    assert op == "Conv" and inputs == "['module_relu', 'conv2.weight', 'conv2.bias']"
    assert len(encodings["activation_encodings"]) + len(encodings["param_encodings"]) == 11

    qdq_scale, zero_point, dtype = _find(
        rf"in digits_qdq\.onnx: conv2/scale {NUMBER}, conv2/zero_point (\d+) \((\w+)\)", out)
    assert qdq_scale == scale and int(zero_point) == -int(offset) and dtype == "uint8"
    qdq = onnx.load(str(export / "digits_qdq.onnx"))
    onnx.checker.check_model(qdq)
    initializers = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    assert int(initializers["conv2/zero_point"]) == int(zero_point)
    ops = [node.op_type for node in qdq.graph.node]
    assert ops.count("QuantizeLinear") == 7   # the 7 activation encodings
    assert ops.count("DequantizeLinear") == 7 + 4  # and 4 integer weights

    (ort_acc,) = _find(rf"ONNX Runtime \(QDQ, ORT_DISABLE_ALL\) accuracy: {NUMBER}%", out)
    assert abs(float(ort_acc) - float(sim_acc)) <= 0.5  # measured equal
    agree, sqnr, equal = _find(
        rf"sim vs ONNX Runtime: same prediction on {NUMBER}% of the test images, logits SQNR "
        rf"{SQNR} dB, bit-equal logits {NUMBER}%", out)
    assert float(agree) >= 99.5                                    # measured 100.00
    assert float(sqnr) >= 40.0 and float(equal) >= 95.0  # measured inf / 100.00: bit-equal
    int_acc, int_agree, int_sqnr = _find(
        rf"ONNX Runtime integer kernels \(ORT_ENABLE_ALL\): accuracy {NUMBER}%, same prediction "
        rf"as the sim on {NUMBER}%, logits SQNR {SQNR} dB", out)
    # CPU-dependent: measured 95.56% / 97.33% / 13.0 dB (1 thread), 96.67% / 98.89% / 14.8 dB
    # (2 threads) on an AVX2-only AMD EPYC (ORT's u8s8 saturation); closer to the sim with VNNI
    assert float(int_acc) >= 93.0 and float(int_agree) >= 95.0 and float(int_sqnr) >= 10.0
