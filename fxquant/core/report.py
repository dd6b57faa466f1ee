"""One per-layer comparison record and one report base, for every comparison fxquant reports.

The numeric suite (:class:`fxquant.numeric_suite.NumericSuiteReport`, model vs model) and the
layer-dump diff (:class:`fxquant.layer_outputs.DumpComparisonReport`, dump vs dump) build their
reports on these two classes, so both rank, print, write JSON and plot the same way:

* :class:`LayerComparison`: one layer's (or tensor's) values, ``{kind: {metric: value}}`` through
  :meth:`LayerComparison.values`; a *kind* is what was compared (a numeric-suite layer has
  ``activation``, ``shadowed`` and ``weight`` values, a dump tensor one ``output``).
* :class:`ComparisonReport`: the records in graph order with :meth:`~ComparisonReport.ranked`,
  :meth:`~ComparisonReport.worst`, :meth:`~ComparisonReport.table`,
  :meth:`~ComparisonReport.to_dict`, :meth:`~ComparisonReport.to_json` and
  :meth:`~ComparisonReport.plot`.

JSON numbers (:func:`json_number`, the one rule): finite numbers are written as numbers, ``+inf``
as the string ``"inf"``, ``-inf`` as ``"-inf"`` and NaN as ``"nan"`` (strict JSON has no
non-finite numbers; ``float()`` reads all three strings back, see :func:`from_json_number`).
Files are written through :mod:`fxquant.core.files`: atomically, and an existing file is an
:class:`~fxquant.errors.OutputExistsError` unless ``overwrite=True``.

Example:
    >>> report = fxquant.compare(model, sim, batches)        # a NumericSuiteReport
    >>> isinstance(report, fxquant.ComparisonReport)
    True
    >>> print(report.table(k=3))
    >>> report.to_json("out/sqnr.json"); report.plot("out/sqnr.png")
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pathlib
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

from fxquant.core import files

__all__ = ["MetricInfo", "LayerComparison", "ComparisonReport", "Column", "json_number",
           "json_ready", "from_json_number", "format_number"]

_NONFINITE_JSON = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def json_number(value: float) -> float | str:
    """A number as JSON allows it: finite as is, ``+inf``/``-inf``/NaN as ``"inf"``/``"-inf"``/
    ``"nan"``.

    Example:
        >>> json_number(2.5), json_number(float("-inf")), json_number(float("nan"))
        (2.5, '-inf', 'nan')
    """
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def from_json_number(value: float | int | str | None) -> float | None:
    """Reads back what :func:`json_number` wrote (None stays None).

    Raises:
        ValueError: a string other than "inf", "-inf" and "nan".

    Example:
        >>> from_json_number("inf"), from_json_number(3)
        (inf, 3.0)
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value not in _NONFINITE_JSON:
            raise ValueError(f"expected a number or one of {sorted(_NONFINITE_JSON)}, got "
                             f"{value!r}")
        return _NONFINITE_JSON[value]
    return float(value)


