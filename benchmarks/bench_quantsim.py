"""QuantSim speed: sim forward and calibration relative to FP32, fxquant and aimet-torch 2.42.

For each model (CPU, batch 8, 224×224, ``torch.set_num_threads(2)``) prints, in one run:
  sim forward / FP32 forward                       (goal ≤ 1.3×)
  for each calibration set size (default 4 batches and 256 images = 32 batches of 8):
    min-max calibration over N batches / N FP32 forwards  (goal ≤ 1.5×)
    TF-enhanced calibration / FP32 over the same data     (goal ≤ 2.5×)
  sim.compile() (torch.compile, inductor) forward / FP32 and / compiled FP32   (goal ≤ 1.3×)
  compile time of the sim / of the FP32 model                               (goal ≤ 3×)
and the same for aimet-torch 2.42 (run in a subprocess with the python of
../shared/tools/aimet-venv.sh or $AIMET_PYTHON), with fxquant/AIMET ratios (goal ≤ 0.5× for each
calibration). Both sides prepare the model and fold its batch norms first. Each set size is timed
in its own interleaved rounds: ``--rounds`` for the smallest, scaled down by the size (at least 3)
for the larger ones.

Run: .venv/bin/python benchmarks/bench_quantsim.py [--models resnet18 mobilenet_v2]
     [--batches 4 32] [--rounds 7] [--no-compile] [--no-aimet]   (about 25 minutes with AIMET)
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
    sets = {n: [torch.randn(args["batch"], 3, 224, 224) for _ in range(n)] for n in args["batches"]}
    prepared = prepare_model(model)
    fold_all_batch_norms(prepared, input_shapes=(1, 3, 224, 224))
    sims = {key: QuantizationSimModel(prepared, torch.randn(1, 3, 224, 224), quant_scheme=scheme)
            for key, scheme in (("tf", QuantScheme.post_training_tf),
                                ("tf_enhanced", QuantScheme.post_training_tf_enhanced))}
    result[name] = {}
    for n, data in sets.items():
        def run(m, _=None, data=data):
            with torch.no_grad():
                for x in data: m(x)
        fns = {"fp32": lambda run=run: run(prepared)}
        for key, sim in sims.items():    # calibrations before the sim forward (in warm-up too)
            fns[key] = lambda sim=sim, run=run: sim.compute_encodings(run, None)
        if n == min(sets):
            fns["sim"] = lambda run=run: run(sims["tf"].model)
        rounds = max(3, round(args["rounds"] * min(sets) / n))
        result[name][str(n)] = interleaved_ratios(fns, "fp32", rounds)
print(json.dumps(result))
"""


def _rounds(rounds: int, n: int, smallest: int) -> int:
    """Interleaved rounds for a calibration set of ``n`` batches: ``rounds`` for the smallest set,
    proportionally fewer (at least 3) for larger ones."""
    return max(3, round(rounds * smallest / n))


def histogram_floor(sim: QuantizationSimModel, fp32_model: torch.nn.Module, x: torch.Tensor,
                    rounds: int) -> dict[str, float]:
    """What counting alone costs: one ``torch.bincount`` (the cheapest exact counter on CPU) over
    the 512-bin indices of every value the activation histograms of ``sim`` see for one batch,
    with no binning arithmetic and no per-quantizer work, as a ratio to the FP32 forward of that
    batch (interleaved rounds). A TF-enhanced calibration cannot cost less than min-max
    calibration plus this."""
    inputs: list[torch.Tensor] = []
    hooks = [ref.quantizer.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
             for ref in sim.quantizers() if ref.kind != "param"]
    with torch.no_grad():
        sim.model(x)
    for h in hooks:
        h.remove()
    indices = []
    for t in inputs:
        lo, hi = t.min(), t.max()
        inv = torch.where(hi > lo, 512 / (hi - lo), 0.0)
        indices.append(((t - lo) * inv).clamp_(0, 511).to(torch.int32).reshape(-1))
    inputs.clear()

    def count() -> None:
        for index in indices:
            torch.bincount(index, minlength=512)

    def fp32() -> None:
        with torch.no_grad():
            fp32_model(x)

    ratios = interleaved_ratios({"fp32": fp32, "bincount": count}, "fp32", rounds)
    ratios["values"] = float(sum(i.numel() for i in indices))
    return ratios


