"""QuantSim speed: sim forward and calibration relative to FP32, fxquant and aimet-torch 2.42.

For each model (CPU, batch 8, 224×224, ``torch.set_num_threads(2)``) prints, in one run:
  sim forward / FP32 forward                       (goal ≤ 1.3×)
  min-max calibration over N batches / N FP32 forwards  (goal ≤ 1.5×)
  TF-enhanced calibration / FP32 over the same data     (goal ≤ 2.5×)
  sim.compile() (torch.compile, inductor) forward / FP32 and / compiled FP32   (goal ≤ 1.3×)
  compile time of the sim / of the FP32 model                               (goal ≤ 3×)
and the same for aimet-torch 2.42 (run in a subprocess with the python of
../shared/tools/aimet-venv.sh or $AIMET_PYTHON), with fxquant/AIMET ratios (goal ≤ 0.5× for each
calibration). Both sides prepare the model and fold its batch norms first.

Run: .venv/bin/python benchmarks/bench_quantsim.py [--models resnet18 mobilenet_v2] [--batches 4]
     [--rounds 7] [--no-compile] [--no-aimet]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from _aimet import run_worker  # noqa: E402
from _timing import STEADY_ALLOCATOR, interleaved_ratios, use_steady_allocator  # noqa: E402

import fxquant  # noqa: E402
from fxquant.quantsim.quantsim import QuantizationSimModel  # noqa: E402

# Runs after _aimet.WORKER_PRELUDE (quiet imports, ``args``, thread count).
AIMET_WORKER = r"""
sys.path.insert(0, args["benchmarks_dir"])
from _timing import interleaved_ratios

result = {}
for name in args["models"]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    data = [torch.randn(args["batch"], 3, 224, 224) for _ in range(args["batches"])]
    prepared = prepare_model(model)
    fold_all_batch_norms(prepared, input_shapes=(1, 3, 224, 224))
    def run(m, _=None):
        with torch.no_grad():
            for x in data: m(x)
    sims = {key: QuantizationSimModel(prepared, torch.randn(1, 3, 224, 224), quant_scheme=scheme)
            for key, scheme in (("tf", QuantScheme.post_training_tf),
                                ("tf_enhanced", QuantScheme.post_training_tf_enhanced))}
    fns = {"fp32": lambda: run(prepared)}
    for key, sim in sims.items():    # calibrations before the sim forward (in warm-up too)
        fns[key] = lambda sim=sim: sim.compute_encodings(run, None)
    fns["sim"] = lambda: run(sims["tf"].model)
    result[name] = interleaved_ratios(fns, "fp32", args["rounds"])
