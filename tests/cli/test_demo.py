"""`fxquant demo` (what `make demo` runs): the whole pipeline on digits, its figures and its page."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from fxquant.cli import main
from fxquant.cli.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, run_demo(str(out), epochs=10, dump_inputs=4, quiet=True)


@pytest.mark.slow
def test_summary_figures(demo):
    _, s = demo
    assert s["fp32_accuracy"] > 93.0, s
    assert abs(s["sim_accuracy"] - s["fp32_accuracy"]) <= 1.0, s
    assert abs(s["ort_accuracy"] - s["sim_accuracy"]) <= 0.5, s
    assert s["sim_ort_agreement"] >= 99.5, s
    assert s["logits_sqnr_db"] > 30.0, s
    assert len(s["worst_sqnr_layers"]) == 3
    # W8A8 costs nothing on the test digits here (sim == FP32): no layer is named as costly
    assert s["worst_analyzer_layers"] == [] and s["sim_accuracy"] == s["fp32_accuracy"], s
    assert s["validation"].endswith("0 error, 0 warning, 6 fixed-by-preparer"), s["validation"]


@pytest.mark.slow
def test_index_links_every_report_and_each_resolves(demo):
    out, _ = demo
    page = (out / "index.html").read_text()
    links = re.findall(r'href="([^"]+)"', page)
    for expected in ("analysis/index.html", "dump_diff.html", "numeric_suite.json",
                     "export/digits_qdq.onnx", "export/digits.encodings", "export/digits.onnx"):
        assert expected in links, expected
    for link in links:
        assert (out / link).is_file(), link
    assert "sim vs ONNX Runtime: same prediction" in page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs headless Chromium (Debian package 'chromium')")
def test_index_renders_in_chromium(demo, tmp_path):
    from matplotlib.image import imread

    out, _ = demo
    shot = tmp_path / "demo.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,1800", f"--screenshot={shot}", (out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    rgb = imread(str(shot))[..., :3]
    assert (rgb < 0.9).any(axis=-1).mean() > 0.02 and rgb.std() > 0.05
    assert "CONSOLE" not in proc.stderr


def test_demo_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0 and "fxquant demo --out demo" in capsys.readouterr().out


def test_demo_cli_passes_its_options(tmp_path, monkeypatch):
    calls = {}

    def fake(out, **kwargs):            # the pipeline itself is tested above
        calls.update(kwargs, out=out)
        return {"status": 0}

    monkeypatch.setattr("fxquant.cli.demo.run_demo", fake)
    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "3"]) == 0
    assert calls == {"out": str(tmp_path / "d"), "epochs": 3, "dump_inputs": 16}
