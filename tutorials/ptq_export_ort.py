"""Tutorial: post-training quantization, export, and the exported model in ONNX Runtime.

The everyday fxquant flow, on a small CNN trained here on scikit-learn's digits (no download):

1. train the float (FP32) model;
2. build a W8A8 ``fxquant.QuantizationSimModel`` and calibrate it (``compute_encodings``) on a few
   training batches: the sim predicts the accuracy the integer target will have;
3. compare calibration schemes (min-max "tf", "tf_enhanced", "percentile", "mse");
4. ``sim.export``: the float ONNX model, the AIMET encodings file, a QDQ ONNX model;
5. read the encodings file: one tensor's scale / offset / bit width, keyed by a tensor name of
   the exported ONNX graph;
6. run the QDQ model in ONNX Runtime and check that it computes what the sim computed;
7. what ONNX Runtime's integer kernels (all graph optimizations on) do to the same model.

Files are written to $FXQUANT_TUTORIAL_OUT or a new temporary directory.

Run: python tutorials/ptq_export_ort.py
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
from onnx import numpy_helper

import fxquant
import fxquant.ns as ns

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import trained_digits_cnn  # noqa: E402


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def run_in_ort(path: str, images: torch.Tensor,
               level: ort.GraphOptimizationLevel) -> torch.Tensor:
    """Logits of an ONNX model in ONNX Runtime (CPU), one image at a time.

    ``sim.export`` exports with the shape of its ``dummy_input`` (batch 1 here), so the ONNX
    model takes exactly one image per run.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    return torch.from_numpy(np.concatenate(
        [session.run(None, {feed: images[i:i + 1].numpy()})[0] for i in range(len(images))]))


