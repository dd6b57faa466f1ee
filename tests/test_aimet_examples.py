"""AIMET's documented PyTorch workflows, run with fxquant's imports.

Each test follows one example of quic/aimet ``Docs/torch_code_examples/`` (and the ONNX
layer-output example of ``Docs/onnx_code_examples/``) call for call: the same functions, argument
names and order, with only the imports changed (``aimet_torch.X`` → ``fxquant``), random or
generated data in place of ImageNet, ``weights=None`` models and a 64×64 input to keep CPU time
low. Where the example itself cannot run as written (it calls a callback with the wrong number of
arguments, or uses AIMET 1.x arguments), the test says so next to the line. Each test then checks
what the example produces: the files and their names, encoding names that are tensors of the
exported ONNX graph, a reloaded sim bit-identical to the one exported, and layer dumps whose
names agree between the float model, the sim and ONNX Runtime.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import torch.nn.functional as F
from torchvision import models

# The imports an AIMET user changes, one per AIMET module the examples import from.
from fxquant import OnnxExportApiArgs                            # aimet_torch.onnx_utils
from fxquant import prepare_model                                # aimet_torch.model_preparer
from fxquant import QuantizationSimModel                         # aimet_torch.quantsim
from fxquant import QuantScheme                                  # aimet_common.defs
from fxquant import LayerOutputUtil, NamingScheme                # aimet_torch.layer_output_utils
from fxquant import compare_layer_outputs
from fxquant import batch_norm_fold                              # aimet_torch
from fxquant import fold_all_batch_norms                         # aimet_torch.batch_norm_fold
from fxquant.batch_norm_fold import fold_all_batch_norms_to_scale  # aimet_torch.batch_norm_fold
from fxquant.bn_reestimation import reestimate_bn_stats          # aimet_torch.bn_reestimation
from fxquant.quantsim import load_encodings_to_sim               # aimet_torch.quantsim
from fxquant import QuantAnalyzer, CallbackFunc                  # aimet_torch.v1.quant_analyzer
from fxquant import equalize_model                               # aimet_torch.cross_layer_equalization
from fxquant import Adaround, AdaroundParameters                 # aimet_torch.adaround.adaround_weight
from fxquant.ptq import bias_correction                          # aimet_torch
from fxquant import QuantParams                                  # aimet_torch.quantsim
import fxquant.onnx                                              # aimet_onnx.layer_output_utils

from fxquant.layer_outputs import LayerOutputDump
from fxquant.ns import compute_sqnr

SHAPE = (1, 3, 64, 64)


def _batches(n: int, seed: int, batch: int = 4, labels: bool = False) -> list[Any]:
    """Seeded stand-ins for ImageNet batches: images, or (images, labels) like a DataLoader."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand(batch, *SHAPE[1:], generator=gen)
        out.append((x, torch.randint(0, 1000, (batch,), generator=gen)) if labels else x)
    return out


def _onnx_tensor_names(path: str) -> set[str]:
    graph = onnx.load(path).graph
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {t.name for t in graph.initializer}
    names |= {out for node in graph.node for out in node.output}
    return names


