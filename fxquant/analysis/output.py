"""The analyzer's files: their contents (AIMET's names and JSON shapes, ``SPEC.md`` §2) and the
writer that puts a set of them into ``results_dir`` all at once.

Files are built in memory (``{relative path: bytes}``), written into a hidden staging folder in
``results_dir``, then moved into place together with
:func:`fxquant.core.file_sets.replace_entries`: a failure leaves the previous results as they
were, and other files in ``results_dir`` are never touched.

Example:
    >>> files = sensitivity_files("per_layer_quant_enabled", {"conv1": 0.9})
    >>> write("results", files)
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import numpy as np

from fxquant.analysis.index_page import SUGGESTED_CONFIG, CulpritDetail, weight_extent
from fxquant.analysis.pages import histogram_page, mse_page, ranges_page, sensitivity_page
from fxquant.analysis.quantizer_groups import LayerQuantizers
from fxquant.core.file_sets import replace_entries
from fxquant.core.files import STAGE_PREFIX, check_destination, describe_os_error, make_temp_dir
from fxquant.core.report import json_ready
from fxquant.errors import OutputExistsError

__all__ = ["ENTRIES", "check_results_dir", "write", "json_bytes", "sensitivity_files",
           "min_max_ranges", "ranges_files", "histogram_files", "mse_files", "culprit_detail"]

#: Every top-level entry an analysis writes in ``results_dir`` (``index.html`` last: it is what
#: makes a results folder a whole one).
ENTRIES: tuple[str, ...] = (
    "per_layer_quant_enabled.json", "per_layer_quant_enabled.html",
    "per_layer_quant_disabled.json", "per_layer_quant_disabled.html", "min_max_ranges",
    "activations_pdf", "weights_pdf", "per_layer_mse_loss.json", "per_layer_mse_loss.html",
    SUGGESTED_CONFIG, "summary.json", "index.html")


def check_results_dir(results_dir: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Checks, creating nothing, that ``results_dir`` can take an analysis.

    Raises:
        FileWriteError: it is a file, or its nearest existing folder is not writable.
        OutputExistsError: an earlier analysis is there and ``overwrite`` is False.
    """
    folder = os.fspath(results_dir)
    check_destination(folder, overwrite=True, kind="directory", what="results_dir")
    if not overwrite and os.path.isdir(folder):
        present = [e for e in ENTRIES if os.path.lexists(os.path.join(folder, e))]
        if present:
            raise OutputExistsError(
                f"results_dir {folder} holds an earlier analysis ({', '.join(present[:4])}"
                f"{' ...' if len(present) > 4 else ''}); pass overwrite=True to replace it, or "
                "choose another results_dir")


def write(results_dir: str | os.PathLike[str], files: Mapping[str, bytes | str], *,
          replace_all: bool = False) -> list[str]:
    """Writes ``files`` (``{"min_max_ranges/weights.json": data, ...}``) into ``results_dir``
    at once; with ``replace_all`` every entry of :data:`ENTRIES` not in ``files`` is removed
    too (a new analysis replaces the whole previous one).

    Returns:
        The top-level entries written.

    Raises:
        FileWriteError: ``results_dir`` cannot be written (the message names the path and the
            fix); the folder is as it was.
    """
    folder = os.fspath(results_dir)
    check_destination(folder, overwrite=True, kind="directory", what="results_dir")
    try:
        os.makedirs(folder, exist_ok=True)
        stage = make_temp_dir(folder, STAGE_PREFIX)
    except OSError as exc:
        raise describe_os_error(folder, exc, "write the results to") from exc
    try:
        for rel, data in files.items():
            path = os.path.join(stage, *rel.split("/"))
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data.encode("utf-8") if isinstance(data, str) else data)
            except OSError as exc:
                raise describe_os_error(os.path.join(folder, rel), exc) from exc
        names = list(dict.fromkeys(rel.split("/")[0] for rel in files))
        names.sort(key=lambda n: n == "index.html")            # index.html moves in last
        previous = [e for e in reversed(ENTRIES) if replace_all or e in names]
        replace_entries(folder, stage, names, previous=previous)
        return names
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def json_bytes(data: Any) -> bytes:
    """``data`` as indented strict JSON (non-finite numbers as strings, see ``json_ready``)."""
    return (json.dumps(json_ready(data), indent=4, allow_nan=False) + "\n").encode("utf-8")


def sensitivity_files(title: str, scores: Mapping[str, float], *, fp32: float | None = None,
                      quantized: float | None = None) -> dict[str, bytes | str]:
    """``<title>.json`` (``{layer: score}``) and ``<title>.html``."""
    return {f"{title}.json": json_bytes(dict(scores)),
            f"{title}.html": sensitivity_page(title, scores, fp32=fp32, quantized=quantized)}


def _pair(lo: Any, hi: Any) -> list[float]:
    return [float(lo), float(hi)]


