"""Tutorial: bias correction removes the mean shift that coarse weight quantization causes.

Rounding a weight tensor ``W`` to a coarse grid adds an error ``ΔW`` that does not average out:
each output channel of the layer is shifted by ``ΔW·E[x]``, and the shifts add up layer after
layer. With 4-bit weights and one scale per tensor (W4 per-tensor) they are large. Bias
correction (Nagel et al. 2019, "Data-Free Quantization"; AIMET's ``correct_bias``) subtracts each
layer's shift from its bias, in the float model, so that once quantized every output channel's
mean is the float one again. On a MobileNet-style CNN (ReLU6) trained here on scikit-learn's
digits (no download):

1. W4A8, per-tensor weights, min-max ranges: the accuracy, the logits' SQNR, and each layer's
   *per-channel mean error* (RMS over its output channels of ``E[float output] − E[quantized
   output]``, measured on the held-out test images);
2. **empirical** correction (``correct_bias``'s default): the shift measured on 256 calibration
   images, layer by layer in the quantized model, and subtracted;
3. **analytical** correction (``perform_only_empirical_bias_corr=False``): for a layer fed by a
   batch norm (and ReLU/ReLU6), ``E[x]`` computed from the batch norm's β and γ (the mean of a
   clipped normal), no data needed for those layers; the others are corrected empirically;
4. what changed in the model: only biases.

Run: python tutorials/bias_correction.py
"""
from __future__ import annotations

import copy
import logging
import logging.handlers
import pathlib
import sys

import torch
from torch import nn

import fxquant
import fxquant.ns as ns
from fxquant.ptq.bias_correction import QuantParams, correct_bias, find_all_conv_bn_with_activation

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import trained_digits_mobilenet  # noqa: E402

EPOCHS = 10
#: What bias correction corrects for: 4-bit weights, one scale per tensor, min-max ranges (the
#: model input 8 bits). The sims built to evaluate use the same, with 8-bit activations.
W4 = QuantParams(weight_bw=4, act_bw=8, quant_scheme="tf", config_file="per_tensor")