def _encoding_names(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {e["name"] for key in ("activation_encodings", "param_encodings") for e in data[key]}


def _dump_names(path: str | Path) -> list[str]:
    """The dumped tensors' names, in order (AIMET's ``layer_output_name_order.json`` holds them
    sanitized for file names, ``layer1_0_conv1``; the manifest keeps the tensor names)."""
    with open(os.path.join(path, "layer_output_name_order.json"), encoding="utf-8") as f:
        files = json.load(f)["layer_output_names"]
    names = LayerOutputDump(str(path)).names
    assert len(files) == len(names)
    return names


def _check_export(path: Path, prefix: str) -> dict[str, str]:
    """The files AIMET's export writes (plus fxquant's QDQ model), and every encoding name a
    tensor of the exported graph."""
    assert sorted(os.listdir(path)) == sorted(
        [f"{prefix}.onnx", f"{prefix}.encodings", f"{prefix}_torch.encodings", f"{prefix}.pth",
         f"{prefix}_qdq.onnx"])
    files = {"onnx": str(path / f"{prefix}.onnx"), "encodings": str(path / f"{prefix}.encodings"),
             "torch_encodings": str(path / f"{prefix}_torch.encodings"),
             "pth": str(path / f"{prefix}.pth"), "qdq_onnx": str(path / f"{prefix}_qdq.onnx")}
    names = _encoding_names(files["encodings"])
    assert len(names) > 40
    assert names <= _onnx_tensor_names(files["onnx"]), names - _onnx_tensor_names(files["onnx"])
    return files


# ------------------------------------------------------------------------------------------------
# quantsim_code_example.py: prepare → QuantSim → compute_encodings → finetune → export
# ------------------------------------------------------------------------------------------------
def pass_calibration_data(sim_model, forward_pass_args=None):
    """The example's callback: ``(sim_model, forward_pass_args=None)``, run in eval mode."""
    sim_model.eval()
    with torch.no_grad():
        for input_data in _batches(2, seed=1):
            sim_model(input_data)


def test_quantsim_code_example(tmp_path) -> None:
    torch.manual_seed(0)
    model = models.resnet18()                       # resnet18(pretrained=True): training mode
    prepared_model = prepare_model(model)
    input_shape = SHAPE
    dummy_input = torch.randn(input_shape)
    quant_sim = QuantizationSimModel(prepared_model, dummy_input=dummy_input,
                                     quant_scheme=QuantScheme.post_training_tf_enhanced,
                                     default_param_bw=8, default_output_bw=8,
                                     config_file="default")  # AIMET's default_config.json
    # AIMET passes the args on even when they are None: cb(model, None)
    quant_sim.compute_encodings(pass_calibration_data, forward_pass_callback_args=None)

    # issue 10 item 1: a sim of prepare_model(m) has the names of a sim of m (no
    # "features.3.module_add.module_add")
    direct = QuantizationSimModel(models.resnet18(), dummy_input=dummy_input,
                                  quant_scheme=QuantScheme.post_training_tf_enhanced,
                                  default_param_bw=8, default_output_bw=8, config_file="default")
    names = [q.name for q in quant_sim.quantizers()]
    assert names == [q.name for q in direct.quantizers()]
    modules = [n for n, _ in quant_sim.model.named_modules()]
    assert "layer1.0.module_add" in modules
    assert not any(".module_add.module_add" in n for n in modules + names)
    # the model was in training mode: its BNs are kept for QAT
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in quant_sim.model.modules())

    # finetune (ImageNetDataPipeline.finetune): a few SGD steps on labelled batches
    quant_sim.model.train()
    opt = torch.optim.SGD(quant_sim.model.parameters(), lr=5e-7)   # the example's learning rate
    for x, y in _batches(2, seed=2, labels=True):
        opt.zero_grad()
        F.cross_entropy(quant_sim.model(x), y).backward()
        opt.step()
    quant_sim.model.eval()                          # ImageNetDataPipeline.evaluate
    with torch.no_grad():
        logits = quant_sim.model(_batches(1, seed=3)[0])
    assert logits.shape == (4, 1000) and torch.isfinite(logits).all()

    quant_sim.export(path=str(tmp_path), filename_prefix="quantized_resnet18",
                     dummy_input=dummy_input.cpu())
    files = _check_export(tmp_path, "quantized_resnet18")

    # reload: the exported weights and _torch.encodings into a sim built the same way
    fresh = prepare_model(models.resnet18())
    fresh.load_state_dict(torch.load(files["pth"], weights_only=True))
    reloaded = QuantizationSimModel(fresh, dummy_input=dummy_input,
                                    quant_scheme=QuantScheme.post_training_tf_enhanced,
                                    default_param_bw=8, default_output_bw=8,
                                    config_file="default")
    load_encodings_to_sim(reloaded, files["torch_encodings"])
    reloaded.model.eval()
    x = _batches(1, seed=4)[0]
    with torch.no_grad():
        assert torch.equal(reloaded.model(x), quant_sim.model(x))


