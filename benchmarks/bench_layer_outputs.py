"""Layer-output dump time of fxquant and of aimet-torch 2.42 on the same model and inputs.

Dumps every layer's output of resnet18 (``weights=None``, eval) for N single-image inputs
(default 32 × 1×3×224×224) and prints:

* FP32: N plain forward passes of the model;
* write: writing the same files with plain ``ndarray.tofile`` (the I/O floor of any dumper);
* fxquant: ``LayerOutputUtil(model, dir).generate_layer_outputs_batch(inputs)`` — capture by
  value, AIMET layout, ``manifest.json``, atomic files; writing overlaps the next forward;
* fxquant sim: the same on a W8A8 ``QuantizationSimModel`` (its FP32 is the sim's forward);
* AIMET: ``aimet_torch.layer_output_utils.LayerOutputUtil`` on AIMET's prepared model (so both
  dump the same layers), ``generate_layer_outputs`` per input, in a subprocess (``_aimet.py``).

Goals: fxquant ≤ 2 × FP32 + write, and fxquant / AIMET ≤ 1 (while also writing the manifest).
Construction (preparing the model) is timed separately and not included. Times are the best of
``--repeats`` runs (robust to other load on shared machines). fxquant writes in a background thread
while the next forward runs, so it uses one core more than AIMET; on a machine with 2 shared cores,
``--threads 1`` leaves that core free (with 2 torch threads the writer and other users contend).

Run: .venv/bin/python benchmarks/bench_layer_outputs.py [--inputs 32] [--threads 1] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from _aimet import run_worker  # noqa: E402

import fxquant  # noqa: E402
from fxquant.layer_outputs import LayerOutputDump, LayerOutputUtil  # noqa: E402

# Runs after _aimet.WORKER_PRELUDE (quiet imports, ``args``, thread count).
AIMET_WORKER = r"""
torch.manual_seed(0)
model = torchvision.models.resnet18().eval()
gen = torch.Generator().manual_seed(1)
xs = [torch.randn(1, 3, args["size"], args["size"], generator=gen) for _ in range(args["inputs"])]
prepared = prepare_model(model)
fp32 = []
with torch.no_grad():
    prepared(xs[0])
    for r in range(args["repeats"]):
        t = time.perf_counter()
        for x in xs:
            prepared(x)
        fp32.append(time.perf_counter() - t)
out = {"fp32": min(fp32), "dump": []}
for r in range(args["repeats"]):
    folder = tempfile.mkdtemp(prefix="aimet-lo-", dir=args["tmp"])
    t = time.perf_counter()
    util = LayerOutputUtil(prepared, folder, naming_scheme=NamingScheme.PYTORCH)
    init = time.perf_counter() - t
    t = time.perf_counter()
    for x in xs:
        util.generate_layer_outputs(x)
    out["dump"].append(time.perf_counter() - t)
    out["init"] = init
    first = os.path.join(folder, "outputs", "layer_outputs_0")
    out["tensors"] = len(os.listdir(first))
    out["bytes"] = sum(os.path.getsize(os.path.join(dp, f))
                       for dp, _, fs in os.walk(folder) for f in fs)
    shutil.rmtree(folder)
print(json.dumps(out))
"""


def _inputs(n: int, size: int, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, size, size, generator=gen).to(device) for _ in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fp32(model: torch.nn.Module, xs: list[torch.Tensor], device: torch.device) -> float:
    with torch.no_grad():
        model(xs[0])
        _sync(device)
        start = time.perf_counter()
        for x in xs:
            model(x)
        _sync(device)
    return time.perf_counter() - start


def _write_floor(dump_dir: str, scratch: str) -> float:
    """Seconds to write the dump's arrays again with plain ndarray.tofile (page cache, no fsync)."""
    dump = LayerOutputDump(dump_dir)
    arrays = [[dump.load(name, k) for name in dump.names] for k in dump.instances]
    inputs = [dump.load_inputs(k) for k in dump.instances]
    start = time.perf_counter()
    for k, (outs, ins) in enumerate(zip(arrays, inputs)):
        folder = os.path.join(scratch, f"layer_outputs_{k}")
        os.makedirs(folder)
        for i, array in enumerate(outs):
            array.tofile(os.path.join(folder, f"{i}.raw"))
        for i, array in enumerate(ins):
            array.tofile(os.path.join(scratch, f"input_{k}_{i}.raw"))
    return time.perf_counter() - start


