"""Tutorial: quantization-aware training (QAT) wins back what 3-bit weights cost.

At 8 bits post-training quantization (PTQ) keeps this small CNN's accuracy; with 3-bit weights,
one scale per weight tensor (a target without per-channel scales), and 8-bit activations (W3A8)
it loses many points. QAT fine-tunes the model *through* the simulated quantization, so that the
weights learn to live on the coarse grid. On a CNN trained here on scikit-learn's digits (no
download):

1. train the float model; PTQ at W8A8 and at W3A8;
2. QAT with fixed ranges: calibrate once, then train ``sim.model`` like any ``nn.Module``;
3. QAT with range learning (``QuantScheme.training_range_learning_with_tf_init``): the scales and
   offsets become trainable parameters too, initialised by min-max calibration;
4. export the trained sim and check that ONNX Runtime computes what it computed.

Files are written to $FXQUANT_TUTORIAL_OUT or a new temporary directory.

Run: python tutorials/qat.py
"""
from __future__ import annotations

import os
import pathlib
import statistics
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

import fxquant
import fxquant.ns as ns

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import trained_digits_cnn  # noqa: E402

EPOCHS = 4            # QAT is fine-tuning: a few epochs at a small learning rate
LR = 1e-3             # a tenth of the float training's (1e-2)
ENCODING_LR = LR / 10  # for learned scales and offsets (see qat)


def learned_encodings(sim: fxquant.QuantizationSimModel) -> list[nn.Parameter]:
    """The quantizers' trainable scales and offsets (none unless the scheme learns ranges)."""
    return [p for ref in sim.quantizers() for p in ref.quantizer.parameters()]


