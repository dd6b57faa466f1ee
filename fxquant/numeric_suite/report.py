"""NumericSuiteReport: per-layer metrics of :func:`fxquant.compare`, as a table, JSON or a plot.

Three kinds of value per layer (each only where it applies):

* ``activation``: the layer's output in model B vs model A, both models run on the same data
  (includes the error propagated from earlier layers);
* ``shadowed``: model B's layer fed model A's values vs model A's output (the layer's own error);
* ``weight``: the layer's weight in model B vs model A.

The report is a :class:`fxquant.ComparisonReport` (ranking, table, JSON, plot are shared with the
layer-dump diff); the metrics and their edge cases are those of :mod:`fxquant.core.metrics`.

Example:
    >>> report = fxquant.compare(model, sim, batches)
    >>> print(report.table(k=3))
    >>> report.to_json("out/sqnr.json"); report.plot("out/sqnr.png")
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

from fxquant.core.report import Column, ComparisonReport, LayerComparison, MetricInfo
from fxquant.numeric_suite._matching import UnmatchedLayer
from fxquant.numeric_suite.metrics import METRICS

__all__ = ["NumericSuiteReport", "NumericSuiteLayerComparison", "KINDS"]

#: The kinds of per-layer values, in the order tables show them.
KINDS = ("activation", "shadowed", "weight")


@dataclasses.dataclass(frozen=True)
class NumericSuiteLayerComparison(LayerComparison):
    """The metrics of one layer.

    Attributes:
        name: model A's canonical layer name.
        name_b: model B's name for it (differs only across torch.ao fused modules).
        op_type: the layer module's class name in model A.
        activation: ``{metric: value}`` of the unshadowed output comparison (empty if none).
        shadowed: ``{metric: value}`` of the shadowed comparison (empty if none).
        weight: ``{metric: value}`` of the weight comparison (empty if none).
        notes: what the numbers alone do not say, e.g. ``"activation: 12 NaN/inf elements"`` or
            ``"weight: all-zero reference"`` (where SQNR is ``-inf``).

    Example:
        >>> report["conv1"].value("weight", "sqnr")
        43.1
    """

    KINDS: ClassVar[tuple[str, ...]] = KINDS

    name_b: str = ""
    op_type: str = ""
    activation: Mapping[str, float] = dataclasses.field(default_factory=dict)
    shadowed: Mapping[str, float] = dataclasses.field(default_factory=dict)
    weight: Mapping[str, float] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


class NumericSuiteReport(ComparisonReport):
    """Per-layer comparison of two models by the numeric suite (see the module docstring).

    Attributes:
        layers: one :class:`NumericSuiteLayerComparison` per compared layer, in model A's
            graph order.
        metrics: names of the metrics computed.
        name_a: model A's name.
        name_b: model B's name.
        num_batches: how many batches were compared.
        unmatched: layers not compared, with the reason.
        results: torch-shaped results, ``{"weight" | "activation" | "shadowed": NSResults}``.

    Example:
        >>> report.worst(1, kind="shadowed")[0].name
        'features.18.0'
    """

    FORMAT: ClassVar[str] = "fxquant.numeric_suite.ComparisonReport"
    KIND_LABELS: ClassVar[Mapping[str, str]] = {"activation": "act", "shadowed": "shadowed",
                                                "weight": "weight"}
    _LEGENDS: ClassVar[Mapping[str, str]] = {"activation": "activations",
                                             "shadowed": "activations, shadowed",
                                             "weight": "weights"}

    def __init__(self, layers: Sequence[NumericSuiteLayerComparison], metrics: Sequence[str],
                 name_a: str, name_b: str, num_batches: int,
                 unmatched: Sequence[UnmatchedLayer] = (),
                 results: Mapping[str, Any] | None = None) -> None:
        super().__init__(layers, [_info(m) for m in metrics])
        self.name_a = name_a
        self.name_b = name_b
        self.num_batches = num_batches
        self.unmatched = tuple(unmatched)
        self.results = dict(results or {})

    def __repr__(self) -> str:
        return (f"NumericSuiteReport({self.name_a!r} vs {self.name_b!r}, {len(self.layers)} "
                f"layers, metrics={list(self.metrics)}, {self.num_batches} batches, "
                f"{len(self.unmatched)} unmatched)")

    def _all_kinds(self) -> tuple[str, ...]:
        return KINDS

    def _not_computed_hint(self) -> str:
        return " (pass metrics=(...) to fxquant.compare)"

    def _label_columns(self) -> list[Column]:
        return [Column("layer", lambda r: r.name if r.name == r.name_b
                       else f"{r.name} ({r.name_b})", left=True),
                Column("type", lambda r: r.op_type, left=True)]

    def _title(self, info: MetricInfo, kind: str) -> str:
        return (f"{self.name_b!r} vs {self.name_a!r}: {len(self.layers)} layers, "
                f"{self.num_batches} batch(es); worst first by {self.KIND_LABELS[kind]} "
                f"{info.name}")

    def _footer(self) -> list[str]:
        lines = []
        noted = [r for r in self.layers if r.notes]
        if noted:
            lines.append(f"{len(noted)} layer(s) with notes: " + "; ".join(
                f"{r.name}: {', '.join(r.notes)}" for r in noted[:5])
                + (" …" if len(noted) > 5 else ""))
        if self.unmatched:
            lines.append(f"{len(self.unmatched)} layer(s) not compared (report.unmatched): "
                         + ", ".join(f"{u.model}:{u.layer}" for u in self.unmatched[:5])
                         + (" …" if len(self.unmatched) > 5 else ""))
        return lines

    def _content(self) -> dict[str, Any]:
        return {"model_a": self.name_a, "model_b": self.name_b, "metrics": list(self.metrics),
                "num_batches": self.num_batches,
                "layers": [r.to_dict() for r in self.layers],
                "unmatched": [dataclasses.asdict(u) for u in self.unmatched]}

    def _plot_title(self) -> str:
        return (f"{self.name_b} vs {self.name_a}: per-layer comparison "
                f"({self.num_batches} batch(es))")

    def _kind_legend(self, kind: str) -> str:
        return self._LEGENDS[kind]


def _info(metric: str) -> MetricInfo:
    known = METRICS.get(metric)
    if known is None:
        return MetricInfo(metric, True)
    return MetricInfo(known.name, known.higher_is_better, known.unit)
