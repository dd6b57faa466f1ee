"""Checks tutorials/distributed_calibration.py's printed figures (two gloo ranks under torchrun)."""
from __future__ import annotations

import pathlib

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find


def check(out: str, folder: pathlib.Path) -> None:
    (fp32,) = _find(rf"2 ranks \(gloo\); FP32 test accuracy {NUMBER}%", out)
    assert float(fp32) > 95.0  # measured 97.56
    _find(r"calibration: 512 images, 256 per rank", out)
    for scheme in ("tf", "tf_enhanced"):
        (count,) = _find(rf"{scheme}: (\d+) encodings identical on 2 ranks: True", out)
        assert int(count) == 11  # every quantizer of the digits CNN's sim
        steps, sim_acc, alone_acc = _find(
            rf"{scheme}: vs one process on the union, largest difference {NUMBER} quantization "
            rf"steps \(bit-equal: \w+\); test accuracy {NUMBER}% \(one process {NUMBER}%\)", out)
        if scheme == "tf":
            assert float(steps) == 0.0  # min-max: the union's encodings, bit for bit
        else:
            assert float(steps) <= 8.0  # measured 0.00; histograms merge on a common grid
        assert float(sim_acc) > 95.0 and abs(float(sim_acc) - float(alone_acc)) <= 1.0
    files = {p.name for p in folder.glob("digits_w8a8*")}
    assert {"digits_w8a8.onnx", "digits_w8a8.encodings", "digits_w8a8_qdq.onnx"} <= files
    _find(r"rank 0 raised CalibrationError: rank\(s\) 1 failed during calibration", out)
