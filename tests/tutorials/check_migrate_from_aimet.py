"""Checks tutorials/migrate_from_aimet.py's printed figures and the export it wrote."""
from __future__ import annotations

import json
import pathlib

import onnx

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

PREFIX = "quantized_resnet18"
FILES = [f"{PREFIX}.encodings", f"{PREFIX}.onnx", f"{PREFIX}.pth", f"{PREFIX}_qdq.onnx",
         f"{PREFIX}_torch.encodings"]


def check(out: str, folder: pathlib.Path) -> None:
    (quantizers,) = _find(r"AIMET's PTQ script ran with fxquant imports: (\d+) quantizers", out)
    # 21 weights (20 convs + fc), the input, 30 layer outputs (supergroups share one)
    assert int(quantizers) == 52
    (count,) = _find(r"sim\.export wrote (\d+) files:", out)
    assert int(count) == len(FILES)
    for name in FILES:
        _find(rf"\n  {name} +\S", out)   # each listed with its note
    version, params, acts = _find(
        rf"{PREFIX}\.encodings: version (\S+), keys \['activation_encodings', 'excluded_layers', "
        r"'param_encodings', 'quantizer_args', 'version'\]; (\d+) param and (\d+) activation "
        r"encodings", out)
    assert version == "1.0.0" and (int(params), int(acts)) == (21, 31)
    assert int(params) + int(acts) == int(quantizers)   # every enabled quantizer is in the file
    _find(r"  conv1\.weight: PER_CHANNEL, 64 scales, bw 8, is_sym True", out)
    scale, offset = _find(rf"  x \(the model input\): PER_TENSOR, scale {NUMBER}, offset "
                          r"(-?\d+)", out)
    assert 0.0 < float(scale) < 0.1 and -128 < int(offset) < 0   # measured 0.03387 / -125
    tensors, names, example = _find(
        rf"names that are tensors of {PREFIX}\.onnx: (\d+) of (\d+); e\.g\. '(\S+)' \(AIMET: "
        r"'/layer1/layer1\.0/relu/Relu_output_0'\)", out)
    assert int(tensors) == int(names) == int(quantizers) and example == "layer1.0.relu"
    t_params, t_modules, split, n_split, n_adds, first_add, last_add = _find(
        rf"{PREFIX}_torch\.encodings: version 1\.0\.0, (\d+) parameters and (\d+) modules, "
        r"e\.g\. '(\S+)' \((\d+) split relus\); (\d+) adds, '(\S+)' to '(\S+)'", out)
    assert (int(t_params), int(t_modules)) == (21, 31)
    assert split == "layer1.0.relu_1" and int(n_split) == int(n_adds) == 8   # 8 BasicBlocks
    assert (first_add, last_add) == ("layer1.0.module_add", "layer4.1.module_add")
    (same,) = _find(r"reloaded sim \(\.pth \+ _torch\.encodings\) bit-identical to the exported "
                    r"one: (\w+)", out)
    assert same == "True"
    sqnr, agree, inputs = _find(
        rf"{PREFIX}_qdq\.onnx in ONNX Runtime vs the sim: logits SQNR {NUMBER} dB, top-1 agrees "
        r"on (\d+)% of (\d+) inputs", out)
    assert float(sqnr) >= 28.0 and int(inputs) == 16   # measured 31.3 dB (ORT_DISABLE_ALL)
    assert int(agree) >= 87                            # measured 100%: at most 2 of 16 differ
    (diff,) = _find(rf"{PREFIX}\.onnx in ONNX Runtime vs the float model: max \|diff\| {NUMBER}",
                    out)
    assert float(diff) < 1e-4                          # measured 8.6e-06: float rounding only

    export = folder / "export"
    assert sorted(p.name for p in export.iterdir()) == FILES
    encodings = json.loads((export / f"{PREFIX}.encodings").read_text())
    assert encodings["version"] == "1.0.0"
    assert len(encodings["param_encodings"]) == 21 and len(encodings["activation_encodings"]) == 31
    for entry in encodings["param_encodings"] + encodings["activation_encodings"]:
        assert {"name", "dtype", "bw", "is_sym", "scale", "offset", "enc_type"} <= set(entry)
        assert len(entry["scale"]) == len(entry["offset"]) >= 1
    torch_encodings = json.loads((export / f"{PREFIX}_torch.encodings").read_text())
    assert "layer1.0.relu_1" in torch_encodings["activation_encodings"]
    assert "conv1.weight" in torch_encodings["param_encodings"]
    for name in (f"{PREFIX}.onnx", f"{PREFIX}_qdq.onnx"):
        onnx.checker.check_model(str(export / name))
    qdq_ops = [n.op_type for n in onnx.load(str(export / f"{PREFIX}_qdq.onnx")).graph.node]
    assert qdq_ops.count("QuantizeLinear") >= 31 and qdq_ops.count("DequantizeLinear") >= 52
