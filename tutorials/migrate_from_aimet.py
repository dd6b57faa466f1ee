"""Tutorial: move an AIMET post-training quantization script to fxquant.

fxquant keeps aimet-torch's public names, call shapes and file formats, so an AIMET script runs
once its imports are changed. The first half of this file *is* such a script: the flow of AIMET's
``Docs/torch_code_examples/quantsim_code_example.py`` (prepare the model, build a
``QuantizationSimModel`` with a ``QuantScheme``, calibrate with a ``(model, args)`` callback,
``sim.export``), with the batch-norm folding AIMET's PTQ flow adds before the sim and a second sim
that reloads the export with ``load_encodings_to_sim``; above each import, the AIMET line it
replaces. The second half shows what is the same and what differs:

1. the files ``sim.export`` writes: AIMET's ``<prefix>.onnx``, ``<prefix>.encodings`` and
   ``<prefix>_torch.encodings``, plus ``<prefix>.pth`` (the float weights, tensors only) and
   ``<prefix>_qdq.onnx`` (fxquant's);
2. the encodings file: AIMET's format 1.0.0, every name a tensor of the exported ONNX graph;
   fxquant names the tensors after the layers (``layer1.0.relu``) where AIMET's exporter writes
   ``/layer1/layer1.0/relu/Relu_output_0``;
3. the reload: weights and ``_torch.encodings`` into a fresh sim give bit-identical outputs;
4. the extra: the QDQ model runs in ONNX Runtime and agrees with the sim.

Other differences (README, "Migrating from AIMET"): ``save_checkpoint`` stores tensors and JSON
instead of a pickled sim, so ``load_checkpoint(path, model, dummy_input)`` needs the model; the
quantizers divide by the scale as ONNX QuantizeLinear does (AIMET's default kernel multiplies by
the reciprocal, which rounds some ties the other way).

ResNet-18 (``weights=None``, batch-norm statistics estimated on random data, 64×64 inputs) stands
in for the pretrained model so that nothing is downloaded. The export is written to
$FXQUANT_TUTORIAL_OUT or a new temporary directory.

Run: python tutorials/migrate_from_aimet.py
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torchvision import models

import fxquant.ns as ns

# ------------------------------------------------------------------------------------------------
# The AIMET script, with its imports changed (above each, the AIMET line it replaces)
# ------------------------------------------------------------------------------------------------
# AIMET: from aimet_torch.model_preparer import prepare_model
from fxquant import prepare_model
# AIMET: from aimet_torch.batch_norm_fold import fold_all_batch_norms
from fxquant import fold_all_batch_norms
# AIMET: from aimet_torch.quantsim import QuantizationSimModel
from fxquant import QuantizationSimModel
# AIMET: from aimet_torch.quantsim import load_encodings_to_sim
from fxquant import load_encodings_to_sim
# AIMET: from aimet_common.defs import QuantScheme
from fxquant import QuantScheme

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import reestimate_batch_norm_statistics  # noqa: E402

SIZE = 64          # AIMET's example uses 224: 64 keeps the tutorial quick on a CPU
PREFIX = "quantized_resnet18"


def pass_calibration_data(sim_model: torch.nn.Module, forward_pass_args: list) -> None:
    """AIMET's calibration callback: called ``cb(model, forward_pass_callback_args)``."""
    sim_model.eval()
    with torch.no_grad():
        for input_data in forward_pass_args:
            sim_model(input_data)


