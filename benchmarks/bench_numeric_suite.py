"""Numeric suite cost: memory over many batches, and a compared forward pass relative to FP32.

For one torchvision model (default resnet18, random weights with BN statistics re-estimated) and
an fxquant W8A8 sim of it, prints:

* streaming memory: ``fxquant.compare(float, sim, data)`` over N batches (default 1,000) of batch
  1 with streaming loggers (``save_activations=False``, the default), shadowing on; peak RSS
  growth from batch 10 to the end, and from before the call (goal: growth < 200 MB);
* forward cost relative to the FP32 forward (prepared, BN-folded float model) on the same batch:
  the sim alone; a compared forward without shadows (model A with loggers + model B with
  loggers, what ``add_loggers`` returns; goal ≤ 3×); the shadowed model alone
  (``add_shadow_loggers``); and one ``fxquant.compare`` step (shadowed model + model B).

Run: .venv/bin/python benchmarks/bench_numeric_suite.py [--model resnet18] [--batches 1000]
     [--size 224] [--timing-batches 20] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import logging
import resource
import statistics
import time
from typing import Callable, Iterator

import torch
import torchvision

import fxquant
from fxquant import numeric_suite as ns
from fxquant.numeric_suite._instrument import instrument
from fxquant.numeric_suite.api import prepare_pair


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _model(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    for m in model.modules():  # fresh BN statistics make deep activations vanish (SPEC §7)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, size, size))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--timing-batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    shape = (1, 3, args.size, args.size)
    model = _model(args.model, args.size)
    sim = fxquant.QuantizationSimModel(model, torch.randn(*shape), quant_scheme="tf")
    calibration = [torch.randn(8, 3, args.size, args.size) for _ in range(2)]
    sim.compute_encodings(lambda m: [m(x) for x in calibration])

    # -- forward cost ---------------------------------------------------------------------------
    fp32 = fxquant.prepare_model(model)
    fxquant.fold_all_batch_norms(fp32)
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim)
    shadow = ns.add_shadow_loggers("float", model, "int8", sim)
    # what fxquant.compare runs per batch: the shadowed model (A's side of both comparisons)
    # and model B, their loggers linked
    a, b, matching = prepare_pair("float", model, "int8", sim)
    pairs, _ = matching.select(None, True)
    both = instrument(a, b, matching, pairs, logger_cls=ns.OutputLogger, log_inputs=False,
                      save_activations=False, unshadowed=True, shadowed=True)
    data = [torch.randn(*shape) for _ in range(args.timing_batches)]

    def loop(*models: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for x in data:
                    for m in models:
                        m(x)
        return run

    variants = {"fp32": loop(fp32), "sim": loop(sim.model), "unshadowed": loop(a_ns, b_ns),
                "shadowed": loop(shadow), "compare": loop(both.shadow, both.b)}
    for run in variants.values():
        run()  # warm-up
    ratios: dict[str, list[float]] = {k: [] for k in variants if k != "fp32"}
    fp32_times = []
    for _ in range(args.repeats):  # interleaved, so that load changes hit every variant alike
        times = {}
        for key, run in variants.items():
            start = time.perf_counter()
            run()
            times[key] = time.perf_counter() - start
        fp32_times.append(times["fp32"])
        for key in ratios:
            ratios[key].append(times[key] / times["fp32"])
    del a_ns, b_ns, shadow, both, a, b, matching, pairs

    # -- streaming memory -----------------------------------------------------------------------
    marks: dict[str, float] = {}

    def batches() -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(1)
        for i in range(args.batches):
            if i == 10:
                marks["peak_at_10"] = _peak_rss_mb()
                marks["rss_at_10"] = _current_rss_mb()
            yield torch.randn(*shape, generator=gen)

    before = _peak_rss_mb()
    start = time.perf_counter()
    report = ns.compare(model, sim, batches(), name_a="float", name_b="int8", progress=False)
    elapsed = time.perf_counter() - start
    after = _peak_rss_mb()
    rss_end = _current_rss_mb()

    print(f"{args.model}, CPU, {args.threads} threads, batch 1×3×{args.size}×{args.size}")
    print(f"streaming memory: fxquant.compare over {report.num_batches} batches "
          f"({len(report.layers)} layers, shadowed + unshadowed + weights, "
          f"save_activations=False) in {elapsed:.0f} s")
    print(f"  peak RSS growth from batch 10 to the end: {after - marks['peak_at_10']:8.1f} MB"
          f"   (goal < 200 MB)")
    print(f"  current RSS at batch 10 -> end:           {marks['rss_at_10']:8.1f} -> "
          f"{rss_end:.1f} MB")
    print(f"  peak RSS growth over the whole call:      {after - before:8.1f} MB (includes the "
          "private model copies)")
    fp32_ms = 1000 * statistics.median(fp32_times) / args.timing_batches
    print(f"forward cost relative to FP32 on the same batches, median of {args.repeats} "
          f"interleaved runs over {args.timing_batches} batches (FP32 = {fp32_ms:.1f} ms/batch):")
    rows = [("sim forward", "sim", ""),
            ("compared forward, unshadowed (A + B with loggers)", "unshadowed", "goal ≤ 3×"),
            ("shadowed model (A + B's shadows + loggers)", "shadowed", ""),
            ("fxquant.compare step (shadowed model + B)", "compare", "")]
    for label, key, goal in rows:
        print(f"  {label:<52}{statistics.median(ratios[key]):6.2f}×  {goal}")


if __name__ == "__main__":
    main()
