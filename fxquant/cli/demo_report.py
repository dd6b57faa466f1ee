"""The demo's ``index.html``: the summary on top, then every report and file, linked."""
from __future__ import annotations

import base64
import os
from typing import Any, Mapping

from fxquant.core import files as core_files
from fxquant.core import html

__all__ = ["write_index"]


def _rel(out: str, path: str) -> str:
    return os.path.relpath(path, out).replace(os.sep, "/")


def write_index(out: str, summary: Mapping[str, Any], exported: Mapping[str, str], ns: Any,
                diff: Any, validation: Any) -> str:
    """Writes ``out/index.html`` (atomically) and returns its path."""
    s = summary
    rows = [["FP32 accuracy", f"{s['fp32_accuracy']:.2f}%"],
            ["sim accuracy (W8A8, TF-enhanced, per-channel)", f"{s['sim_accuracy']:.2f}%"],
            ["ONNX Runtime accuracy (the exported QDQ model)", f"{s['ort_accuracy']:.2f}%"],
            ["sim vs ONNX Runtime: same prediction", f"{s['sim_ort_agreement']:.2f}%"],
            ["sim vs ONNX Runtime: logits SQNR", f"{s['logits_sqnr_db']:.1f} dB"],
            ["worst layers by SQNR", ", ".join(f"{n} ({v:.1f} dB)"
                                               for n, v in s["worst_sqnr_layers"])],
            ["worst layers by the analyzer", ", ".join(s["worst_analyzer_layers"])
             or "none: no single layer costs accuracy"],
            ["model validator", s["validation"]],
            ["time", f"{s['seconds']:.0f} s"]]
    with open(os.path.join(out, "numeric_suite.png"), "rb") as f:
        plot = base64.b64encode(f.read()).decode("ascii")
    reports = [
        ("analysis/index.html", "QuantAnalyzer: sensitivity, per-layer sweeps, what to do"),
        ("dump_diff.html", "layer dumps, sim vs ONNX Runtime, tensor by tensor"),
        ("numeric_suite.json", "numeric suite: per-layer SQNR (JSON)"),
        ("numeric_suite.png", "numeric suite: per-layer SQNR (plot)"),
        ("dump_diff.json", "layer dump diff (JSON)"),
        ("validation.json", "model validator findings (JSON)"),
    ]
    listed = [(rel, text) for rel, text in reports if os.path.exists(os.path.join(out, rel))]
    listed += [(_rel(out, path), f"export: {kind}") for kind, path in sorted(exported.items())]
    for side in ("sim", "ort"):
        manifest = os.path.join(out, "dumps", side, "layer_output_name_order.json")
        if os.path.exists(manifest):
            listed.append((_rel(out, manifest), f"layer dump ({side}): tensor order"))
    links = "".join(f"<li>{html.link(rel, rel)} — {html.escape(text)}</li>"
                    for rel, text in listed)
    body = (f"<p class=\"verdict\">{html.escape(s['verdict'])}"
            + (f"<br>Suggested: {html.escape(s['suggestion'])}" if s.get("suggestion") else "")
            + "</p>" + html.table(["", ""], rows)
            + "<h2>Per-layer SQNR, sim vs FP32</h2>"
            + f'<img alt="numeric suite" src="data:image/png;base64,{plot}">'
            + f"<h2>Reports and files</h2><ul>{links}</ul>"
            + "<p class=\"muted\">scikit-learn's digits (8×8 images), a CNN with BatchNorm "
              "trained by the demo; ONNX Runtime on the CPU with graph optimizations off (the QDQ "
              "graph as written).</p>")
    path = os.path.join(out, "index.html")
    core_files.write_text(path, html.page("fxquant demo", body), overwrite=True)
    return path
