"""Tutorial: find the layer that breaks quantization with the QuantAnalyzer, and fix it.

A model can lose most of its accuracy to 8-bit quantization because of a single layer. Finding it
by hand means disabling quantizers one at a time; ``fxquant.QuantAnalyzer`` (AIMET's analyzer,
same API and files) does that systematically and measures what would fix it:

1. train a small CNN on scikit-learn's digits and plant a *fragile* layer in it: ``relu1`` gets
   an extra channel of constant 2000 that is sliced away right after. The float model computes
   exactly what it computed before, but an 8-bit min-max quantizer on ``relu1`` must now cover
   [0, 2000], a step of ~7.8, and every real activation (a few units) rounds to 0 or 7.8;
2. quantize it (W8A8, min-max): the accuracy collapses;
3. run the analyzer: the verdict (do weights or activations hurt more?), the per-layer ranking
   (each layer alone left in float, each layer alone quantized), the per-layer MSE, and the best
   *measured* 16-bit change, written to ``suggested_config.json``;
4. apply that config to a fresh ``QuantizationSimModel`` (``config_file=``) and get the accuracy
   back, paying 16 bits for one activation tensor only.

The analysis files (open ``index.html`` in a browser) are written to $FXQUANT_TUTORIAL_OUT or a
new temporary directory.

Run: python tutorials/quant_analyzer.py
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile

import torch
from torch import nn

import fxquant

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import trained_digits_cnn  # noqa: E402

OUTLIER = 2000.0   # the planted channel's constant value; real activations are a few units
DUMMY = torch.zeros(1, 1, 8, 8)


class FragileDigitsCNN(nn.Module):
    """The trained digits CNN with one fragile activation: ``relu1`` computes 17 channels, the
    16 real ones plus a constant ``OUTLIER`` channel, and the forward slices the extra one away.

    Such layers happen in real models (a padding channel, an unused head, an attention sink):
    the float outputs are exactly the original's, so training and float evaluation never notice.
    """

    def __init__(self, trained: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 17, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(17)
        with torch.no_grad():
            # channels 0-15: the trained conv1 / bn1; channel 16: weight 0, bias OUTLIER, and an
            # identity batch norm, so relu1's channel 16 is OUTLIER everywhere
            self.conv1.weight.zero_()
            self.conv1.weight[:16] = trained.conv1.weight
            self.conv1.bias[:16] = trained.conv1.bias
            self.conv1.bias[16] = OUTLIER
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(self.bn1, name)[:16] = getattr(trained.bn1, name)
            self.bn1.weight[16], self.bn1.bias[16] = 1.0, 0.0
            self.bn1.running_mean[16], self.bn1.running_var[16] = 0.0, 1.0
        # one module per activation (docs/model_guidelines.md, rule 1): each gets its quantizer
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.conv2, self.bn2 = trained.conv2, trained.bn2
        self.conv3, self.bn3, self.fc = trained.conv3, trained.bn3, trained.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))[:, :16]      # the outlier channel is dropped here
        x = self.relu2(self.bn2(self.conv2(x)) + x)
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def main() -> None:
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT")
                       or tempfile.mkdtemp(prefix="fxquant_qa_"))
    out.mkdir(parents=True, exist_ok=True)
    results_dir = out / "analysis"

    # 1. A trained model and its fragile twin ------------------------------------------------
    trained, (x_train, _, x_test, y_test) = trained_digits_cnn(epochs=5)   # ~1 s on a CPU
    model = FragileDigitsCNN(trained).eval()
    with torch.no_grad():
        same = torch.equal(model(x_test), trained(x_test))
    print(f"planted an outlier channel of {OUTLIER:g} in relu1; FP32 outputs identical to the "
          f"trained model: {same}")

    # The two callbacks the analyzer needs, AIMET's shape func(model, args): calibration runs
    # the sim on representative data (here the first 512 training images), evaluation returns
    # one number, higher is better (here top-1 accuracy on the held-out test images).
    def calibrate(sim_model: nn.Module, num_batches: int) -> None:
        with torch.no_grad():
            for i in range(0, 128 * num_batches, 128):
                sim_model(x_train[i:i + 128])

    def evaluate(eval_model: nn.Module, _: object = None) -> float:
        with torch.no_grad():
            return (eval_model(x_test).argmax(1) == y_test).float().mean().item()

    # 2. Plain W8A8: the symptom -----------------------------------------------------------------
    sim = fxquant.QuantizationSimModel(model, DUMMY, quant_scheme="tf")   # min-max ranges
    sim.compute_encodings(calibrate, forward_pass_callback_args=4)
    fp32, w8a8 = evaluate(model), evaluate(sim.model)   # ~10% is chance for 10 classes
    print(f"accuracy: FP32 {fp32:.2%}, W8A8 {w8a8:.2%}: quantization loses "
          f"{fp32 - w8a8:.2%}")

    # 3. The analysis ------------------------------------------------------------------------
    # One calibrated sim, many evaluations: FP32 / weights only / activations only, then each
    # layer alone quantized and each layer alone left in float. The per-layer MSE needs only
    # unlabeled inputs (one float and one quantized pass per batch for all layers at once).
    analyzer = fxquant.QuantAnalyzer(model, DUMMY, fxquant.CallbackFunc(calibrate, 4),
                                     fxquant.CallbackFunc(evaluate, None))
    analyzer.enable_per_layer_mse_loss([x_train[i:i + 64] for i in range(0, 256, 64)],
                                       num_batches=4)
    results = analyzer.analyze(quant_scheme="tf", default_param_bw=8, default_output_bw=8,
                               results_dir=str(results_dir))

    # The verdict compares W8A32 (only weights quantized) with W32A8 (only activations): which
    # half of the quantization to look at first.
    print(f"analysis: {results.evaluations} evaluations in {results.timings['total']:.1f} s")
    print(f"verdict: {results.verdict()}")

    # The ranking: a layer is worse the more accuracy comes back when it alone stays in float
    # (per_layer_quant_disabled); ties are broken by the score with it alone quantized
    # (per_layer_quant_enabled).
    print(f"{len(results.culprits)} layers ranked, worst first:")
    for layer in results.culprits[:3]:
        print(f"  {layer:<6} left in float: {results.disabled[layer]:.2%}, alone quantized: "
              f"{results.enabled[layer]:.2%}")
    worst = results.culprits[0]
    # The per-layer MSE (every quantizer on, each layer's output against FP32, in graph order)
    # shows where the error starts: tiny up to the culprit, then inherited by every later layer.
    # (Its SQNR would not: the constant channel dominates relu1's signal power.)
    first = list(results.mse)[:3]
    print("output MSE in graph order: " + " -> ".join(
        f"{layer} {results.mse[layer]:.3g}" for layer in first))
    ranges = results.activation_ranges[f"{worst}_output_0"]
    print(f"worst layer: {worst}, its 8-bit output encoding spans [{ranges[0]:.4g}, "
          f"{ranges[1]:.4g}], a step of {(ranges[1] - ranges[0]) / 255:.3g}")

    # The analyzer then measured 16-bit activations, 16-bit weights and both for the worst
    # layers, alone and together; the best change is the highest score, and among changes
    # within 1% of the loss of it, the one touching the fewest quantizers.
    print(f"measured {len(results.suggestions)} what-ifs; best: {results.best.describe()} "
          f"-> {results.best.score:.2%} ({results.best.changed} quantizer changed)")

    # 4. Apply the suggestion ------------------------------------------------------------------
    # suggested_config.json is the quantsim config the analysis used plus a "layers" section
    # (fxquant's extension of AIMET's format), e.g. {"layers": {"relu1": {"activation_bw": 16}}}.
    config_path = results_dir / "suggested_config.json"
    print(f"suggested_config.json layers section: "
          f"{json.dumps(json.loads(config_path.read_text())['layers'])}")
    fixed = fxquant.QuantizationSimModel(model, DUMMY, quant_scheme="tf",
                                         config_file=str(config_path))
    fixed.compute_encodings(calibrate, forward_pass_callback_args=4)
    recovered = evaluate(fixed.model)
    print(f"fresh sim with the suggested config: {recovered:.2%} (FP32 {fp32:.2%}, W8A8 "
          f"{w8a8:.2%}); {worst} output at {fixed.quantizer(worst).bitwidth} bits, the other "
          f"activations at {fixed.quantizer('relu2').bitwidth}")

    # 5. The files ---------------------------------------------------------------------------
    # AIMET's per-layer JSON/HTML pages plus index.html (the verdict, the table, what to do),
    # summary.json (every score) and suggested_config.json.
    files = sorted(str(p.relative_to(results_dir)) for p in results_dir.rglob("*")
                   if p.is_file())
    print(f"{len(files)} analysis files in {results_dir}: open index.html; also "
          f"{', '.join(f for f in files if '/' not in f and f != 'index.html')}")


if __name__ == "__main__":
    main()
