"""QuantAnalyzer overhead: fxquant vs aimet-torch 2.42, resnet18, both calibration schemes.

One run, CPU, ``torch.set_num_threads(2)``: resnet18 (weights=None, BN statistics re-estimated on
random images so that folding is realistic), calibration on 2 batches of 8 images at 224×224, an
eval callback of about 0.5 s (top-1 agreement with the FP32 model on a fixed batch), per-layer MSE
on 1 batch of 8. For each scheme (min-max "tf", "tf_enhanced") and each side prints the total time
of ``analyze``, the time inside the user's callbacks, the rest (the analyzer's own cost: sim,
sweeps, MSE, files) and the number of files written. Goal: fxquant's rest <= 1/4 of AIMET's.

aimet-torch runs in a subprocess with the python of ../shared/tools/aimet-venv.sh (or
$AIMET_PYTHON); without it fxquant's figures are printed alone.

Run: .venv/bin/python benchmarks/bench_quant_analyzer.py [--schemes tf tf_enhanced]
     [--eval-batch 16]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from _aimet import run_worker  # noqa: E402

import fxquant  # noqa: E402

# Both sides build the same model and data (this function's source is sent to the AIMET worker).
SETUP = r'''
def setup(eval_batch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(4):                     # BN statistics of the data the model will see
            model(torch.rand(8, 3, 224, 224, generator=gen))
    model.eval()
    calibration = [torch.rand(8, 3, 224, 224, generator=gen) for _ in range(2)]
    evaluation = torch.rand(eval_batch, 3, 224, 224, generator=gen)
    unlabeled = [torch.rand(8, 3, 224, 224, generator=gen)]
    with torch.no_grad():
        reference = model(evaluation).argmax(1)
    spent = [0.0]

    def calibrate(m, _=None):
        start = time.perf_counter()
        with torch.no_grad():
            for x in calibration:
                m(x)
        spent[0] += time.perf_counter() - start

    def evaluate(m, _=None):
        start = time.perf_counter()
        with torch.no_grad():
            score = (m(evaluation).argmax(1) == reference).float().mean().item()
        spent[0] += time.perf_counter() - start
        return score

    return model, calibrate, evaluate, unlabeled, spent


def count_files(folder):
    return sum(len(files) for _, _, files in os.walk(folder))
'''
exec(SETUP)  # noqa: S102  (defines setup and count_files here too)

AIMET_WORKER = SETUP + r'''
from aimet_torch.quant_analyzer import QuantAnalyzer
from aimet_torch.common.defs import CallbackFunc
result = {}
for scheme in args["schemes"]:
    model, calibrate, evaluate, unlabeled, spent = setup(args["eval_batch"])
    prepared = prepare_model(model)
    qa = QuantAnalyzer(prepared, torch.randn(1, 3, 224, 224), CallbackFunc(calibrate, None),
                       CallbackFunc(evaluate, None))
    qa.enable_per_layer_mse_loss(unlabeled, 1)
    out = tempfile.mkdtemp()
    start = time.perf_counter()
    qa.analyze(quant_scheme={"tf": QuantScheme.post_training_tf,
                             "tf_enhanced": QuantScheme.post_training_tf_enhanced}[scheme],
               default_param_bw=8, default_output_bw=8, results_dir=out)
    total = time.perf_counter() - start
    result[scheme] = {"total": total, "callbacks": spent[0], "files": count_files(out)}
    shutil.rmtree(out)
print(json.dumps(result))
'''


def bench_fxquant(scheme: str, eval_batch: int) -> dict[str, float]:
    model, calibrate, evaluate, unlabeled, spent = setup(eval_batch)  # noqa: F821
    qa = fxquant.QuantAnalyzer(fxquant.prepare_model(model), torch.randn(1, 3, 224, 224),
                               fxquant.CallbackFunc(calibrate, None),
                               fxquant.CallbackFunc(evaluate, None))
    qa.enable_per_layer_mse_loss(unlabeled, 1)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = qa.analyze(quant_scheme=scheme, results_dir=out)
        total = time.perf_counter() - start
        files = count_files(out)  # noqa: F821
    return {"total": total, "callbacks": spent[0], "files": files,
            "evaluations": results.evaluations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schemes", nargs="+", default=["tf", "tf_enhanced"])
    parser.add_argument("--eval-batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    model, _, evaluate, _, spent = setup(args.eval_batch)  # noqa: F821
    evaluate(model)
    print(f"one eval callback: {spent[0]:.2f} s (batch {args.eval_batch}, 224x224, 2 threads)")
    aimet = run_worker(AIMET_WORKER, {"threads": 2, "schemes": args.schemes,
                                      "eval_batch": args.eval_batch}) or {}
    print(f"{'scheme':<12} {'side':<8} {'total s':>8} {'callbacks s':>12} {'rest s':>8} "
          f"{'files':>6}  rest fxquant/AIMET")
    for scheme in args.schemes:
        ours = bench_fxquant(scheme, args.eval_batch)
        rows = [("fxquant", ours)] + ([("aimet", aimet[scheme])] if scheme in aimet else [])
        for side, r in rows:
            rest = r["total"] - r["callbacks"]
            ratio = ""
            if side == "fxquant" and scheme in aimet:
                theirs = aimet[scheme]["total"] - aimet[scheme]["callbacks"]
                ratio = f"  {rest / theirs:.2f}x (goal <= 0.25x)"
            print(f"{scheme:<12} {side:<8} {r['total']:>8.1f} {r['callbacks']:>12.1f} "
                  f"{rest:>8.1f} {r['files']:>6}{ratio}")


if __name__ == "__main__":
    main()
