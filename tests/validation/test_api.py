"""The validator's API: the report (table, JSON, file), user checks, argument errors, and the
cheap validation QuantizationSimModel logs."""
from __future__ import annotations

import json
import logging
from typing import Iterator

import pytest
import torch
from torch import nn

import fxquant
from fxquant.errors import OutputExistsError
from fxquant.validation import (BUILTIN_CHECKS, ERROR, FIXED, WARNING, Finding, ModelValidator,
                                ValidationReport, graph_report)
from tests.validation import nets

X = torch.randn(1, 3, 8, 8)
_NO_EXPORT = ("onnx_export",)


@pytest.fixture
def report() -> ValidationReport:
    return fxquant.validate(nets.InPlaceReused().eval(), X, skip=_NO_EXPORT)


def test_table_lists_each_finding_with_its_fix_and_filters_by_severity(
        report: ValidationReport) -> None:
    text = report.table()
    assert text.splitlines()[0] == report.summary()
    assert "1 error" in report.summary() and "(traced symbolic)" in report.summary()
    error = report.errors[0]
    assert error.fix in text and error.source in text
    assert "fixed-by-preparer" in text  # the functional add
    assert "fixed-by-preparer" not in "\n".join(report.table("warning").splitlines()[1:])


def test_json_round_trip_and_file(report: ValidationReport, tmp_path) -> None:
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["counts"] == {ERROR: 1, WARNING: 0, FIXED: 2}  # relu_, add
    assert data["checks"] == [c for c in BUILTIN_CHECKS if c not in _NO_EXPORT]
    first = data["findings"][0]
    assert set(first) == {"check", "severity", "message", "fix", "module_path", "node", "source"}
    path = tmp_path / "validation.json"
    assert report.to_json(path) == path
    assert json.loads(path.read_text()) == data
    with pytest.raises(OutputExistsError, match="validation.json"):
        report.to_json(path)
    report.to_json(path, overwrite=True)


def test_bad_severity_arguments_are_refused(report: ValidationReport) -> None:
    with pytest.raises(ValueError, match="min_severity must be one of"):
        report.table("info")
    with pytest.raises(ValueError, match="severity must be one of"):
        report.with_severity("fatal")
    with pytest.raises(ValueError, match="severity must be one of"):
        Finding("mine", "fatal", "m", "f")
    with pytest.raises(ValueError, match="every finding needs a one-line fix"):
        Finding("mine", WARNING, "m", "")


def test_validate_refuses_a_non_module_and_unknown_checks() -> None:
    with pytest.raises(TypeError, match="expects a torch.nn.Module, got function"):
        fxquant.validate(lambda x: x, X)
    with pytest.raises(ValueError, match=r"skip names unknown check\(s\) \['onnx'\]"):
        fxquant.validate(nets.Clean().eval(), X, skip=("onnx",))
    with pytest.raises(TypeError, match="unexpected keyword argument 'strict'"):
        ModelValidator.validate_model(nets.Clean().eval(), X, strict=True)


@pytest.fixture
def sigmoid_check() -> Iterator[None]:
    def no_sigmoid(ctx):
        for node in ctx.prepared.graph.nodes:
            if node.op == "call_module" and isinstance(ctx.prepared.get_submodule(node.target),
                                                       nn.Sigmoid):
                yield Finding("no_sigmoid", ERROR, "sigmoid found", "use hardsigmoid",
                              str(node.target), node.name)

    ModelValidator.add_check(no_sigmoid)
    yield
    ModelValidator.remove_check("no_sigmoid")


def test_user_check_runs_after_the_builtin_ones(sigmoid_check: None) -> None:
    assert ModelValidator.checks()[-1] == "no_sigmoid"
    model = nets.Unconvertible().eval()
    assert ModelValidator.validate_model(model, X, skip=_NO_EXPORT) is False
    finding = fxquant.validate(model, X, skip=_NO_EXPORT).by_check("no_sigmoid")[0]
    assert finding.module_path == "module_sigmoid"
    assert ModelValidator.validate_model(nets.Clean().eval(), X, skip=_NO_EXPORT) is True


def test_add_check_errors(sigmoid_check: None) -> None:
    with pytest.raises(TypeError, match="expects a function check"):
        ModelValidator.add_check("no_sigmoid")
    def no_sigmoid(ctx):
        return []

    def in_place(ctx):
        return []

    with pytest.raises(ValueError, match="a check named 'no_sigmoid' exists already"):
        ModelValidator.add_check(no_sigmoid)
    with pytest.raises(ValueError, match="a check named 'in_place' exists already"):
        ModelValidator.add_check(in_place)
    with pytest.raises(KeyError, match="no check 'nope' was added"):
        ModelValidator.remove_check("nope")


def test_a_check_that_raises_becomes_an_error_finding() -> None:
    def broken(ctx):
        raise RuntimeError("boom")

    def wrong_type(ctx):
        return ["not a finding"]

    ModelValidator.add_check(broken)
    ModelValidator.add_check(wrong_type)
    try:
        report = fxquant.validate(nets.Clean().eval(), X, skip=_NO_EXPORT)
    finally:
        ModelValidator.remove_check(broken)
        ModelValidator.remove_check(wrong_type)
    assert report.by_check("broken")[0].message == "the check raised RuntimeError: boom"
    assert "must return fxquant.validation.Finding" in report.by_check("wrong_type")[0].message
    assert not report.ok


def test_graph_report_is_the_cheap_graph_only_subset() -> None:
    model = nets.ReusedRelu().eval()
    report = graph_report(model, fxquant.trace(model))
    assert report.checks == ("untraceable", "training_mode", "reused_module", "in_place",
                             "shared_parameter")
    assert [f.check for f in report] == ["reused_module"]


def test_quantsim_logs_the_cheap_report_on_error_findings(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="fxquant.quantsim.quantsim"):
        fxquant.QuantizationSimModel(nets.InPlaceReused().eval(), X)
    logged = [r.getMessage() for r in caplog.records if r.name == "fxquant.quantsim.quantsim"]
    assert len(logged) == 1 and "in_place" in logged[0] and "relu_" in logged[0]
    assert "fxquant.validate(model, dummy_input)" in logged[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fxquant.quantsim.quantsim"):
        fxquant.QuantizationSimModel(nets.ReusedRelu().eval(), X)
    assert not [r for r in caplog.records if r.name == "fxquant.quantsim.quantsim"]
