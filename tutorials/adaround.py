"""Tutorial: AdaRound learns whether to round each 4-bit weight up or down.

Rounding every weight to the nearest point of its grid minimizes each weight's own error, not the
error of what the layer computes: errors of neighbouring weights that meet the same inputs add
up. AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization"; AIMET's ``Adaround.apply_adaround``) chooses, layer by layer, floor or ceil for
every weight so that the layer's output on calibration data, in the quantized model, reproduces
the float model's. It keeps AIMET's flow: ``apply_adaround`` returns a copy of the model whose
weights lie on their grids and writes the grids to an encodings file; a sim built on that copy
loads the file with ``set_and_freeze_param_encodings`` and ``compute_encodings`` then computes
only the activations' encodings. On a MobileNet-style CNN (ReLU6) trained here on scikit-learn's
digits (no download), 4-bit per-channel weights and 8-bit activations (W4A8):

1. nearest rounding: accuracy and the logits' SQNR;
2. AdaRound: ``apply_adaround`` → ``set_and_freeze_param_encodings`` → ``compute_encodings`` →
   evaluate;
3. the file AdaRound wrote, and how many weights it rounded the other way, per layer.

Files are written to $FXQUANT_TUTORIAL_OUT or a new temporary directory.

Run: python tutorials/adaround.py
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import sys
import tempfile

import torch
from torch import nn

import fxquant
from fxquant.ptq.adaround import Adaround, AdaroundParameters

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import DigitsEvaluation, trained_digits_mobilenet  # noqa: E402

EPOCHS = 10
#: Adam steps per layer. AIMET's default is 15000 below 8-bit weights; 400 keep this tutorial
#: to a few seconds and already gain most of it here (measured on this net, one thread: logits
#: SQNR about 16 dB at 400 iterations, 17 dB at 600, 18 dB at 1000; 12 dB with nearest rounding).
ITERATIONS = 400
NUM_BATCHES = 4      # of 64 images: AIMET recommends about 2000 images for real models


def main() -> None:
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT")
                       or tempfile.mkdtemp(prefix="fxquant_adaround_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # 1. The model and nearest rounding -----------------------------------------------------------
    model, data = trained_digits_mobilenet(nn.ReLU6, EPOCHS)
    dummy_input = data[2][:1]
    # accuracy and logits SQNR on the test split; calibration: NUM_BATCHES batches of 64 images
    evaluation = DigitsEvaluation(model, data, NUM_BATCHES)
    calibration, calibrate = evaluation.calibration, evaluation.calibrate

    # The default scheme (tf_enhanced) and config (per-channel symmetric weights).
    nearest = fxquant.QuantizationSimModel(model, dummy_input, default_param_bw=4,
                                           default_output_bw=8)
    nearest.compute_encodings(calibrate)
    print(f"FP32: {evaluation.accuracy(evaluation.fp32):.2f}%")
    evaluation.show("W4A8 nearest ", nearest)

    # 2. AdaRound --------------------------------------------------------------------------------
    # AdaroundParameters: the data (unlabelled images suffice; (images, labels) batches work
    # too) and how many batches of it to use. apply_adaround builds its own sim with the same
    # weight settings (default_param_bw, scheme, config) to get each weight's grid, then for
    # every conv/linear layer in graph order caches the layer's input in the quantized model
    # (earlier layers already AdaRounded, activations in float, as in AIMET) and its output in
    # the float model, and optimizes the rounding against them. The model passed in is left
    # unchanged; the returned copy has its batch norms folded and its weights on their grids.
    params = AdaroundParameters(calibration, NUM_BATCHES, default_num_iterations=ITERATIONS)
    folder = out / "adaround"
    # On a CPU the optimization is thousands of small steps, which several threads only slow
    # down (measured here: 2 threads 5-20x slower than 1 on a shared 2-core machine): run it on
    # one, and give the rest of the script its threads back.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ada_model = Adaround.apply_adaround(model, dummy_input, params, path=str(folder),
                                            filename_prefix="digits", default_param_bw=4)
    finally:
        torch.set_num_threads(threads)
    encodings = folder / "digits.encodings"

    # The sim of the AdaRounded model, with the same bit widths: the file's encodings are set
    # and frozen (quantizing each weight then gives it back unchanged), so compute_encodings
    # computes the activations' encodings only.
    sim = fxquant.QuantizationSimModel(ada_model, dummy_input, default_param_bw=4,
                                       default_output_bw=8)
    frozen = sim.set_and_freeze_param_encodings(str(encodings))
    sim.compute_encodings(calibrate)
    print(f"set_and_freeze_param_encodings: {len(frozen)} weight encodings frozen")
    evaluation.show("W4A8 AdaRound", sim)

    # 3. The file and the rounding ---------------------------------------------------------------
    # AIMET's AdaRound file: {"param_encodings": {"<layer>.weight": [one entry per output
    # channel]}}, format 0.6.1, keys sorted, indented by 4.
    print("AdaRound wrote: " + ", ".join(
        f"{p.relative_to(out)} ({p.stat().st_size} bytes)" for p in sorted(folder.iterdir())))
    entries = json.loads(encodings.read_text())["param_encodings"]
    first = entries["features.3.weight"][0]
    print(f"{len(entries)} weights, {sum(len(e) for e in entries.values())} channel encodings; "
          f"features.3.weight channel 0: " + ", ".join(f"{k}={first[k]}" for k in sorted(first)))

    # Each AdaRounded weight is floor or ceil of its float value on the grid; how many went
    # the other way than nearest rounding? The float weights with the batch norms folded (as
    # apply_adaround and the sim fold them) against the returned ones, in grid steps.
    folded = copy.deepcopy(model)
    fxquant.fold_all_batch_norms(folded, dummy_input=dummy_input)
    print(f"{'layer':<20} {'weights':>7} {'on grid':>8} {'not nearest':>12}")
    flipped = total = 0
    for layer in [q.layer for q in sim.quantizers() if q.kind == "param"]:  # graph order
        scale = torch.tensor([c["scale"] for c in entries[f"{layer}.weight"]])
        scale = scale.view(-1, *[1] * (folded.get_submodule(layer).weight.dim() - 1))
        w = folded.get_submodule(layer).weight.detach()
        adarounded = ada_model.get_submodule(layer).weight.detach()
        steps = torch.round(adarounded / scale)
        on_grid = torch.equal(steps * scale, adarounded)
        changed = int((steps != torch.round(w / scale).clamp(-8, 7)).sum())  # 4 bits: -8..7
        flipped, total = flipped + changed, total + w.numel()
        print(f"{layer:<20} {w.numel():>7} {str(on_grid):>8} {100 * changed / w.numel():>11.1f}%")
    print(f"rounded the other way: {flipped} of {total} weights ({100 * flipped / total:.1f}%)")
    # A few percent of the weights, chosen by their effect on the layer's output, make the
    # difference between the two sims above.


if __name__ == "__main__":
    main()
