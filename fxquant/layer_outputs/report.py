"""DumpComparisonReport: what :func:`~fxquant.layer_outputs.compare_layer_outputs` found.

One :class:`DumpLayerComparison` per tensor both dumps hold, in the reference dump's order, and
the report around them (a :class:`fxquant.ComparisonReport`: ranking, tables, JSON and plots are
shared with the numeric suite's report). Non-finite numbers are written to JSON as ``"inf"``,
``"-inf"`` and ``"nan"`` (:func:`fxquant.core.report.json_number`).

Example:
    >>> report = compare_layer_outputs("dumps/sim", "dumps/ort", encodings="out/r18.encodings")
    >>> report["layer1.0.conv1"].max_diff_lsb
    37.0
    >>> print(report.format(limit=5))
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from fxquant.core import files, html
from fxquant.core.report import (Column, ComparisonReport, LayerComparison, MetricInfo,
                                 format_number, json_number)

__all__ = ["DumpLayerComparison", "DumpComparisonReport", "DumpFinding", "DUMP_METRICS",
           "FINDING_KINDS", "MISSING_KINDS"]

#: The per-tensor metrics of a dump comparison, in table order.
DUMP_METRICS = (MetricInfo("sqnr_db", True, "dB"), MetricInfo("max_abs_diff", False),
                MetricInfo("mean_abs_diff", False), MetricInfo("equal_fraction", True),
                MetricInfo("max_diff_lsb", False, "LSB"))

#: Kinds of :class:`DumpFinding`, and what each means.
FINDING_KINDS = {
    "nonfinite": "NaN or Inf values in a dump",
    "only_in_a": "tensor only in dump A",
    "only_in_b": "tensor only in dump B",
    "not_compared": "tensor not on both sides in every common instance",
    "shape_mismatch": "tensor sizes differ",
    "instances_only_in_a": "instances only in dump A",
    "instances_only_in_b": "instances only in dump B",
}
#: The kinds about something one side lacks (``--allow-missing`` accepts them).
MISSING_KINDS = frozenset({"only_in_a", "only_in_b", "not_compared", "instances_only_in_a",
                           "instances_only_in_b"})


@dataclasses.dataclass(frozen=True)
class DumpFinding:
    """Something a comparison could not vouch for (each fails ``compare-outputs --check``).

    Attributes:
        kind: one of :data:`FINDING_KINDS` (``"nonfinite"``, ``"only_in_b"`` …).
        name: the tensor (as in ``dir_a``; for ``only_in_b`` as in ``dir_b``), or None for
            instance findings.
        detail: what was found (``"A has 24 NaN; B has 24 NaN"``).

    Example:
        >>> report.findings[0]
        DumpFinding(kind='nonfinite', name='conv', detail='B has 1 Inf')
    """

    kind: str
    name: str | None
    detail: str

    def __str__(self) -> str:
        subject = f"{self.name}: " if self.name is not None else ""
        return f"{FINDING_KINDS.get(self.kind, self.kind)}: {subject}{self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """``{"kind", "name", "detail"}``."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DumpLayerComparison(LayerComparison):
    """How one tensor compares.

    Attributes:
        name: the tensor's name (as in ``dir_a``).
        name_b: its name in ``dir_b`` when different (matched by file stem).
        shape_a: shape in ``dir_a`` (as stored), or None when unknown.
        shape_b: shape in ``dir_b`` (as stored), or None when unknown.
        permutation: how B was aligned to A: None (as stored), ``"NHWC->NCHW"`` style when layouts
            are known, or the axis order applied to B (``"(0, 3, 1, 2)"``); ``"reshape"`` when a
            flat B was reshaped to A's shape.
        ambiguous: several alignments fitted the shapes; the best-agreeing one was used.
        instances: instances compared.
        elements: elements compared (all instances).
        sqnr_db: SQNR of B against A (dB; :mod:`fxquant.core.metrics`): ``inf`` when equal,
            ``-inf`` when A is all zero and B is not.
        max_abs_diff: max |a − b|.
        mean_abs_diff: mean |a − b|.
        equal_fraction: share of elements bit-equal.
        scale: the quantization step used for LSBs (per-tensor), or None.
        max_diff_lsb: max |a − b| in quantization steps, or None without encodings.
        status: "ok", "below_threshold", "shape_mismatch" (sizes differ: not compared),
            "missing" (no instance has it on both sides) or "nonfinite" (NaN/inf in a value).
        note: a human-readable detail for non-ok statuses and an all-zero reference.

    Example:
        >>> report["fc"].to_dict()["sqnr_db"]
        36.1
    """

    KINDS: ClassVar[tuple[str, ...]] = ("output",)

    name_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    permutation: str | None = None
    ambiguous: bool = False
    instances: int = 0
    elements: int = 0
    sqnr_db: float = math.nan
    max_abs_diff: float = math.nan
    mean_abs_diff: float = math.nan
    equal_fraction: float = math.nan
    scale: float | None = None
    max_diff_lsb: float | None = None
    status: str = "ok"
    note: str = ""

    def values(self, kind: str) -> Mapping[str, float | None]:
        """``{metric: value}`` of the one kind, ``"output"``."""
        return {m.name: getattr(self, m.name) for m in DUMP_METRICS}