def bench_fxquant(name: str, batch_counts: list[int], batch: int, rounds: int,
                  compile_models: bool = True) -> dict[str, dict[str, float]]:
    """Per calibration set size (``str(n)``): median ratios to FP32 (and FP32 seconds) of the
    calibrations, and for the smallest set the sim forward; with ``compile_models`` also, under
    "compile", ``sim.compile()``, ``torch.compile`` of FP32 and of the sim on the smallest set
    (and the seconds of each one's first, compiling, call)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    sets = {n: [torch.randn(batch, 3, 224, 224) for _ in range(n)] for n in batch_counts}
    smallest = min(sets)

    def runner(data: list[torch.Tensor]):
        def run(m: torch.nn.Module) -> None:
            with torch.no_grad():
                for x in data:
                    m(x)
        return run

    sims = {key: QuantizationSimModel(model, torch.randn(1, 3, 224, 224), quant_scheme=key)
            for key in ("tf", "tf_enhanced")}
    fp32_model = fxquant.prepare_model(model)
    fxquant.fold_all_batch_norms(fp32_model)
    out: dict[str, dict[str, float]] = {}
    for n, data in sets.items():
        run = runner(data)
        fns = {"fp32": lambda run=run: run(fp32_model)}
        for key, sim in sims.items():    # calibrations before the sim forward (in warm-up too)
            fns[key] = lambda sim=sim, run=run: sim.compute_encodings(run)
        if n == smallest:
            fns["sim"] = lambda run=run: run(sims["tf"].model)
        out[str(n)] = interleaved_ratios(fns, "fp32", _rounds(rounds, n, smallest))
    out["floor"] = histogram_floor(sims["tf_enhanced"], fp32_model, sets[smallest][0], rounds)
    if not compile_models:
        return out
    run = runner(sets[smallest])
    data = sets[smallest]
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
    fns = {"fp32": lambda: run(fp32_model), "fp32_compiled": lambda: run(compiled_fp32),
           "sim_compiled": lambda: run(whole.model)}
    out["compile"] = {**interleaved_ratios(fns, "fp32", rounds), **times}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 32],
                        help="calibration set sizes in batches (default 4 and 32: 256 images)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip sim.compile() and torch.compile (minutes to compile on 2 cores)")
    parser.add_argument("--no-aimet", action="store_true", help="fxquant only")
    args = parser.parse_args()
    counts = sorted(set(args.batches))
    use_steady_allocator()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    ours = {m: bench_fxquant(m, counts, args.batch, args.rounds, not args.no_compile)
            for m in args.models}
    aimet = None if args.no_aimet else run_worker(AIMET_WORKER, {
        "models": args.models, "batches": counts, "batch": args.batch, "rounds": args.rounds,
        "threads": args.threads, "benchmarks_dir": str(Path(__file__).parent)})
    print(f"CPU, {args.threads} threads, calibration sets of "
          f"{' and '.join(str(n) for n in counts)} batches of {args.batch}×3×224×224, "
          f"{args.rounds} interleaved rounds for the smallest set (fewer, at least 3, for larger "
          f"ones); a ratio is the median over rounds of time / FP32 forward time over the same "
          f"data in the same round; fxq/AIMET divides the two sides' ratios (each normalised by "
          f"its own FP32 forward, same torch build); glibc malloc without per-tensor mmap on both "
          f"sides ({' '.join(f'{k}={v}' for k, v in STEADY_ALLOCATOR.items())})")
    print(f"{'model':<14}{'metric':<30}{'fxquant':>10}{'AIMET':>10}{'fxq/AIMET':>11}{'goal':>10}")
    goals = {"sim": "≤1.3×", "tf": "≤1.5×", "tf_enhanced": "≤2.5×"}
    labels = {"sim": "sim forward / FP32", "tf": "min-max calib / FP32",
              "tf_enhanced": "TF-enh calib / FP32"}
    for name in args.models:
        a_all = aimet.get(name) if aimet else None
        for n in counts:
            o = ours[name][str(n)]
            a = a_all[str(n)] if a_all else None
            images = f"{n}×{args.batch}"
            print(f"{name:<14}{'FP32 forward (s), ' + images:<30}{o['fp32']:>10.3f}"
                  f"{(a['fp32'] if a else float('nan')):>10.3f}")
            for key in ("sim", "tf", "tf_enhanced"):
                if key not in o:
                    continue
                line = f"{'':<14}{labels[key] + ', ' + images:<30}{o[key]:>9.2f}×"
                if a:
                    line += f"{a[key]:>9.2f}×{o[key] / a[key]:>10.2f}×"
                else:
                    line += f"{'n/a':>10}{'n/a':>11}"
                print(line + f"{goals[key]:>10}")
        f = ours[name]["floor"]
        print(f"{'':<14}{'bincount alone / FP32':<30}{f['bincount']:>9.2f}×"
              f"   (the floor of the histogram part: {f['values'] / 1e6:.0f} M values a batch)")
        c = ours[name].get("compile")
        if c is None:
            continue
        rows = (("compiled FP32 / FP32", c["fp32_compiled"], ""),
                ("sim.compile() forward / FP32", c["sim_compiled"], "≤1.3×"),
                ("sim.compile() / compiled FP32", c["sim_compiled"] / c["fp32_compiled"],
                 "≤1.3×"))
        for label, value, goal in rows:
            print(f"{'':<14}{label:<36}{value:>9.2f}×{'':>21}{goal:>10}")
        print(f"{'':<14}{'compile time: FP32, sim (s)':<36}{c['compile_fp32']:>9.1f} "
              f"{c['compile_sim']:>9.1f}   sim / FP32 {c['compile_sim'] / c['compile_fp32']:.2f}× "
              f"(goal ≤3×)")


if __name__ == "__main__":
    main()
