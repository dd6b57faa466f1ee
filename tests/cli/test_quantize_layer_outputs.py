"""`fxquant quantize`, `fxquant compare` and `fxquant layer-outputs` end to end."""
from __future__ import annotations

import json

import onnx
import pytest
import torch
from torchvision.io import write_png

from fxquant.cli import main


@pytest.mark.parametrize("command", ["quantize", "compare", "layer-outputs"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_quantize_random_data_writes_the_export(tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["quantize", "torchvision:resnet18", "--calib", "random:4x3x64x64", "--out",
                 str(out), "--batch-size", "4", "--scheme", "tf"]) == 0
    text = capsys.readouterr().out
    assert "act sqnr (dB)" in text and "W8A8" in text
    for name in ("model.onnx", "model.encodings", "model_qdq.onnx", "model_torch.encodings",
                 "sqnr.json"):
        assert (out / name).stat().st_size > 0, name
    onnx.checker.check_model(str(out / "model_qdq.onnx"))
    encodings = json.loads((out / "model.encodings").read_text())
    assert encodings["quantizer_args"]["per_channel_quantization"] is True
    assert len(json.loads((out / "sqnr.json").read_text())["layers"]) == 39


def test_quantize_a_folder_of_png_images_per_tensor(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(8):
        write_png(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=gen),
                  str(images / f"{i}.png"))
    out = tmp_path / "export"
    assert main(["quantize", "torchvision:mobilenet_v2", "--calib", str(images), "--out",
                 str(out), "--image-size", "32", "--batch-size", "4", "--per-tensor",
                 "--prefix", "mnv2"]) == 0
    encodings = json.loads((out / "mnv2.encodings").read_text())
    assert encodings["quantizer_args"]["per_channel_quantization"] is False
    assert (out / "mnv2_qdq.onnx").exists()


def test_compare_prints_and_writes_the_sqnr_table(tmp_path, capsys):
    assert main(["compare", "tests.models:ConvBnNet", "--calib", "random:4x3x16x16",
                 "--json", str(tmp_path / "sqnr.json"), "--top", "3"]) == 0
    assert "'sim' vs 'fp32'" in capsys.readouterr().out
    assert json.loads((tmp_path / "sqnr.json").read_text())["layers"]


def test_layer_outputs_torch_and_onnx_runtime_line_up(tmp_path, capsys):
    export = tmp_path / "export"
    assert main(["quantize", "tests.models:ConvBnNet", "--calib", "random:4x3x16x16", "--out",
                 str(export)]) == 0
    assert main(["layer-outputs", "tests.models:ConvBnNet", "--data", "random:2x3x16x16",
                 "--out", str(tmp_path / "fp32")]) == 0
    assert main(["layer-outputs", str(export / "model.onnx"), "--data", "random:2x3x16x16",
                 "--out", str(tmp_path / "ort")]) == 0
    capsys.readouterr()
    assert main(["compare-outputs", str(tmp_path / "fp32"), str(tmp_path / "ort"), "--check",
                 "--threshold", "60"]) == 0
    assert "names in common 100.0%" in capsys.readouterr().out
    assert main(["layer-outputs", "tests.models:ConvBnNet", "--data", "random:2x3x16x16",
                 "--out", str(tmp_path / "fp32")]) == 2           # not empty, no --overwrite
    assert "overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["quantize", "torchvision:resnet18", "--calib", "random:1x3x16x16", "--out", "o",
      "--weights", "bad.pt"], r"fxquant quantize: error: --weights: .*bad.pt is not a state dict"),
    (["quantize", "torchvision:resnet18", "--calib", "no_such_folder", "--out", "o"],
     r"fxquant quantize: error: DATA: no_such_folder not found"),
    (["quantize", "torchvision:resnet18", "--calib", "random:1x3x16x16", "--out", "o",
      "--scheme", "minmax"], r"fxquant quantize: error: argument --scheme: invalid choice"),
    (["quantize", "torchvision:resnet18", "--calib", "random:1x3x16x16", "--out", "o",
      "--param-bw", "1"], r"fxquant quantize: error: .*bit"),
    (["layer-outputs", "missing.onnx", "--data", "random:1x3x8x8", "--out", "d"],
     r"fxquant layer-outputs: error: ONNX: file missing.onnx not found"),
    (["quantize", "torch:resnet18", "--calib", "random:1x3x8x8", "--out", "o"],
     r"fxquant quantize: error: MODEL: cannot import module 'torch:resnet18'|"
     r"fxquant quantize: error: MODEL: module 'torch' has no callable 'resnet18'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, match):
    import re

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"\x00\x01 not a state dict")
    assert _exit_status(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(match, err), err


def _exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:        # argparse's usage errors
        return int(exc.code)
