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
    """export_onnx(model) exports the model as written (its BN a BatchNormalization node), so
    the torch side dumps it unfolded (fold_batch_norms=False); both record the model input."""
    model = tiny()
    xs = inputs(2)
    LayerOutputUtil(model, tmp_path / "torch", NamingScheme.ONNX, dummy_input=xs[0],
                    fold_batch_norms=False).generate_layer_outputs_batch(xs, progress=False)
    exported = export_onnx(model, xs[0], tmp_path / "tiny.onnx")
    util = fxquant.onnx.LayerOutputUtil(str(tmp_path / "tiny.onnx"), tmp_path / "ort")
    assert util.generate_layer_outputs_batch([x.numpy() for x in xs], progress=False) == 2
    assert "split" not in util.tensor_names  # a sequence value, not a tensor
    assert util.tensor_names[0] == "x" and "bn" in util.tensor_names
    report = compare_layer_outputs(tmp_path / "torch", tmp_path / "ort")
    assert report.name_match == 1.0, (report.only_in_a, report.only_in_b)
    assert report.min_sqnr[1] >= 80
    assert len(report) == len(exported.layer_outputs) + 1  # the layers and the model input x
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


def test_import_fxquant_alone_makes_fxquant_onnx_usable(tmp_path: os.PathLike[str]) -> None:
    """Issue 10 item 8: the README's `import fxquant` then `fxquant.onnx.LayerOutputUtil`; inside
    the package `onnx` still is the onnx package."""
    import subprocess
    import sys

    code = ("import fxquant, onnx, fxquant.export.qdq as q\n"
            "assert fxquant.onnx.LayerOutputUtil.__module__ == 'fxquant.layer_outputs.ort_util'\n"
            "import fxquant.layer_outputs.ort_util as u\n"
            "assert u.onnx is onnx and q.onnx is onnx, (u.onnx, q.onnx)\n"
            "print('ok')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_aimet_keyword_names_and_positional_device(tmp_path: os.PathLike[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """AIMET: LayerOutputUtil(model=..., dir_path=..., device=0); fxquant's positional
    (model, dir_path, providers) and the older model_or_path= keep working."""
    import onnxruntime as ort

    x = np.array([[-1.0, 0.04, 0.26, 3.0]], dtype=np.float32)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    util = fxquant.onnx.LayerOutputUtil(model=_third_party_qdq(), dir_path=tmp_path / "a",
                                        device=0)
    assert util.session.get_providers()[0] == ("CUDAExecutionProvider" if cuda
                                               else "CPUExecutionProvider")
    util.generate_layer_outputs(x)
    positional = fxquant.onnx.LayerOutputUtil(_third_party_qdq(), tmp_path / "b", 0)
    positional.generate_layer_outputs(x)
    old = fxquant.onnx.LayerOutputUtil(_third_party_qdq(), tmp_path / "c",
                                       ["CPUExecutionProvider"], disable_all())
    assert old.session.get_providers() == ["CPUExecutionProvider"]
    old.generate_layer_outputs(x)
    fxquant.onnx.LayerOutputUtil(model_or_path=_third_party_qdq(),
                                 dir_path=tmp_path / "d").generate_layer_outputs(x)
    for d in "bcd":
        assert compare_layer_outputs(tmp_path / "a", tmp_path / d).min_sqnr[1] == float("inf")
    with pytest.raises(TypeError, match=r"pass the model once: model=\.\.\. \(AIMET's name\) or "
                                        r"model_or_path="):
        fxquant.onnx.LayerOutputUtil(_third_party_qdq(), tmp_path / "e",
                                     model_or_path=_third_party_qdq())
    with pytest.raises(TypeError, match=r"the third argument is the device id .*device= was given"):
        fxquant.onnx.LayerOutputUtil(_third_party_qdq(), tmp_path / "e", 0, device=1)
    with pytest.raises(ValueError, match=r"device must be a CUDA device id \(an integer >= 0\), "
                                         r"got -1"):
        fxquant.onnx.LayerOutputUtil(_third_party_qdq(), tmp_path / "e", device=-1)
    with pytest.raises(TypeError, match=r"LayerOutputUtil needs model="):
        fxquant.onnx.LayerOutputUtil(dir_path=tmp_path / "e")


def test_float64_input_is_cast_to_the_models_dtype(tmp_path: os.PathLike[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11 item 14: a float64 array for a float32 input is cast, with a note in the log; an
    input that cannot be cast without loss is refused naming the input and the dtypes; a wrong
    shape names the instance, the shapes given and the ones the model takes."""
    from fxquant.layer_outputs import InputInstanceError

    util = fxquant.onnx.LayerOutputUtil(_third_party_qdq(), tmp_path / "d")
    x = np.array([[-1.0, 0.04, 0.26, 3.0]])
    with caplog.at_level("WARNING", logger="fxquant.layer_outputs.ort_util"):
        util.generate_layer_outputs(x)
        util.generate_layer_outputs(x)
    notes = [r.getMessage() for r in caplog.records if "cast to float32" in r.getMessage()]
    assert notes == ["input 'x' is float64 but the model takes float32: cast to float32 (pass "
                     "float32 to avoid the copy)"]  # once per input
    dump = LayerOutputDump(tmp_path / "d")
    np.testing.assert_allclose(dump.load("y", 1), [[0.0, 0.0, 0.3, 3.0]], atol=1e-6)
    np.testing.assert_array_equal(dump.load_inputs(1)[0], x.astype(np.float32))
    with pytest.raises(InputInstanceError, match=r"input instance 1 of the batch \(would be "
                                                 r"layer_outputs_3 .*array \(1, 5\) float32\) "
                                                 r"failed: ValueError: ONNX Runtime could not run "
                                                 r"the model on inputs \{'x': \(\(1, 5\), "
                                                 r"'float32'\)\}; the model takes \{'x': \(\[1, 4\]"
                                  ) as info:
        util.generate_layer_outputs_batch([x, np.zeros((1, 5), np.float32), x], progress=False)
    assert info.value.__cause__ is not None
    assert LayerOutputDump(tmp_path / "d").instances == [0, 1, 2]  # the one before it is written
    with pytest.raises(InputInstanceError, match=r"input 'x' is complex128 but the model takes "
                                                 r"float32 \(tensor\(float\)\); convert it"):
        util.generate_layer_outputs(x.astype(np.complex128))


def _no_input_quantization() -> dict:
    import json

    import fxquant.quantsim

    path = os.path.join(os.path.dirname(fxquant.quantsim.__file__), "default_configs",
                        "default.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["model_input"] = {"is_input_quantized": "False"}
    return config


@pytest.mark.parametrize("quantize_input", [True, False])
def test_model_inputs_are_dumped_on_every_side(tmp_path: os.PathLike[str],
                                               quantize_input: bool) -> None:
    """Issue 10: every dump records the model input under its name, first: the float model's
    (torch) and <prefix>.onnx's (ORT) as fed; the sim's and <prefix>_qdq.onnx's quantized when
    the sim quantizes it (x/dq), as fed when its config does not. The four name lists are one."""
    config = None if quantize_input else _no_input_quantization()
    sim = build_sim(tiny(), (2, 3, 16, 16), config_file=config)
    xs = inputs(2)
    files = sim.export(tmp_path / "out", "tiny", xs[0])
    assert any(q.name == "x" for q in sim.quantizers()) is quantize_input
    LayerOutputUtil(tiny(), tmp_path / "fp32").generate_layer_outputs_batch(xs, progress=False)
    LayerOutputUtil(sim, tmp_path / "sim").generate_layer_outputs_batch(xs, progress=False)
    fxquant.onnx.LayerOutputUtil(files["onnx"], tmp_path / "ort").generate_layer_outputs_batch(
        xs, progress=False)
    qdq = fxquant.onnx.LayerOutputUtil(files["qdq_onnx"], tmp_path / "ort_qdq",
                                       session_options=disable_all())
    assert qdq.tensor_names[0] == "x"
    qdq.generate_layer_outputs_batch(xs, progress=False)
    dumps = {tag: LayerOutputDump(tmp_path / tag) for tag in ("fp32", "sim", "ort", "ort_qdq")}
    names = dumps["fp32"].names
    assert names[0] == "x" and "bn" not in names
    assert all(dump.names == names for dump in dumps.values()), {
        tag: dump.names for tag, dump in dumps.items()}
    for k, x in enumerate(xs):
        np.testing.assert_array_equal(dumps["fp32"].load("x", k), x.numpy())
        np.testing.assert_array_equal(dumps["ort"].load("x", k), x.numpy())
        np.testing.assert_array_equal(dumps["ort_qdq"].load("x", k), dumps["sim"].load("x", k))
        if quantize_input:
            enc = sim.quantizer("x").encoding
            codes = dumps["sim"].load("x", k).astype(np.float64) / float(enc.scale)
            np.testing.assert_allclose(codes, np.rint(codes), atol=1e-3)  # on the grid
            assert not np.array_equal(dumps["sim"].load("x", k), x.numpy())
        else:
            np.testing.assert_array_equal(dumps["sim"].load("x", k), x.numpy())
    report = compare_layer_outputs(tmp_path / "sim", tmp_path / "ort_qdq",
                                   encodings=files["encodings"])
    assert report.findings == [] and all(r.equal_fraction == 1.0 for r in report.layers), \
        report.format()
    assert compare_layer_outputs(tmp_path / "fp32", tmp_path / "ort").findings == []
    assert compare_layer_outputs(tmp_path / "fp32", tmp_path / "sim").findings == []


def test_dumped_tensors_lists_model_inputs_first(tmp_path: os.PathLike[str]) -> None:
    """A float model's inputs are dumped as fed (initializers listed as graph inputs are not
    model inputs); a QDQ model's quantized input from its DequantizeLinear."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "w"], ["s"]), helper.make_node("Mul", ["s", "b"], ["m"])],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in "awb"],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.ones((1, 2), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert fxquant.onnx.dumped_tensors(model) == [("a", "a"), ("b", "b"), ("s", "s"), ("m", "m")]
    a, b = np.array([[1.0, 2.0]], np.float32), np.array([[3.0, -1.0]], np.float32)
    fxquant.onnx.LayerOutputUtil(model, tmp_path / "d").generate_layer_outputs({"a": a, "b": b})
    dump = LayerOutputDump(tmp_path / "d")
    assert dump.names == ["a", "b", "s", "m"]
    np.testing.assert_array_equal(dump.load("b"), b)
    np.testing.assert_array_equal(dump.load("m"), (a + 1) * b)
    assert fxquant.onnx.dumped_tensors(_third_party_qdq())[0] == ("x", "x_DequantizeLinear_Output")
