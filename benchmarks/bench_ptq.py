"""Post-training techniques side by side with aimet-torch 2.42: quality and wall time.

The same trained models, data and iteration counts on both sides (CPU, ``--threads`` threads):
a MobileNet-style CNN with depthwise-separable blocks, batch norms and ReLU6 trained on
scikit-learn's digits (``tests/ptq/digits_dw.py``; a pretrained ImageNet model, fxquant only:
``bench_ptq_imagenet.py``), 256 calibration images (4 batches of 64), evaluated on the 450 test
images by logits SQNR against FP32 and top-1 agreement. Each side evaluates its own result with
its own sim, as its user would.

* cross-layer equalization (``equalize_model``), per-tensor W8A8, on the ReLU variant whose
  per-channel ranges were spread 400× by a function-preserving rescaling (what BN folding leaves in
  ImageNet MobileNets; the trained digits net itself has ranges within 4× of each other);
* AdaRound (``Adaround.apply_adaround``), per-channel W4A8, ``--iterations`` per layer;
* sequential MSE (``apply_seq_mse``, 20 candidates), per-channel W4A8.

Both sides fold the batch norms before quantizing (fxquant's sim always does; AIMET's v2 sim does
not, so its worker folds them with its own ``fold_all_batch_norms``). The models reach AIMET's
process as pickled ``torch.fx`` graph modules of standard layers.

Run: .venv/bin/python benchmarks/bench_ptq.py [--iterations 2000] [--threads 2] [--no-aimet]
(about 5 minutes with AIMET on 2 cores). Goal: equal or better quality, ≤ 0.5× AIMET's time.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _aimet import run_worker  # noqa: E402

import fxquant  # noqa: E402
from tests.ptq.digits_dw import (calibration_batches, sqnr, test_images,  # noqa: E402
                                 top1_agreement, trained_dw_net)
from tests.ptq.test_cross_layer_equalization import imbalance  # noqa: E402

# Runs after _aimet.WORKER_PRELUDE (quiet imports, ``args``, thread count).
AIMET_WORKER = r"""
import aimet_torch
from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
from aimet_torch.cross_layer_equalization import equalize_model
from aimet_torch.seq_mse import apply_seq_mse
logging.disable(logging.CRITICAL)
configs = os.path.join(os.path.dirname(aimet_torch.__file__), "common", "quantsim_config")
per_tensor = os.path.join(configs, "default_config.json")
per_channel = os.path.join(configs, "default_config_per_channel.json")
data = torch.load(args["data"])
x, cal = data["x"], data["cal"]

def calibrate(model, _=None):
    with torch.no_grad():
        for b in cal:
            model(b)

def load(name):
    return torch.load(args[name], weights_only=False).eval()

def evaluate(model, config, param_bw, encodings=None):
    sim = QuantizationSimModel(model, x[:2], quant_scheme=QuantScheme.post_training_tf_enhanced,
                               default_param_bw=param_bw, default_output_bw=8, config_file=config)
    if encodings:
        sim.set_and_freeze_param_encodings(encodings)
    sim.compute_encodings(calibrate, None)
    with torch.no_grad():
        return sim.model(x)

out = {}
model = load("cle_model")
fold_all_batch_norms(model, None, dummy_input=x[:2])
out["cle_before"] = evaluate(model, per_tensor, 8)
model = load("cle_model")
start = time.perf_counter()
equalize_model(model, dummy_input=x[:2])
out["cle_s"] = time.perf_counter() - start
out["cle_after"] = evaluate(model, per_tensor, 8)

model = load("model")
fold_all_batch_norms(model, None, dummy_input=x[:2])
out["nearest"] = evaluate(model, per_channel, 4)
tmp = tempfile.mkdtemp()
params = AdaroundParameters(data_loader=cal, num_batches=len(cal),
                            default_num_iterations=args["iterations"])
torch.manual_seed(0)
start = time.perf_counter()
ada = Adaround.apply_adaround(model, x[:2], params, path=tmp, filename_prefix="ada",
                              default_param_bw=4, default_config_file=per_channel)
out["adaround_s"] = time.perf_counter() - start
out["adaround"] = evaluate(ada, per_channel, 4, os.path.join(tmp, "ada.encodings"))

model = load("model")
fold_all_batch_norms(model, None, dummy_input=x[:2])
sim = QuantizationSimModel(model, x[:2], quant_scheme=QuantScheme.post_training_tf_enhanced,
                           default_param_bw=4, default_output_bw=8, config_file=per_channel)
start = time.perf_counter()
apply_seq_mse(sim, cal, num_candidates=20)
out["seq_mse_s"] = time.perf_counter() - start
sim.compute_encodings(calibrate, None)
with torch.no_grad():
    out["seq_mse"] = sim.model(x)
torch.save({k: v.as_subclass(torch.Tensor).detach().clone() if torch.is_tensor(v) else v
            for k, v in out.items()}, args["out"])