# ------------------------------------------------------------------------------------------------
# layer_output_generation_code_example.py (torch) and its ONNX counterpart
# ------------------------------------------------------------------------------------------------
def forward_pass(model: torch.nn.Module, input_batch: torch.Tensor):
    model.eval()
    with torch.no_grad():
        _ = model(input_batch)


@pytest.fixture(scope="module")
def layer_output_flow(tmp_path_factory) -> dict[str, Any]:
    """AIMET's torch layer-output example, step by step, for the float model and the sim, plus
    the sim's export (what the ONNX example starts from)."""
    out = tmp_path_factory.mktemp("layer_outputs")
    torch.manual_seed(0)
    # Step 1. Obtain original or quantsim model
    original_model = models.resnet18()
    original_model.eval()
    original_model = prepare_model(original_model)
    dummy_input = torch.rand(*SHAPE)
    quantsim = QuantizationSimModel(model=original_model, quant_scheme='tf_enhanced',
                                    dummy_input=dummy_input, rounding_mode='nearest',
                                    default_output_bw=8, default_param_bw=8, in_place=False)
    quantsim.compute_encodings(forward_pass_callback=forward_pass,
                               forward_pass_callback_args=dummy_input)
    # Step 2. Obtain pre-processed inputs
    input_batches = [b[:1] for b in _batches(3, seed=5)]
    # Step 3. Generate outputs (the example dumps the sim; users dump the float model alike)
    for name, model in (("fp32", original_model), ("quantsim", quantsim.model)):
        layer_output_util = LayerOutputUtil(model=model, dir_path=str(out / name),
                                            naming_scheme=NamingScheme.ONNX,
                                            dummy_input=dummy_input,
                                            onnx_export_args=OnnxExportApiArgs())
        for input_batch in input_batches:
            layer_output_util.generate_layer_outputs(input_batch)
        layer_output_util.close()
    files = quantsim.export(str(out / "export"), "resnet18", dummy_input)
    return {"out": out, "sim": quantsim, "model": original_model, "inputs": input_batches,
            "files": files}


def test_layer_output_generation_code_example(layer_output_flow) -> None:
    out = layer_output_flow["out"]
    fp32, sim = _dump_names(out / "fp32"), _dump_names(out / "quantsim")
    assert len(sim) > 40
    assert fp32 == sim                       # the float and the quantized dump line up
    # ONNX naming: every dumped name is a tensor of the exported model
    assert set(sim) <= _onnx_tensor_names(layer_output_flow["files"]["onnx"])
    dump = LayerOutputDump(str(out / "quantsim"))
    assert len(dump.instances) == 3
    x = layer_output_flow["inputs"][1]
    with torch.no_grad():
        want = layer_output_flow["sim"].model(x)
    got = dump.load(sim[-1], 1)
    assert torch.equal(torch.as_tensor(got).reshape(want.shape), want)
    # the diff pairs every tensor: nothing on one side only, conv1 compared post-BN on both
    report = compare_layer_outputs(str(out / "fp32"), str(out / "quantsim"))
    assert not report.only_in_a and not report.only_in_b
    assert not [f for f in report.findings if f.kind in ("only_in_a", "only_in_b")]


def test_onnx_layer_output_generation_code_example(layer_output_flow) -> None:
    """aimet_onnx's example on fxquant's export: the float ``.onnx`` for the fp32 dump; the QDQ
    model stands in for aimet_onnx's QuantizationSimModel (``quantsim.model.model``)."""
    out, files = layer_output_flow["out"], layer_output_flow["files"]
    model = onnx.load(files["onnx"])
    quantsim_model = onnx.load(files["qdq_onnx"])
    fp32_layer_output_util = fxquant.onnx.LayerOutputUtil(model=model,
                                                           dir_path=str(out / "ort_fp32"))
    quantsim_layer_output_util = fxquant.onnx.LayerOutputUtil(model=quantsim_model,
                                                              dir_path=str(out / "ort_quantsim"))
    for input_batch in layer_output_flow["inputs"]:
        fp32_layer_output_util.generate_layer_outputs(input_batch.numpy())
        quantsim_layer_output_util.generate_layer_outputs(input_batch.numpy())
    fp32_layer_output_util.close()
    quantsim_layer_output_util.close()
    names = _dump_names(out / "quantsim")
    assert _dump_names(out / "ort_quantsim") == names
    assert _dump_names(out / "ort_fp32") == names
    assert _dump_names(out / "fp32") == names