def main() -> None:
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT")
                       or tempfile.mkdtemp(prefix="fxquant_ptq_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. The float model ------------------------------------------------------------------------
    # Conv-BN-ReLU x2 with a residual add, a strided conv, pooling, a linear head; trained for a
    # few seconds (seeded). The data are 8x8 grey images in [0, 1], N x 1 x 8 x 8.
    model, (x_train, _, x_test, y_test) = trained_digits_cnn()
    with torch.no_grad():
        fp32_logits = model(x_test)
    fp32 = accuracy(fp32_logits, y_test)
    print(f"FP32 accuracy: {fp32:.2f}% on {len(x_test)} test images")

    # 2. The sim and its calibration ------------------------------------------------------------
    # The sim is built on a copy of the model: traced with torch.fx, its batch norms folded into
    # the convs (an eval-mode model, as an integer target folds them), and a quantizer inserted
    # for every tensor the target will hold in int8: the model input, the weights (per channel,
    # symmetric) and the activations (asymmetric). The dummy input only has to have the right
    # shape: it is used to trace and, later, to export.
    dummy_input = x_test[:1]

    def calibrate(sim_model: torch.nn.Module) -> None:
        # A few hundred representative inputs are enough: the quantizers only need to see the
        # range of each tensor. Use training data, never the test set you report on.
        for i in range(0, 512, 128):
            sim_model(x_train[i:i + 128])

    sims = {}
    for scheme in ("tf", "tf_enhanced", "percentile", "mse"):
        sim = fxquant.QuantizationSimModel(model, dummy_input, quant_scheme=scheme,
                                           default_output_bw=8, default_param_bw=8)
        sim.compute_encodings(calibrate)  # cb(sim.model); AIMET's cb(model, args) works too
        sims[scheme] = sim
    sim = sims["tf_enhanced"]  # the default scheme, and the demo's: used from here on
    print(sim)
    # By tensor: no quantizer on conv1's or module_add's output: Conv+ReLU and Add+ReLU are
    # supergroups, computed fused by the target and quantized once, after the ReLU.
    print("quantizers:", ", ".join(f"{q.name} ({q.kind})" for q in sim.quantizers()))
    with torch.no_grad():
        sim_logits = sim.model(x_test)  # sim.model is an nn.Module: use it like the model
    print(f"W8A8 sim (tf_enhanced) accuracy: {accuracy(sim_logits, y_test):.2f}% "
          f"(FP32 {fp32:.2f}%)")

    # 3. Calibration schemes --------------------------------------------------------------------
    # How each scheme picks a range: "tf" takes min and max; "tf_enhanced" (AIMET's histogram
    # search), "percentile" and "mse" may clip rare outliers to get a finer grid for the bulk
    # of the values. At 8 bits this small model barely cares; lower bit widths make the choice
    # matter more. The SQNR of the logits against FP32 (signal power / error power, in dB) is a
    # finer measure than accuracy.
    for scheme, candidate in sims.items():
        with torch.no_grad():
            logits = candidate.model(x_test)
        sqnr = float(ns.compute_sqnr(fp32_logits, logits))
        print(f"scheme {scheme:<12} accuracy {accuracy(logits, y_test):.2f}%, logits SQNR vs "
              f"FP32 {sqnr:.1f} dB")

    # 4. Export ---------------------------------------------------------------------------------
    # One call writes the float model (quantizers removed, BNs folded) and, next to it, the
    # encodings a target toolchain (e.g. Qualcomm QNN) applies to it; plus a QDQ model, the same
    # graph with QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime can run directly.
    export_dir = out / "export"
    files = sim.export(str(export_dir), "digits", dummy_input)
    print("exported:", ", ".join(f"{kind}={pathlib.Path(path).name}"
                                 for kind, path in sorted(files.items())))

    # 5. The encodings file ---------------------------------------------------------------------
    # AIMET's format 1.0.0: a list of activation and of parameter encodings, each named by a
    # tensor of the exported ONNX graph. fxquant names each layer's output tensor after the
    # layer ("conv2"), so the name you see in the sim is the name in the file and in the graph.
    encodings = json.loads(pathlib.Path(files["encodings"]).read_text())
    conv2 = next(e for e in encodings["activation_encodings"] if e["name"] == "conv2")
    bw, scale, offset = conv2["bw"], conv2["scale"][0], conv2["offset"][0]
    # The grid is scale * (q + offset) for the integers q = 0 .. 2**bw - 1: 256 steps from
    # offset * scale to (offset + 255) * scale. Zero is always on it (q = -offset).
    print(f"encoding of 'conv2': bitwidth {bw}, scale {scale:.6g}, offset {offset}, symmetric "
          f"{conv2['is_sym']}: {2 ** bw} steps from {offset * scale:.3f} to "
          f"{(offset + 2 ** bw - 1) * scale:.3f}")
    graph = onnx.load(files["onnx"]).graph
    tensors = ({o for node in graph.node for o in node.output}
               | {i.name for i in graph.input} | {i.name for i in graph.initializer})
    names = [e["name"] for kind in ("activation_encodings", "param_encodings")
             for e in encodings[kind]]
    producer = next(node for node in graph.node if "conv2" in node.output)
    print(f"{len(names)} encodings, {sum(n in tensors for n in names)} of them named by a tensor "
          f"of {pathlib.Path(files['onnx']).name}; 'conv2' is the output of its "
          f"{producer.op_type} node (inputs {list(producer.input)})")
    # The QDQ model holds the same encoding as QuantizeLinear's scale and zero point: AIMET's
    # offset is the negated ONNX zero point (real = (q + offset) * scale = (q' - zp) * scale).
    qdq = {i.name: numpy_helper.to_array(i) for i in onnx.load(files["qdq_onnx"]).graph.initializer}
    print(f"in {pathlib.Path(files['qdq_onnx']).name}: conv2/scale "
          f"{float(qdq['conv2/scale']):.6g}, conv2/zero_point {int(qdq['conv2/zero_point'])} "
          f"({qdq['conv2/zero_point'].dtype})")

    # 6. The QDQ model in ONNX Runtime ----------------------------------------------------------
    # ORT_DISABLE_ALL makes ONNX Runtime run the QDQ graph as written: each QuantizeLinear /
    # DequantizeLinear pair rounds and clamps a float tensor onto its grid, and the Conv/Gemm
    # between them compute in float32, which is what the sim simulates. With optimizations on,
    # ORT fuses DQ -> Conv -> Q into integer kernels (QLinearConv), whose int32 accumulation
    # and requantization round differently (a step here and there) and, on some CPUs, saturate
    # intermediate sums (far more than a step): a comparison would then mix export bugs with
    # kernel effects. Disabled first, to check the export; step 7 looks at the integer kernels.
    ort_logits = run_in_ort(files["qdq_onnx"], x_test, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    agree = 100.0 * float((ort_logits.argmax(1) == sim_logits.argmax(1)).float().mean())
    equal = 100.0 * float((ort_logits == sim_logits).float().mean())
    print(f"ONNX Runtime (QDQ, ORT_DISABLE_ALL) accuracy: {accuracy(ort_logits, y_test):.2f}%")
    print(f"sim vs ONNX Runtime: same prediction on {agree:.2f}% of the test images, logits SQNR "
          f"{float(ns.compute_sqnr(sim_logits, ort_logits)):.1f} dB, bit-equal logits "
          f"{equal:.2f}%")

    # 7. The integer kernels --------------------------------------------------------------------
    # The same file with every ORT optimization on: integer QLinearConv/QLinearAdd/QGemm. How
    # close this comes to the sim depends on the CPU: with VNNI it is close; on AVX2-only x86
    # ORT's u8s8 convolution can saturate int16 pair sums (see README, Export), an error of the
    # runtime that no simulator reproduces. Measure it on the hardware you deploy to.
    int_logits = run_in_ort(files["qdq_onnx"], x_test, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    int_agree = 100.0 * float((int_logits.argmax(1) == sim_logits.argmax(1)).float().mean())
    print(f"ONNX Runtime integer kernels (ORT_ENABLE_ALL): accuracy "
          f"{accuracy(int_logits, y_test):.2f}%, same prediction as the sim on {int_agree:.2f}%, "
          f"logits SQNR {float(ns.compute_sqnr(sim_logits, int_logits)):.1f} dB")
    print(f"files written to {out}")


if __name__ == "__main__":
    main()