def quantsim_example(model: torch.nn.Module, calibration_batches: list, export_dir: str
                     ) -> QuantizationSimModel:
    """AIMET's PTQ flow, line for line."""
    model.eval()
    prepared_model = prepare_model(model)
    input_shape = (1, 3, SIZE, SIZE)
    # AIMET needs this call before building the sim; fxquant folds an eval-mode model's batch
    # norms itself, and calling it first (as here) gives the same sim
    fold_all_batch_norms(prepared_model, input_shapes=input_shape)
    dummy_input = torch.randn(input_shape)
    quant_sim = QuantizationSimModel(prepared_model, dummy_input=dummy_input,
                                     quant_scheme=QuantScheme.post_training_tf_enhanced,
                                     default_param_bw=8, default_output_bw=8)
    quant_sim.compute_encodings(pass_calibration_data,
                                forward_pass_callback_args=calibration_batches)
    quant_sim.export(path=export_dir, filename_prefix=PREFIX, dummy_input=dummy_input)
    return quant_sim


def reload_example(export_dir: str) -> QuantizationSimModel:
    """The other half of AIMET's flow: a new process builds the same sim and loads the export."""
    model = prepare_model(models.resnet18(weights=None).eval())
    input_shape = (1, 3, SIZE, SIZE)
    fold_all_batch_norms(model, input_shapes=input_shape)
    model.load_state_dict(torch.load(os.path.join(export_dir, f"{PREFIX}.pth"),
                                     weights_only=True))
    sim = QuantizationSimModel(model, dummy_input=torch.randn(input_shape),
                               quant_scheme=QuantScheme.post_training_tf_enhanced,
                               default_param_bw=8, default_output_bw=8)
    load_encodings_to_sim(sim, os.path.join(export_dir, f"{PREFIX}_torch.encodings"))
    return sim