def qat(sim: fxquant.QuantizationSimModel, x: torch.Tensor, y: torch.Tensor) -> None:
    """Fine-tunes ``sim.model`` on ``(x, y)``: Adam, batch 64, cosine-decayed learning rate.

    Nothing here is specific to quantization: the quantizers are modules of the graph, and
    their rounding passes gradients straight through (the straight-through estimator), so an
    ordinary training loop trains the weights to suit the grid. ``sim.model.parameters()``
    holds the weights and, with a range-learning scheme, the quantizers' scales and offsets.
    Those get their own, smaller learning rate: Adam's step is up to about ``lr`` in absolute
    terms, whatever the size of the parameter, and the input's scale is 1/255 = 0.004, so at
    the weights' 1e-3 one step could move it by a quarter (tried: it doubled within 4 epochs).
    """
    sim_model = sim.model
    encodings = learned_encodings(sim)
    ids = {id(p) for p in encodings}
    groups = [{"params": [p for p in sim_model.parameters() if id(p) not in ids]}]
    if encodings:
        groups.append({"params": encodings, "lr": ENCODING_LR})
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(groups, lr=LR)
    steps = EPOCHS * -(-len(x) // 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    sim_model.train()  # the batch norms are already folded: train mode changes nothing else here
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            batch = order[i:i + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(sim_model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
    sim_model.eval()


def main() -> None:
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT")
                       or tempfile.mkdtemp(prefix="fxquant_qat_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. The float model, and PTQ at 8 and at 3 bits ---------------------------------------------
    model, (x_train, y_train, x_test, y_test) = trained_digits_cnn()
    dummy_input = x_test[:1]

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((m(x_test).argmax(1) == y_test).float().mean())

    def calibrate(sim_model: nn.Module) -> None:
        for i in range(0, 512, 128):
            sim_model(x_train[i:i + 128])

    def sim_at(weight_bits: int, scheme: str | fxquant.QuantScheme
               ) -> fxquant.QuantizationSimModel:
        # config_file="per_tensor": one scale per weight tensor instead of one per output
        # channel. The sim folds the batch norms (the model is in eval mode) before quantizing:
        # QAT then trains the folded weights, the ones the target will hold.
        sim = fxquant.QuantizationSimModel(model, dummy_input, quant_scheme=scheme,
                                           default_output_bw=8, default_param_bw=weight_bits,
                                           config_file="per_tensor")
        sim.compute_encodings(calibrate)
        return sim

    fp32 = accuracy(model)
    w8a8 = accuracy(sim_at(8, "tf").model)
    ptq = sim_at(3, "tf")
    w3a8 = accuracy(ptq.model)
    print(f"FP32 {fp32:.2f}%; PTQ (min-max calibration, per-tensor weights): W8A8 {w8a8:.2f}%, "
          f"W3A8 {w3a8:.2f}%")
    # 3 signed bits leave 8 levels (-4..3) per weight tensor, one step for all its channels:
    # channels with small weights round to a few levels or to zero, and the network, trained in
    # float, was never asked to tolerate that.

    # 2. QAT with fixed ranges -------------------------------------------------------------------
    # The encodings computed by compute_encodings stay as they are; the weights move. Train the
    # sim's model (not the float model): its forward pass is the quantized one.
    qat(ptq, x_train, y_train)
    print(f"QAT, fixed ranges ({EPOCHS} epochs): W3A8 {w3a8:.2f}% -> {accuracy(ptq.model):.2f}%")

    # 3. QAT with range learning ------------------------------------------------------------------
    # AIMET's range-learning scheme: compute_encodings initialises each scale and offset with
    # min-max ("tf") calibration, then they are nn.Parameters the optimizer trains along with
    # the weights (the gradient of the rounding w.r.t. the scale is LSQ's), so each range
    # settles where the training loss wants it rather than where the calibration data's
    # extremes put it.
    sim = sim_at(3, fxquant.QuantScheme.training_range_learning_with_tf_init)
    learned = learned_encodings(sim)
    before = {q.name: q.quantizer.scale.detach().clone() for q in sim.quantizers()}
    start = accuracy(sim.model)
    qat(sim, x_train, y_train)
    qat_acc = accuracy(sim.model)
    print(f"QAT, learned ranges ({EPOCHS} epochs, {len(learned)} trainable scales and offsets): "
          f"W3A8 {start:.2f}% -> {qat_acc:.2f}% (FP32 {fp32:.2f}%)")
    # On this small model both ways recover about as much: once the weights adapt, min-max
    # ranges serve well enough. Learning them pays when calibration picks poor ones (a few
    # outliers stretching a grid of only 8 levels). How far did they move?
    after = {q.name: q.quantizer.scale.detach() for q in sim.quantizers()}
    moved = {name: float((after[name] / before[name] - 1).abs().max()) for name in after}
    most = max(moved, key=moved.get)  # per-tensor scales here: one number per quantizer
    print(f"scales moved by up to {100 * moved[most]:.1f}% ({most}: {float(before[most]):.5g} "
          f"-> {float(after[most]):.5g}), median {100 * statistics.median(moved.values()):.1f}%")

    # 4. Export and ONNX Runtime ------------------------------------------------------------------
    # The trained weights and the learned encodings are exported as any sim's: the QDQ model
    # holds the 3-bit weights as integers and the learned scales and offsets (rounded to
    # integers, as the sim rounds them in its forward pass) in its Q/DQ nodes.
    files = sim.export(str(out / "export"), "digits_w3a8_qat", dummy_input)
    qdq = onnx.load(files["qdq_onnx"])
    initializers = {i.name: i for i in qdq.graph.initializer}
    weight = initializers["conv2.weight/quantized"]
    values = numpy_helper.to_array(weight)
    type_name = onnx.TensorProto.DataType.Name
    print(f"QDQ model (opset {qdq.opset_import[0].version}): conv2.weight stored as "
          f"{type_name(weight.data_type)} in [{values.min()}, {values.max()}], activations "
          f"quantized to {type_name(initializers['module_relu_2/zero_point'].data_type)}")
    # ORT_DISABLE_ALL runs the QDQ graph as written (no fusion into integer kernels), which is
    # what the sim simulates: the comparison checks the export, not ORT's kernels.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(files["qdq_onnx"], options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    ort_logits = torch.from_numpy(np.concatenate(   # exported with batch 1, like the dummy input
        [session.run(None, {feed: x_test[i:i + 1].numpy()})[0] for i in range(len(x_test))]))
    with torch.no_grad():
        sim_logits = sim.model(x_test)
    ort_acc = 100.0 * float((ort_logits.argmax(1) == y_test).float().mean())
    agree = 100.0 * float((ort_logits.argmax(1) == sim_logits.argmax(1)).float().mean())
    sqnr = float(ns.compute_sqnr(sim_logits, ort_logits))
    print(f"ONNX Runtime (QDQ, ORT_DISABLE_ALL): {ort_acc:.2f}% (sim {qat_acc:.2f}%), same "
          f"prediction on {agree:.2f}% of the test images, logits SQNR {sqnr:.1f} dB")
    print(f"exported to {out / 'export'}")


if __name__ == "__main__":
    main()