def json_ready(value: Any) -> Any:
    """``value`` with every float passed through :func:`json_number`, tuples as lists, mappings
    as dicts with string keys and dataclasses as dicts of their fields (recursively).

    Example:
        >>> json_ready({"sqnr": float("inf"), "shape": (1, 3)})
        {'sqnr': 'inf', 'shape': [1, 3]}
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return json_number(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_ready(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # NumPy / torch scalars
        return json_ready(value.item())
    raise TypeError(f"cannot write a {type(value).__qualname__} to a report's JSON: {value!r}")


def format_number(value: float | None, spec: str | None = None, missing: str = "-") -> str:
    """A value for a text table: ``missing`` for None, "nan"/"inf"/"-inf", else ``spec`` (by
    default four decimals below 10, two above).

    Example:
        >>> format_number(31.456), format_number(None), format_number(float("inf"))
        ('31.46', '-', 'inf')
    """
    if value is None:
        return missing
    if math.isnan(value) or math.isinf(value):
        return str(json_number(value))
    if spec is not None:
        return format(value, spec)
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """What a report needs to know of a metric to rank, label and plot it.

    Attributes:
        name: the key of the metric in the records, e.g. "sqnr".
        higher_is_better: whether larger values mean closer tensors.
        unit: unit for headers and axis labels ("dB", "LSB" or "").

    Example:
        >>> MetricInfo("sqnr", True, "dB").label
        'sqnr (dB)'
    """

    name: str
    higher_is_better: bool
    unit: str = ""

    @property
    def label(self) -> str:
        """``name (unit)``, or the name alone without a unit."""
        return f"{self.name} ({self.unit})" if self.unit else self.name


@dataclasses.dataclass(frozen=True)
class LayerComparison:
    """One compared layer (or tensor); subclasses add their fields and kinds.

    Attributes:
        name: the layer's canonical name (the reference's).

    Class attributes:
        KINDS: what is compared per layer, in table order (values are looked up per kind).

    Example:
        >>> row = report.worst(1)[0]
        >>> row.value("activation", "sqnr")
        21.7
    """

    KINDS: ClassVar[tuple[str, ...]] = ()

    name: str

    def values(self, kind: str) -> Mapping[str, float | None]:
        """``{metric: value}`` for ``kind``: by default the mapping held in the field ``kind``."""
        return getattr(self, kind)

    def value(self, kind: str, metric: str) -> float | None:
        """The value of ``metric`` for ``kind``, or None when not computed.

        Raises:
            ValueError: ``kind`` is not one of :attr:`KINDS`.
        """
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {list(self.KINDS)}, got {kind!r}")
        return self.values(kind).get(metric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (non-finite numbers as "inf", "-inf", "nan": :func:`json_number`)."""
        return json_ready(self)


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of a text table: its header, the cell of one record, and its alignment."""

    header: str
    cell: Callable[[Any], str]
    left: bool = False


class ComparisonReport:
    """Per-layer comparison records and what to do with them (the base of every report).

    Attributes:
        layers: one :class:`LayerComparison` per compared layer, in graph order.
        metrics: names of the metrics the records hold.

    Class attributes:
        FORMAT: the ``"format"`` written to JSON.
        VERSION: the ``"version"`` written to JSON.
        KIND_LABELS: short names of the kinds in headers ("act" for "activation").

    Subclasses provide :meth:`_content` (the JSON body) and may add columns (:meth:`_columns`),
    a title and footer for :meth:`table`, and their own :meth:`figure`.

    Example:
        >>> [row.name for row in report.worst(2)]
        ['classifier.1', 'features.18.2']
    """

    FORMAT: ClassVar[str] = "fxquant.ComparisonReport"
    VERSION: ClassVar[int] = 1
    KIND_LABELS: ClassVar[Mapping[str, str]] = {}

    def __init__(self, layers: Sequence[LayerComparison], metrics: Sequence[MetricInfo]) -> None:
        self.layers = tuple(layers)
        self._metric_info = {m.name: m for m in metrics}
        self.metrics = tuple(self._metric_info)

    def __getitem__(self, name: str) -> LayerComparison:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(self._missing(name))

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerComparison]:
        return iter(self.layers)

    def _missing(self, name: str) -> str:
        names = [layer.name for layer in self.layers]
        return (f"no layer {name!r} in the report; layers: {names[:8]}"
                + (" …" if len(names) > 8 else ""))

    # -- ranking -------------------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds some layer has a value of, in table order."""
        return tuple(k for k in self._all_kinds() if any(
            any(v is not None for v in r.values(k).values()) for r in self.layers))

    def _all_kinds(self) -> tuple[str, ...]:
        return self.layers[0].KINDS if self.layers else ()

    def _not_computed_hint(self) -> str:
        return ""

    def metric_info(self, metric: str | None = None) -> MetricInfo:
        """The :class:`MetricInfo` of ``metric`` (default the first computed).

        Raises:
            ValueError: the metric was not computed (the message lists those that were).
        """
        name = metric or (self.metrics[0] if self.metrics else "")
        if name not in self._metric_info:
            raise ValueError(f"metric {name!r} was not computed; this report has "
                             f"{list(self.metrics)}{self._not_computed_hint()}")
        return self._metric_info[name]

    def _resolve(self, metric: str | None, kind: str | None) -> tuple[MetricInfo, str]:
        info = self.metric_info(metric)
        if kind is None:
            present = self.kinds
            kind = present[0] if present else (self._all_kinds() or ("",))[0]
        elif self.layers and kind not in self._all_kinds():
            raise ValueError(f"kind must be one of {list(self._all_kinds())}, got {kind!r}")
        return info, kind

    def ranked(self, metric: str | None = None, kind: str | None = None
               ) -> list[LayerComparison]:
        """Layers that have ``metric`` for ``kind``, worst first (NaN last).

        Args:
            metric: one of :attr:`metrics` (default the first).
            kind: one of the records' kinds (default the first present).

        Example:
            >>> report.ranked()[0].name
            'classifier.1'
        """
        info, kind = self._resolve(metric, kind)
        rows = [r for r in self.layers if r.value(kind, info.name) is not None]

        def order(row: LayerComparison) -> tuple[bool, float]:
            value = float(row.value(kind, info.name))  # type: ignore[arg-type]  # filtered above
            if math.isnan(value):
                return True, 0.0
            return False, value if info.higher_is_better else -value

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

    # -- text ----------------------------------------------------------------------------------
    def _label_columns(self) -> list[Column]:
        return [Column("layer", lambda r: r.name, left=True)]

    def _columns(self) -> list[Column]:
        """The table's columns: "#", the label columns, then every kind × metric."""
        def cell(kind: str, name: str) -> Callable[[Any], str]:
            return lambda r: format_number(r.value(kind, name))

        values = [Column(" ".join(p for p in (self.KIND_LABELS.get(kind, kind),
                                               self._metric_info[name].label) if p),
                         cell(kind, name))
                  for kind in self.kinds for name in self.metrics]
        return self._label_columns() + values

    def _title(self, info: MetricInfo, kind: str) -> str:
        label = self.KIND_LABELS.get(kind, kind)
        return (f"{len(self.layers)} layers; worst first by "
                f"{' '.join(p for p in (label, info.name) if p)}")

    def _footer(self) -> list[str]:
        return []

    @staticmethod
    def _render(rows: Sequence[Any], columns: Sequence[Column], numbered: bool = True
                ) -> list[str]:
        """Header, rule and one line per row, columns padded to their widest cell."""
        if numbered:
            columns = [Column("#", lambda r: "", left=True), *columns]
        lines = [[c.cell(r) for c in columns] for r in rows]
        if numbered:
            for i, line in enumerate(lines):
                line[0] = str(i + 1)
        widths = [max([len(c.header)] + [len(line[i]) for line in lines])
                  for i, c in enumerate(columns)]

        def join(cells: Sequence[str]) -> str:
            return "  ".join(v.ljust(w) if c.left else v.rjust(w)
                             for v, w, c in zip(cells, widths, columns)).rstrip()

        return ([join([c.header for c in columns]), "  ".join("-" * w for w in widths)]
                + [join(line) for line in lines])

    def table(self, metric: str | None = None, kind: str | None = None, k: int | None = None
              ) -> str:
        """A text table, one line per layer, worst first by ``metric``/``kind`` (layers without
        that value last); every kind and metric computed is a column.

        Args:
            metric: the metric to rank by (default the first computed).
            kind: the kind to rank by (default the first present).
            k: show only the ``k`` first rows.

        Example:
            >>> print(report.table(k=2))
        """
        info, kind = self._resolve(metric, kind)
        ranked = self.ranked(info.name, kind)
        chosen = {id(r) for r in ranked}
        rows = ranked + [r for r in self.layers if id(r) not in chosen]
        if k is not None:
            rows = rows[:k]
        lines = [self._title(info, kind), *self._render(rows, self._columns()), *self._footer()]
        return "\n".join(lines)

    # -- JSON ----------------------------------------------------------------------------------
    def _content(self) -> dict[str, Any]:
        return {"metrics": list(self.metrics), "layers": [r.to_dict() for r in self.layers]}

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what :meth:`to_json` writes): ``format``, ``version``
        and the report's content, non-finite numbers encoded by :func:`json_number`.

        Example:
            >>> report.to_dict()["layers"][0]["name"]
            'conv1'
        """
        return {"format": self.FORMAT, "version": self.VERSION, **json_ready(self._content())}

    def json_text(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as strict JSON text.

        Example:
            >>> json.loads(report.json_text())["version"]
            1
        """
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_json(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                indent: int | None = 2) -> pathlib.Path:
        """Writes :meth:`to_dict` as JSON to ``path`` (atomically).

        Raises:
            OutputExistsError: ``path`` exists and ``overwrite`` is False.
            FileWriteError: ``path`` cannot be written (the message names it and the fix).

        Example:
            >>> report.to_json("results/sqnr.json", overwrite=True)
            PosixPath('results/sqnr.json')
        """
        return files.write_text(path, self.json_text(indent) + "\n", overwrite=overwrite)

    # -- plot ----------------------------------------------------------------------------------
    @staticmethod
    def _new_figure(width: float, height: float) -> Any:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width, height))
        FigureCanvasAgg(fig)
        return fig

    @staticmethod
    def _layer_ticks(ax: Any, names: Sequence[str]) -> None:
        step = max(1, len(names) // 60)
        ticks = list(range(0, len(names), step))
        ax.set_xticks(ticks)
        ax.set_xticklabels([names[i] for i in ticks], rotation=90, fontsize=6)
        ax.set_xlabel("layer (graph order)")

    def _plot_title(self) -> str:
        return "per-layer comparison"

    def figure(self, *, metric: str | None = None) -> Any:
        """A ``matplotlib.figure.Figure`` (no display needed): per-layer ``metric`` (default every
        computed one, one panel each) in graph order, one line per kind; non-finite values are
        left out of the lines.

        Example:
            >>> len(report.figure(metric="sqnr").axes)
            1
        """
        names = [self.metric_info(metric).name] if metric is not None else list(self.metrics)
        n = len(self.layers)
        fig = self._new_figure(max(8.0, min(0.18 * n, 40.0)), 3.2 * max(len(names), 1) + 1.6)
        axes = fig.subplots(max(len(names), 1), 1, squeeze=False, sharex=True)[:, 0]
        styles = ("o-", "s--", "^:", "d-.")
        for ax, name in zip(axes, names):
            for i, kind in enumerate(self._all_kinds()):
                points = [(x, r.value(kind, name)) for x, r in enumerate(self.layers)]
                finite = [(x, v) for x, v in points if v is not None and math.isfinite(v)]
                if finite:
                    xs, ys = zip(*finite)
                    ax.plot(xs, ys, styles[i % len(styles)], markersize=3, linewidth=1,
                            label=self._kind_legend(kind))
            ax.set_ylabel(self._metric_info[name].label)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
        axes[0].set_title(self._plot_title())
        self._layer_ticks(axes[-1], [r.name for r in self.layers])
        fig.tight_layout()
        return fig

    def _kind_legend(self, kind: str) -> str:
        return kind

    def plot(self, path: str | os.PathLike[str], *, overwrite: bool = False,
             **options: Any) -> pathlib.Path:
        """Saves :meth:`figure` to ``path`` (format from the extension, PNG without one).

        Args:
            path: the image file.
            overwrite: replace an existing file.
            **options: passed to :meth:`figure` (e.g. ``metric="sqnr"``).

        Raises:
            OutputExistsError: ``path`` exists and ``overwrite`` is False.
            ValueError: matplotlib cannot write that format.

        Example:
            >>> report.plot("results/sqnr.png")
            PosixPath('results/sqnr.png')
        """
        files.check_destination(path, overwrite=overwrite)
        fig = self.figure(**options)
        fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
        stream = io.BytesIO()
        fig.savefig(stream, format=fmt, dpi=110)
        return files.write_bytes(path, stream.getvalue(), overwrite=overwrite)