# ------------------------------------------------------------------------------------------------
# What is the same and what differs
# ------------------------------------------------------------------------------------------------
def main() -> None:
    torch.manual_seed(0)
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT")
                       or tempfile.mkdtemp(prefix="fxquant_aimet_"))
    export_dir = out / "export"
    model = reestimate_batch_norm_statistics(models.resnet18(weights=None), size=SIZE, batches=3)
    calibration_batches = [torch.randn(8, 3, SIZE, SIZE) for _ in range(2)]
    test = torch.randn(16, 3, SIZE, SIZE)

    sim = quantsim_example(model, calibration_batches, str(export_dir))
    print(f"AIMET's PTQ script ran with fxquant imports: {len(sim.quantizers())} quantizers")

    # 1. The files ---------------------------------------------------------------------------
    notes = {".onnx": "AIMET's name: the float model, BNs folded, quantizers removed",
             ".encodings": "AIMET's name and format: keyed by ONNX tensor names",
             "_torch.encodings": "AIMET's name and format: keyed by module names",
             ".pth": "the float weights (a state dict: tensors only, no pickled code)",
             "_qdq.onnx": "fxquant's extra: QuantizeLinear/DequantizeLinear, runs in ORT"}
    files = sorted(p.name for p in export_dir.iterdir())
    print(f"sim.export wrote {len(files)} files:")
    for name in files:
        suffix = name.removeprefix(PREFIX)
        print(f"  {name:<34} {notes[suffix]}")

    # 2. The encodings file ------------------------------------------------------------------
    # AIMET's 1.0.0 format: lists of entries with name, dtype, bw, is_sym, scale[], offset[] and
    # enc_type (PER_TENSOR / PER_CHANNEL); sim.export(..., encoding_version="0.6.1") writes the
    # older dict-of-lists format, "2.0.0" the newest, as AIMET's.
    encodings = json.loads((export_dir / f"{PREFIX}.encodings").read_text())
    params, acts = encodings["param_encodings"], encodings["activation_encodings"]
    print(f"{PREFIX}.encodings: version {encodings['version']}, keys {sorted(encodings)}; "
          f"{len(params)} param and {len(acts)} activation encodings")
    conv1 = next(e for e in params if e["name"] == "conv1.weight")
    print(f"  conv1.weight: {conv1['enc_type']}, {len(conv1['scale'])} scales, "
          f"bw {conv1['bw']}, is_sym {conv1['is_sym']}")
    first = acts[0]
    print(f"  {first['name']} (the model input): {first['enc_type']}, scale "
          f"{first['scale'][0]:.4g}, offset {first['offset'][0]}")
    # Every name is a tensor of <prefix>.onnx, as in AIMET's file; the names themselves differ:
    # fxquant names each layer's output tensor after the layer.
    graph = onnx.load(export_dir / f"{PREFIX}.onnx").graph
    tensors = ({t.name for t in graph.initializer} | {i.name for i in graph.input}
               | {o for node in graph.node for o in node.output})
    names = [e["name"] for e in params + acts]
    relu = next(e["name"] for e in acts if e["name"].startswith("layer1.0.relu"))
    print(f"  names that are tensors of {PREFIX}.onnx: {sum(n in tensors for n in names)} of "
          f"{len(names)}; e.g. {relu!r} (AIMET: '/layer1/layer1.0/relu/Relu_output_0')")
    # _torch.encodings is keyed by module and parameter names: the file load_encodings_to_sim
    # reads. The preparer names the modules it adds per scope: the second call of each block's
    # reused relu is layer1.0.relu_1 (AIMET's preparer: layer1.0.module_relu_1), the residual
    # adds layer1.0.module_add ... layer4.1.module_add (AIMET numbers them through the model:
    # layer4.0.module_add_6). A _torch.encodings file aimet-torch wrote loads all the same (its
    # names are mapped to these).
    torch_encodings = json.loads((export_dir / f"{PREFIX}_torch.encodings").read_text())
    modules = torch_encodings["activation_encodings"]
    split = [k for k in modules if k.endswith(".relu_1")]
    adds = [name for name, _ in sim.model.named_modules() if name.endswith(".module_add")]
    print(f"{PREFIX}_torch.encodings: version {torch_encodings['version']}, "
          f"{len(torch_encodings['param_encodings'])} parameters and {len(modules)} modules, "
          f"e.g. {split[0]!r} ({len(split)} split relus); {len(adds)} adds, {adds[0]!r} to "
          f"{adds[-1]!r}")

    # 3. The reload: bit-identical -------------------------------------------------------------
    reloaded = reload_example(str(export_dir))
    with torch.no_grad():
        expected = sim.model(test)
        same = torch.equal(reloaded.model(test), expected)
    print(f"reloaded sim (.pth + _torch.encodings) bit-identical to the exported one: {same}")

    # 4. The extra: the QDQ model in ONNX Runtime ---------------------------------------------
    # ORT_DISABLE_ALL runs every QuantizeLinear/DequantizeLinear as written: the reference the
    # sim matches. ORT's default optimizations fuse them into integer kernels, whose results
    # depend on the CPU (on x86 without VNNI, ORT's u8s8 convolutions saturate in int16).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    qdq = ort.InferenceSession(str(export_dir / f"{PREFIX}_qdq.onnx"), options,
                               providers=["CPUExecutionProvider"])
    # The export has the dummy input's static shape (batch 1), as AIMET's: one image per run.
    ort_out = torch.from_numpy(np.concatenate(
        [qdq.run(None, {qdq.get_inputs()[0].name: x[None].numpy()})[0] for x in test]))
    agree = (ort_out.argmax(1) == expected.argmax(1)).float().mean().item()
    print(f"{PREFIX}_qdq.onnx in ONNX Runtime vs the sim: logits SQNR "
          f"{float(ns.compute_sqnr(expected, ort_out)):.1f} dB, top-1 agrees on {agree:.0%} "
          f"of {len(test)} inputs")
    float_onnx = ort.InferenceSession(str(export_dir / f"{PREFIX}.onnx"),
                                      providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = model(test).numpy()
    float_out = np.concatenate([float_onnx.run(None, {"x": x[None].numpy()})[0] for x in test])
    print(f"{PREFIX}.onnx in ONNX Runtime vs the float model: max |diff| "
          f"{np.abs(float_out - reference).max():.2g}")


if __name__ == "__main__":
    main()