print(json.dumps({"ok": True}))
"""


def _evaluate(model: torch.nn.Module, config: str | None, param_bw: int,
              encodings: str | None = None, sim: fxquant.QuantizationSimModel | None = None
              ) -> torch.Tensor:
    x, cal = test_images(), calibration_batches()
    if sim is None:
        sim = fxquant.QuantizationSimModel(model, x[:2], default_param_bw=param_bw,
                                           default_output_bw=8, config_file=config)
    if encodings:
        sim.set_and_freeze_param_encodings(encodings)
    sim.compute_encodings(lambda m: [m(b) for b in cal])
    with torch.no_grad():
        return sim.model(x)


def bench_fxquant(models: dict[str, Path], iterations: int, tmp: Path) -> dict[str, object]:
    x, cal = test_images(), calibration_batches()
    load = {name: (lambda p=path: torch.load(p, weights_only=False).eval())
            for name, path in models.items()}
    out: dict[str, object] = {}
    out["cle_before"] = _evaluate(load["cle_model"](), "per_tensor", 8)
    model = load["cle_model"]()
    start = time.perf_counter()
    fxquant.equalize_model(model, dummy_input=x[:2])
    out["cle_s"] = time.perf_counter() - start
    out["cle_after"] = _evaluate(model, "per_tensor", 8)

    out["nearest"] = _evaluate(load["model"](), None, 4)
    params = fxquant.AdaroundParameters(cal, num_batches=len(cal),
                                        default_num_iterations=iterations)
    torch.manual_seed(0)
    start = time.perf_counter()
    ada = fxquant.Adaround.apply_adaround(load["model"](), x[:2], params, path=str(tmp),
                                          filename_prefix="ada", default_param_bw=4)
    out["adaround_s"] = time.perf_counter() - start
    out["adaround"] = _evaluate(ada, None, 4, str(tmp / "ada.encodings"))

    sim = fxquant.QuantizationSimModel(load["model"](), x[:2], default_param_bw=4,
                                       default_output_bw=8)
    start = time.perf_counter()
    fxquant.apply_seq_mse(sim, cal, num_candidates=20)
    out["seq_mse_s"] = time.perf_counter() - start
    out["seq_mse"] = _evaluate(None, None, 4, sim=sim)  # type: ignore[arg-type]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=2000, help="AdaRound steps per layer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-aimet", action="store_true", help="fxquant only")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ptq_"))
    reference = trained_dw_net()
    models = {"model": tmp / "model.pt", "cle_model": tmp / "cle_model.pt"}
    torch.save(torch.fx.symbolic_trace(copy.deepcopy(reference)), models["model"])
    torch.save(torch.fx.symbolic_trace(imbalance(trained_dw_net("relu"))), models["cle_model"])
    torch.save({"x": test_images(), "cal": calibration_batches()}, tmp / "data.pt")
    with torch.no_grad():
        fp32 = {"model": reference(test_images()),
                "cle_model": trained_dw_net("relu")(test_images())}
    ours = bench_fxquant(models, args.iterations, tmp)
    aimet = None
    if not args.no_aimet and run_worker(AIMET_WORKER, {
            "threads": args.threads, "iterations": args.iterations, "data": str(tmp / "data.pt"),
            "out": str(tmp / "aimet.pt"), **{k: str(v) for k, v in models.items()}}):
        aimet = torch.load(tmp / "aimet.pt")
    rows = [("CLE, per-tensor W8A8: before", "cle_before", "cle_model", None),
            ("CLE, per-tensor W8A8: after equalize_model", "cle_after", "cle_model", "cle_s"),
            ("W4A8 per-channel, nearest rounding", "nearest", "model", None),
            (f"W4A8 AdaRound ({args.iterations} iterations/layer)", "adaround", "model",
             "adaround_s"),
            ("W4A8 sequential MSE (20 candidates)", "seq_mse", "model", "seq_mse_s")]
    print(f"digits MobileNet-style CNN, {args.threads} threads; logits SQNR (dB) / top-1 "
          "agreement vs FP32; wall time of the technique")
    print(f"{'':48} {'fxquant':>22} {'aimet-torch 2.42':>22} {'time ratio':>10}")
    for label, key, ref, time_key in rows:
        cells = []
        for side in (ours, aimet):
            if side is None:
                cells.append(f"{'-':>22}")
                continue
            q = side[key]
            t = f" {side[time_key]:6.2f}s" if time_key else " " * 8
            cells.append(f"{sqnr(fp32[ref], q):6.2f} / {top1_agreement(fp32[ref], q):.3f}{t}")
        ratio = (f"{ours[time_key] / aimet[time_key]:9.2f}x" if time_key and aimet else "")
        print(f"{label:48} {cells[0]:>22} {cells[1]:>22} {ratio:>10}")


if __name__ == "__main__":
    main()
