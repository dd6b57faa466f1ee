"""Checks tutorials/layer_outputs_ort.py's printed figures, dumps and reports."""
from __future__ import annotations

import json
import pathlib

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

SQNR = r"(inf|-?[\d.]+)"
NAMES = ["x", "conv1", "module_relu", "conv2", "module_add", "module_relu_1", "conv3",
         "module_relu_2", "module_pool", "module_flatten", "fc"]


def check(out: str, folder: pathlib.Path) -> None:
    (quantizers,) = _find(r"W8A8, (\d+) quantizers \(11 enabled\)\); exported digits_qdq\.onnx",
                          out)
    assert int(quantizers) == 11
    (layout,) = _find(r"sim dump: (.*)", out)
    assert layout == "inputs/, instances/, layer_output_name_order.json, manifest.json, outputs/"
    count, order = _find(r"(\d+) tensors per instance in topological order: (.*)", out)
    assert int(count) == len(NAMES) and order.split(", ") == NAMES
    same, files = _find(r"same file names in the ORT dump: (\w+) \((\d+) files", out)
    assert same == "True" and int(files) == len(NAMES)
    shape, distinct, distance, reader = _find(
        rf"conv2\.raw of image 0: shape (\[.*?\]), (\d+) distinct values, each on conv2's grid "
        rf"\(max distance {NUMBER} steps\); same values through fxquant\.LayerOutputDump: (\w+)",
        out)
    assert shape == "[1, 16, 8, 8]" and reader == "True"
    assert int(distinct) >= 50 and float(distance) < 1e-3  # measured 156 / 140, 7.6e-06 steps

    tensors, images, common, equal, lowest, lsb, first = _find(
        rf"sim vs ONNX Runtime: (\d+) tensors compared over (\d+) images, names in common "
        rf"{NUMBER}%, (\d+) tensors bit-equal, lowest SQNR {SQNR} dB, max difference {NUMBER} "
        rf"LSB, first divergence: (\S+)", out)
    assert int(tensors) == len(NAMES) and int(images) == 16 and float(common) == 100.0
    assert int(equal) >= len(NAMES) - 2 and float(lowest) >= 40.0  # measured 11 / inf
    assert float(lsb) <= 1.0 and first == "none"                     # measured 0 LSB
    report = json.loads((folder / "sim_vs_ort.json").read_text())
    assert [r["name"] for r in report["layers"]] == NAMES and report["first_divergence"] is None
    assert report["name_match"] == 1.0 and report["findings"] == []
    assert "<table" in (folder / "sim_vs_ort.html").read_text()
    for side in ("sim", "ort", "sim_conv2_scale_div4"):
        dump = folder / "dumps" / side
        manifest = json.loads((dump / "manifest.json").read_text())
        assert list(manifest["tensors"]) == NAMES, side
        assert len(list((dump / "outputs").iterdir())) == 16, side
        raw = dump / "outputs" / "layer_outputs_15" / "conv2.raw"
        assert raw.stat().st_size == 4 * 16 * 8 * 8, side  # float32, 1x16x8x8

    name, sqnr, lsb, upstream_equal, upstream, low, low_name = _find(
        rf"planted conv2 scale / 4: first divergence (\S+) \({NUMBER} dB, max {NUMBER} LSB\); "
        rf"tensors before it bit-equal: (\w+) \((.*?)\); lowest SQNR {NUMBER} dB at (\S+)", out)
    assert name == "conv2" and upstream_equal == "True"
    assert upstream == "x, conv1, module_relu"
    assert float(sqnr) <= 12.0 and float(lsb) >= 50.0  # measured 6.3 / 8.4 dB, 110 / 97 LSB
    assert float(low) <= float(sqnr) and low_name in NAMES[NAMES.index("conv2"):]
    planted = json.loads((folder / "planted.json").read_text())
    assert planted["first_divergence"] == "conv2"
    statuses = {r["name"]: r["status"] for r in planted["layers"]}
    assert statuses["conv2"] == "below_threshold" and statuses["module_relu"] == "ok"
