"""Torch-side LayerOutputUtil: AIMET's test behaviours, naming schemes, sims, devices, errors."""
from __future__ import annotations

import enum
import json
import os

import numpy as np
import pytest
import torch

import fxquant
from fxquant import _meta
from fxquant.layer_outputs import (DumpExistsError, DumpWriteError, LayerOutputDump,
                                   LayerOutputUtil, NamingScheme)
from tests.layer_outputs.lo_helpers import TwoInputNet, build_sim, inputs, tiny

TINY_LAYERS = ["conv", "bn", "relu", "conv2", "side", "module_add", "module_split#0",
               "module_split#1", "module_cat", "pool", "module_flatten", "fc"]


def test_aimet_behaviours(tmp_path: os.PathLike[str], device: torch.device) -> None:
    """Every layer present; last layer == model output exactly; one input file and one output
    folder per instance; .raw reloads as float32 of the manifest's shape."""
    model = tiny().to(device)
    xs = [x.to(device) for x in inputs(3)]
    util = LayerOutputUtil(model, tmp_path / "d")
    assert util.generate_layer_outputs_batch(xs, progress=False) == 3
    root = tmp_path / "d"
    order = json.loads((root / "layer_output_name_order.json").read_text())["layer_output_names"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["layer_output_names"] == TINY_LAYERS
    assert order == [n.replace("#", "_") for n in TINY_LAYERS]
    assert len(os.listdir(root / "inputs")) == 3
    assert len(os.listdir(root / "outputs")) == 3
    for k, x in enumerate(xs):
        files = sorted(os.listdir(root / "outputs" / f"layer_outputs_{k}"))
        assert files == sorted(f"{stem}.raw" for stem in order)
        with torch.no_grad():
            expected = model(x).cpu().numpy()
        raw = np.fromfile(root / "outputs" / f"layer_outputs_{k}" / "fc.raw", dtype=np.float32)
        np.testing.assert_array_equal(raw.reshape(manifest["tensors"]["fc"]["shape"]), expected)
        np.testing.assert_array_equal(
            np.fromfile(root / "inputs" / f"input_{k}.raw", dtype=np.float32).reshape(x.shape),
            x.cpu().numpy())
    dump = LayerOutputDump(root)
    for name in TINY_LAYERS:
        info = dump.info(name)
        raw = np.fromfile(dump.path(name, 2), dtype=np.float32)
        assert raw.size == int(np.prod(info.shape)) and info.dtype == "float32"
    assert dump.info("conv").shape == (1, 8, 16, 16) and dump.info("conv").layout == "NCHW"


def test_in_place_relu_is_captured_by_value(tmp_path: os.PathLike[str]) -> None:
    model = tiny()
    x = inputs(1)[0]
    LayerOutputUtil(model, tmp_path / "d").generate_layer_outputs(x)
    dump = LayerOutputDump(tmp_path / "d")
    with torch.no_grad():
        bn_out = model.bn(model.conv(x))
    np.testing.assert_array_equal(dump.load("bn"), bn_out.numpy())  # not overwritten by ReLU
    assert (dump.load("bn") < 0).any() and (dump.load("relu") >= 0).all()


def test_sim_records_quantized_values(tmp_path: os.PathLike[str], device: torch.device) -> None:
    sim = build_sim(tiny(), (2, 3, 16, 16), device=device)
    x = inputs(1)[0].to(device)
    LayerOutputUtil(sim, tmp_path / "d").generate_layer_outputs(x)
    dump = LayerOutputDump(tmp_path / "d")
    assert dump.names[0] == "x"  # the quantized model input
    assert dump.names[1:] == [n for n in TINY_LAYERS if n != "bn"]  # BN folded into conv
    with torch.no_grad():
        np.testing.assert_array_equal(dump.load("fc"), sim.model(x).cpu().numpy())
    for name in ("x", "relu", "conv2", "module_add"):
        enc = sim.quantizer(name).encoding
        codes = dump.load(name).astype(np.float64) / float(enc.scale)
        np.testing.assert_allclose(codes, np.rint(codes), atol=1e-3, err_msg=name)  # on the grid
    conv = dump.load("conv")  # inside the Conv+ReLU supergroup: not quantized
    assert (conv < 0).any()


def test_multiple_inputs(tmp_path: os.PathLike[str]) -> None:
    model = TwoInputNet().eval()
    x, y = torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8)
    util = LayerOutputUtil(model, tmp_path / "d")
    util.generate_layer_outputs((x, y))
    util.generate_layer_outputs([x, y])
    assert sorted(os.listdir(tmp_path / "d" / "inputs" / "input_1")) == ["0.raw", "1.raw"]
    dump = LayerOutputDump(tmp_path / "d")
    got = dump.load_inputs(1)
    np.testing.assert_array_equal(got[1], y.numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(dump.load("relu", 0), model(x, y).numpy())
    assert [i["name"] for i in dump.manifest["inputs"]] == ["x", "y"]


def test_naming_scheme_errors(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ValueError, match=r"unknown naming scheme 'tflite'; use NamingScheme"):
        LayerOutputUtil(tiny(), tmp_path / "a", naming_scheme="tflite")
    with pytest.raises(ValueError, match=r"unknown naming scheme 7"):
        LayerOutputUtil(tiny(), tmp_path / "a", naming_scheme=7)
    with pytest.raises(ValueError, match=r"NamingScheme.ONNX needs dummy_input"):
        LayerOutputUtil(tiny(), tmp_path / "a", naming_scheme=NamingScheme.ONNX)
    with pytest.raises(ValueError, match=r"NamingScheme.TORCHSCRIPT needs dummy_input"):
        LayerOutputUtil(tiny(), tmp_path / "a", naming_scheme="torchscript")
    with pytest.raises(ValueError, match="dummy_input must be a tensor"):
        LayerOutputUtil(tiny(), tmp_path / "a", NamingScheme.ONNX, dummy_input={"x": 1})
    with pytest.raises(TypeError, match="LayerOutputUtil's model must be a torch.nn.Module or a "
                                        "fxquant.QuantizationSimModel"):
        LayerOutputUtil("resnet18", tmp_path / "a")
    assert not os.path.exists(tmp_path / "a")


def test_naming_scheme_parse_accepts_aimet_enum() -> None:
    class AimetNamingScheme(enum.Enum):  # aimet_torch.layer_output_utils.NamingScheme
        PYTORCH = 1
        ONNX = 2
        TORCHSCRIPT = 3

    assert NamingScheme.parse(AimetNamingScheme.ONNX) is NamingScheme.ONNX
    assert NamingScheme.parse(3) is NamingScheme.TORCHSCRIPT
    assert NamingScheme.parse("PyTorch") is NamingScheme.PYTORCH


def test_existing_dir_and_unwritable_dir(tmp_path: os.PathLike[str]) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.raw").write_bytes(b"")
    with pytest.raises(DumpExistsError,
                       match=r"full is not empty \(old.raw\); pass overwrite=True"):
        LayerOutputUtil(tiny(), tmp_path / "full")
    LayerOutputUtil(tiny(), tmp_path / "full", overwrite=True).generate_layer_outputs(inputs(1)[0])
    (tmp_path / "file").write_text("")
    with pytest.raises(DumpWriteError, match=r"cannot create the dump directory .*file/d"):
        LayerOutputUtil(tiny(), tmp_path / "file" / "d")
    with pytest.raises(ValueError, match="dir_path is required"):
        LayerOutputUtil(tiny(), "")


def test_torchscript_naming_on_a_prepared_model(tmp_path: os.PathLike[str]) -> None:
    """AIMET crashes here; the names are the traced graph's output names."""
    prepared = fxquant.prepare_model(tiny())
    x = inputs(1)[0]
    util = LayerOutputUtil(prepared, tmp_path / "d", NamingScheme.TORCHSCRIPT, dummy_input=x)
    util.generate_layer_outputs(x)
    dump = LayerOutputDump(tmp_path / "d")
    assert len(dump.names) == len(TINY_LAYERS)
    assert all(name.replace(".", "").isdigit() for name in dump.names if "#" not in name)
    with torch.no_grad():
        np.testing.assert_array_equal(dump.load(util.name_map["fc"]), prepared(x).numpy())


def test_onnx_naming_matches_the_export(tmp_path: os.PathLike[str]) -> None:
    model = tiny()
    x = inputs(1)[0]
    util = LayerOutputUtil(model, tmp_path / "d", NamingScheme.ONNX, dummy_input=x)
    util.generate_layer_outputs(x)
    exported = fxquant.export.export_onnx(model, x)
    values = {v for n in exported.model.graph.node for v in n.output}
    dump = LayerOutputDump(tmp_path / "d")
    assert set(dump.names) <= values
    assert dump.names == [exported.layer_outputs[n] for n in TINY_LAYERS]


def test_npy_nhwc_and_no_grad_side_effects(tmp_path: os.PathLike[str]) -> None:
    model = tiny().train()  # captured in eval mode; the mode is restored
    util = LayerOutputUtil(model, tmp_path / "d", file_format="npy", layout="NHWC")
    util.generate_layer_outputs_batch(iter(inputs(2)), progress=False)  # no len()
    assert model.training and fxquant.prepare_model(model).training
    dump = LayerOutputDump(tmp_path / "d")
    assert dump.info("conv").layout == "NHWC" and dump.load("conv").shape == (1, 16, 16, 8)
    assert dump.instances == [0, 1]


def test_prepared_graph_module_is_used_as_is(tmp_path: os.PathLike[str]) -> None:
    prepared = fxquant.prepare_model(tiny())
    util = LayerOutputUtil(prepared, tmp_path / "d")
    assert util.graph_module is prepared
    layers = [str(n.target) for n in prepared.graph.nodes
              if n.op == "call_module" and _meta.get(n, _meta.ROLE) in ("op", None)]
    util.generate_layer_outputs(inputs(1)[0])
    names = LayerOutputDump(tmp_path / "d").names
    assert [n.split("#")[0] for n in names] == [
        layer for layer in layers for _ in range(2 if layer == "module_split" else 1)]


def test_a_bad_input_in_the_middle_of_a_batch_names_the_instance(
        tmp_path: os.PathLike[str]) -> None:
    """Issue 11 item 14: the conv's RuntimeError comes wrapped, naming the instance's position,
    its folder and its shape, chained; the instances before it are on disk."""
    from fxquant.layer_outputs import InputInstanceError, LayerOutputError

    xs = inputs(4)
    xs[2] = torch.randn(1, 5, 16, 16)  # 5 channels for a 3-channel conv
    util = LayerOutputUtil(tiny(), tmp_path / "d")
    with pytest.raises(InputInstanceError, match=r"input instance 2 of the batch \(would be "
                                                 r"layer_outputs_2 in .*d; tensor \(1, 5, 16, 16\) "
                                                 r"torch.float32\) failed: RuntimeError: .*channels"
                       ) as info:
        util.generate_layer_outputs_batch(xs, progress=False)
    assert isinstance(info.value, LayerOutputError)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert LayerOutputDump(tmp_path / "d").instances == [0, 1]
    with pytest.raises(InputInstanceError, match=r"input instance \(would be layer_outputs_2 .*"
                                                 r"tuple of 2: \[tensor \(1, 3, 16, 16\) "
                                                 r"torch.float32, tensor \(1,\) torch.int64\]"):
        util.generate_layer_outputs((xs[0], torch.zeros(1, dtype=torch.int64)))


def test_keyword_names_are_aimets(tmp_path: os.PathLike[str]) -> None:
    """Issue 10 item 8: aimet_torch's LayerOutputUtil(model, dir_path, naming_scheme, dummy_input,
    onnx_export_args), in that order, with AIMET's OnnxExportApiArgs; aimet_onnx's (model,
    dir_path, device)."""
    import inspect

    import fxquant.onnx
    from fxquant import OnnxExportApiArgs

    params = list(inspect.signature(LayerOutputUtil).parameters)
    assert params[:5] == ["model", "dir_path", "naming_scheme", "dummy_input", "onnx_export_args"]
    ort_params = inspect.signature(fxquant.onnx.LayerOutputUtil).parameters
    assert list(ort_params)[:2] == ["model", "dir_path"] and "device" in ort_params
    x = inputs(1)[0]
    util = LayerOutputUtil(model=tiny(), dir_path=tmp_path / "d", naming_scheme=NamingScheme.ONNX,
                           dummy_input=x, onnx_export_args=OnnxExportApiArgs(opset_version=18))
    util.generate_layer_outputs(x)
    assert util.onnx_export.model.opset_import[0].version == 18
    dump = LayerOutputDump(tmp_path / "d")
    assert {"conv", "fc"} <= set(dump.names) and dump.load("fc", 0).shape == (1, 5)