print(json.dumps(result))
"""


def bench_fxquant(name: str, batches: int, batch: int, rounds: int,
                  compile_models: bool = True) -> dict[str, float]:
    """Median ratios to FP32 (and FP32 seconds) of fxquant's sim forward and calibrations; with
    ``compile_models`` also ``sim.compile()``, ``torch.compile`` of FP32 and of the sim (and the
    seconds of each one's first, compiling, call)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    data = [torch.randn(batch, 3, 224, 224) for _ in range(batches)]

    def run(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for x in data:
                m(x)

    sims = {key: QuantizationSimModel(model, torch.randn(1, 3, 224, 224), quant_scheme=key)
            for key in ("tf", "tf_enhanced")}
    fp32_model = fxquant.prepare_model(model)
    fxquant.fold_all_batch_norms(fp32_model)
    fns = {"fp32": lambda: run(fp32_model)}
    for key, sim in sims.items():    # calibrations before the sim forward (in warm-up too)
        fns[key] = lambda sim=sim: sim.compute_encodings(run)
    fns["sim"] = lambda: run(sims["tf"].model)
    if compile_models:
        # a separate sim (calibrated once) so that no other fn flips a flag its graph guards
        whole = QuantizationSimModel(model, torch.randn(1, 3, 224, 224), quant_scheme="tf")
        whole.compute_encodings(run)
        torch._dynamo.reset()
        # cold compiles on both sides: inductor's on-disk caches would make a re-run's compile
        # times (and their ratio) depend on what earlier runs left behind
        torch._inductor.config.force_disable_caches = True
        compiled_fp32 = torch.compile(fp32_model)
        whole.compile()                           # nn.Module.compile on whole.model, in place
        times = {}
        for key, m in (("compile_fp32", compiled_fp32), ("compile_sim", whole.model)):
            start = time.perf_counter()
            with torch.no_grad():
                m(data[0])   # first call: compiles (dynamo + inductor)
            times[key] = time.perf_counter() - start
        fns["fp32_compiled"] = lambda: run(compiled_fp32)
        fns["sim_compiled"] = lambda: run(whole.model)
    ratios = interleaved_ratios(fns, "fp32", rounds)
    if compile_models:
        ratios.update(times)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip sim.compile() and torch.compile (minutes to compile on 2 cores)")
    parser.add_argument("--no-aimet", action="store_true", help="fxquant only")
    args = parser.parse_args()
    use_steady_allocator()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    ours = {m: bench_fxquant(m, args.batches, args.batch, args.rounds, not args.no_compile)
            for m in args.models}
    aimet = None if args.no_aimet else run_worker(AIMET_WORKER, {"models": args.models, "batches": args.batches,
                                      "batch": args.batch, "rounds": args.rounds,
                                      "threads": args.threads,
                                      "benchmarks_dir": str(Path(__file__).parent)})
    print(f"CPU, {args.threads} threads, {args.batches} batches of {args.batch}×3×224×224, "
          f"{args.rounds} interleaved rounds; a ratio is the median over rounds of time / FP32 "
          f"forward time over the same data in the same round; fxq/AIMET divides the two "
          f"sides' ratios (each normalised by its own FP32 forward, same torch build); "
          f"glibc malloc without per-tensor mmap on both sides "
          f"({' '.join(f'{k}={v}' for k, v in STEADY_ALLOCATOR.items())})")
    header = f"{'model':<14}{'metric':<22}{'fxquant':>10}{'AIMET':>10}{'fxq/AIMET':>11}{'goal':>10}"
    print(header)
    goals = {"sim": "≤1.3×", "tf": "≤1.5×", "tf_enhanced": "≤2.5×"}
    labels = {"sim": "sim forward / FP32", "tf": "min-max calib / FP32",
              "tf_enhanced": "TF-enh calib / FP32"}
    for name in args.models:
        o = ours[name]
        a = aimet.get(name) if aimet else None
        print(f"{name:<14}{'FP32 forward (s)':<22}{o['fp32']:>10.3f}"
              f"{(a['fp32'] if a else float('nan')):>10.3f}")
        for key in ("sim", "tf", "tf_enhanced"):
            line = f"{'':<14}{labels[key]:<22}{o[key]:>9.2f}×"
            if a:
                line += f"{a[key]:>9.2f}×{o[key] / a[key]:>10.2f}×"
            else:
                line += f"{'n/a':>10}{'n/a':>11}"
            print(line + f"{goals[key]:>10}")
        if "sim_compiled" not in o:
            continue
        rows = (("compiled FP32 / FP32", o["fp32_compiled"], ""),
                ("sim.compile() forward / FP32", o["sim_compiled"], "≤1.3×"),
                ("sim.compile() / compiled FP32", o["sim_compiled"] / o["fp32_compiled"],
                 "≤1.3×"))
        for label, value, goal in rows:
            print(f"{'':<14}{label:<36}{value:>9.2f}×{'':>21}{goal:>10}")
        print(f"{'':<14}{'compile time: FP32, sim (s)':<36}{o['compile_fp32']:>9.1f} "
              f"{o['compile_sim']:>9.1f}   sim / FP32 {o['compile_sim'] / o['compile_fp32']:.2f}× "
              f"(goal ≤3×)")


if __name__ == "__main__":
    main()
