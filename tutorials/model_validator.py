"""Tutorial: check a model before quantizing it, with the model validator.

Most quantization failures are properties of the model definition, not of calibration: a module
called twice shares one output quantizer between two tensors, an in-place op changes a tensor a
quantizer has already seen, a Python ``if`` on a tensor value makes part of the model opaque (and
unexportable). ``fxquant.validate(model, x)`` finds such problems in seconds, before a long
calibration or export, and says for each one where it is and how to fix it:

1. write a small classifier the way models often are written, with six problems in it;
2. validate it: one finding per problem (check, module path, node, source line, severity, fix);
   ``fxquant.ModelValidator.validate_model`` is AIMET's call (False when there are errors);
3. fix each problem as its finding says (docs/model_guidelines.md has a before/after per rule);
4. validate again: no error, no warning; only the functionals the preparer converts by itself;
5. quantize the fixed model: every layer gets its quantizers, and the W8A8 outputs stay close
   to the float ones.

Severities: *error* (the sim or the export will be wrong or fail), *warning* (it works, but
loses accuracy or coverage there), *fixed-by-preparer* (``fxquant.prepare_model``, and so
``QuantizationSimModel``, fixes it for you: nothing to do).

The report is written as JSON to $FXQUANT_TUTORIAL_OUT or a new temporary directory. (When the
ONNX export fails, torch's exporter prints its own diagnostics on stderr; the finding sums them up.)

Run: python tutorials/model_validator.py
"""
from __future__ import annotations

import os
import pathlib
import re
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

import fxquant
import fxquant.ns as ns

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import reestimate_batch_norm_statistics  # noqa: E402


# 1. The model as first written ----------------------------------------------------------------
class ClipIfNeeded(nn.Module):
    """Clips to [0, 6], but only "when needed": a Python ``if`` on a tensor value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.max() > 6.0:            # problem: control flow on tensor data (untraceable)
            x = x.clamp(0.0, 6.0)
        return x


class Classifier(nn.Module):
    """Conv-BN-ReLU, a residual block, a pre-activation (BN-ReLU-conv) downsampling conv, an
    L2-normalized embedding and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.bn3, self.conv3 = nn.BatchNorm2d(16), nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.relu = nn.ReLU()        # problem: one module for three call sites
        self.clip = ClipIfNeeded()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(x))
        y.add_(x)                    # problem: in place, and `y` (bn2's output) is read again
        y = self.relu(y)
        y = self.conv3(self.relu(self.bn3(y)))   # problem: a BN after a ReLU cannot fold
        y = self.clip(y)
        emb = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        emb = emb / torch.linalg.vector_norm(emb, dim=1, keepdim=True)  # problem: no module
        return self.fc(emb)


