"""The analyzer's pages in a real browser: headless Chromium renders index.html and a detail page,
the screenshots are not blank, nothing is logged to the console and no network request is made
(the pages are self-contained: inline images, no scripts)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fxquant import CallbackFunc, QuantAnalyzer
from tests.analysis.fragile import calibrate, evaluate, fragile_net
from tests.quantsim.digits import digits

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs headless Chromium (Debian package 'chromium'; .ci/run "
                             "installs it where apt is available)")


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render") / "results"
    qa = QuantAnalyzer(fragile_net(), torch.zeros(1, 1, 8, 8), CallbackFunc(calibrate, 2),
                       CallbackFunc(evaluate))
    qa.enable_per_layer_mse_loss([digits()[0][:64]], 1)
    qa.analyze(quant_scheme="tf_enhanced", results_dir=out)
    return out


def _render(page: Path, tmp: Path) -> tuple[np.ndarray, str, list[str]]:
    shot, netlog = tmp / f"{page.stem}.png", tmp / f"{page.stem}.netlog.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--no-first-run",
           f"--user-data-dir={tmp / ('profile-' + page.stem)}", "--enable-logging=stderr", "--v=0",
           "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}",
           f"--log-net-log={netlog}", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from matplotlib.image import imread

    urls: list[str] = []
    if netlog.exists():
        text = netlog.read_text(errors="replace")
        try:
            events = json.loads(text if text.rstrip().endswith("}") else text.rstrip(",\n") + "]}")
        except json.JSONDecodeError:
            events = {"events": []}
        for event in events.get("events", []):
            params = event.get("params") or {}
            # requests made for the page carry its (file://) isolation key; the browser's own
            # background requests (time, dictionaries, component updates) do not
            if isinstance(params.get("url"), str) and "file://" in str(
                    params.get("network_isolation_key", "")):
                urls.append(params["url"])
    return imread(str(shot)), proc.stderr, urls


@pytest.mark.parametrize("name", ["index.html", "weights_pdf/conv3/conv3_weight.html"])
def test_page_renders_without_errors_or_network(results_dir, tmp_path, name):
    page = results_dir / name
    html = page.read_text()
    assert "<script" not in html
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert ref.startswith("data:image/png;base64,") or (page.parent / ref).exists(), ref
    image, log, urls = _render(page, tmp_path)
    rgb = image[..., :3]
    assert (rgb < 0.9).any(axis=-1).mean() > 0.02, "screenshot is (almost) blank"
    assert rgb.std() > 0.05
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    remote = [u for u in urls if not u.startswith(("file:", "data:"))]
    assert remote == [], remote


def test_the_network_check_catches_a_remote_image(tmp_path):
    page = tmp_path / "remote.html"
    page.write_text('<html><body><img src="http://example.invalid/x.png">hi</body></html>')
    _, _, urls = _render(page, tmp_path)
    assert "http://example.invalid/x.png" in urls