# ------------------------------------------------------------------------------------------------
# model_preparer_code_example.py
# ------------------------------------------------------------------------------------------------
class ModelWithFunctionalReLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 5)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.fc1 = torch.nn.Linear(9216, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.fc2(x).relu()
        return x


class ModelWithReusedReLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 5)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.relu = torch.nn.ReLU()
        self.fc1 = torch.nn.Linear(9216, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        return self.relu(self.fc2(x))


class ModelWithElementwiseAddOp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 5, bias=False)
        self.conv2 = torch.nn.Conv2d(3, 6, 5)

    def forward(self, *inputs):
        return self.conv1(inputs[0]) + self.conv2(inputs[1])


def _relus(gm: torch.nn.Module) -> list[str]:
    return [n for n, m in gm.named_modules() if isinstance(m, torch.nn.ReLU)]


def test_model_preparer_code_example() -> None:
    torch.manual_seed(0)
    # model_preparer_functional_example
    model = ModelWithFunctionalReLU().eval()
    input_tensor = torch.randn(1, 3, 32, 32)
    model_transformed = prepare_model(model)
    print(model_transformed)
    assert torch.allclose(model(input_tensor), model_transformed(input_tensor))
    assert len(_relus(model_transformed)) == 4       # F.relu ×3 and Tensor.relu → modules

    # model_preparer_reused_example
    model = ModelWithReusedReLU().eval()
    model_transformed = prepare_model(model)
    assert torch.allclose(model(input_tensor), model_transformed(input_tensor))
    assert len(_relus(model_transformed)) == 4       # one ReLU called 4× → 4 modules
    assert "relu" in _relus(model_transformed)       # the first call keeps the user's name

    # model_preparer_elementwise_add_example
    model = ModelWithElementwiseAddOp().eval()
    input_tensor = [torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)]
    model_transformed = prepare_model(model)
    assert torch.allclose(model(*input_tensor), model_transformed(*input_tensor))
    assert any(type(m).__name__ == "Add" for m in model_transformed.modules())
    # preparing the prepared model changes nothing (AIMET users often call it twice)
    again = prepare_model(model_transformed)
    assert [n for n, _ in again.named_modules()] == [n for n, _ in
                                                      model_transformed.named_modules()]


# ------------------------------------------------------------------------------------------------
# quantsim_config_example.py (the config file the page documents, section by section)
# ------------------------------------------------------------------------------------------------
QUANTSIM_CONFIG_EXAMPLE = {
    "defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True"},
                 "strict_symmetric": "False", "unsigned_symmetric": "True",
                 "per_channel_quantization": "False"},
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {"Squeeze": {"is_output_quantized": "False"}},
    "supergroups": [{"op_list": ["Conv", "Relu"]}, {"op_list": ["Conv", "Clip"]},
                    {"op_list": ["Add", "Relu"]}, {"op_list": ["Gemm", "Relu"]}],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {},
}


