"""ComparisonReport: per-layer metrics of :func:`fxquant.compare`, as a table, JSON or a plot.

Three kinds of value per layer (each only where it applies):

* ``activation``: the layer's output in model B vs model A, both models run on the same data
  (includes the error propagated from earlier layers);
* ``shadowed``: model B's layer fed model A's values vs model A's output (the layer's own error);
* ``weight``: the layer's weight in model B vs model A.

Example:
    >>> report = fxquant.compare(model, sim, batches)
    >>> print(report.table(k=3))
    >>> report.to_json("out/sqnr.json"); report.plot("out/sqnr.png")
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from typing import Any, Mapping, Sequence

from fxquant.numeric_suite._matching import UnmatchedLayer
from fxquant.numeric_suite.metrics import METRICS, Metric, get_metric

__all__ = ["ComparisonReport", "LayerComparison", "KINDS"]

#: The kinds of per-layer values, in the order tables show them.
KINDS = ("activation", "shadowed", "weight")
_KIND_LABELS = {"activation": "act", "shadowed": "shadowed", "weight": "weight"}


@dataclasses.dataclass(frozen=True)
class LayerComparison:
    """The metrics of one layer.

    Attributes:
        name: model A's canonical layer name.
        name_b: model B's name for it (differs only across torch.ao fused modules).
        op_type: the layer module's class name in model A.
        activation: ``{metric: value}`` of the unshadowed output comparison (empty if none).
        shadowed: ``{metric: value}`` of the shadowed comparison (empty if none).
        weight: ``{metric: value}`` of the weight comparison (empty if none).
    """

    name: str
    name_b: str
    op_type: str
    activation: Mapping[str, float] = dataclasses.field(default_factory=dict)
    shadowed: Mapping[str, float] = dataclasses.field(default_factory=dict)
    weight: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def value(self, kind: str, metric: str) -> float | None:
        """The value of ``metric`` for ``kind`` ("activation", "shadowed", "weight"), or None."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        return getattr(self, kind).get(metric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite numbers as the strings "inf", "-inf", "nan")."""
        return {"name": self.name, "name_b": self.name_b, "op_type": self.op_type,
                **{kind: {m: _json_number(v) for m, v in getattr(self, kind).items()}
                   for kind in KINDS}}


def _json_number(value: float) -> float | str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