def main() -> None:
    torch.manual_seed(0)

    # 1. The model and its W4A8 sim ---------------------------------------------------------------
    model, (x_train, y_train, x_test, y_test) = trained_digits_mobilenet(nn.ReLU6, EPOCHS)
    dummy_input = x_test[:1]
    # AIMET's data loader: batches of (images, labels); correct_bias takes the images. The first
    # 4 batches (256 images) calibrate the sim and measure the empirical correction.
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train),
                                         batch_size=64)
    calibration = [x_train[i:i + 64] for i in range(0, 256, 64)]

    def accuracy(logits: torch.Tensor) -> float:
        return 100.0 * float((logits.argmax(1) == y_test).float().mean())

    def w4a8(m: nn.Module) -> fxquant.QuantizationSimModel:
        sim = fxquant.QuantizationSimModel(m, dummy_input, quant_scheme=W4.quant_scheme,
                                           default_param_bw=W4.weight_bw,
                                           default_output_bw=W4.act_bw,
                                           config_file=W4.config_file)
        sim.compute_encodings(lambda s: [s(b) for b in calibration])
        return sim

    # The reference of the per-channel means: the float model with its batch norms folded, as
    # the sim folds them, so that both have the same layers (conv + BN = one conv).
    folded = copy.deepcopy(model)
    fxquant.fold_all_batch_norms(folded, dummy_input=dummy_input)
    with torch.no_grad():
        fp32 = model(x_test)

    @torch.no_grad()
    def channel_means(m: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
        """Each layer's output averaged over the test images (and positions), per channel: a
        forward hook on the layer's module (in a sim: before its output quantizer)."""
        means: dict[str, torch.Tensor] = {}
        hooks = [m.get_submodule(name).register_forward_hook(
            lambda _, __, out, name=name: means.__setitem__(
                name, out.double().transpose(0, 1).flatten(1).mean(1))) for name in layers]
        try:
            m(x_test)
        finally:
            for hook in hooks:
                hook.remove()
        return means

    def report(label: str, sim: fxquant.QuantizationSimModel) -> dict[str, float]:
        with torch.no_grad():
            logits = sim.model(x_test)
        layers = [q.layer for q in sim.quantizers() if q.kind == "param"]  # conv/linear weights
        want, got = channel_means(folded, layers), channel_means(sim.model, layers)
        errors = {name: float((want[name] - got[name]).pow(2).mean().sqrt()) for name in layers}
        total = sum(e * e for e in errors.values()) ** 0.5
        print(f"{label}: accuracy {accuracy(logits):.2f}%, logits SQNR "
              f"{float(ns.compute_sqnr(fp32, logits)):.1f} dB, per-channel mean error "
              f"{total:.3f} (RMS over channels, root-sum-square over {len(layers)} layers)")
        return errors

    print(f"FP32: {accuracy(fp32):.2f}%")
    before = report("W4A8 per-tensor, no correction", w4a8(model))

    # 2. Empirical bias correction ---------------------------------------------------------------
    # In place, on (a copy of) the float model. It builds a sim with W4's settings, activations
    # not quantized (as AIMET does), and goes through the conv/linear layers in graph order:
    # each layer's per-channel output mean, float model vs sim (the earlier layers already
    # corrected), over num_bias_correct_samples images, is subtracted from its bias. A conv
    # followed by a batch norm takes the correction in the batch norm's β.
    empirical = copy.deepcopy(model)
    correct_bias(empirical, W4, num_quant_samples=256, data_loader=loader,
                 num_bias_correct_samples=256)
    after_empirical = report("W4A8 per-tensor, empirical correction", w4a8(empirical))

    # 3. Analytical bias correction --------------------------------------------------------------
    # AIMET's documented flow: find each conv's input batch norm (and activation) in the unfolded
    # model, fold the batch norms, then correct. A layer fed by BN (+ ReLU/ReLU6) gets
    # -ΔW·E[x], E[x] from N(β, γ²) clipped to [0, 6]; the first conv (fed by the image) and the
    # classifier (fed by pooling) have no such batch norm and are corrected empirically. The
    # module logs which way each layer went (INFO): collected here to print it.
    analytical = copy.deepcopy(model)
    conv_bn_dict = find_all_conv_bn_with_activation(analytical, input_shape=(1, 1, 8, 8))
    fxquant.fold_all_batch_norms(analytical, dummy_input=dummy_input)
    logger = logging.getLogger("fxquant.ptq.bias_correction")
    captured = logging.handlers.BufferingHandler(capacity=100)
    level = logger.level
    logger.addHandler(captured)
    logger.setLevel(logging.INFO)
    try:
        correct_bias(analytical, W4, 256, loader, 256, conv_bn_dict=conv_bn_dict,
                     perform_only_empirical_bias_corr=False)
    finally:
        logger.removeHandler(captured)
        logger.setLevel(level)
    ways = [r.getMessage() for r in captured.buffer if r.getMessage().startswith("corrected")]
    print(f"analytical: {sum('(analytical)' in w for w in ways)} layers from their batch norm, "
          f"{sum('(empirical)' in w for w in ways)} measured ("
          + ", ".join(w.removeprefix("corrected the bias of ") for w in ways
                      if "(empirical)" in w) + ")")
    after_analytical = report("W4A8 per-tensor, analytical correction", w4a8(analytical))

    print(f"{'layer':<20} {'none':>7} {'empirical':>10} {'analytical':>11}")
    for name in before:
        print(f"{name:<20} {before[name]:7.3f} {after_empirical[name]:10.3f} "
              f"{after_analytical[name]:11.3f}")
    # The errors grow with depth without correction (the shifts add up). The empirical correction
    # was measured on 256 training images, these errors on the 450 held-out test images. The
    # analytical one assumes each batch norm's output is normal with the statistics it learned,
    # which a real layer's output only roughly is: it leaves more, but computes those layers'
    # corrections without running data through them (the sim is still calibrated on data).

    # 4. What changed ------------------------------------------------------------------------------
    original, corrected = model.state_dict(), empirical.state_dict()
    changed = sorted(k for k in original if not torch.equal(original[k], corrected[k]))
    only_biases = all(k.endswith(".bias") for k in changed)
    print(f"changed by the empirical correction: {len(changed)} of {len(original)} tensors, "
          f"all biases: {only_biases} (e.g. {', '.join(changed[:3])})")


if __name__ == "__main__":
    main()
