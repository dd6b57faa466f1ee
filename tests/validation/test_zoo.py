"""torchvision models: a clean resnet18, every classifier family, a detection model.

The full classifier list with the ONNX export runs in ``benchmarks/bench_validator.py --all``
(the export alone takes 3-10 s a model here); CI validates one model per architecture family
(every check but the export, which the resnet18 test and the small models cover). maxvit_t and
swin_v2_t (30 s and 20 s here, swin_t stands for the swin family) run only in the benchmark sweep.
"""
from __future__ import annotations

import gc

import pytest
import torch
import torchvision

import fxquant
from fxquant.validation import ERROR

#: One classifier per architecture family of torchvision.models (the smallest of each).
FAMILIES = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
            "googlenet", "inception_v3", "mnasnet0_5", "mobilenet_v2",
            "mobilenet_v3_small", "regnet_x_400mf", "resnet18", "resnext50_32x4d",
            "shufflenet_v2_x0_5", "squeezenet1_0", "swin_t", "vgg11", "vit_b_16",
            "wide_resnet50_2"]
_FIXED_224 = ("vit", "swin", "maxvit")


def _input(name: str) -> torch.Tensor:
    size = 224 if name.startswith(_FIXED_224) else (80 if name == "inception_v3" else 64)
    return torch.randn(1, 3, size, size)


def test_prepared_resnet18_is_clean() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    prepared = fxquant.prepare_model(model)
    x = torch.randn(1, 3, 64, 64)
    report = fxquant.validate(prepared, x)
    assert "onnx_export" in report.checks and report.trace_mode == "symbolic"
    assert not report.errors and not report.warnings, report.table()
    assert not report.fixed, "a prepared model has nothing left for the preparer"
    assert fxquant.ModelValidator.validate_model(prepared, x) is True
    # the unprepared model: the same, plus what the preparer fixes (reused ReLUs, the adds)
    raw = fxquant.validate(model, x, skip=("onnx_export",))
    assert raw.ok and not raw.warnings
    assert {f.check for f in raw.fixed} == {"reused_module", "functional_op"}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_classifier_families_have_no_errors(name: str) -> None:
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3",
                                                                      "googlenet") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    report = fxquant.validate(model, _input(name), skip=("onnx_export",))
    assert report.trace_mode == "symbolic"
    assert not report.errors, report.table()
    assert all(f.fix for f in report.warnings)
    del model, report
    gc.collect()


@pytest.mark.slow
def test_detection_model_names_its_untraceable_parts_and_concrete_mode() -> None:
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None).eval()
    report = fxquant.validate(model, ([torch.rand(3, 160, 160)],), skip=("onnx_export",))
    assert report.trace_mode == "concrete"
    untraceable = report.by_check("untraceable")
    root = untraceable[0]
    assert root.module_path == "" and "cannot be traced symbolically" in root.message
    assert "concrete mode (example_inputs) handles it" in root.message
    assert "example_inputs" in root.fix and root.source and "generalized_rcnn.py" in root.source
    opaque = {f.module_path for f in untraceable[1:]}
    assert opaque and opaque <= {"rpn", "roi_heads", "transform", "rpn.anchor_generator"}, opaque
    assert all("stays opaque even in concrete mode" in f.message for f in untraceable[1:])
    assert not [f for f in report.errors if f.check != "onnx_export"]
    assert all(f.severity != ERROR for f in untraceable)
    del model, report
    gc.collect()
