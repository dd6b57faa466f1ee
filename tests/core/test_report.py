"""fxquant.core.report: JSON numbers, ranking, tables, files (no silent overwrite), plots."""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import ClassVar, Mapping

import numpy as np
import pytest

import fxquant
from fxquant.core.report import (ComparisonReport, LayerComparison, MetricInfo, format_number,
                                 from_json_number, json_number, json_ready)
from fxquant.errors import OutputExistsError
from fxquant.layer_outputs import DumpComparisonReport, DumpLayerComparison
from fxquant.numeric_suite import NumericSuiteLayerComparison, NumericSuiteReport


@dataclasses.dataclass(frozen=True)
class _Row(LayerComparison):
    KINDS: ClassVar[tuple[str, ...]] = ("out", "in")

    out: Mapping[str, float] = dataclasses.field(default_factory=dict)
    extra: tuple[int, ...] = ()

    def values(self, kind: str) -> Mapping[str, float]:
        return self.out if kind == "out" else {}


def _base() -> ComparisonReport:
    rows = [_Row("a", {"sqnr": 30.0, "err": 0.1}, (1, 2)), _Row("b", {"sqnr": math.nan}),
            _Row("c", {"sqnr": 10.0, "err": 0.5}), _Row("d", {"sqnr": math.inf, "err": 0.0}),
            _Row("e", {})]
    return ComparisonReport(rows, [MetricInfo("sqnr", True, "dB"), MetricInfo("err", False)])


def test_json_numbers_have_one_encoding() -> None:
    assert [json_number(v) for v in (1.5, math.inf, -math.inf, math.nan)] == [1.5, "inf", "-inf",
                                                                              "nan"]
    for v in (1.5, math.inf, -math.inf):
        assert from_json_number(json_number(v)) == v
    assert math.isnan(from_json_number("nan")) and from_json_number(None) is None
    assert json_ready({"x": (1.0, np.float32(2.5), math.nan), 3: [math.inf], "ok": True}) == \
        {"x": [1.0, 2.5, "nan"], "3": ["inf"], "ok": True}
    with pytest.raises(ValueError, match="got 'infinity'"):
        from_json_number("infinity")
    with pytest.raises(TypeError, match="cannot write a object to a report's JSON"):
        json_ready(object())
    assert [format_number(v) for v in (None, math.nan, -math.inf, 3.14159, 31.4159)] == \
        ["-", "nan", "-inf", "3.1416", "31.42"]


def test_ranked_worst_table_follow_the_metric_direction() -> None:
    report = _base()
    assert report.metrics == ("sqnr", "err") and report.kinds == ("out",) and len(report) == 5
    assert [r.name for r in report.ranked()] == ["c", "a", "d", "b"]  # NaN last, e has none
    assert [r.name for r in report.ranked("err")] == ["c", "a", "d"]  # lower is better
    assert [r.name for r in report.worst(2)] == ["c", "a"] and report.worst(0) == []
    lines = report.table().splitlines()
    assert lines[0] == "5 layers; worst first by out sqnr"
    assert lines[1].split() == ["#", "layer", "out", "sqnr", "(dB)", "out", "err"]
    assert [line.split()[1] for line in lines[3:]] == ["c", "a", "d", "b", "e"]
    assert lines[5].split() == ["3", "d", "inf", "0.0000"] and lines[7].split() == ["5", "e", "-",
                                                                                     "-"]
    assert len(report.table(k=2).splitlines()) == 5
    assert report["d"].value("out", "sqnr") == math.inf and report["d"].value("in", "x") is None


def test_report_errors_name_the_culprit() -> None:
    report = _base()
    with pytest.raises(ValueError, match=r"metric 'psnr' was not computed; this report has "
                                         r"\['sqnr', 'err'\]"):
        report.ranked("psnr")
    with pytest.raises(ValueError, match=r"kind must be one of \['out', 'in'\], got 'weight'"):
        report.table(kind="weight")
    with pytest.raises(ValueError, match="kind must be one of"):
        report["a"].value("weight", "sqnr")
    with pytest.raises(ValueError, match="non-negative integer, got True"):
        report.worst(True)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no layer 'z' in the report"):
        report["z"]


def test_a_report_written_over_an_existing_one_fails_without_overwrite(tmp_path: pathlib.Path
                                                                       ) -> None:
    report = _base()
    path = report.to_json(tmp_path / "sub" / "report.json")
    before = path.read_bytes()
    data = json.loads(before)
    assert (data["format"], data["version"], data["metrics"]) == ("fxquant.ComparisonReport", 1,
                                                                  ["sqnr", "err"])
    assert data["layers"][0] == {"name": "a", "out": {"sqnr": 30.0, "err": 0.1}, "extra": [1, 2]}
    assert data["layers"][1]["out"]["sqnr"] == "nan" and data["layers"][3]["out"]["sqnr"] == "inf"
    with pytest.raises(OutputExistsError, match=r"report\.json already exists; pass "
                                                r"overwrite=True"):
        _base().to_json(path)
    assert path.read_bytes() == before
    png = report.plot(tmp_path / "report.png")
    first_png = png.read_bytes()
    assert first_png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        report.plot(png)
    assert png.read_bytes() == first_png
    assert report.plot(png, overwrite=True, metric="err") == png
    assert report.to_json(path, overwrite=True, indent=None).read_text().count("\n") == 1
    svg = report.plot(tmp_path / "report.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="Format 'xyz' is not supported"):
        report.plot(tmp_path / "report.xyz")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["report.json", "report.png",
                                                           "report.svg", "sub"]


def test_both_feature_reports_are_comparison_reports(tmp_path: pathlib.Path) -> None:
    ns_report = NumericSuiteReport(
        [NumericSuiteLayerComparison("conv", name_b="conv", op_type="Conv2d",
                                     activation={"sqnr": 25.0}, weight={"sqnr": 40.0}),
         NumericSuiteLayerComparison("fc", name_b="fc", op_type="Linear",
                                     activation={"sqnr": -math.inf},
                                     notes=("activation: all-zero reference (SQNR -inf dB)",))],
        ["sqnr"], "float", "int8", 2)
    dump_report = DumpComparisonReport(
        "a", "b", [DumpLayerComparison("x", sqnr_db=12.0, max_abs_diff=0.5, mean_abs_diff=0.1,
                                       equal_fraction=0.5, status="below_threshold"),
                   DumpLayerComparison("y", sqnr_db=math.inf, max_abs_diff=0.0,
                                       mean_abs_diff=0.0, equal_fraction=1.0)],
        [], [], [0], 20.0, "x")
    for report in (ns_report, dump_report):
        assert isinstance(report, fxquant.ComparisonReport)
    assert [r.name for r in ns_report.worst(2)] == ["fc", "conv"]
    assert ns_report.worst(1, kind="weight")[0].name == "conv"
    assert "1 layer(s) with notes: fc: activation: all-zero reference" in ns_report.table()
    assert json.loads(ns_report.json_text())["layers"][1]["activation"]["sqnr"] == "-inf"
    assert dump_report.worst(1)[0].name == "x" and dump_report.min_sqnr == ("x", 12.0)
    assert [r.name for r in dump_report.ranked("equal_fraction")] == ["x", "y"]
    assert dump_report.table().splitlines()[1].split()[:4] == ["#", "layer", "sqnr_db", "(dB)"]
    assert dump_report.to_dict()["layers"][1]["sqnr_db"] == "inf"
    dump_report.to_json(tmp_path / "d.json")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        dump_report.to_json(tmp_path / "d.json")