class _ConfigExampleNet(torch.nn.Module):
    """Conv→ReLU, Conv→ReLU6 (Clip), Add→ReLU, Squeeze, Gemm→ReLU, Gemm: each rule has an op."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.relu6 = torch.nn.ReLU6()
        self.relu2 = torch.nn.ReLU()
        self.fc1 = torch.nn.Linear(8, 16)
        self.relu3 = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.relu6(self.conv2(a)) + a)
        s = torch.squeeze(b.mean((2, 3), keepdim=True), -1).squeeze(-1)
        return self.fc2(self.relu3(self.fc1(s)))


def test_quantsim_config_example(tmp_path) -> None:
    path = tmp_path / "quantsim_config.json"
    path.write_text(json.dumps(QUANTSIM_CONFIG_EXAMPLE))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    sim = QuantizationSimModel(_ConfigExampleNet().eval(), dummy_input=x,
                               quant_scheme=QuantScheme.post_training_tf, config_file=str(path))
    sim.compute_encodings(lambda model, _: model(x), None)
    kinds = {q.name: q.kind for q in sim.quantizers() if q.quantizer.enabled}
    # model_input: the input is quantized; params: weights yes, biases no
    assert kinds["x"] == "input"
    assert {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"} <= set(kinds)
    assert not any(name.endswith(".bias") for name in kinds)
    # supergroups: no quantizer between Conv→Relu, Conv→Clip, Add→Relu, Gemm→Relu
    assert not {"conv1", "conv2", "module_add", "fc1"} & set(kinds)
    assert {"relu1", "relu6", "relu2", "relu3", "fc2"} <= set(kinds)
    # op_type: Squeeze's output is not quantized (nor would it be without the rule: fxquant's
    # data-movement ops keep their input's encoding)
    squeezes = [n for n, _ in sim.model.named_modules() if "squeeze" in n]
    assert len(squeezes) == 2 and not set(squeezes) & set(kinds)
    # defaults: per-tensor weights; no "is_symmetric" anywhere, so asymmetric weights and
    # activations, as in AIMET (its parser starts every quantizer asymmetric)
    weight = sim.quantizer("conv1.weight").encoding
    assert weight.scale.dim() == 0 and not weight.symmetric
    assert not sim.quantizer("relu1").encoding.symmetric


# ------------------------------------------------------------------------------------------------
# bn_reestimation_example.py: QAT with BNs, re-estimate, fold into the quantizer scales, export
# ------------------------------------------------------------------------------------------------
default_config_per_channel = {
    "defaults": {"ops": {"is_output_quantized": "True"},
                 "params": {"is_quantized": "True", "is_symmetric": "True"},
                 "strict_symmetric": "False", "unsigned_symmetric": "True",
                 "per_channel_quantization": "True"},
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {"Squeeze": {"is_output_quantized": "False"},
                "Pad": {"is_output_quantized": "False"},
                "Mean": {"is_output_quantized": "False"}},
    "supergroups": [{"op_list": ["Conv", "Relu"]}, {"op_list": ["Conv", "Clip"]},
                    {"op_list": ["Conv", "BatchNormalization", "Relu"]},
                    {"op_list": ["Add", "Relu"]}, {"op_list": ["Gemm", "Relu"]}],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {},
}


def load_fp32_model():
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda") if use_cuda else torch.device("cpu")
    torch.manual_seed(0)
    model = models.resnet18().to(device)          # resnet18(pretrained=True): training mode
    model = prepare_model(model)
    return model, use_cuda


# The example defines pass_calibration_data(sim_model) and then passes
# forward_pass_callback_args=use_cuda: AIMET calls cb(model, use_cuda), a TypeError in AIMET
# too. AIMET's other examples write the callback with two parameters, as here.
def pass_calibration_data_bn(sim_model, use_cuda):
    sim_model.eval()
    device = next(sim_model.parameters()).device
    with torch.no_grad():
        for input_data, _ in _batches(2, seed=6, labels=True):
            sim_model(input_data.to(device))


def forward_fn(model, inputs):
    input_data, target_data = inputs
    model(input_data.to(next(model.parameters()).device))


def test_bn_reestimation_example(tmp_path) -> None:
    config_file_path = tmp_path / "default_config_per_channel.json"
    config_file_path.write_text(json.dumps(default_config_per_channel))
    model, use_cuda = load_fp32_model()
    device = torch.device("cuda") if use_cuda else torch.device("cpu")
    dummy_input = torch.rand(*SHAPE, device=device)

    # create_quant_sim
    sim = QuantizationSimModel(model=model,
                               quant_scheme=QuantScheme.training_range_learning_with_tf_init,
                               dummy_input=dummy_input, default_output_bw=8, default_param_bw=8,
                               config_file=str(config_file_path))
    sim.compute_encodings(forward_pass_callback=pass_calibration_data_bn,
                          forward_pass_callback_args=use_cuda)
    bns = [n for n, m in sim.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 20                          # kept: the model was in training mode

    # perform_qat (ImageNetPipeline.train, learning_rate=5e-7): scales and offsets are learned
    sim.model.train()
    opt = torch.optim.SGD(sim.model.parameters(), lr=5e-7)
    for x, y in _batches(2, seed=7, labels=True):
        opt.zero_grad()
        F.cross_entropy(sim.model(x.to(device)), y.to(device)).backward()
        opt.step()

    # call_bn_reestimation_apis
    train_loader = _batches(3, seed=8, labels=True)
    handle = reestimate_bn_stats(sim.model, train_loader, forward_fn=forward_fn)
    assert handle.num_batches == 3                 # all the loader had (the default is 100)
    sim.model.eval()
    x = _batches(1, seed=9)[0].to(device)
    with torch.no_grad():
        before = sim.model(x)
    fold_all_batch_norms_to_scale(sim, input_shapes=(1, 3, 224, 224))  # AIMET 1.x's call
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in sim.model.modules())
    with torch.no_grad():
        after = sim.model(x)
    # the fold is exact but for float rounding (W·k / (s·|k|) is not always W / s in float32):
    # a few values cross a grid boundary, and the one-step flips cascade through the network
    steps = (after - before).abs() / float(sim.quantizer("fc").encoding.scale)
    sqnr = float(compute_sqnr(before, after))
    print(f"fold to scale: {sqnr:.1f} dB, max {steps.max().item():.1f} output steps, "
          f"{(steps < 1.001).float().mean().item():.1%} within one step")
    assert sqnr >= 25 and steps.max() <= 8   # measured: 31.6 dB, 5 steps, 76.9% within one

    # export_the_model
    os.makedirs(tmp_path / "output", exist_ok=True)
    sim.export(path=str(tmp_path / "output"),
               filename_prefix="resnet18_after_qat_bnreestimation",
               dummy_input=dummy_input.cpu())
    _check_export(tmp_path / "output", "resnet18_after_qat_bnreestimation")


# ------------------------------------------------------------------------------------------------
# post_training_techniques_examples.py: the batch-norm folding part
# ------------------------------------------------------------------------------------------------
def _resnet18_with_statistics(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A resnet18 whose BNs have non-trivial statistics, and an unchanged copy of it."""
    torch.manual_seed(seed)
    model = models.resnet18().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    reference = models.resnet18().eval()
    reference.load_state_dict(model.state_dict())
    return model, reference