class ComparisonReport:
    """Per-layer comparison of two models (see the module docstring).

    Attributes:
        layers: one :class:`LayerComparison` per compared layer, in model A's graph order.
        metrics: names of the metrics computed.
        name_a: model A's name.
        name_b: model B's name.
        num_batches: how many batches were compared.
        unmatched: layers not compared, with the reason.
        results: torch-shaped results, ``{"weight" | "activation" | "shadowed": NSResults}``.
    """

    def __init__(self, layers: Sequence[LayerComparison], metrics: Sequence[str], name_a: str,
                 name_b: str, num_batches: int, unmatched: Sequence[UnmatchedLayer] = (),
                 results: Mapping[str, Any] | None = None) -> None:
        self.layers = tuple(layers)
        self.metrics = tuple(metrics)
        self.name_a = name_a
        self.name_b = name_b
        self.num_batches = num_batches
        self.unmatched = tuple(unmatched)
        self.results = dict(results or {})

    def __repr__(self) -> str:
        return (f"ComparisonReport({self.name_a!r} vs {self.name_b!r}, {len(self.layers)} layers, "
                f"metrics={list(self.metrics)}, {self.num_batches} batches, "
                f"{len(self.unmatched)} unmatched)")

    def __getitem__(self, name: str) -> LayerComparison:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in the report; layers: "
                       f"{[layer.name for layer in self.layers][:8]} …")

    # -- ranking -------------------------------------------------------------------------------
    def _resolve(self, metric: str | None, kind: str | None) -> tuple[Metric, str]:
        name = metric or self.metrics[0]
        if name not in self.metrics:
            raise ValueError(f"metric {name!r} was not computed; this report has "
                             f"{list(self.metrics)} (pass metrics=(...) to fxquant.compare)")
        if kind is None:
            kind = next((k for k in KINDS if any(getattr(r, k) for r in self.layers)),
                        "activation")
        elif kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        found = get_metric(name)
        return (found if found is not None else METRICS[name]), kind

    def ranked(self, metric: str | None = None, kind: str | None = None
               ) -> list[LayerComparison]:
        """Layers that have ``metric`` for ``kind``, worst first (NaN last).

        Args:
            metric: one of :attr:`metrics` (default the first).
            kind: "activation", "shadowed" or "weight" (default the first present).
        """
        m, kind = self._resolve(metric, kind)
        rows = [r for r in self.layers if r.value(kind, m.name) is not None]

        def order(row: LayerComparison) -> tuple[bool, float]:
            value = float(row.value(kind, m.name))  # type: ignore[arg-type]  # filtered above
            if math.isnan(value):
                return True, 0.0
            return False, value if m.higher_is_better else -value

        return sorted(rows, key=order)

    def worst(self, k: int = 5, metric: str | None = None, kind: str | None = None
              ) -> list[LayerComparison]:
        """The ``k`` worst layers by ``metric`` for ``kind`` (see :meth:`ranked`).

        Example:
            >>> [row.name for row in report.worst(2)]
            ['classifier.1', 'features.18.2']
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        return self.ranked(metric, kind)[:k]

    # -- output --------------------------------------------------------------------------------
    def table(self, metric: str | None = None, kind: str | None = None, k: int | None = None
              ) -> str:
        """A text table, one line per layer, worst first by ``metric``/``kind``; every kind and
        metric computed is a column.

        Args:
            metric: the metric to rank by (default the first computed).
            kind: the kind to rank by (default the first present: activation, shadowed, weight).
            k: show only the ``k`` worst layers.

        Example:
            >>> print(report.table(k=2))
        """
        m, kind = self._resolve(metric, kind)
        ranked = self.ranked(m.name, kind)
        rest = [r for r in self.layers if r not in ranked]
        rows = ranked + rest
        if k is not None:
            rows = rows[:k]
        kinds = [kd for kd in KINDS if any(getattr(r, kd) for r in self.layers)]
        columns = [(kd, name) for kd in kinds for name in self.metrics]
        header = ["#", "layer", "type"] + [
            f"{_KIND_LABELS[kd]} {name}" + (f" ({METRICS[name].unit})"
                                             if name in METRICS and METRICS[name].unit else "")
            for kd, name in columns]
        lines = [[str(i + 1), r.name if r.name == r.name_b else f"{r.name} ({r.name_b})",
                  r.op_type] + [_format(r.value(kd, name)) for kd, name in columns]
                 for i, r in enumerate(rows)]
        widths = [max(len(h), *(len(line[c]) for line in lines)) if lines else len(h)
                  for c, h in enumerate(header)]
        out = [f"{self.name_b!r} vs {self.name_a!r}: {len(self.layers)} layers, "
               f"{self.num_batches} batch(es); worst first by {_KIND_LABELS[kind]} {m.name}"]
        out.append("  ".join(h.ljust(w) if c < 3 else h.rjust(w)
                             for c, (h, w) in enumerate(zip(header, widths))))
        out.append("  ".join("-" * w for w in widths))
        for line in lines:
            out.append("  ".join(v.ljust(w) if c < 3 else v.rjust(w)
                                 for c, (v, w) in enumerate(zip(line, widths))))
        if self.unmatched:
            out.append(f"{len(self.unmatched)} layer(s) not compared (report.unmatched): "
                       + ", ".join(f"{u.model}:{u.layer}" for u in self.unmatched[:5])
                       + (" …" if len(self.unmatched) > 5 else ""))
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what :meth:`to_json` writes)."""
        return {
            "format": "fxquant.numeric_suite.ComparisonReport", "version": 1,
            "model_a": self.name_a, "model_b": self.name_b, "metrics": list(self.metrics),
            "num_batches": self.num_batches,
            "layers": [r.to_dict() for r in self.layers],
            "unmatched": [dataclasses.asdict(u) for u in self.unmatched],
        }

    def to_json(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> pathlib.Path:
        """Writes :meth:`to_dict` as JSON (to a temporary file, then renamed).

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.

        Example:
            >>> report.to_json("results/sqnr.json", overwrite=True)
        """
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        return _write_atomic(pathlib.Path(path), text.encode(), overwrite)

    def plot(self, path: str | os.PathLike[str], *, metric: str | None = None,
             overwrite: bool = False) -> pathlib.Path:
        """Saves a PNG: per-layer ``metric`` (default every computed one, one panel each) in
        model A's graph order, one line per kind (activations, shadowed activations, weights),
        as in PyTorch's FX numeric suite tutorial. Needs no display.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.

        Example:
            >>> report.plot("results/sqnr.png")
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = [metric] if metric is not None else list(self.metrics)
        for name in names:
            self._resolve(name, None)
        n = len(self.layers)
        fig = Figure(figsize=(max(8.0, min(0.18 * n, 40.0)), 3.2 * len(names) + 1.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(names), 1, squeeze=False, sharex=True)[:, 0]
        styles = {"activation": ("o-", "activations"), "shadowed": ("s--", "activations, shadowed"),
                  "weight": ("^:", "weights")}
        for ax, name in zip(axes, names):
            for kind in KINDS:
                points = [(i, r.value(kind, name)) for i, r in enumerate(self.layers)
                          if r.value(kind, name) is not None]
                points = [(i, v) for i, v in points if v is not None and math.isfinite(v)]
                if not points:
                    continue
                xs, ys = zip(*points)
                fmt, label = styles[kind]
                ax.plot(xs, ys, fmt, markersize=3, linewidth=1, label=label)
            unit = METRICS[name].unit if name in METRICS else ""
            ax.set_ylabel(f"{name} ({unit})" if unit else name)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize=8)
        axes[0].set_title(f"{self.name_b} vs {self.name_a}: per-layer comparison "
                          f"({self.num_batches} batch(es))")
        step = max(1, n // 60)
        ticks = list(range(0, n, step))
        axes[-1].set_xticks(ticks)
        axes[-1].set_xticklabels([self.layers[i].name for i in ticks], rotation=90, fontsize=6)
        axes[-1].set_xlabel("layer (graph order)")
        fig.tight_layout()
        buffer = _png(fig)
        return _write_atomic(pathlib.Path(path), buffer, overwrite)


def _png(fig: Any) -> bytes:
    import io

    stream = io.BytesIO()
    fig.savefig(stream, format="png", dpi=110)
    return stream.getvalue()


def _write_atomic(path: pathlib.Path, data: bytes, overwrite: bool) -> pathlib.Path:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it, or "
                              "choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path
