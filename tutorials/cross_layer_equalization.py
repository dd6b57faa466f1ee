"""Tutorial: cross-layer equalization (CLE) for per-tensor weight quantization of MobileNets.

A target without per-channel weight scales gives each weight tensor one grid: a channel whose
weights are 100× smaller than its neighbours' rounds to a few levels or to zero. In ImageNet
MobileNets, folding the batch norms into the depthwise convolutions leaves exactly that: the
per-channel weight ranges of a layer differ by 100× or more (Nagel et al. 2019, "Data-Free
Quantization", Fig. 2), and per-tensor 8-bit quantization breaks them. CLE rescales consecutive
layers: output channel ``c`` of one layer multiplied by ``1 / s_c`` and input channel ``c`` of the
next by ``s_c``, which ReLU (``relu(x / s) = relu(x) / s`` for ``s > 0``) lets through, so the float
model computes the same while both layers' ranges become equal. ``fxquant.equalize_model`` is
AIMET's ``equalize_model``: it folds the batch norms, scales the pairs and absorbs high biases,
in place. On a MobileNet-style CNN trained here on scikit-learn's digits (no download):

1. train it (ReLU); per-tensor W8A8 before and after CLE, and the float logits before and after;
2. the channel imbalance of a real MobileNet, which a net trained for seconds on 8×8 digits does
   not develop, *produced on purpose* by a function-preserving per-channel rescaling (what BN
   folding does to ImageNet MobileNets): per-tensor W8A8 collapses, CLE recovers it;
3. ReLU6 (MobileNetV2's activation) is not scale-invariant: AIMET 2.4+ and fxquant leave the
   pairs through it alone and warn; ``relu6_to_relu=True`` (what AIMET < 2.4 did) replaces it by
   ReLU first, which changes the float model: measured here.

Run: python tutorials/cross_layer_equalization.py
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import trained_digits_mobilenet  # noqa: E402

EPOCHS = 10      # two nets are trained (ReLU, ReLU6): ~3 s each on one CPU core
SPREAD = 10.0    # step 2: channel c scaled by k_c, log-uniform in [1/SPREAD, SPREAD]


def per_channel_spread(model: nn.Module, dummy_input: torch.Tensor) -> tuple[str, float]:
    """The conv whose per-output-channel weight ranges (max |w| of each channel) are furthest
    apart once the batch norms are folded, and the ratio of its largest range to its smallest:
    the number per-tensor quantization suffers from (the model itself is not changed)."""
    folded = copy.deepcopy(model)
    fxquant.fold_all_batch_norms(folded, dummy_input=dummy_input)
    ratios = {}
    for name, module in folded.named_modules():
        if isinstance(module, nn.Conv2d):
            ranges = module.weight.detach().abs().flatten(1).amax(1)
            ratios[name] = float(ranges.max() / ranges.min())
    worst = max(ratios, key=ratios.get)
    return worst, ratios[worst]


@torch.no_grad()
def rescale_channels(model: nn.Module, spread: float = SPREAD, seed: int = 0) -> list[str]:
    """Gives the trained ReLU net what BN folding leaves in ImageNet MobileNets, explicitly: for
    each batch norm → ReLU → conv, channel ``c`` of the batch norm (γ and β) is multiplied by
    ``k_c`` (log-uniform in [1/spread, spread]) and input channel ``c`` of the conv divided by
    it. ReLU passes the factor through (``relu(k·x) = k·relu(x)``), so the float model computes
    the same function; after folding, the conv before the batch norm has output channels
    ``k_c`` times larger and the conv after it input channels ``k_c`` times smaller: ranges up
    to ``spread²`` apart more than before, ``spread⁴`` for a depthwise conv between two rescaled
    batch norms (its channel ``c`` is both an input and an output channel). The batch norm
    before ``features.15`` (the inverted residual) is left as it is: its ReLU's output also
    feeds the residual add, which would see the factors.

    Returns the names of the batch norms rescaled.
    """
    gen = torch.Generator().manual_seed(seed)
    features, block = model.features, model.features[15].conv
    triples = [("features.1", features[1], features[3]), ("features.4", features[4], features[6]),
               ("features.7", features[7], features[9]),
               ("features.10", features[10], features[12]),
               ("features.15.conv.1", block[1], block[3]),
               ("features.15.conv.4", block[4], block[6])]
    for _, bn, conv in triples:
        k = torch.exp((torch.rand(bn.num_features, generator=gen) * 2 - 1)
                      * torch.log(torch.tensor(spread)))
        bn.weight.mul_(k)
        bn.bias.mul_(k)
        # a depthwise conv's channel c is its input channel c; a 1×1 conv's is weight[:, c]
        conv.weight.div_(k.view(-1, 1, 1, 1) if conv.groups > 1 else k.view(1, -1, 1, 1))
    return [name for name, _, _ in triples]


def main() -> None:
    torch.manual_seed(0)

    # 1. A trained MobileNet-style CNN, per-tensor W8A8, CLE ------------------------------------
    model, (x_train, y_train, x_test, y_test) = trained_digits_mobilenet(nn.ReLU, EPOCHS)
    dummy_input = x_test[:1]

    def accuracy(logits: torch.Tensor) -> float:
        return 100.0 * float((logits.argmax(1) == y_test).float().mean())

    def logits_of(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return m(x_test)

    def per_tensor_w8a8(m: nn.Module) -> torch.Tensor:
        # config_file="per_tensor": one scale per weight tensor (the default config has one per
        # output channel, which does not need CLE). Calibrated on 256 training images.
        sim = fxquant.QuantizationSimModel(m, dummy_input, default_param_bw=8,
                                           default_output_bw=8, config_file="per_tensor")
        sim.compute_encodings(lambda s: [s(x_train[i:i + 64]) for i in range(0, 256, 64)])
        return logits_of(sim.model)

    fp32 = logits_of(model)
    layer, ratio = per_channel_spread(model, dummy_input)
    print(f"FP32 (ReLU net): {accuracy(fp32):.2f}%; per-channel weight ranges after BN folding "
          f"at most {ratio:.1f}x apart ({layer})")
    before = per_tensor_w8a8(model)
    print(f"per-tensor W8A8 before CLE: {accuracy(before):.2f}%, logits SQNR "
          f"{float(ns.compute_sqnr(fp32, before)):.1f} dB")

    # equalize_model changes the model in place (keep a copy to compare): every BN folded into
    # its conv (the BN modules become nn.Identity), then the pairs scaled. It returns what it
    # did; AIMET's returns None, so AIMET code ignores it.
    equalized = copy.deepcopy(model)
    report = fxquant.equalize_model(equalized, dummy_input=dummy_input)
    print(f"equalize_model: {len(report['folded'])} batch norms folded, "
          f"{len(report['scaled'])} pairs scaled, {len(report['absorbed'])} high biases absorbed")
    print("scaled pairs: " + ", ".join(f"{a} -> {b}" for a, b in report["scaled"]))
    # Pairs: conv -> depthwise -> pointwise chains (a depthwise layer is in two pairs).
    # features.12 -> features.15.conv.0 is not a pair: the ReLU after features.12 also feeds
    # the residual add, which scaling would change. No bias was high enough to absorb here.
    diff = float((logits_of(equalized) - fp32).abs().max())
    print(f"float logits after CLE: max abs difference {diff:.2e} (logits up to "
          f"{float(fp32.abs().max()):.1f})")
    after = per_tensor_w8a8(equalized)
    layer, ratio = per_channel_spread(equalized, dummy_input)
    print(f"per-tensor W8A8 after CLE: {accuracy(after):.2f}%, logits SQNR "
          f"{float(ns.compute_sqnr(fp32, after)):.1f} dB; ranges at most {ratio:.1f}x apart "
          f"({layer})")
    # A net trained for seconds on 8x8 digits has fairly even channels (ranges a few times
    # apart): CLE moves the per-tensor SQNR by under a dB, either way. The next step shows the
    # case CLE is made for.

    # 2. The channel imbalance of an ImageNet MobileNet, produced on purpose --------------------
    # Not a property of this net: rescale_channels (above) plants it, function-preserving, so
    # that the imbalance BN folding gives real MobileNets can be seen on a model trained here.
    imbalanced = copy.deepcopy(model)
    rescaled = rescale_channels(imbalanced)
    diff = float((logits_of(imbalanced) - fp32).abs().max())
    layer, ratio = per_channel_spread(imbalanced, dummy_input)
    print(f"rescaled {len(rescaled)} batch norms' channels by factors in [1/{SPREAD:g}, "
          f"{SPREAD:g}] (and the next convs' inputs by the inverse): float logits max abs "
          f"difference {diff:.2e}; ranges after BN folding at most {ratio:.0f}x apart ({layer})")
    before = per_tensor_w8a8(imbalanced)
    print(f"imbalanced, per-tensor W8A8 before CLE: {accuracy(before):.2f}%, logits SQNR "
          f"{float(ns.compute_sqnr(fp32, before)):.1f} dB")
    report = fxquant.equalize_model(imbalanced, dummy_input=dummy_input)
    diff = float((logits_of(imbalanced) - fp32).abs().max())
    after = per_tensor_w8a8(imbalanced)
    layer, ratio = per_channel_spread(imbalanced, dummy_input)
    print(f"imbalanced, per-tensor W8A8 after CLE ({len(report['scaled'])} pairs scaled): "
          f"{accuracy(after):.2f}%, logits SQNR {float(ns.compute_sqnr(fp32, after)):.1f} dB; "
          f"ranges at most {ratio:.1f}x apart ({layer}); float logits max abs difference "
          f"{diff:.2e}")
    # CLE undid the planted factors (up to the ranges the trained net had): the per-tensor sim
    # is back where the equalized trained net was in step 1.

    # 3. ReLU6 -------------------------------------------------------------------------------
    # relu6(x / s) != relu6(x) / s: the clip at 6 moves, so a pair with a ReLU6 between cannot
    # be scaled without changing the model. AIMET 2.4+ (and fxquant by default) leave such pairs
    # alone and log a warning, collected here to print it.
    relu6_net, _ = trained_digits_mobilenet(nn.ReLU6, EPOCHS)
    fp32_relu6 = logits_of(relu6_net)
    print(f"FP32 (ReLU6 net): {accuracy(fp32_relu6):.2f}%; per-tensor W8A8 without CLE: "
          f"logits SQNR {float(ns.compute_sqnr(fp32_relu6, per_tensor_w8a8(relu6_net))):.1f} dB")
    logger = logging.getLogger("fxquant.ptq.cross_layer_equalization")
    captured = logging.handlers.BufferingHandler(capacity=100)
    logger.addHandler(captured)
    try:
        left_alone = copy.deepcopy(relu6_net)
        report = fxquant.equalize_model(left_alone, dummy_input=dummy_input)
    finally:
        logger.removeHandler(captured)
    print(f"ReLU6, default (AIMET 2.4+): {len(report['scaled'])} pairs scaled, "
          f"{len(report['skipped'])} left alone, e.g. {report['skipped'][0][0]} -> "
          f"{report['skipped'][0][1]} ({report['skipped'][0][2]})")
    for record in captured.buffer:
        print(f"logged {record.levelname}: {record.getMessage()}")
    diff = float((logits_of(left_alone) - fp32_relu6).abs().max())
    print(f"ReLU6, default: float logits max abs difference {diff:.2e} (the batch norms were "
          f"folded, nothing else)")

    # relu6_to_relu=True replaces every nn.ReLU6 module by nn.ReLU first; then every pair is
    # scaled. The float model now lets pre-activations above 6 through: measure what that costs
    # before quantizing (how much depends on how often your model's pre-activations exceed 6).
    replaced = copy.deepcopy(relu6_net)
    report = fxquant.equalize_model(replaced, dummy_input=dummy_input, relu6_to_relu=True)
    relu_logits = logits_of(replaced)
    agree = 100.0 * float((relu_logits.argmax(1) == fp32_relu6.argmax(1)).float().mean())
    print(f"ReLU6, relu6_to_relu=True (AIMET < 2.4): {len(report['relu6_replaced'])} ReLU6 "
          f"replaced, {len(report['scaled'])} pairs scaled")
    print(f"float effect of ReLU6 -> ReLU: accuracy {accuracy(fp32_relu6):.2f}% -> "
          f"{accuracy(relu_logits):.2f}%, logits SQNR vs the ReLU6 net "
          f"{float(ns.compute_sqnr(fp32_relu6, relu_logits)):.1f} dB, same prediction on "
          f"{agree:.2f}% of the test images")
    after = per_tensor_w8a8(replaced)
    print(f"ReLU6 -> ReLU + CLE, per-tensor W8A8: {accuracy(after):.2f}%, logits SQNR "
          f"{float(ns.compute_sqnr(fp32_relu6, after)):.1f} dB vs the ReLU6 net")
    # Here the trade does not pay: the ReLU6 net quantized per tensor as it is (above) is closer
    # to its float self, as its channels were never imbalanced; unbounded ReLU activations also
    # need wider activation grids. Measure both ways on your model, or keep per-channel weights
    # (the default config), which need no CLE.


if __name__ == "__main__":
    main()