def test_post_training_techniques_manual_bn_fold_example() -> None:
    """cross_layer_equalization_manual's first step: fold_given_batch_norms on chosen pairs."""
    model, reference = _resnet18_with_statistics()
    layer_list = [(model.conv1, model.bn1),
                  (model.layer1[0].conv1, model.layer1[0].bn1)]
    bn_dict = {}
    for conv_bn in layer_list:
        bn_dict[conv_bn[0]] = conv_bn[1]
    pairs = batch_norm_fold.fold_given_batch_norms(model, layer_list)
    assert [p.names for p in pairs] == [("conv1", "bn1"), ("layer1.0.conv1", "layer1.0.bn1")]
    assert isinstance(model.bn1, torch.nn.Identity)
    assert isinstance(model.layer1[0].bn2, torch.nn.BatchNorm2d)   # not listed: kept
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_post_training_techniques_bn_fold_example() -> None:
    torch.manual_seed(0)
    model = models.resnet18().eval()
    reference = models.resnet18().eval()
    reference.load_state_dict(model.state_dict())
    input_shape = (1, 3, 224, 224)

    folded_pairs = fold_all_batch_norms(model, input_shape)   # positional input_shapes
    bn_dict = {}
    for conv_bn in folded_pairs:
        bn_dict[conv_bn[0]] = conv_bn[1]                       # indexed by the conv module
    assert len(bn_dict) == 20
    assert model.conv1 in bn_dict and isinstance(bn_dict[model.conv1], torch.nn.BatchNorm2d)
    assert folded_pairs[0].names == ("conv1", "bn1")
    # in place: the user's model holds the folded weights and no BN runs any more
    assert isinstance(model.bn1, torch.nn.Identity)
    x = torch.randn(2, *input_shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_post_training_techniques_cle_auto_example() -> None:
    """cross_layer_equalization_auto: BN fold, cross-layer scaling and high-bias fold in one call,
    in place; the float model's outputs are kept (resnet18's pairs are joined by ReLU; the
    high-bias fold goes only into layers without padding, where it is exact)."""
    model, reference = _resnet18_with_statistics()
    input_shape = (1, 3, 224, 224)
    report = equalize_model(model, input_shape)            # AIMET returns None; fxquant a report
    assert len(report["folded"]) == 20 and len(report["scaled"]) == 8   # conv1 -> conv2 per block
    assert isinstance(model.bn1, torch.nn.Identity)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


# -- Docs/torch_code_examples/adaround.py ---------------------------------------------------------
def test_adaround_example(tmp_path) -> None:
    """apply_adaround_example, call for call, on resnet18 at 64×64 with random images; the
    example's undefined quant_scheme / param_bw / output_bw are set here, and its
    pass_calibration_data takes the callback's second argument (compute_encodings passes it)."""
    torch.manual_seed(0)
    model = models.resnet18().eval()
    prepared_model = prepare_model(model)
    data_loader = _batches(4, seed=3, labels=True)
    params = AdaroundParameters(data_loader=data_loader, num_batches=4, default_num_iterations=32,
                                default_reg_param=0.01, default_beta_range=(20, 2))
    dummy_input = torch.randn(SHAPE)
    adarounded_model = Adaround.apply_adaround(
        prepared_model, dummy_input, params, path=str(tmp_path), filename_prefix='resnet18',
        default_param_bw=4, default_quant_scheme=QuantScheme.post_training_tf_enhanced,
        default_config_file=None)
    quant_scheme, param_bw, output_bw = QuantScheme.post_training_tf_enhanced, 4, 8
    sim = QuantizationSimModel(adarounded_model, quant_scheme=quant_scheme,
                               default_param_bw=param_bw, default_output_bw=output_bw,
                               dummy_input=dummy_input)
    sim.set_and_freeze_param_encodings(encoding_path=str(tmp_path / 'resnet18.encodings'))

    def pass_calibration_data(sim_model, _):
        with torch.no_grad():
            for input_data, _target in data_loader:
                sim_model(input_data)

    sim.compute_encodings(pass_calibration_data, forward_pass_callback_args=None)
    files = _check_export_after(sim, tmp_path / "export", dummy_input)
    encodings = json.loads((tmp_path / "resnet18.encodings").read_text())
    assert len(encodings["param_encodings"]) == 21          # 20 convs and the fc
    # the frozen grids hold the AdaRounded weights exactly: quantizing them changes nothing
    for ref in sim.quantizers():
        if ref.kind == "param" and ref.name.endswith(".weight"):
            layer = sim.model.get_submodule(ref.layer)
            raw = layer.parametrizations.weight.original
            assert ref.quantizer.is_frozen, ref.name
            assert torch.equal(ref.quantizer(raw), raw), ref.name
    assert files


def _check_export_after(sim: QuantizationSimModel, path: Path, dummy_input: torch.Tensor
                        ) -> dict[str, str]:
    path.mkdir()
    sim.export(path=str(path), filename_prefix='quantized_resnet18',
               dummy_input=dummy_input.cpu())
    return _check_export(path, "quantized_resnet18")


# -- Docs/torch_code_examples/post_training_techniques_examples.py: bias correction --------------
@pytest.mark.slow
def test_bias_correction_examples() -> None:
    """bias_correction_empirical and bias_correction_analytical_and_empirical on mobilenet_v2
    (64×64 random images; fewer samples than ImageNet's 1000 / 512; on the CPU)."""
    torch.manual_seed(0)
    model = models.mobilenet_v2().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = QuantParams(weight_bw=4, act_bw=4, round_mode="nearest", quant_scheme='tf_enhanced')
    data_loader = _batches(4, seed=5, labels=True)
    bias_correction.correct_bias(model, params, num_quant_samples=8,
                                 data_loader=data_loader, num_bias_correct_samples=8)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("bias") for k in changed), sorted(changed)[:5]

    model = models.mobilenet_v2().eval()
    module_prop_dict = bias_correction.find_all_conv_bn_with_activation(
        model, input_shape=(1, 3, 224, 224))
    assert len(module_prop_dict) >= 30
    bias_correction.correct_bias(model, params, num_quant_samples=8,
                                 data_loader=data_loader, num_bias_correct_samples=8,
                                 conv_bn_dict=module_prop_dict,
                                 perform_only_empirical_bias_corr=False)


