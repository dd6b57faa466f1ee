"""Each validator check fires on its small model with the right module path and source line."""
from __future__ import annotations

import pytest
import torch

import fxquant
from fxquant.validation import ERROR, FIXED, WARNING, Finding, ValidationReport
from tests.validation import nets


def _one(report: ValidationReport, check: str, severity: str | None = None) -> Finding:
    found = [f for f in report.by_check(check) if severity is None or f.severity == severity]
    assert len(found) == 1, f"{check}: expected one finding, got {found}\n{report.table()}"
    return found[0]


def _at(finding: Finding, tag: str) -> None:
    assert finding.source is not None, finding
    assert finding.source.startswith(f"{nets.__file__}:{nets.line_of(tag)}:"), finding.source


X = torch.randn(1, 3, 8, 8)
_NO_EXPORT = ("onnx_export",)  # the export is checked where it is the point


def test_data_dependent_if_at_the_root_is_an_error_with_its_source_line() -> None:
    model = nets.DataDependentRoot().eval()
    assert fxquant.ModelValidator.validate_model(model, X) is False
    report = fxquant.validate(model, X)
    finding = _one(report, "untraceable", ERROR)
    assert finding.module_path == "" and "even in concrete mode" in finding.message
    _at(finding, "if")
    assert report.trace_mode == "failed" and not report.ok


def test_untraceable_child_is_an_auto_leaf_that_concrete_mode_traces() -> None:
    report = fxquant.validate(nets.UntraceableChild().eval(), X, skip=_NO_EXPORT)
    finding = _one(report, "untraceable", WARNING)
    assert finding.module_path == "loop"
    assert "concrete mode (example_inputs) traces it" in finding.message
    _at(finding, "loop")
    assert report.ok


def test_data_dependent_child_stays_opaque_even_in_concrete_mode() -> None:
    report = fxquant.validate(nets.DataDependentChild().eval(), X, skip=_NO_EXPORT)
    finding = _one(report, "untraceable", WARNING)
    assert finding.module_path == "gate" and "auto-leaf keeps it opaque" in finding.message
    _at(finding, "gate")


def test_reused_module_is_fixed_by_the_preparer() -> None:
    report = fxquant.validate(nets.ReusedRelu().eval(), X, skip=_NO_EXPORT)
    finding = _one(report, "reused_module", FIXED)
    assert finding.module_path == "relu" and "'relu_1'" in finding.message
    _at(finding, "reuse")
    assert report.ok


def test_functionals_the_preparer_cannot_convert_are_warnings() -> None:
    report = fxquant.validate(nets.Unconvertible().eval(), X, skip=_NO_EXPORT)
    fixed = _one(report, "functional_op", FIXED)
    assert fixed.module_path == "module_sigmoid"
    _at(fixed, "sigmoid")
    left = _one(report, "functional_op", WARNING)
    assert "atan" in left.message and left.node == "atan" and left.module_path == ""
    _at(left, "atan")


def test_in_place_op_on_a_tensor_read_afterwards_is_an_error() -> None:
    model = nets.InPlaceReused().eval()
    report = fxquant.validate(model, X, skip=_NO_EXPORT)
    finding = _one(report, "in_place", ERROR)
    assert finding.module_path == "" and "'conv'" in finding.message
    _at(finding, "inplace")
    assert fxquant.ModelValidator.validate_model(model, X, skip=_NO_EXPORT) is False


def test_in_place_op_on_the_model_input_is_a_warning() -> None:
    x = X.clone()
    report = fxquant.validate(nets.InPlaceInput().eval(), x, skip=_NO_EXPORT)
    _at(_one(report, "in_place", WARNING), "input")
    assert torch.equal(x, X), "validation changed the caller's input"


@pytest.mark.parametrize("model,tag", [(nets.SharedWeight(), "shared"),
                                       (nets.TiedLinear(), "tied")])
def test_parameter_used_by_several_ops(model: torch.nn.Module, tag: str) -> None:
    x = torch.randn(2, 4, 3, 3) if tag == "shared" else torch.randn(2, 4)
    finding = _one(fxquant.validate(model.eval(), x, skip=_NO_EXPORT), "shared_parameter", WARNING)
    assert "weight" in finding.message
    _at(finding, tag)


