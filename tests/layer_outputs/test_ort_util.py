"""ONNX Runtime side: fxquant.onnx.LayerOutputUtil on float and QDQ models."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import fxquant.onnx
from fxquant.export import export_onnx
from fxquant.layer_outputs import (LayerOutputDump, LayerOutputUtil, NamingScheme,
                                   compare_layer_outputs)
from tests.layer_outputs.lo_helpers import build_sim, disable_all, inputs, tiny


def test_float_model_matches_torch_dump(tmp_path: os.PathLike[str]) -> None:
    model = tiny()
    xs = inputs(2)
    LayerOutputUtil(model, tmp_path / "torch", NamingScheme.ONNX,
                    dummy_input=xs[0]).generate_layer_outputs_batch(xs, progress=False)
    exported = export_onnx(model, xs[0], tmp_path / "tiny.onnx")
    util = fxquant.onnx.LayerOutputUtil(str(tmp_path / "tiny.onnx"), tmp_path / "ort")
    assert util.generate_layer_outputs_batch([x.numpy() for x in xs], progress=False) == 2
    assert "split" not in util.tensor_names  # a sequence value, not a tensor
    report = compare_layer_outputs(tmp_path / "torch", tmp_path / "ort")
    assert report.name_match == 1.0, (report.only_in_a, report.only_in_b)
    assert report.min_sqnr[1] >= 80
    assert len(report) == len(exported.layer_outputs)
    dump = LayerOutputDump(tmp_path / "ort")
    assert dump.manifest["producer"]["source"] == "onnxruntime"
    np.testing.assert_array_equal(dump.load_inputs(1)[0], xs[1].numpy())


def test_qdq_model_dumps_dequantized_values_under_float_names(tmp_path: os.PathLike[str]) -> None:
    sim = build_sim(tiny(), (2, 3, 16, 16))
    xs = inputs(2)
    files = sim.export(tmp_path / "out", "tiny", xs[0])
    LayerOutputUtil(sim, tmp_path / "sim", NamingScheme.ONNX,
                    dummy_input=xs[0]).generate_layer_outputs_batch(xs, progress=False)
    util = fxquant.onnx.LayerOutputUtil(files["qdq_onnx"], tmp_path / "ort",
                                        session_options=disable_all())
    util.generate_layer_outputs_batch(xs, progress=False)
    tensors = dict(fxquant.onnx.dumped_tensors(onnx.load(files["qdq_onnx"])))
    assert tensors["x"] == "x/dq" and tensors["relu"] == "relu/dq" and tensors["conv"] == "conv"
    assert tensors["fc"] == "fc"  # a graph output keeps its name; "fc/float" is not dumped
    assert not any("/" in name for name in tensors)
    report = compare_layer_outputs(tmp_path / "sim", tmp_path / "ort", encodings=files["encodings"])
    assert report.name_match == 1.0, (report.only_in_a, report.only_in_b)
    assert all(r.equal_fraction == 1.0 for r in report.layers), report.format()
    assert report["relu"].max_diff_lsb == 0 and report["relu"].scale is not None


def _third_party_qdq() -> onnx.ModelProto:
    """x -> Q -> DQ -> Relu -> Q -> DQ -> y, with a shape-only branch and ORT-quantizer names."""
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zp = numpy_helper.from_array(np.array(128, dtype=np.uint8), "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["x_QuantizeLinear_Output"]),
        helper.make_node("DequantizeLinear", ["x_QuantizeLinear_Output", "s", "zp"],
                         ["x_DequantizeLinear_Output"]),
        helper.make_node("Relu", ["x_DequantizeLinear_Output"], ["relu_out"]),
        helper.make_node("QuantizeLinear", ["relu_out", "s", "zp"], ["relu_out_q"]),
        helper.make_node("DequantizeLinear", ["relu_out_q", "s", "zp"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"],
                         value=numpy_helper.from_array(np.array([0.0], dtype=np.float32))),
        helper.make_node("Add", ["y", "zeros"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
                              [scale, zp])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_third_party_qdq_pairs_and_shape_only_values(tmp_path: os.PathLike[str]) -> None:
    model = _third_party_qdq()
    assert fxquant.onnx.dumped_tensors(model) == [
        ("x", "x_DequantizeLinear_Output"), ("y", "y"), ("z", "z")]
    util = fxquant.onnx.LayerOutputUtil(model, tmp_path / "d")
    x = np.array([[-1.0, 0.04, 0.26, 3.0]], dtype=np.float32)
    util.generate_layer_outputs({"x": x})
    dump = LayerOutputDump(tmp_path / "d")
    np.testing.assert_allclose(dump.load("x"), [[-1.0, 0.0, 0.3, 3.0]], atol=1e-6)
    np.testing.assert_allclose(dump.load("y"), [[0.0, 0.0, 0.3, 3.0]], atol=1e-6)
    assert len(model.graph.output) == 2  # the caller's model is not modified


def test_input_and_name_errors(tmp_path: os.PathLike[str]) -> None:
    model = _third_party_qdq()
    util = fxquant.onnx.LayerOutputUtil(model, tmp_path / "d", names=["y"])
    assert util.tensor_names == ["y"]
    with pytest.raises(ValueError, match=r"the model has 1 input\(s\) \['x'\], got 2"):
        util.generate_layer_outputs((np.zeros((1, 4), np.float32),) * 2)
    with pytest.raises(ValueError, match=r"inputs \['image'\] are not inputs of the model"):
        util.generate_layer_outputs({"image": np.zeros((1, 4), np.float32)})
    util.generate_layer_outputs(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"names \['relu'\] are not dumpable tensors"):
        fxquant.onnx.LayerOutputUtil(model, tmp_path / "e", names=["relu"])
    with pytest.raises(FileNotFoundError, match=r"ONNX model .*nope.onnx does not exist"):
        fxquant.onnx.LayerOutputUtil(tmp_path / "nope.onnx", tmp_path / "e")
    with pytest.raises(TypeError, match="expects an onnx.ModelProto or the path"):
        fxquant.onnx.LayerOutputUtil(42, tmp_path / "e")
