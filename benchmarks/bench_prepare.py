"""Trace / prepare / BN-fold times of fxquant and of aimet-torch 2.42 on the same models.

Prints, per model, the median of several runs (after one warm-up) of fxquant's trace,
prepare_model and fold_all_batch_norms, AIMET's prepare_model and fold_all_batch_norms, and the
ratio fxquant (prepare + fold) / AIMET (prepare + fold). Goal: ≤ 0.5.

Run: .venv/bin/python benchmarks/bench_prepare.py [--models resnet50 mobilenet_v2 vit_b_16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from _aimet import run_worker  # noqa: E402

import fxquant  # noqa: E402

# Runs after _aimet.WORKER_PRELUDE (quiet imports, ``args``, thread count).
AIMET_WORKER = r"""
out = {}
for name in args["models"]:
    model = torchvision.models.get_model(name, weights=None).eval()
    prep, fold = [], []
    for i in range(args["repeats"] + 1):
        t = time.perf_counter(); prepared = prepare_model(model); t1 = time.perf_counter() - t
        t = time.perf_counter(); fold_all_batch_norms(prepared, input_shapes=(1, 3, 224, 224))
        t2 = time.perf_counter() - t
        if i:
            prep.append(t1); fold.append(t2)
    out[name] = {"prepare": statistics.median(prep), "fold": statistics.median(fold)}
print(json.dumps(out))
"""


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_fxquant(name: str, repeats: int) -> dict[str, float]:
    model = torchvision.models.get_model(name, weights=None).eval()
    trace_s = _median_time(lambda: fxquant.trace(model), repeats)
    prepare_s = _median_time(lambda: fxquant.prepare_model(model), repeats)
    prepared = [fxquant.prepare_model(model) for _ in range(repeats + 1)]
    fold_s = _median_time(
        lambda: fxquant.fold_all_batch_norms(prepared.pop(), input_shapes=(1, 3, 224, 224)),
        repeats)
    return {"trace": trace_s, "prepare": prepare_s, "fold": fold_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "vit_b_16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours = {name: bench_fxquant(name, args.repeats) for name in args.models}
    aimet = run_worker(AIMET_WORKER, {"models": args.models, "repeats": args.repeats,
                                      "threads": args.threads})
    print(f"{'model':<14}{'fxq trace':>10}{'fxq prep':>10}{'fxq fold':>10}"
          f"{'aimet prep':>12}{'aimet fold':>12}{'fxq/aimet':>11}")
    for name in args.models:
        o = ours[name]
        line = f"{name:<14}{o['trace']:>9.3f}s{o['prepare']:>9.3f}s{o['fold']:>9.3f}s"
        if aimet:
            a = aimet[name]
            ratio = (o["prepare"] + o["fold"]) / (a["prepare"] + a["fold"])
            line += f"{a['prepare']:>11.3f}s{a['fold']:>11.3f}s{ratio:>10.2f}x"
        else:
            line += f"{'n/a':>12}{'n/a':>12}{'n/a':>11}"
        print(line)
    print("fxq/aimet = (fxquant prepare + fold) / (AIMET prepare + fold); goal <= 0.5x")


if __name__ == "__main__":
    main()
