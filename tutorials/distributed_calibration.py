"""Tutorial: calibrating on several processes with torch.distributed (torchrun).

Calibration over a large set outgrows one process. Under ``torchrun`` every rank builds the same
sim and feeds ``compute_encodings`` its own shard of the calibration data; fxquant reduces the
statistics across the ranks (min/max exactly, histograms on a common grid) before computing the
encodings, so every rank ends with the same encodings — those of the union of the shards. Here,
on the CPU with the gloo backend:

1. rank 0 trains the digits CNN and broadcasts it (every rank must hold the same model);
2. each rank calibrates W8A8 sims (min-max and TF-enhanced) on its shard;
3. the encodings are identical on every rank, and rank 0 checks them against one process
   calibrated on the union: min-max bit for bit, TF-enhanced within a few bins;
4. rank 0 alone writes the export;
5. a rank whose calibration callback raises makes every rank raise, naming it (never a hang).

Run: torchrun --standalone --nproc_per_node=2 tutorials/distributed_calibration.py
     (plain ``python tutorials/distributed_calibration.py`` launches that itself)
Files are written to $FXQUANT_TUTORIAL_OUT or a new temporary directory.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

import torch
import torch.distributed as dist

import fxquant
from fxquant.cli.demo import DigitsCNN

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import trained_digits_cnn  # noqa: E402

WORLD = 2
SCHEMES = ("tf", "tf_enhanced")


def launch() -> None:
    """Not under torchrun: run this file with torchrun (2 processes on this machine) and show
    what rank 0 printed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", __file__]
    print("launching:", " ".join(cmd[2:]), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    dist.init_process_group("gloo")            # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR...
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    solo = dist.new_group([0])                 # every rank takes part in creating a group

    def say(*args: object) -> None:
        if rank == 0:
            print(*args, flush=True)

    # 1. the same model on every rank: rank 0 trains it and broadcasts the weights
    if rank == 0:
        trained, data = trained_digits_cnn()
        holder = [(trained.state_dict(), data)]
    else:
        holder = [None]
    dist.broadcast_object_list(holder, src=0)
    weights, (x_train, _, x_test, y_test) = holder[0]
    model = DigitsCNN()
    model.load_state_dict(weights)
    model.eval()
    say(f"{world} ranks (gloo); FP32 test accuracy {accuracy(model, x_test, y_test):.2f}%")

    # 2. each rank calibrates on its own shard: every world-th image of 512 training images
    calibration = x_train[:512]
    shard = calibration[rank::world]
    say(f"calibration: {len(calibration)} images, {len(shard)} per rank")

    def calibrate(sim_model: torch.nn.Module, images: torch.Tensor) -> None:
        for batch in images.split(32):
            sim_model(batch)

    sims = {}
    for scheme in SCHEMES:
        sim = fxquant.QuantizationSimModel(model, x_train[:1], quant_scheme=scheme,
                                           default_param_bw=8, default_output_bw=8)
        sim.compute_encodings(calibrate, shard)        # statistics reduced across the ranks
        sims[scheme] = sim

    # 3. identical on every rank; rank 0 compares with one process calibrated on the union
    for scheme, sim in sims.items():
        mine = {ref.name: (ref.quantizer.encoding.scale, ref.quantizer.encoding.zero_point)
                for ref in sim.quantizers()}
        everyone: list[dict | None] = [None] * world
        dist.all_gather_object(everyone, mine)
        same = all(torch.equal(r[k][0], mine[k][0]) and torch.equal(r[k][1], mine[k][1])
                   for r in everyone for k in mine)
        say(f"{scheme}: {len(mine)} encodings identical on {world} ranks: {same}")
        if rank != 0:
            continue
        alone = fxquant.QuantizationSimModel(model, x_train[:1], quant_scheme=scheme)
        # the group of rank 0 alone has nothing to reduce over: a one-process calibration
        alone.compute_encodings(calibrate, calibration, process_group=solo)
        steps = []
        for ref, one in zip(sim.quantizers(), alone.quantizers()):
            a, b = ref.quantizer.encoding, one.quantizer.encoding
            steps.append(float(((a.min - b.min).abs() / b.scale).max()))
            steps.append(float(((a.max - b.max).abs() / b.scale).max()))
        say(f"{scheme}: vs one process on the union, largest difference {max(steps):.2f} "
            f"quantization steps (bit-equal: {max(steps) == 0.0}); test accuracy "
            f"{accuracy(sim.model, x_test, y_test):.2f}% (one process "
            f"{accuracy(alone.model, x_test, y_test):.2f}%)")

    # 4. one writer: rank 0 exports; the others wait for it
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT") or tempfile.mkdtemp())
    if rank == 0:
        sims["tf_enhanced"].export(out, "digits_w8a8", x_train[:1])
        say(f"rank 0 exported {sorted(p.name for p in out.glob('digits_w8a8*'))}")
    dist.barrier()

    # 5. a failing rank: rank 1's callback raises; every rank raises, naming it
    def flaky(sim_model: torch.nn.Module, images: torch.Tensor) -> None:
        calibrate(sim_model, images)
        if rank == 1:
            raise ValueError("corrupt batch on rank 1")

    try:
        sims["tf"].compute_encodings(flaky, shard)
    except fxquant.CalibrationError as exc:
        say(f"rank 0 raised CalibrationError: {str(exc).splitlines()[0]}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" not in os.environ:
        launch()
    else:
        main()