def _dump_size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(folder) for f in fs)


def bench(model: torch.nn.Module, xs: list[torch.Tensor], device: torch.device, repeats: int,
          tmp: str) -> dict[str, float]:
    fp32 = min(_fp32(model, xs, device) for _ in range(repeats))
    dumps, inits = [], []
    folder = ""
    for r in range(repeats):
        folder = tempfile.mkdtemp(prefix="fxq-lo-", dir=tmp)
        start = time.perf_counter()
        # BNs kept, as AIMET's dump keeps them: both sides dump the same layers
        util = LayerOutputUtil(model, folder, overwrite=True, fold_batch_norms=False)
        inits.append(time.perf_counter() - start)
        start = time.perf_counter()
        util.generate_layer_outputs_batch(xs, progress=False)
        dumps.append(time.perf_counter() - start)
        util.close()
        if r < repeats - 1:
            shutil.rmtree(folder)
    scratch = tempfile.mkdtemp(prefix="fxq-floor-", dir=tmp)
    floor = _write_floor(folder, scratch)
    shutil.rmtree(scratch)
    tensors = len(LayerOutputDump(folder).names)
    size = _dump_size(folder)
    shutil.rmtree(folder)
    return {"fp32": fp32, "dump": min(dumps), "init": min(inits),
            "write": floor, "tensors": tensors, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where dumps are written")
    parser.add_argument("--no-aimet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval().to(device)
    xs = _inputs(args.inputs, args.size, device)
    rows = {"fxquant": bench(model, xs, device, args.repeats, args.tmp)}
    sim = fxquant.QuantizationSimModel(model, xs[0], quant_scheme="tf")
    sim.compute_encodings(lambda m: [m(x) for x in xs[:4]])
    rows["fxquant sim"] = bench(sim.model, xs, device, args.repeats, args.tmp)
    aimet = None
    if not args.no_aimet and device.type == "cpu":
        aimet = run_worker(AIMET_WORKER, {"inputs": args.inputs, "size": args.size,
                                          "repeats": args.repeats, "threads": args.threads,
                                          "tmp": args.tmp})
    print(f"resnet18, {args.inputs} inputs 1x3x{args.size}x{args.size}, {args.threads} thread(s), "
          f"{device}; best of {args.repeats}")
    print(f"{'':<13}{'tensors':>8}{'MB':>8}{'FP32 s':>8}{'write s':>8}{'dump s':>8}"
          f"{'dump/FP32':>10}{'dump/(2FP32+w)':>15}{'init s':>8}")
    for name, r in rows.items():
        budget = 2 * r["fp32"] + r["write"]
        print(f"{name:<13}{r['tensors']:>8}{r['bytes'] / 1e6:>8.0f}{r['fp32']:>8.2f}"
              f"{r['write']:>8.2f}{r['dump']:>8.2f}{r['dump'] / r['fp32']:>9.2f}x"
              f"{r['dump'] / budget:>14.2f}x{r['init']:>8.2f}")
    if aimet:
        a = aimet
        dump = min(a["dump"])
        print(f"{'aimet-torch':<13}{a['tensors']:>8}{a['bytes'] / 1e6:>8.0f}{a['fp32']:>8.2f}"
              f"{'':>8}{dump:>8.2f}{dump / a['fp32']:>9.2f}x{'':>15}{a['init']:>8.2f}")
        print(f"fxquant / AIMET dump time: {rows['fxquant']['dump'] / dump:.2f}x (goal <= 1)")
    else:
        print("aimet-torch: n/a")
    print("goal: dump <= 2 x FP32 + write (dump/(2FP32+w) <= 1)")


if __name__ == "__main__":
    main()