class DumpComparisonReport(ComparisonReport):
    """The result of :func:`~fxquant.layer_outputs.compare_layer_outputs`.

    Attributes:
        dir_a: the reference dump.
        dir_b: the dump compared with it.
        layers: one :class:`DumpLayerComparison` per common tensor, in ``dir_a``'s order.
        only_in_a: tensors only ``dir_a`` has.
        only_in_b: tensors only ``dir_b`` has.
        instances: the instances compared.
        sqnr_threshold: the threshold (dB) of ``first_divergence``.
        first_divergence: the first tensor (in ``dir_a``'s order) below the threshold, or None.
        findings: :class:`DumpFinding` s: NaN/Inf values, tensors or instances on one side only,
            tensors not compared, size mismatches.

    Example:
        >>> report.name_match
        1.0
        >>> print(report.format(limit=5))
    """

    FORMAT: ClassVar[str] = "fxquant.layer_outputs.DumpComparisonReport"
    KIND_LABELS: ClassVar[Mapping[str, str]] = {"output": ""}

    def __init__(self, dir_a: str, dir_b: str, layers: Sequence[DumpLayerComparison],
                 only_in_a: Sequence[str], only_in_b: Sequence[str], instances: Sequence[int],
                 sqnr_threshold: float, first_divergence: str | None,
                 findings: Sequence[DumpFinding] = ()) -> None:
        super().__init__(layers, DUMP_METRICS)
        self.findings = list(findings)
        self.dir_a = dir_a
        self.dir_b = dir_b
        self.only_in_a = list(only_in_a)
        self.only_in_b = list(only_in_b)
        self.instances = list(instances)
        self.sqnr_threshold = sqnr_threshold
        self.first_divergence = first_divergence

    def __repr__(self) -> str:
        return (f"DumpComparisonReport({self.dir_b!r} vs {self.dir_a!r}, {len(self.layers)} "
                f"tensors, first_divergence={self.first_divergence!r})")

    def _all_kinds(self) -> tuple[str, ...]:
        return DumpLayerComparison.KINDS

    def _missing(self, name: str) -> str:
        return (f"{name!r} was not compared (only in A: {name in self.only_in_a}, only in "
                f"B: {name in self.only_in_b})")

    @property
    def name_match(self) -> float:
        """Share of names the dumps have in common: |A ∩ B| / |A ∪ B| (1.0 = same names).

        Example:
            >>> report.name_match
            1.0
        """
        common = len(self.layers)
        total = common + len(self.only_in_a) + len(self.only_in_b)
        return common / total if total else 1.0

    @property
    def min_sqnr(self) -> tuple[str, float] | None:
        """The worst compared tensor and its SQNR, or None when nothing was compared.

        Example:
            >>> report.min_sqnr
            ('layer4.1.conv2', 24.0)
        """
        compared = [r for r in self.ranked("sqnr_db") if not math.isnan(r.sqnr_db)]
        return (compared[0].name, compared[0].sqnr_db) if compared else None

    def _title(self, info: MetricInfo, kind: str) -> str:
        return (f"{self.dir_b} vs {self.dir_a}: {len(self.layers)} tensors; worst first by "
                f"{info.name}")

    def _content(self) -> dict[str, Any]:
        worst = self.min_sqnr
        return {"dir_a": self.dir_a, "dir_b": self.dir_b, "instances": list(self.instances),
                "sqnr_threshold": self.sqnr_threshold, "first_divergence": self.first_divergence,
                "name_match": self.name_match,
                "min_sqnr": None if worst is None else {"name": worst[0], "sqnr_db": worst[1]},
                "only_in_a": list(self.only_in_a), "only_in_b": list(self.only_in_b),
                "findings": [f.to_dict() for f in self.findings],
                "check_failures": self.check_failures(),
                "layers": [layer.to_dict() for layer in self.layers]}

    def check_failures(self, *, allow_missing: bool = False) -> list[str]:
        """Why ``compare-outputs --check`` fails: the first divergence and every finding (those
        about a missing side left out with ``allow_missing``); empty when the check passes.

        Example:
            >>> report.check_failures()
            ['first divergence (SQNR < 20 dB): conv2 (3.1 dB)', 'NaN or Inf values in a dump: ...']
        """
        out = []
        if self.first_divergence is not None:
            r = self[self.first_divergence]
            out.append(f"first divergence (SQNR < {self.sqnr_threshold:g} dB): "
                       f"{self.first_divergence} ({format_number(r.sqnr_db, '.1f')} dB)")
        out.extend(str(f) for f in self.findings
                   if not (allow_missing and f.kind in MISSING_KINDS))
        if not any(r.instances for r in self.layers):
            out.append("no tensor was compared on both sides")
        return out

    def format(self, limit: int | None = None) -> str:
        """A text table: every tensor in ``dir_a``'s order, or the ``limit`` worst by SQNR.

        Example:
            >>> print(report.format(limit=3))
        """
        rows = list(self.layers) if limit is None else self.ranked("sqnr_db")[:limit]

        def extra(r: DumpLayerComparison) -> str:
            text = r.permutation or ""
            if r.status not in ("ok", "below_threshold"):
                text = f"{r.status}: {r.note}"
            return text + (" <" if r.name == self.first_divergence else "")

        columns = [
            Column("tensor", lambda r: r.name, left=True),
            Column("SQNR dB", lambda r: format_number(r.sqnr_db, ".1f")),
            Column("max|diff|", lambda r: format_number(r.max_abs_diff, ".4g")),
            Column("max LSB", lambda r: format_number(r.max_diff_lsb, ".0f", missing="")),
            Column("equal", lambda r: "" if math.isnan(r.equal_fraction)
                   else f"{100 * r.equal_fraction:.2f}%"),
            Column("layout", extra, left=True)]
        return "\n".join(self._render(rows, columns, numbered=False))

    def summary(self) -> str:
        """A few lines: names matched, worst tensor, first divergence.

        Example:
            >>> print(report.summary())
            compared 50 tensors over 4 instance(s); names in common 100.0% ...
        """
        worst = self.min_sqnr
        lines = [f"compared {len(self.layers)} tensors over {len(self.instances)} instance(s); "
                 f"names in common {100 * self.name_match:.1f}% (only in A: {len(self.only_in_a)}, "
                 f"only in B: {len(self.only_in_b)})"]
        if worst is not None:
            lines.append(f"lowest SQNR: {worst[0]} {format_number(worst[1], '.1f')} dB")
        if self.first_divergence is None:
            lines.append(f"no tensor below {self.sqnr_threshold:g} dB")
        else:
            r = self[self.first_divergence]
            lsb = "" if r.max_diff_lsb is None else f", max {r.max_diff_lsb:.0f} LSB"
            lines.append(f"first divergence (SQNR < {self.sqnr_threshold:g} dB): "
                         f"{self.first_divergence} ({format_number(r.sqnr_db, '.1f')} dB{lsb})")
        if self.findings:
            lines.append(f"findings: {len(self.findings)}")
            shown = self.findings[:20]
            lines.extend(f"  {f}" for f in shown)
            if len(self.findings) > len(shown):
                lines.append(f"  ... and {len(self.findings) - len(shown)} more (see the JSON "
                             "report)")
        else:
            lines.append("findings: none (no NaN/Inf, nothing missing on either side)")
        return "\n".join(lines)

    def html_text(self) -> str:
        """The report as one self-contained HTML page: summary, findings, every tensor's row.

        Example:
            >>> "<table" in report.html_text()
            True
        """
        def cell(value: Any, spec: str) -> str:
            return format_number(value, spec, missing="")

        failures = self.check_failures()
        rows = [[r.name, cell(r.sqnr_db, ".1f"), cell(r.max_abs_diff, ".4g"),
                 cell(r.max_diff_lsb, ".0f"), r.status, r.note or (r.permutation or "")]
                for r in self.layers]
        classes = ["bad" if r.status != "ok" else "" for r in self.layers]
        findings = "".join(f"<li><b>{html.escape(f.kind)}</b> {html.escape(f.name or '')}: "
                           f"{html.escape(f.detail)}</li>" for f in self.findings)
        findings = findings or "<li>none</li>"
        shown = "; ".join(html.escape(x) for x in failures[:5])
        verdict = f'<p class="bad">check fails: {shown}</p>' if failures else "<p>check passes</p>"
        body = (f"<pre>{html.escape(self.summary())}</pre>{verdict}"
                f"<h2>Findings ({len(self.findings)})</h2><ul>{findings}</ul><h2>Tensors</h2>"
                + html.table(["tensor", "SQNR dB", "max|diff|", "max LSB", "status", "note"], rows,
                             row_classes=classes))
        return html.page(f"{self.dir_b} vs {self.dir_a}", body)

    def to_html(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> pathlib.Path:
        """Writes :meth:`html_text` to ``path`` (atomically).

        Raises:
            OutputExistsError: ``path`` exists and ``overwrite`` is False.
            FileWriteError: ``path`` cannot be written.

        Example:
            >>> report.to_html("report.html")
            PosixPath('report.html')
        """
        return files.write_text(path, self.html_text(), overwrite=overwrite)

    def __str__(self) -> str:
        return self.summary()

    def figure(self, *, title: str | None = None) -> Any:
        """SQNR (and max LSB difference when known) per tensor, in topological order; bit-equal
        tensors are drawn above the highest finite SQNR.

        Args:
            title: figure title (default: the two directories).

        Returns:
            The ``matplotlib.figure.Figure`` (no GUI backend is needed).

        Example:
            >>> len(report.figure().axes)
            2
        """
        layers = [r for r in self.layers if not math.isnan(r.sqnr_db)]
        with_lsb = any(r.max_diff_lsb is not None for r in layers)
        fig = self._new_figure(max(8.0, 0.12 * len(layers) + 4), 7 if with_lsb else 4.5)
        axes = fig.subplots(2 if with_lsb else 1, 1, sharex=True, squeeze=False)[:, 0]
        x = np.arange(len(layers))
        finite = [r.sqnr_db for r in layers if math.isfinite(r.sqnr_db)]
        cap = (max(finite) if finite else self.sqnr_threshold) + 10
        floor = (min(finite) if finite else self.sqnr_threshold) - 10
        sqnr = np.array([min(max(r.sqnr_db, floor), cap) for r in layers], dtype=float)
        ax = axes[0]
        ax.plot(x, sqnr, marker=".", linewidth=1)
        exact = [i for i, r in enumerate(layers) if r.sqnr_db == math.inf]
        if exact:
            ax.scatter(exact, sqnr[exact], marker="^", color="tab:green", label="bit-equal",
                       zorder=3)
        zero_ref = [i for i, r in enumerate(layers) if r.sqnr_db == -math.inf]
        if zero_ref:
            ax.scatter(zero_ref, sqnr[zero_ref], marker="v", color="tab:red",
                       label=f"all-zero reference ({json_number(-math.inf)} dB)", zorder=3)
        ax.axhline(self.sqnr_threshold, color="tab:red", linestyle="--", linewidth=1,
                   label=f"threshold {self.sqnr_threshold:g} dB")
        names = [r.name for r in layers]
        if self.first_divergence in names:
            ax.axvline(names.index(self.first_divergence), color="tab:orange", linewidth=1,
                       label=f"first divergence: {self.first_divergence}")
        ax.set_ylabel("SQNR (dB)")
        ax.legend(loc="best", fontsize="small")
        ax.grid(True, alpha=0.3)
        if with_lsb:
            lsb = np.array([np.nan if r.max_diff_lsb is None else r.max_diff_lsb for r in layers])
            axes[1].bar(x, lsb, color="tab:purple")
            axes[1].set_ylabel("max |diff| (LSB)")
            axes[1].grid(True, alpha=0.3)
        self._layer_ticks(axes[-1], names)
        fig.suptitle(title or f"{self.dir_b} vs {self.dir_a}", fontsize="medium")
        fig.tight_layout()
        return fig