def test_onnx_export_failure_names_the_op_and_the_exporters_reason() -> None:
    report = fxquant.validate(nets.ExportFails().eval(), torch.randn(2, 4))
    finding = _one(report, "onnx_export", ERROR)
    assert "No ONNX function found" in finding.message and "linalg_eigh" in finding.message
    assert finding.node == "linalg_eigh"
    _at(finding, "eigh")


def test_onnx_export_failure_on_data_dependent_control_flow_gives_the_real_reason() -> None:
    """torch's exporter wraps the real error in a generic "Failed to export the model with
    torch.export" one; the finding names the innermost error and the fix for control flow."""
    report = fxquant.validate(nets.DataDependentChild().eval(), X)
    finding = _one(report, "onnx_export", ERROR)
    assert "GuardOnDataDependentSymNode" in finding.message, finding.message
    assert "Failed to export the model" not in finding.message
    assert "torch.where" in finding.fix and "_Gate" in finding.message


def test_data_dependent_shape() -> None:
    report = fxquant.validate(nets.Masked().eval(), torch.randn(2, 4), skip=_NO_EXPORT)
    finding = _one(report, "data_dependent_shape", WARNING)
    assert "boolean-mask indexing" in finding.message
    _at(finding, "mask")


def test_training_mode() -> None:
    report = fxquant.validate(nets.Clean().train(), X, skip=_NO_EXPORT)
    finding = _one(report, "training_mode", WARNING)
    assert finding.module_path == "" and "2 module(s)" in finding.message  # conv, bn
    assert finding.source and "class Clean" in finding.source
    assert not fxquant.validate(nets.Clean().eval(), X, skip=_NO_EXPORT).findings


def test_batch_norm_with_other_users_cannot_be_folded() -> None:
    report = fxquant.validate(nets.ConvBnReadTwice().eval(), X, skip=_NO_EXPORT)
    finding = _one(report, "batch_norm_fold", WARNING)
    assert finding.module_path == "bn" and "other users" in finding.message
    _at(finding, "bn_users")


def test_batch_norm_after_an_unconverted_functional_conv() -> None:
    report = fxquant.validate(nets.ConvBnDynamicWeight().eval(), X, skip=_NO_EXPORT)
    finding = _one(report, "batch_norm_fold", WARNING)
    assert "functional conv2d() the preparer could not convert" in finding.message
    _at(finding, "bn_fconv")
    weight = _one(report, "functional_op", WARNING)
    assert "computed at run time" in weight.message
    _at(weight, "fconv")


def test_batch_norm_in_training_mode_is_reported_once_not_as_unfoldable() -> None:
    report = fxquant.validate(nets.Clean().train(), X, skip=_NO_EXPORT)
    assert not report.by_check("batch_norm_fold")


def test_activation_above_1e4() -> None:
    finding = _one(fxquant.validate(nets.HugeActivation().eval(), torch.randn(2, 4), skip=_NO_EXPORT),
                   "activation_range", WARNING)
    assert finding.module_path == "fc" and "> 10000" in finding.message
    _at(finding, "huge")


def test_activation_with_outliers() -> None:
    x = torch.randn(1, 3, 128, 128) * 0.01
    x[0, :, 0, 0] = 100.0
    finding = _one(fxquant.validate(nets.Outlier().eval(), x, skip=_NO_EXPORT), "activation_range", WARNING)
    assert finding.module_path == "conv" and "outliers" in finding.message
    _at(finding, "outlier")
    x[0, :, 0, 0] = 0.01
    assert not fxquant.validate(nets.Outlier().eval(), x, skip=_NO_EXPORT).by_check("activation_range")


def test_a_model_that_does_not_run_on_the_input_is_an_error() -> None:
    report = fxquant.validate(nets.Clean().eval(), torch.randn(1, 5, 8, 8))
    finding = _one(report, "run", ERROR)
    assert "does not run on the input" in finding.message and "RuntimeError" in finding.message


def test_validation_leaves_the_model_unchanged() -> None:
    model = nets.ReusedRelu().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxquant.validate(model, X, skip=_NO_EXPORT)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [n for n, _ in model.named_modules()] == ["", "conv1", "conv2", "relu"]


def test_model_over_the_onnx_size_limit_is_an_export_error_with_the_right_fix(monkeypatch) -> None:
    from fxquant.export import onnx_export

    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1_000)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).eval()
    report = fxquant.validate(model, torch.randn(1, 64))
    (finding,) = report.by_check("onnx_export")
    assert finding.severity == ERROR and "2 GiB limit of one ONNX" in finding.message
    assert "external_data=True" in finding.fix
