"""Distributed calibration: wall time with 1 and 2 processes on the same total data, and the bytes
the reduction exchanges per quantizer.

For each scheme (min-max "tf" and TF-enhanced) and process count, spawns that many gloo processes on
this machine (CPU; ``--threads`` intra-op threads in all, split among the processes), each
calibrating a resnet18 sim on its
share of the same ``--images`` images (batch 8), and prints the median over ``--rounds`` of the
slowest rank's ``compute_encodings`` time, the speed-up, and the bytes each rank contributed to
the reduction (per activation quantizer). On a 2-core machine two processes share the cores the
one process had, so the speed-up is bounded by what one process left idle; the figure is for the
record.

Run: .venv/bin/python benchmarks/bench_distributed.py [--images 256] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision

import fxquant.quantsim.quantsim as quantsim_module
from fxquant.quantsim.quantsim import QuantizationSimModel


def worker(rank: int, world: int, store: str, out: str, args: dict) -> None:
    logging.disable(logging.WARNING)
    torch.set_num_threads(max(1, args["threads"] // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(minutes=10))
    sent: list[int] = []
    reduce = quantsim_module.reduce_statistics

    def counting(*a, **k):
        sent.append(reduce(*a, **k))
        return sent[-1]

    quantsim_module.reduce_statistics = counting
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args["images"], 3, 224, 224, generator=g)
    shard = images[rank::world]
    result = {}
    for scheme in args["schemes"]:
        sim = QuantizationSimModel(model, torch.randn(1, 3, 224, 224), quant_scheme=scheme)

        def calibrate(m: torch.nn.Module) -> None:
            for batch in shard.split(8):
                m(batch)

        times = []
        for _ in range(args["rounds"] + 1):            # the first round warms up
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            sim.compute_encodings(calibrate)
            times.append(time.perf_counter() - start)
        activations = sum(1 for r in sim.quantizers() if r.kind != "param")
        result[scheme] = {"times": times[1:], "bytes": sent[-1] if sent else 0,
                          "quantizers": activations}
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def run(world: int, args: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store, out = f"{tmp}/store", f"{tmp}/out"
        mp.start_processes(worker, args=(world, store, out, args), nprocs=world,
                           start_method="spawn")
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    merged = {}
    for scheme in args["schemes"]:
        slowest = [max(r[scheme]["times"][i] for r in ranks) for i in range(args["rounds"])]
        merged[scheme] = {"seconds": statistics.median(slowest),
                          "bytes": ranks[0][scheme]["bytes"],
                          "quantizers": ranks[0][scheme]["quantizers"]}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads in all")
    args = vars(parser.parse_args())
    args["schemes"] = ["tf", "tf_enhanced"]
    one, two = run(1, args), run(2, args)
    print(f"resnet18, {args['images']} images of 3×224×224 in batches of 8, CPU, gloo, "
          f"{args['threads']} threads in all (split among the processes), median of "
          f"{args['rounds']} rounds of the "
          f"slowest rank's compute_encodings")
    print(f"{'scheme':<14}{'1 process':>12}{'2 processes':>13}{'speed-up':>10}"
          f"{'bytes/rank':>12}{'per quantizer':>15}")
    for scheme in args["schemes"]:
        a, b = one[scheme], two[scheme]
        print(f"{scheme:<14}{a['seconds']:>11.2f}s{b['seconds']:>12.2f}s"
              f"{a['seconds'] / b['seconds']:>9.2f}×{b['bytes']:>12,}"
              f"{b['bytes'] / b['quantizers']:>15,.0f}")


if __name__ == "__main__":
    main()