def min_max_ranges(groups: Mapping[str, LayerQuantizers]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(weights, activations)``: AIMET's ``min_max_ranges`` JSON contents. Activations:
    ``{"<layer>_output_0": [min, max]}``; weights per tensor ``{"<layer>_weight": [min, max]}``,
    per channel ``{"<layer>_weight": {"<layer>_weight_<ch>": [min, max]}}``."""
    weights: dict[str, Any] = {}
    activations: dict[str, Any] = {}
    for g in groups.values():
        for ref in g.activations:
            enc = ref.quantizer.encoding
            if enc is None:
                continue
            key = g.activation_keys[ref.name]
            lo, hi = enc.min.detach().cpu().reshape(-1), enc.max.detach().cpu().reshape(-1)
            activations[key] = (_pair(lo[0], hi[0]) if not enc.is_per_channel else
                                {f"{key}_{i}": _pair(a, b) for i, (a, b) in enumerate(zip(lo, hi))})
        for ref in g.params:
            enc = ref.quantizer.encoding
            if enc is None:
                continue
            name = f"{g.layer}_{ref.name.rsplit('.', 1)[1]}"
            lo, hi = enc.min.detach().cpu().reshape(-1), enc.max.detach().cpu().reshape(-1)
            weights[name] = (_pair(lo[0], hi[0]) if not enc.is_per_channel else
                             {f"{name}_{i}": _pair(a, b) for i, (a, b) in enumerate(zip(lo, hi))})
    return weights, activations


def ranges_files(weights: Mapping[str, Any], activations: Mapping[str, Any]
                 ) -> dict[str, bytes | str]:
    """``min_max_ranges/``: both JSON files, ``activations.html``, ``weights.html`` (per-tensor
    weights) and ``<layer>_<param>.html`` per per-channel weight, as AIMET names them."""
    files: dict[str, bytes | str] = {
        "min_max_ranges/weights.json": json_bytes(dict(weights)),
        "min_max_ranges/activations.json": json_bytes(dict(activations))}
    per_tensor_acts = {k: tuple(v) for k, v in activations.items() if not isinstance(v, Mapping)}
    if per_tensor_acts:
        files["min_max_ranges/activations.html"] = ranges_page("activations", per_tensor_acts)
    per_tensor = {k: tuple(v) for k, v in weights.items() if not isinstance(v, Mapping)}
    if per_tensor:
        files["min_max_ranges/weights.html"] = ranges_page("weights", per_tensor)
    for name, entry in {**weights, **activations}.items():
        if isinstance(entry, Mapping):
            files[f"min_max_ranges/{name}.html"] = ranges_page(
                name, {k: tuple(v) for k, v in entry.items()}, channels=True)
    return files


def _histogram(quantizer: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    analyzer = getattr(quantizer, "encoding_analyzer", None)
    enc = getattr(quantizer, "encoding", None)
    if analyzer is None or enc is None or not hasattr(analyzer, "histogram") or not getattr(
            analyzer, "has_stats", False):
        return None
    counts, edges = analyzer.histogram()
    counts, edges = counts.detach().cpu().numpy(), edges.detach().cpu().double().numpy()
    channels = counts.shape[0]
    lo = np.broadcast_to(enc.min.detach().cpu().double().numpy().reshape(-1), (channels,))
    hi = np.broadcast_to(enc.max.detach().cpu().double().numpy().reshape(-1), (channels,))
    return counts, edges, lo, hi


def _activation_page_name(g: LayerQuantizers, ref_name: str) -> str:
    io, index = g.activation_keys[ref_name][len(g.layer) + 1:].rsplit("_", 1)
    return f"activations_pdf/{g.layer}_{io}_q{index}_0.html"


def histogram_files(groups: Mapping[str, LayerQuantizers]) -> dict[str, bytes | str]:
    """``activations_pdf/<layer>_{input|output}_q<i>_0.html`` and
    ``weights_pdf/<layer>/<layer>_<param>.html`` (every channel on one page) for every quantizer
    that kept a histogram."""
    files: dict[str, bytes | str] = {}
    for g in groups.values():
        for ref in g.activations:
            hist = _histogram(ref.quantizer)
            if hist is not None:
                path = _activation_page_name(g, ref.name)
                files[path] = histogram_page(path.split("/")[-1][:-5], *hist)
        for ref in g.params:
            hist = _histogram(ref.quantizer)
            if hist is not None:
                title = f"{g.layer}_{ref.name.rsplit('.', 1)[1]}"
                files[f"weights_pdf/{g.layer}/{title}.html"] = histogram_page(title, *hist)
    return files


def mse_files(mse: Mapping[str, float], sqnr: Mapping[str, float] | None = None
              ) -> dict[str, bytes | str]:
    """``per_layer_mse_loss.json`` (``{layer: mse}``) and ``per_layer_mse_loss.html`` (with the
    layers' SQNR when given)."""
    return {"per_layer_mse_loss.json": json_bytes(dict(mse)),
            "per_layer_mse_loss.html": mse_page(mse, sqnr)}


def culprit_detail(g: LayerQuantizers, weights: Mapping[str, Any],
                   activations: Mapping[str, Any], files: Mapping[str, Any]) -> CulpritDetail:
    """What the index shows of one of the worst layers (its pages among ``files``)."""
    acts = {g.activation_keys[r.name]: tuple(activations[g.activation_keys[r.name]])
            for r in g.activations if not isinstance(activations.get(g.activation_keys[r.name],
                                                                     {}), Mapping)}
    pages: dict[str, str] = {}
    histogram = None
    for ref in reversed(g.activations):         # the output first
        path = _activation_page_name(g, ref.name)
        if path in files:
            pages.setdefault(f"{g.activation_keys[ref.name]} histogram", path)
            histogram = histogram or _histogram(ref.quantizer)
    for ref in g.params:
        title = f"{g.layer}_{ref.name.rsplit('.', 1)[1]}"
        if f"weights_pdf/{g.layer}/{title}.html" in files:
            pages[f"{title} histogram"] = f"weights_pdf/{g.layer}/{title}.html"
        if f"min_max_ranges/{title}.html" in files:
            pages[f"{title} ranges"] = f"min_max_ranges/{title}.html"
    pages["activation ranges"] = "min_max_ranges/activations.html"
    extent = weight_extent(weights.get(f"{g.layer}_weight"))
    return CulpritDetail(g.layer, g.type_name, acts, extent, histogram, pages)