# -- Docs/torch_code_examples/quant_analyzer_code_example.py -------------------------------------
@pytest.mark.slow
def test_quant_analyzer_code_example(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)        # the example writes to ./quant_analyzer_results/
    calibration = _batches(2, seed=1)
    evaluation = _batches(1, seed=2)
    reference: dict[str, torch.Tensor] = {}

    # Step 1: the forward pass callback ("User action required": run representative data)
    def forward_pass_callback(model: torch.nn.Module, _: Any = None) -> None:
        for x in calibration:
            model(x)

    # Step 2: the eval callback ("User action required"; the example returns .8): here the
    # agreement of top-1 predictions with the FP32 model, a score in [0, 1], higher is better
    def eval_callback(model: torch.nn.Module, _: Any = None) -> float:
        x = evaluation[0]
        top1 = model(x).argmax(1)
        reference.setdefault("fp32", top1)
        return (top1 == reference["fp32"]).float().mean().item()

    def _get_unlabled_data_loader():  # the example leaves it to the user; unlabeled images
        return torch.utils.data.DataLoader(torch.rand(16, *SHAPE[1:]), batch_size=4)

    # Step 3: prepare model and callback functions (pretrained=True and .cuda() dropped here)
    model = models.resnet18(weights=None).eval()
    input_shape = SHAPE
    dummy_input = torch.randn(*input_shape)
    prepared_model = prepare_model(model)
    forward_pass_callback_fn = CallbackFunc(forward_pass_callback, func_callback_args=None)
    eval_callback_fn = CallbackFunc(eval_callback, func_callback_args=None)

    # Step 4: create the QuantAnalyzer object
    quant_analyzer = QuantAnalyzer(model=prepared_model,
                                   dummy_input=dummy_input,
                                   forward_pass_callback=forward_pass_callback_fn,
                                   eval_callback=eval_callback_fn)
    unlabeled_data_loader = _get_unlabled_data_loader()
    quant_analyzer.enable_per_layer_mse_loss(unlabeled_dataset_iterable=unlabeled_data_loader,
                                             num_batches=4)

    # Step 5: run the QuantAnalyzer
    quant_analyzer.analyze(quant_scheme=QuantScheme.post_training_tf_enhanced,
                           default_param_bw=8,
                           default_output_bw=8,
                           config_file=None,
                           results_dir="./quant_analyzer_results/")

    results = tmp_path / "quant_analyzer_results"
    enabled = json.loads((results / "per_layer_quant_enabled.json").read_text())
    disabled = json.loads((results / "per_layer_quant_disabled.json").read_text())
    mse = json.loads((results / "per_layer_mse_loss.json").read_text())
    sim = QuantizationSimModel(prepared_model, dummy_input)
    layers = list(dict.fromkeys(q.layer for q in sim.quantizers() if q.layer))
    assert list(enabled) == list(disabled) == layers and "layer1.0.relu_1" in enabled
    assert set(mse) == set(layers)
    assert all(0.0 <= v <= 1.0 for v in [*enabled.values(), *disabled.values()])
    acts = json.loads((results / "min_max_ranges/activations.json").read_text())
    weights = json.loads((results / "min_max_ranges/weights.json").read_text())
    assert "conv1_input_0" in acts and "fc_output_0" in acts
    assert list(weights["conv1_weight"]) == [f"conv1_weight_{i}" for i in range(64)]
    assert (results / "weights_pdf/layer4.1.conv2/layer4.1.conv2_weight.html").exists()
    assert (results / "activations_pdf/layer4.1.relu_1_output_q0_0.html").exists()
    assert (results / "index.html").exists()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared_model.modules())
