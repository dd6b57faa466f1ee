"""compare_layer_outputs: metrics, layouts, first divergence, JSON, plot and the CLI."""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest

import fxquant.onnx
from fxquant.cli import main
from fxquant.errors import OutputExistsError
from fxquant.layer_outputs import (DumpFormatError, LayerOutputDump, LayerOutputUtil, NamingScheme,
                                   compare_layer_outputs)
from fxquant.layer_outputs.dump_writer import DumpWriter, HostInstance
from tests.layer_outputs.lo_helpers import build_sim, disable_all, inputs, tiny


@pytest.fixture(scope="module")
def float_dump(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("lo") / "nchw"
    LayerOutputUtil(tiny(), path).generate_layer_outputs_batch(inputs(2), progress=False)
    return str(path)


def test_nhwc_dump_compares_with_nchw(tmp_path: os.PathLike[str], float_dump: str) -> None:
    LayerOutputUtil(tiny(), tmp_path / "nhwc", layout="NHWC").generate_layer_outputs_batch(
        inputs(2), progress=False)
    report = compare_layer_outputs(float_dump, tmp_path / "nhwc")
    assert report["conv"].permutation == "NHWC->NCHW" and report["conv"].sqnr_db == math.inf
    assert report["fc"].permutation is None
    assert all(r.sqnr_db == math.inf for r in report.layers)
    back = compare_layer_outputs(tmp_path / "nhwc", float_dump)  # either side can be the reference
    assert back["conv"].permutation == "NCHW->NHWC" and back.first_divergence is None


def _target_dump(src: str, dst: os.PathLike[str], fmt: str) -> None:
    """What a target tool writes: NHWC files in AIMET's layout, no manifest."""
    dump = LayerOutputDump(src)
    os.makedirs(os.path.join(dst, "outputs", "layer_outputs_0"))
    for name in dump.names:
        value = dump.load(name)
        if value.ndim == 4:
            value = np.moveaxis(value, 1, -1)
        stem = name.replace("#", "_")
        path = os.path.join(dst, "outputs", "layer_outputs_0", f"{stem}.{fmt}")
        np.save(path, value) if fmt == "npy" else value.tofile(path)


@pytest.mark.parametrize("fmt", ["raw", "npy"])
def test_target_dump_without_manifest(tmp_path: os.PathLike[str], float_dump: str,
                                      fmt: str) -> None:
    _target_dump(float_dump, tmp_path / "target", fmt)
    report = compare_layer_outputs(float_dump, tmp_path / "target")
    assert report.instances == [0] and report.name_match == 1.0  # matched through file stems
    conv = report["conv"]
    assert conv.sqnr_db == math.inf and conv.name_b is None  # same name on both sides
    assert conv.permutation == ("NHWC->NCHW" if fmt == "raw" else "(0, 3, 1, 2)")
    assert report["module_split#0"].name_b == "module_split_0"
    told = compare_layer_outputs(float_dump, tmp_path / "target", layout_b="NHWC")
    assert told["conv"].sqnr_db == math.inf and not told["conv"].ambiguous


def test_metrics_and_shape_mismatch(tmp_path: os.PathLike[str]) -> None:
    a = np.linspace(-1, 1, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    noise = np.zeros_like(a)
    noise[0, 0, 0, :2] = [0.25, -0.5]
    for name, values in (("a", a), ("b", a + noise)):
        writer = DumpWriter(tmp_path / name)
        writer.submit(HostInstance([("x", a)], [("t", values), ("u", a[:, :1]),
                                                ("v", a if name == "a" else a[..., :2])]))
        writer.close()
    report = compare_layer_outputs(tmp_path / "a", tmp_path / "b", encodings={"t": 0.25},
                                   sqnr_threshold=30)
    t = report["t"]
    expected = 10 * math.log10(float((a.astype(np.float64) ** 2).sum()) / (0.25 ** 2 + 0.5 ** 2))
    assert t.sqnr_db == pytest.approx(expected)
    assert (t.max_abs_diff, t.max_diff_lsb, t.equal_fraction) == (0.5, 2.0, 22 / 24)
    assert report["u"].sqnr_db == math.inf
    assert report["v"].status == "shape_mismatch" and "24 elements" in report["v"].note
    assert report.first_divergence == "t"
    with pytest.raises(KeyError, match="'w' was not compared"):
        report["w"]
    with pytest.raises(ValueError, match=r"instances \[3\] are not in both dumps"):
        compare_layer_outputs(tmp_path / "a", tmp_path / "b", instances=[3])
    with pytest.raises(DumpFormatError, match="is not a directory"):
        compare_layer_outputs(tmp_path / "a", tmp_path / "nope")
    with pytest.raises(TypeError, match="encodings must be"):
        compare_layer_outputs(tmp_path / "a", tmp_path / "b", encodings=3.0)


def test_first_divergence_names_the_perturbed_layer(tmp_path: os.PathLike[str]) -> None:
    """Sim vs its QDQ model in ORT: bit-equal; with one encoding perturbed in the sim, that layer
    is the first divergence and the report says so in LSBs."""
    sim = build_sim(tiny(), (2, 3, 16, 16))
    xs = inputs(2)
    files = sim.export(tmp_path / "out", "tiny", xs[0])
    fxquant.onnx.LayerOutputUtil(files["qdq_onnx"], tmp_path / "ort",
                                 session_options=disable_all()).generate_layer_outputs_batch(xs)
    quantizer = sim.quantizer("conv2")
    enc = quantizer.encoding
    quantizer.set_encoding(dataclasses.replace(enc, scale=enc.scale * 0.25))
    LayerOutputUtil(sim, tmp_path / "sim", NamingScheme.ONNX,
                    dummy_input=xs[0]).generate_layer_outputs_batch(xs)
    report = compare_layer_outputs(tmp_path / "sim", tmp_path / "ort",
                                   encodings=files["encodings"])
    assert report.first_divergence == "conv2", report.format()
    assert report["relu"].sqnr_db == math.inf  # before it: identical
    assert report["conv2"].max_diff_lsb > 10
    data = json.loads(report.to_json(tmp_path / "report.json").read_text())
    assert data == json.loads(report.json_text())
    assert data["first_divergence"] == "conv2" and data["layers"][0]["sqnr_db"] == "inf"
    assert data["format"] == "fxquant.layer_outputs.DumpComparisonReport"
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        report.to_json(tmp_path / "report.json")
    png = report.plot(tmp_path / "report.png")
    assert png.stat().st_size > 1000 and len(report.figure().axes) == 2
    assert "first divergence (SQNR < 20 dB): conv2" in report.summary()

    assert main(["compare-outputs", str(tmp_path / "sim"), str(tmp_path / "ort"), "--encodings",
                 files["encodings"], "--json", str(tmp_path / "cli.json"), "--check"]) == 1
    assert json.loads((tmp_path / "cli.json").read_text())["first_divergence"] == "conv2"
    assert main(["compare-outputs", str(tmp_path / "sim"), str(tmp_path / "ort"), "--threshold",
                 "1", "--all", "--plot", str(tmp_path / "cli.svg")]) == 0
    assert (tmp_path / "cli.svg").exists()


def test_cli_reports_errors(tmp_path: os.PathLike[str], float_dump: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare-outputs", float_dump, str(tmp_path / "missing")]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["compare-outputs", float_dump, float_dump, "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "names in common 100.0%" in out and "no tensor below 20 dB" in out
    report = tmp_path / "report.json"
    assert main(["compare-outputs", float_dump, float_dump, "--json", str(report)]) == 0
    first = report.read_bytes()
    assert main(["compare-outputs", float_dump, float_dump, "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert f"{report} already exists" in err and "--overwrite" in err
    assert report.read_bytes() == first
    assert main(["compare-outputs", float_dump, float_dump, "--json", str(report),
                 "--overwrite"]) == 0


def _one(root: os.PathLike[str], instances: dict[int, dict[str, np.ndarray]]) -> None:
    writer = DumpWriter(root)
    x = np.zeros((1, 2), np.float32)
    for k in sorted(instances):
        while writer.next_index < k:  # leave a gap: instance k only
            writer.next_index += 1
        writer.submit(HostInstance([("x", x)], list(instances[k].items())))
    writer.close()


def test_findings_nonfinite_missing_and_partial(tmp_path: os.PathLike[str]) -> None:
    """Issue 11 item 4: NaN/Inf counted per side; tensors and instances on one side only; a
    tensor compared on some instances only; none of them is a silent pass."""
    t = np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 6)
    bad = t.copy()
    bad[0, 1], bad[0, 2] = np.nan, -np.inf
    _one(tmp_path / "a", {0: {"t": t, "u": t, "v": t}, 1: {"t": t, "u": t, "v": t},
                          2: {"t": t, "u": t, "v": t}})
    _one(tmp_path / "b", {0: {"t": bad, "u": t, "w": t}, 1: {"t": t, "w": t}})
    report = compare_layer_outputs(tmp_path / "a", tmp_path / "b")
    kinds = {(f.kind, f.name): f.detail for f in report.findings}
    assert kinds[("nonfinite", "t")] == "B has 1 NaN and 1 Inf"
    assert report["t"].status == "nonfinite" and report.first_divergence is None
    assert kinds[("not_compared", "u")] == ("compared on 1 of 2 instances (the others lack it "
                                            "on one side)")
    assert ("only_in_a", "v") in kinds and ("only_in_b", "w") in kinds
    assert "instances [2] of" in kinds[("instances_only_in_a", None)]
    failures = report.check_failures()
    assert len(failures) == len(report.findings) == 5
    assert report.check_failures(allow_missing=True) == [
        "NaN or Inf values in a dump: t: B has 1 NaN and 1 Inf"]
    assert "findings: 5" in report.summary()
    data = json.loads(report.json_text())
    assert data["findings"][0] == {"kind": "nonfinite", "name": "t",
                                   "detail": "B has 1 NaN and 1 Inf"}
    assert "B has 1 NaN and 1 Inf" in report.html_text()
    same = compare_layer_outputs(tmp_path / "a", tmp_path / "a")
    assert same.findings == [] and same.check_failures() == []
    assert "findings: none" in same.summary()
