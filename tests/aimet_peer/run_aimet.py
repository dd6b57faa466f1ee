"""Runs aimet-torch 2.42 on a torchvision model, as the side-by-side reference (run by AIMET's venv).

Usage: ``<aimet python> run_aimet.py MODEL CONFIG OUT_DIR``. Builds ``MODEL(weights=None)`` with a
fixed seed, re-estimates its BatchNorm statistics on seeded data (``weights=None`` models keep
mean 0 / var 1, which collapses deep activations; SPEC §7), prepares it with AIMET's
``prepare_model``, folds BN, builds AIMET's ``QuantizationSimModel`` with CONFIG, calibrates on
seeded data and exports. Writes into OUT_DIR: AIMET's export (``MODEL.onnx``, ``MODEL.encodings``,
``MODEL_torch.encodings``) and ``MODEL_io.pt`` with the calibration/evaluation inputs, AIMET's
quantized outputs and the folded float state dict (tensors only: loadable with
``torch.load(weights_only=True)``). The quantized outputs are computed twice: with AIMET's default
inference kernel (``torch.fake_quantize``) and with AIMET's division kernel (``quantized_exact``).

This file is executed by the AIMET interpreter only; it is not imported by the test suite.
"""
import sys

import torch
import torchvision
from aimet_common.defs import QuantScheme
from aimet_torch.batch_norm_fold import fold_all_batch_norms
from aimet_torch.model_preparer import prepare_model
from aimet_torch.quantization.affine.backends import torch_builtins
from aimet_torch.quantsim import QuantizationSimModel


def main(name: str, config: str, out: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # re-estimate BN statistics (cumulative average)
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.momentum = None
                mod.reset_running_stats()
        model.train()
        for _ in range(3):
            model(torch.randn(8, 3, 224, 224, generator=gen))
    model.eval()
    model = prepare_model(model)
    fold_all_batch_norms(model, input_shapes=(1, 3, 224, 224))
    calib = torch.randn(8, 3, 224, 224, generator=gen)
    evaluate = torch.randn(4, 3, 224, 224, generator=gen)
    sim = QuantizationSimModel(model, dummy_input=calib[:1],
                               quant_scheme=QuantScheme.post_training_tf, config_file=config)

    def calibrate(sim_model, batch):
        with torch.no_grad():
            sim_model(batch)

    sim.compute_encodings(calibrate, forward_pass_callback_args=calib)
    with torch.no_grad():  # AIMET returns a DequantizedTensor subclass: keep the plain tensor
        quantized = sim.model(evaluate).as_subclass(torch.Tensor).detach().clone()
    # AIMET's inference fast path is torch.fake_quantize (multiplies by the reciprocal of the
    # scale, which rounds ties differently from ONNX QuantizeLinear's division). A round function
    # of AIMET's own that is not torch.round itself turns the fast path off: AIMET then computes
    # round(x / scale) as QuantizeLinear does.
    torch_builtins._set_round_fn(lambda t: torch.round(t), lambda t: torch.round_(t))
    try:
        with torch.no_grad():
            quantized_exact = sim.model(evaluate).as_subclass(torch.Tensor).detach().clone()
    finally:
        torch_builtins._set_round_fn(torch.round, torch.round_)
    sim.export(out, name, dummy_input=calib[:1])
    torch.save({"calib": calib, "evaluate": evaluate, "quantized": quantized,
                "quantized_exact": quantized_exact,
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}},
               f"{out}/{name}_io.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4])
