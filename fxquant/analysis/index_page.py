"""``results_dir/index.html``: one page that says what the analysis found and what to do.

Top to bottom: the verdict and the sensitivity table; what to do (the measured 16-bit changes of
the worst layers and the suggested config); both per-layer curves in one plot; the worst layers
with their ranges, histograms and MSE side by side; links to every detail page.

Example:
    >>> text = index_html(results, files, culprit_details)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from fxquant.analysis.pages import histogram_figure, mse_figure, sensitivity_figure
from fxquant.analysis.results import AnalysisResults
from fxquant.core import html
from fxquant.core.report import format_number

__all__ = ["CulpritDetail", "index_html", "SUGGESTED_CONFIG"]

#: The suggested quantsim config's file name.
SUGGESTED_CONFIG = "suggested_config.json"


@dataclasses.dataclass(frozen=True)
class CulpritDetail:
    """What the index shows of one of the worst layers.

    Attributes:
        layer: its name.
        type_name: its module class.
        activation_ranges: ``{AIMET key: (min, max)}`` of its activation quantizers.
        weight_range: (min, max) over its weight encoding (all channels), or None.
        histogram: (counts [C, bins], edges, encoding min [C], encoding max [C]) of its output
            (or first activation) quantizer, or None.
        pages: ``{label: relative path}`` of its detail pages.
    """

    layer: str
    type_name: str
    activation_ranges: Mapping[str, tuple[float, float]]
    weight_range: tuple[float, float] | None
    histogram: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
    pages: Mapping[str, str]


def _score(value: float | None) -> str:
    return format_number(value, ".4g")


def _sensitivity_table(r: AnalysisResults) -> str:
    s = r.settings
    pbw, abw = s.get("default_param_bw"), s.get("default_output_bw")
    rows = [["FP32 (every quantizer off)", _score(r.fp32), ""],
            [f"W{pbw}A32 (weights quantized)", _score(r.weight_quantized),
             _score(r.weight_quantized - r.fp32)],
            [f"W32A{abw} (activations quantized)", _score(r.activation_quantized),
             _score(r.activation_quantized - r.fp32)],
            [f"W{pbw}A{abw} (both)", _score(r.quantized), _score(r.quantized - r.fp32)]]
    return html.table(["configuration", "eval score", "vs FP32"], rows)


def _what_to_do(r: AnalysisResults, k: int) -> str:
    out = ["<h2>What to do</h2>"]
    if not r.suggestions:
        out.append("<p>No layer-level change was measured (no layer has quantizers).</p>")
        return "".join(out)
    lost = r.fp32 - r.quantized
    rows, classes = [], []
    for sug in r.suggestions:
        recovered = (sug.score - r.quantized) / lost if lost > 0 else math.nan
        rows.append([html.escape(", ".join(sug.layers)), sug.variant, _score(sug.score),
                     "" if math.isnan(recovered) else f"{100 * recovered:.0f}%", sug.changed])
        classes.append("good" if sug is r.best else "")
    out.append(f"<p>The {k} layer(s) whose quantization costs most, each and then together run "
               "at 16 bits (encodings recomputed from the calibration statistics), measured with "
               "your eval callback:</p>")
    out.append(html.table(["layers", "change", "eval score", "loss recovered",
                           "quantizers changed"], rows, raw=True, row_classes=classes))
    if r.best is None and not r.fp32 > r.quantized:
        out.append("<p class=\"verdict\">Quantization costs nothing measurable here (fully "
                   f"quantized {_score(r.quantized)}, FP32 {_score(r.fp32)}): no change "
                   "suggested.</p>")
        return "".join(out)
    if r.best is None:
        out.append("<p class=\"verdict\">None of these changes improves on the fully quantized "
                   f"score {_score(r.quantized)}. Look at the ranges and histograms below: a "
                   "calibration scheme that clips outliers (percentile, MSE), per-channel "
                   "weights, or a model change (see the model guidelines) may help.</p>")
        return "".join(out)
    s = r.settings
    out.append(
        f"<p class=\"verdict\"><b>Suggested:</b> {html.escape(r.best.describe())} gives "
        f"{_score(r.best.score)} (all quantized: {_score(r.quantized)}, FP32: {_score(r.fp32)}). "
        f"<a href=\"{SUGGESTED_CONFIG}\">{SUGGESTED_CONFIG}</a> applies it:</p>"
        f"<pre>sim = fxquant.QuantizationSimModel(model, dummy_input, "
        f"quant_scheme={html.escape(repr(s.get('quant_scheme')))},\n"
        f"    default_param_bw={s.get('default_param_bw')}, "
        f"default_output_bw={s.get('default_output_bw')}, "
        f"config_file=\"{SUGGESTED_CONFIG}\")</pre>"
        "<p class=\"muted\">The config is your quantsim config plus a <code>layers</code> section "
        "(fxquant's per-layer bit widths; AIMET's loader does not know this key).</p>")
    return "".join(out)


def _techniques(r: AnalysisResults) -> str:
    found = r.techniques()
    if not found:
        return ""
    rows = [[html.escape(t.name), f"<code>{html.escape(t.call)}</code>", html.escape(t.why)]
            for t in found]
    return ("<h2>Techniques to try</h2><p>From the verdict above, in order (each is an fxquant "
            "call with AIMET's name and arguments):</p>"
            + html.table(["technique", "call", "why"], rows, raw=True))


def _culprits(r: AnalysisResults, details: Sequence[CulpritDetail]) -> str:
    out = ["<h2>Worst layers</h2>"]
    for d in details:
        ranges = "".join(
            f"<li>{html.escape(name)}: [{format_number(lo, '.5g')}, {format_number(hi, '.5g')}]"
            "</li>" for name, (lo, hi) in d.activation_ranges.items())
        if d.weight_range is not None:
            ranges += (f"<li>weight: [{format_number(d.weight_range[0], '.5g')}, "
                       f"{format_number(d.weight_range[1], '.5g')}]</li>")
        mse = "" if r.mse is None or d.layer not in r.mse else (
            f"<li>MSE vs FP32: {format_number(r.mse[d.layer], '.4g')}"
            + ("" if not r.sqnr or d.layer not in r.sqnr else
               f" (SQNR {format_number(r.sqnr[d.layer], '.1f')} dB)") + "</li>")
        links = " · ".join(html.link(path, label) for label, path in d.pages.items())
        figure = ""
        if d.histogram is not None:
            counts, edges, lo, hi = d.histogram
            fig = histogram_figure(counts, edges, lo, hi, d.layer, max_panels=4)
            fig.set_size_inches(6.5, fig.get_size_inches()[1] * 0.8)
            figure = html.figure(fig, alt=f"{d.layer} histogram", dpi=80)
        out.append(
            f"<h3>{html.escape(d.layer)} <span class=\"muted\">({html.escape(d.type_name)})"
            "</span></h3><table><tr><td class=\"l\" style=\"vertical-align:top;min-width:320px\">"
            f"<ul><li>alone quantized: {_score(r.enabled.get(d.layer))}</li>"
            f"<li>alone in float: {_score(r.disabled.get(d.layer))} "
            f"(recovers {_score(r.disabled.get(d.layer, r.quantized) - r.quantized)})</li>"
            f"{ranges}{mse}</ul><p>{links}</p></td><td>{figure}</td></tr></table>")
    return "".join(out)


def index_html(r: AnalysisResults, files: Sequence[str], details: Sequence[CulpritDetail],
               k: int) -> str:
    """The index page (see the module docstring)."""
    s = r.settings
    subtitle = (f"{s.get('quant_scheme')}, W{s.get('default_param_bw')}"
                f"A{s.get('default_output_bw')}; {r.evaluations} evaluations; "
                f"{r.timings.get('total', 0):.1f} s ({r.timings.get('callbacks', 0):.1f} s in "
                "your callbacks)")
    body = [f"<p class=\"verdict\">{html.escape(r.verdict())}</p>", _sensitivity_table(r),
            _what_to_do(r, k), _techniques(r)]
    if r.enabled or r.disabled:
        body.append("<h2>Per-layer sensitivity</h2><p>Each layer alone quantized (others in "
                    "float), and each layer alone in float (others quantized).</p>")
        curves = {"only this layer quantized": r.enabled, "only this layer in float": r.disabled}
        body.append(html.figure(sensitivity_figure(curves, fp32=r.fp32, quantized=r.quantized),
                                alt="per-layer sensitivity"))
    body.append(_culprits(r, details))
    if r.mse:
        body.append("<h2>Per-layer MSE</h2>" + html.figure(mse_figure(r.mse), alt="mse"))
    listed = "".join(f"<li>{html.link(f, f)}</li>" for f in files if f.endswith(".html")
                     or f.endswith(".json"))
    body.append(f"<h2>Every file</h2><ul>{listed}</ul>")
    return html.page("QuantAnalyzer report", "".join(body), subtitle=subtitle)


def weight_extent(entry: Any) -> tuple[float, float] | None:
    """(min, max) over a ``weights.json`` entry (per tensor ``[lo, hi]`` or per channel)."""
    if entry is None:
        return None
    if isinstance(entry, Mapping):
        pairs = list(entry.values())
    else:
        pairs = [entry]
    return (min(p[0] for p in pairs), max(p[1] for p in pairs))