# 3. The model fixed, finding by finding ---------------------------------------------------------
class FixedClassifier(nn.Module):
    """The same classifier written the way the validator asks (the same parameters, but for
    bn3, which now follows conv3 and has its 32 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        # conv -> BN: the BN now has 32 channels and folds into conv3
        self.conv3, self.bn3 = nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32)
        # one module per call site, so each owns its output quantizer; ReLU6 clips to [0, 6]
        # always (what ClipIfNeeded did when it mattered), with no `if`
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU6()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(x)) + x)           # out of place
        y = self.relu3(self.bn3(self.conv3(y)))
        emb = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        emb = F.normalize(emb, dim=1)   # a functional the preparer turns into a module
        return self.fc(emb)


def print_findings(report: fxquant.ValidationReport) -> None:
    """The findings, most severe first: severity, check, where (module path, graph node, source
    line), what is wrong and how to fix it."""
    for f in (*report.errors, *report.warnings, *report.fixed):
        node = f" (node {f.node})" if f.node else ""
        line = ""
        match = re.match(r"(.*?):(\d+): (.*)", f.source or "")   # "file:line: code"
        if match:
            line = f", line {match[2]}: {match[3].split('  #')[0].strip()}"
        print(f"  [{f.severity}] {f.check}: {f.module_path or '<root>'}{node}{line}")
        print(f"      {f.message}")
        print(f"      fix: {f.fix}")


def main() -> None:
    torch.manual_seed(0)
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT")
                       or tempfile.mkdtemp(prefix="fxquant_validator_"))
    out.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 3, 32, 32)

    # 2. Validate -------------------------------------------------------------------------------
    # The validator traces a private copy of the model, prepares it, runs it once on `x` and
    # exports it to ONNX; the caller's model is not changed. Note: no model.eval() yet.
    model = Classifier()
    report = fxquant.validate(model, x)
    print(report.summary())
    print_findings(report)
    report.to_json(out / "validation_before.json", overwrite=True)
    # report.ok is False exactly when there is an error finding: what AIMET's call,
    # fxquant.ModelValidator.validate_model(model, x), returns (it logs the findings)
    print(f"ok: {report.ok}")

    # What the findings say, one problem at a time:
    # - training_mode: the model is in training mode: BNs would normalize with batch statistics
    #   and not fold. Fix: model.eval() before post-training quantization.
    # - untraceable + onnx_export: ClipIfNeeded's `if` on a tensor value cannot be traced; fxquant
    #   keeps the module opaque (float, no quantizers), and the ONNX export fails on it. One
    #   problem, two findings. Fix: no `if` on data (ReLU6, clamp, torch.where).
    # - in_place: `y.add_(x)` writes the sum into bn2's output tensor, and relu then reads that
    #   tensor. In the sim a quantizer sits after bn2, so the add writes into the quantizer's
    #   output and relu's input depends on where quantizers are placed; the exported ONNX graph
    #   has no in-place ops and computes something else. Fix: `y = y + x`.
    # - batch_norm_fold: bn3 follows a ReLU, not a conv, so it cannot fold and stays a separate
    #   op with its own quantizer. Fix: conv -> BN -> ReLU.
    # - functional_op (warning): torch.linalg.vector_norm has no module, so no quantizer follows
    #   it. Fix: F.normalize, which the preparer converts. (A module of your own around it helps
    #   only if tracing keeps it opaque: fxquant traces into your modules' forward.)
    # - reused_module and functional_op (fixed-by-preparer): the preparer splits `relu` per call
    #   site and turns `+`, pooling, flatten and `/` into modules; defining relu1/relu2/relu3
    #   yourself gives them your names.

    # 4. Validate the fixed model ------------------------------------------------------------
    fixed = FixedClassifier()
    fixed.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("bn3.")}, strict=False)   # bn3 changed size
    fixed.eval()
    report = fxquant.validate(fixed, x)
    print(report.summary())
    print_findings(report)
    report.to_json(out / "validation_after.json", overwrite=True)
    print(f"ok: {report.ok}; ModelValidator.validate_model: "
          f"{fxquant.ModelValidator.validate_model(fixed, x)}")

    # 5. Quantize the fixed model ------------------------------------------------------------
    # BN statistics of a fresh model are mean 0 / var 1: estimate real ones on a few batches
    # (in a real project the trained model has them).
    fixed = reestimate_batch_norm_statistics(fixed, size=32, batches=4)
    sim = fxquant.QuantizationSimModel(fixed, x, quant_scheme="tf")
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(4)]

    def calibrate(sim_model: nn.Module) -> None:
        with torch.no_grad():
            for batch in calibration:
                sim_model(batch)

    sim.compute_encodings(calibrate)
    # Each ReLU owns its output quantizer now, and the normalization has one (module_normalize):
    # what the reused module and torch.linalg.vector_norm had prevented.
    names = [q.name for q in sim.quantizers()]
    print(f"W8A8 sim of the fixed model: {len(names)} quantizers: {', '.join(names)}")
    test = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        sqnr = float(ns.compute_sqnr(fixed(test), sim.model(test)))
    print(f"logits SQNR, W8A8 sim vs float: {sqnr:.1f} dB")


if __name__ == "__main__":
    main()
