"""The analyzer's detail pages (AIMET's file names, matplotlib figures inlined): per-layer
sensitivity curves, encoding min/max ranges, statistics histograms (one page per quantizer, every
channel on it) and per-layer MSE.

Each function returns the page's HTML text; :mod:`fxquant.analysis.quant_analyzer` writes them.

Example:
    >>> html_text = sensitivity_page("per_layer_quant_enabled", {"conv1": 0.61, "fc": 0.97},
    ...                              fp32=0.98, quantized=0.55)
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from fxquant.core import html
from fxquant.core.report import format_number

__all__ = ["sensitivity_page", "sensitivity_figure", "ranges_page", "histogram_page",
           "mse_page", "mse_figure", "ranges_figure", "histogram_figure"]

_EXPLAIN = {
    "per_layer_quant_enabled": (
        "Only this layer's quantizers on, every other layer in float: the score each layer "
        "alone keeps. The lowest points are the layers that hurt most by themselves."),
    "per_layer_quant_disabled": (
        "Every quantizer on except this layer's: the score when this one layer stays in float. "
        "The highest points are the layers whose quantization costs most."),
}


def _ticks(ax: Any, names: Sequence[str]) -> None:
    step = max(1, len(names) // 50)
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([names[i] for i in ticks], rotation=90, fontsize=6)


def sensitivity_figure(curves: Mapping[str, Mapping[str, float]], *, fp32: float | None = None,
                       quantized: float | None = None, width: float = 11.0) -> Any:
    """One axes with a line per curve (``{label: {layer: score}}``) over the layers in order,
    FP32 and fully quantized scores as horizontal references."""
    fig = html.new_figure(width, 4.2)
    ax = fig.add_subplot()
    names: list[str] = []
    for label, scores in curves.items():
        names = names or list(scores)
        xs = [names.index(n) for n in scores if n in names]
        ax.plot(xs, [scores[names[x]] for x in xs], "o-", markersize=3, linewidth=1,
                label=label)
    if fp32 is not None:
        ax.axhline(fp32, color="#0a7d32", linestyle="--", linewidth=1, label=f"FP32 {fp32:.4g}")
    if quantized is not None:
        ax.axhline(quantized, color="#b00020", linestyle=":", linewidth=1,
                   label=f"all quantized {quantized:.4g}")
    ax.set_ylabel("eval score")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _ticks(ax, names)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.97, bottom=0.32)
    return fig


def sensitivity_page(title: str, scores: Mapping[str, float], *, fp32: float | None = None,
                     quantized: float | None = None) -> str:
    """``per_layer_quant_enabled.html`` / ``per_layer_quant_disabled.html``."""
    fig = sensitivity_figure({title: scores}, fp32=fp32, quantized=quantized)
    rows = [[i, name, format_number(v, ".4g")] for i, (name, v) in enumerate(scores.items())]
    body = (f"<p>{html.escape(_EXPLAIN.get(title, ''))}</p>" + html.figure(fig, alt=title)
            + "<h2>Scores</h2>" + html.table(["#", "layer", "score"], rows))
    return html.page(title, body)


def ranges_figure(ranges: Mapping[str, tuple[float, float]], title: str, *,
                  channels: bool = False) -> Any:
    """Vertical bars from min to max per entry, in order; ``channels``: the entries are the
    channels of one tensor (numbered axis, no name per tick)."""
    names = list(ranges)
    width = 9.0 if channels else max(8.0, min(0.16 * len(names), 40.0))
    fig = html.new_figure(width, 3.6 if channels else 4.2)
    ax = fig.add_subplot()
    lo = [ranges[n][0] for n in names]
    hi = [ranges[n][1] for n in names]
    ax.vlines(range(len(names)), lo, hi, linewidth=4 if len(names) < 80 else 1.5,
              color="#0a58ca")
    ax.axhline(0, color="#999", linewidth=0.6)
    ax.set_ylabel("encoding range")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    if channels:
        ax.set_xlabel("channel")
        fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.15)
    else:
        _ticks(ax, names)
        fig.subplots_adjust(left=0.07, right=0.99, top=0.92, bottom=0.35)
    return fig


def ranges_page(title: str, ranges: Mapping[str, tuple[float, float]], *,
                channels: bool = False) -> str:
    """``min_max_ranges/activations.html``, ``weights.html`` or a per-channel page
    (``channels``)."""
    rows = [[name, format_number(lo, ".6g"), format_number(hi, ".6g"),
             format_number(hi - lo, ".6g")] for name, (lo, hi) in ranges.items()]
    body = (html.figure(ranges_figure(ranges, title, channels=channels), alt=title)
            + "<h2>Ranges</h2>"
            + html.table(["tensor", "min", "max", "width"], rows))
    return html.page(title, body)


def _pdf(counts: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    total = counts.sum()
    pdf = counts / (total * np.where(width > 0, width, 1.0)) if total > 0 else counts
    return centres, pdf


def histogram_figure(counts: np.ndarray, edges: np.ndarray, enc_min: np.ndarray,
                     enc_max: np.ndarray, title: str, *, max_panels: int = 4) -> Any:
    """The statistics' PDF with the encoding's min and max. One channel: one panel. Several: a
    heat map of every channel's PDF (log scale) with each channel's range, and panels of the
    channels whose range clips the most of their data."""
    channels = counts.shape[0]
    if channels == 1:
        fig = html.new_figure(9.0, 3.6)
        ax = fig.add_subplot()
        _pdf_axes(ax, counts[0], edges[0], float(enc_min[0]), float(enc_max[0]))
        ax.set_title(title)
        fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.15)
        return fig
    clipped = np.array([_clipped_fraction(counts[c], edges[c], enc_min[c], enc_max[c])
                        for c in range(channels)])
    shown = [int(c) for c in np.argsort(-clipped, kind="stable")[:max_panels]]
    rows = 1 + math.ceil(len(shown) / 4)
    fig = html.new_figure(12.0, 2.9 * rows + 0.6)
    grid = fig.add_gridspec(rows, 4)
    ax = fig.add_subplot(grid[0, :])
    lo, hi = float(edges.min()), float(edges.max())
    common = np.linspace(lo, hi, 257)
    image = np.zeros((channels, 256))
    for c in range(channels):
        centres, pdf = _pdf(counts[c], edges[c])
        image[c] = np.interp((common[:-1] + common[1:]) / 2, centres, pdf, left=0, right=0)
    ax.imshow(np.log10(image + 1e-12 + image.max() * 1e-6), aspect="auto", origin="lower",
              extent=(lo, hi, -0.5, channels - 0.5), cmap="viridis", interpolation="nearest")
    rows = np.arange(channels)
    mark = max(2.0, min(8.0, 600.0 / channels))
    ax.scatter(enc_min, rows, marker="|", s=mark ** 2, color="#ff5555", label="encoding min")
    ax.scatter(enc_max, rows, marker="|", s=mark ** 2, color="#ffffff", label="encoding max")
    ax.set_xlim(min(lo, float(np.min(enc_min))), max(hi, float(np.max(enc_max))))
    ax.set_ylim(-0.5, channels - 0.5)
    ax.set_facecolor("#440154")
    ax.set_ylabel("channel")
    ax.set_title(f"{title}: PDF of every channel (log colour scale) and its encoding range")
    ax.legend(loc="upper right", fontsize=7)
    for i, c in enumerate(shown):
        sub = fig.add_subplot(grid[1 + i // 4, i % 4])
        _pdf_axes(sub, counts[c], edges[c], float(enc_min[c]), float(enc_max[c]), small=True)
        sub.set_title(f"channel {c}: {100 * clipped[c]:.2g}% clipped", fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.95, bottom=0.06, hspace=0.45, wspace=0.25)
    return fig


def _clipped_fraction(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float) -> float:
    total = counts.sum()
    if total <= 0:
        return 0.0
    centres = (edges[:-1] + edges[1:]) / 2
    return float(counts[(centres < lo) | (centres > hi)].sum() / total)


def _pdf_axes(ax: Any, counts: np.ndarray, edges: np.ndarray, lo: float, hi: float,
              small: bool = False) -> None:
    centres, pdf = _pdf(counts, edges)
    ax.fill_between(centres, pdf, step="mid", alpha=0.4, color="#0a58ca")
    ax.plot(centres, pdf, color="#0a58ca", linewidth=0.8, label="PDF")
    ax.axvline(lo, color="#0a7d32", linestyle="--", linewidth=1, label=f"min {lo:.4g}")
    ax.axvline(hi, color="#b00020", linestyle="--", linewidth=1, label=f"max {hi:.4g}")
    ax.tick_params(labelsize=6 if small else 8)
    if not small:
        ax.set_xlabel("value")
        ax.set_ylabel("density")
        ax.legend(loc="best", fontsize=8)


def histogram_page(title: str, counts: np.ndarray, edges: np.ndarray, enc_min: np.ndarray,
                   enc_max: np.ndarray) -> str:
    """An ``activations_pdf`` or ``weights_pdf`` page: every channel of one quantizer."""
    channels = counts.shape[0]
    rows = []
    for c in range(channels):
        seen_lo, seen_hi = _observed(counts[c], edges[c])
        clipped = _clipped_fraction(counts[c], edges[c], enc_min[c], enc_max[c])
        rows.append([c, format_number(seen_lo, ".5g"), format_number(seen_hi, ".5g"),
                     format_number(float(enc_min[c]), ".5g"),
                     format_number(float(enc_max[c]), ".5g"),
                     f"{100 * clipped:.3g}%"])
    body = (html.figure(histogram_figure(counts, edges, enc_min, enc_max, title), alt=title)
            + "<h2>Channels</h2>"
            + html.table(["channel", "observed min", "observed max", "encoding min",
                          "encoding max", "clipped"], rows))
    return html.page(title, body, subtitle="statistics collected during calibration")


def _observed(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    nz = np.nonzero(counts > 0)[0]
    if nz.size == 0:
        return math.nan, math.nan
    return float(edges[nz[0]]), float(edges[nz[-1] + 1])


def mse_figure(mse: Mapping[str, float], width: float = 11.0) -> Any:
    """Per-layer MSE (log scale where positive) in graph order."""
    names = list(mse)
    fig = html.new_figure(width, 3.8)
    ax = fig.add_subplot()
    values = [mse[n] for n in names]
    ax.plot(range(len(names)), values, "o-", markersize=3, linewidth=1, color="#7a3db8")
    if any(v > 0 for v in values):
        ax.set_yscale("symlog", linthresh=min(v for v in values if v > 0))
    ax.set_ylabel("MSE (FP32 vs quantized output)")
    ax.grid(True, alpha=0.3)
    _ticks(ax, names)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.97, bottom=0.32)
    return fig


def mse_page(mse: Mapping[str, float], sqnr: Mapping[str, float] | None = None) -> str:
    """``per_layer_mse_loss.html`` (an SQNR column when ``sqnr`` is given)."""
    sqnr = sqnr or {}
    rows = [[i, n, format_number(v, ".4g"), format_number(sqnr.get(n), ".1f")]
            for i, (n, v) in enumerate(mse.items())]
    body = ("<p>Mean squared error between each layer's FP32 output and its quantized output "
            "(both models fed the same data; the error of a layer includes what it inherits "
            "from the layers before it), and the same as SQNR.</p>"
            + html.figure(mse_figure(mse), alt="mse") + "<h2>Layers</h2>"
            + html.table(["#", "layer", "MSE", "SQNR dB"], rows))
    return html.page("per_layer_mse_loss", body)
