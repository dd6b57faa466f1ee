"""``compare_layer_outputs``: two layer-output dumps side by side, and where they part.

Per tensor present in both dumps (matched by original name; a dump without manifest is matched
by file stem), over every common instance:

* ``sqnr_db`` = 10·log10(Σ a² / Σ (a − b)²) (``inf`` when bit-equal), with ``a`` from ``dir_a``
  (the reference);
* ``max_abs_diff``, ``mean_abs_diff``, ``equal_fraction`` (share of elements bit-equal);
* with ``encodings``: ``scale`` and ``max_diff_lsb`` = max |a − b| / scale (the tensor's output
  quantization step; per-channel scales along their axis).

The first tensor (in ``dir_a``'s topological order) whose SQNR is below ``sqnr_threshold`` is
``first_divergence``.

Layouts: when both dumps record their layouts (``manifest.json``), B is permuted into A's layout
(NHWC → NCHW …). Otherwise, when the shapes differ only by an axis permutation, or B is a flat
raw file of the same size (an AIMET or target dump without shapes), the candidates (identity,
channels-last↔first, any permutation that makes the shapes match) are tried on the first instance
and the one with the highest SQNR is kept; ``permutation`` in the report says which was used
(``ambiguous=True`` when more than one fitted the shapes).

Example:
    >>> report = compare_layer_outputs("dumps/sim", "dumps/ort", encodings="out/r18.encodings")
    >>> report.first_divergence
    'layer1.0.conv1'
    >>> report["layer1.0.conv1"].max_diff_lsb
    37.0
    >>> report.to_json("report.json"); report.plot("report.png")
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fxquant.layer_outputs._dump import default_layout, sanitize_names, write_atomic
from fxquant.layer_outputs.dump import LayerOutputDump

__all__ = ["LayerComparison", "ComparisonReport", "compare_layer_outputs"]

logger = logging.getLogger(__name__)

#: Default SQNR (dB) below which a tensor counts as diverged.
DEFAULT_SQNR_THRESHOLD = 20.0
_MAX_PERMUTATION_RANK = 6


@dataclasses.dataclass
class LayerComparison:
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
        sqnr_db: signal-to-quantization-noise ratio of B against A (dB); ``inf`` when equal.
        max_abs_diff: max |a − b|.
        mean_abs_diff: mean |a − b|.
        equal_fraction: share of elements bit-equal.
        scale: the quantization step used for LSBs (per-tensor), or None.
        max_diff_lsb: max |a − b| in quantization steps, or None without encodings.
        status: "ok", "below_threshold", "shape_mismatch" (sizes differ: not compared) or
            "nonfinite" (NaN/inf in a value).
        note: a human-readable detail for non-ok statuses.
    """

    name: str
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``inf`` as the string "inf", NaN as null).

        Example:
            >>> report["fc"].to_dict()["sqnr_db"]
            36.1
        """
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = list(value)
            out[field.name] = _json_number(value)
        return out


def _json_number(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


@dataclasses.dataclass
class ComparisonReport:
    """The result of :func:`compare_layer_outputs`.

    Attributes:
        dir_a: the reference dump.
        dir_b: the dump compared with it.
        layers: one :class:`LayerComparison` per common tensor, in ``dir_a``'s order.
        only_in_a: tensors only ``dir_a`` has.
        only_in_b: tensors only ``dir_b`` has.
        instances: the instances compared.
        sqnr_threshold: the threshold (dB) of ``first_divergence``.
        first_divergence: the first tensor (in ``dir_a``'s order) below the threshold, or None.

    Example:
        >>> report.name_match
        1.0
        >>> print(report.format(limit=5))
    """

    dir_a: str
    dir_b: str
    layers: list[LayerComparison]
    only_in_a: list[str]
    only_in_b: list[str]
    instances: list[int]
    sqnr_threshold: float
    first_divergence: str | None

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
        compared = [layer for layer in self.layers if not math.isnan(layer.sqnr_db)]
        if not compared:
            return None
        worst = min(compared, key=lambda layer: layer.sqnr_db)
        return worst.name, worst.sqnr_db

    def __getitem__(self, name: str) -> LayerComparison:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} was not compared (only in A: {name in self.only_in_a}, only in "
                       f"B: {name in self.only_in_b})")

    def __len__(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the whole report (``inf`` as "inf", NaN as null).

        Example:
            >>> report.to_dict()["layers"][0]["sqnr_db"]
            'inf'
        """
        worst = self.min_sqnr
        return {"dir_a": self.dir_a, "dir_b": self.dir_b, "instances": list(self.instances),
                "sqnr_threshold": self.sqnr_threshold, "first_divergence": self.first_divergence,
                "name_match": self.name_match,
                "min_sqnr": None if worst is None else {"name": worst[0],
                                                        "sqnr_db": _json_number(worst[1])},
                "only_in_a": list(self.only_in_a), "only_in_b": list(self.only_in_b),
                "layers": [layer.to_dict() for layer in self.layers]}

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 1) -> str:
        """The report as JSON; also written (atomically) to ``path`` when given.

        Example:
            >>> json.loads(report.to_json())["first_divergence"]
            'layer1.0.conv1'
        """
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            def write(tmp: str) -> None:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)

            write_atomic(os.fspath(path), write)
        return text

    def format(self, limit: int | None = None) -> str:
        """A text table (one row per tensor, ``limit`` worst rows when given).

        Example:
            >>> print(report.format(limit=3))
        """
        rows = list(self.layers)
        if limit is not None:
            rows = sorted(rows, key=lambda r: (math.isnan(r.sqnr_db), r.sqnr_db))[:limit]
        width = max([len("tensor")] + [len(r.name) for r in rows])
        lines = [f"{'tensor':<{width}}  {'SQNR dB':>8}  {'max|diff|':>10}  {'max LSB':>7}  "
                 f"{'equal':>7}  layout"]
        for r in rows:
            sqnr = "inf" if r.sqnr_db == math.inf else f"{r.sqnr_db:.1f}"
            lsb = "" if r.max_diff_lsb is None else f"{r.max_diff_lsb:.0f}"
            equal = "" if math.isnan(r.equal_fraction) else f"{100 * r.equal_fraction:.2f}%"
            flag = " <" if r.name == self.first_divergence else ""
            extra = r.permutation or ""
            if r.status not in ("ok", "below_threshold"):
                extra = f"{r.status}: {r.note}"
            lines.append(f"{r.name:<{width}}  {sqnr:>8}  {r.max_abs_diff:>10.4g}  {lsb:>7}  "
                         f"{equal:>7}  {extra}{flag}")
        return "\n".join(lines)

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
            lines.append(f"lowest SQNR: {worst[0]} {worst[1]:.1f} dB")
        if self.first_divergence is None:
            lines.append(f"no tensor below {self.sqnr_threshold:g} dB")
        else:
            r = self[self.first_divergence]
            lsb = "" if r.max_diff_lsb is None else f", max {r.max_diff_lsb:.0f} LSB"
            lines.append(f"first divergence (SQNR < {self.sqnr_threshold:g} dB): "
                         f"{self.first_divergence} ({r.sqnr_db:.1f} dB{lsb})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def plot(self, path: str | os.PathLike[str] | None = None, *, title: str | None = None) -> Any:
        """Plots SQNR (and max LSB difference when known) per tensor, in topological order.

        Args:
            path: also save the figure there (format from the extension, e.g. ``.png``).
            title: figure title (default: the two directories).

        Returns:
            The ``matplotlib.figure.Figure`` (no GUI backend is needed).

        Example:
            >>> fig = report.plot("report.png")
        """
        from matplotlib.figure import Figure

        layers = [r for r in self.layers if not math.isnan(r.sqnr_db)]
        with_lsb = any(r.max_diff_lsb is not None for r in layers)
        fig = Figure(figsize=(max(8.0, 0.12 * len(layers) + 4), 7 if with_lsb else 4.5))
        axes = fig.subplots(2 if with_lsb else 1, 1, sharex=True, squeeze=False)[:, 0]
        x = np.arange(len(layers))
        finite = [r.sqnr_db for r in layers if math.isfinite(r.sqnr_db)]
        cap = (max(finite) if finite else self.sqnr_threshold) + 10
        sqnr = np.array([min(r.sqnr_db, cap) for r in layers], dtype=float)
        ax = axes[0]
        ax.plot(x, sqnr, marker=".", linewidth=1)
        exact = [i for i, r in enumerate(layers) if r.sqnr_db == math.inf]
        if exact:
            ax.scatter(exact, sqnr[exact], marker="^", color="tab:green", label="bit-equal",
                       zorder=3)
        ax.axhline(self.sqnr_threshold, color="tab:red", linestyle="--", linewidth=1,
                   label=f"threshold {self.sqnr_threshold:g} dB")
        names = [r.name for r in layers]
        if self.first_divergence in names:
            i = names.index(self.first_divergence)
            ax.axvline(i, color="tab:orange", linewidth=1,
                       label=f"first divergence: {self.first_divergence}")
        ax.set_ylabel("SQNR (dB)")
        ax.legend(loc="best", fontsize="small")
        ax.grid(True, alpha=0.3)
        if with_lsb:
            lsb = np.array([np.nan if r.max_diff_lsb is None else r.max_diff_lsb for r in layers])
            axes[1].bar(x, lsb, color="tab:purple")
            axes[1].set_ylabel("max |diff| (LSB)")
            axes[1].grid(True, alpha=0.3)
        step = max(1, len(layers) // 60)
        axes[-1].set_xticks(x[::step])
        axes[-1].set_xticklabels(names[::step], rotation=90, fontsize=6)
        fig.suptitle(title or f"{self.dir_b} vs {self.dir_a}", fontsize="medium")
        fig.tight_layout()
        if path is not None:
            target = os.fspath(path)
            fmt = os.path.splitext(target)[1].lstrip(".") or "png"
            write_atomic(target, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120))
        return fig


# -------------------------------------------------------------------------------------------------
# Encodings
# -------------------------------------------------------------------------------------------------
def _scales(encodings: Any) -> dict[str, tuple[np.ndarray, int | None]]:
    """``{tensor: (scale array, axis)}`` from an encodings file or dict, a sim, or name → scale."""
    if encodings is None:
        return {}
    if hasattr(encodings, "quantizers") and callable(encodings.quantizers):
        from fxquant.quantsim.encodings_file import encodings_from_refs

        activations = encodings_from_refs(encodings.quantizers())["activation"]
    elif isinstance(encodings, (str, os.PathLike)) or (
            isinstance(encodings, Mapping) and ("version" in encodings
                                                or "activation_encodings" in encodings
                                                or "encodings" in encodings)):
        from fxquant.quantsim.encodings_file import read_encodings

        activations = read_encodings(encodings)["activation"]
    elif isinstance(encodings, Mapping):
        return {str(k): (np.asarray(v, dtype=np.float64).reshape(-1), None)
                for k, v in encodings.items()}
    else:
        raise TypeError(f"encodings must be an encodings file path, its dict, a "
                        f"QuantizationSimModel or a {{name: scale}} mapping, got "
                        f"{type(encodings).__qualname__}")
    out = {}
    for name, enc in activations.items():
        scale = getattr(enc, "scale", None)
        if scale is None:  # float16 encodings have no step
            continue
        out[name] = (scale.detach().cpu().double().numpy().reshape(-1), getattr(enc, "axis", None))
    return out


# -------------------------------------------------------------------------------------------------
# Alignment
# -------------------------------------------------------------------------------------------------
def _layout_perm(src: str | None, dst: str | None) -> tuple[int, ...] | None:
    if not src or not dst or sorted(src) != sorted(dst) or src == dst:
        return None
    return tuple(src.index(c) for c in dst)


def _candidates(shape_a: tuple[int, ...], info_b: Any, layout_a: str | None
                ) -> list[tuple[tuple[int, ...] | None, str | None]]:
    """Ways to bring B into A's layout: ``[(axes to transpose B by, label)]``; ``(None, None)``
    is "as stored"."""
    shape_b = info_b.shape
    layout_b = info_b.layout
    if shape_b is None:  # flat: A's shape, or A's shape channels-last then moved back
        last = default_layout(len(shape_a), channels_last=True) if len(shape_a) >= 3 else None
        first = layout_a or default_layout(len(shape_a))
        as_stored: tuple[Any, str | None] = (None, "reshape")
        moved: tuple[Any, str | None] = ("channels_last", f"{last}->{first}")
        if layout_b is not None and layout_b == last and last != first:
            return [moved]
        if layout_b is not None or last is None or last == first:
            return [as_stored]
        return [as_stored, moved]
    perm = _layout_perm(layout_b, layout_a)
    if perm is not None and tuple(shape_b[i] for i in perm) == tuple(shape_a):
        return [(perm, f"{layout_b}->{layout_a}")]
    if tuple(shape_b) == tuple(shape_a):
        return [(None, None)]
    if sorted(shape_b) != sorted(shape_a) or len(shape_a) > _MAX_PERMUTATION_RANK:
        return []
    fits = [p for p in itertools.permutations(range(len(shape_b)))
            if tuple(shape_b[i] for i in p) == tuple(shape_a)]
    channels_first = tuple([0, len(shape_a) - 1, *range(1, len(shape_a) - 1)])
    fits.sort(key=lambda p: (p != channels_first, p))
    return [(p, str(p)) for p in fits]


def _align(b: np.ndarray, shape_a: tuple[int, ...], how: Any) -> np.ndarray:
    if how is None:
        return b.reshape(shape_a) if b.shape != shape_a else b
    if how == "channels_last":
        last = (shape_a[0], *shape_a[2:], shape_a[1])
        return np.moveaxis(b.reshape(last), -1, 1)
    return np.transpose(b, how)


class _Stats:
    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.equal = 0
        self.elements = 0
        self.max_lsb: float | None = None
        self.nonfinite = 0

    def add(self, a: np.ndarray, b: np.ndarray,
            scale: tuple[np.ndarray, int | None] | None) -> None:
        a64 = a.astype(np.float64, copy=False)
        diff = a64 - b.astype(np.float64, copy=False)
        finite = np.isfinite(diff)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
        absdiff = np.abs(diff)
        self.signal += float(np.dot(a64.ravel(), a64.ravel()))
        self.noise += float(np.dot(diff.ravel(), diff.ravel()))
        if absdiff.size:
            self.max_abs = max(self.max_abs, float(absdiff.max()))
        self.sum_abs += float(absdiff.sum())
        self.equal += int(np.count_nonzero(a == b))
        self.elements += a.size
        if scale is not None and absdiff.size:
            values, axis = scale
            if values.size == 1:
                lsb = float(absdiff.max()) / float(values[0])
            elif axis is not None and a.ndim > axis and a.shape[axis] == values.size:
                shape = [1] * a.ndim
                shape[axis] = values.size
                lsb = float((absdiff / values.reshape(shape)).max())
            else:
                return
            self.max_lsb = lsb if self.max_lsb is None else max(self.max_lsb, lsb)

    def sqnr(self) -> float:
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)


def _match_names(a: LayerOutputDump, b: LayerOutputDump) -> tuple[list[tuple[str, str]], list[str],
                                                                    list[str]]:
    b_names = set(b.names)
    pairs = [(n, n) for n in a.names if n in b_names]
    matched_a = {n for n, _ in pairs}
    matched_b = set(matched_a)
    rest_a = [n for n in a.names if n not in matched_a]
    rest_b = [n for n in b.names if n not in matched_b]
    if rest_a and rest_b and (not a.has_manifest or not b.has_manifest):
        # A dump without manifest knows file stems only: match through the stems.
        stems_a = sanitize_names(a.names)
        stems_b = sanitize_names(b.names)
        by_stem_b = {stems_b[n]: n for n in rest_b}
        for n in rest_a:
            other = by_stem_b.get(stems_a[n])
            if other is not None and other not in matched_b:
                pairs.append((n, other))
                matched_a.add(n)
                matched_b.add(other)
        order = {n: i for i, n in enumerate(a.names)}
        pairs.sort(key=lambda p: order[p[0]])
    return (pairs, [n for n in a.names if n not in matched_a],
            [n for n in b.names if n not in matched_b])


def compare_layer_outputs(dir_a: str | os.PathLike[str] | LayerOutputDump,
                          dir_b: str | os.PathLike[str] | LayerOutputDump, *,
                          encodings: Any = None,
                          sqnr_threshold: float = DEFAULT_SQNR_THRESHOLD,
                          instances: Iterable[int] | None = None,
                          names: Sequence[str] | None = None,
                          layout_a: str | None = None, layout_b: str | None = None
                          ) -> ComparisonReport:
    """Compares two layer-output dumps tensor by tensor and finds the first divergence.

    Args:
        dir_a: the reference dump (e.g. the QuantSim's), or a :class:`LayerOutputDump`.
        dir_b: the dump to check (e.g. ONNX Runtime's or a target's).
        encodings: to express differences in output quantization steps (LSBs): the
            ``.encodings`` file of ``sim.export`` (or its dict), the sim itself, or
            ``{tensor name: scale}``.
        sqnr_threshold: SQNR (dB) below which a tensor has diverged (default 20 dB; a sim and
            its QDQ model in ONNX Runtime stay above it, float vs float above 80 dB).
        instances: the instances to compare (default: all that both dumps have).
        names: compare only these tensors (names of ``dir_a``).
        layout_a: layout of every tensor of ``dir_a`` when its dump does not say (e.g. "NHWC").
        layout_b: the same for ``dir_b``.

    Returns:
        A :class:`ComparisonReport`.

    Raises:
        DumpFormatError: a directory is not a dump.
        ValueError: the dumps have no instance in common.

    Example:
        >>> report = compare_layer_outputs("dumps/sim", "dumps/ort", encodings="out/r18.encodings")
        >>> report.first_divergence, report.name_match
        (None, 1.0)
    """
    a = dir_a if isinstance(dir_a, LayerOutputDump) else LayerOutputDump(dir_a, layout=layout_a)
    b = dir_b if isinstance(dir_b, LayerOutputDump) else LayerOutputDump(dir_b, layout=layout_b)
    common = sorted(set(a.instances) & set(b.instances))
    if instances is not None:
        wanted = list(instances)
        missing = [k for k in wanted if k not in common]
        if missing:
            raise ValueError(f"instances {missing} are not in both dumps; common instances: "
                             f"{common}")
        common = wanted
    if not common:
        raise ValueError(f"{a.dir_path} (instances {a.instances}) and {b.dir_path} (instances "
                         f"{b.instances}) have no instance in common")
    scales = _scales(encodings)
    pairs, only_a, only_b = _match_names(a, b)
    if names is not None:
        keep = set(names)
        pairs = [p for p in pairs if p[0] in keep]
    results = []
    for name_a, name_b in pairs:
        results.append(_compare_one(a, b, name_a, name_b, common, scales.get(name_a)))
    first = None
    for r in results:
        if r.status in ("ok", "below_threshold") and r.sqnr_db < sqnr_threshold:
            r.status = "below_threshold"
            if first is None:
                first = r.name
    report = ComparisonReport(a.dir_path, b.dir_path, results, only_a, only_b, common,
                              float(sqnr_threshold), first)
    logger.info("%s", report.summary())
    return report


def _compare_one(a: LayerOutputDump, b: LayerOutputDump, name_a: str, name_b: str,
                 instances: Sequence[int], scale: tuple[np.ndarray, int | None] | None
                 ) -> LayerComparison:
    info_a = a.info(name_a)
    info_b = b.info(name_b)
    result = LayerComparison(name_a, None if name_b == name_a else name_b, info_a.shape,
                             info_b.shape)
    if scale is not None and scale[0].size == 1:
        result.scale = float(scale[0][0])
    stats = _Stats()
    how: Any = None
    for k in instances:
        if not (a.has(name_a, k) and b.has(name_b, k)):
            continue
        va = a.load(name_a, k)
        vb = b.load(name_b, k)
        if info_a.shape is None and info_b.shape is not None:  # only B knows the shape
            va = va.reshape(vb.shape) if va.size == vb.size else va
        shape_a = tuple(va.shape)
        if result.instances == 0:
            if va.size != vb.size:
                result.status = "shape_mismatch"
                result.note = (f"A has {va.size} elements {list(va.shape)}, B has {vb.size} "
                               f"{list(vb.shape)}")
                return result
            cands = _candidates(shape_a, dataclasses.replace(info_b, shape=tuple(vb.shape))
                                if info_b.shape is not None else info_b, info_a.layout)
            if not cands:
                result.status = "shape_mismatch"
                result.note = (f"shapes {list(shape_a)} and {list(vb.shape)} differ by more than "
                               "an axis permutation")
                return result
            if len(cands) > 1:
                result.ambiguous = True
                best = max(cands, key=lambda c: _quick_sqnr(va, _align(vb, shape_a, c[0])))
            else:
                best = cands[0]
            how, result.permutation = best
            if how is None and result.permutation == "reshape" and info_b.shape is not None:
                result.permutation = None
        vb = _align(vb, shape_a, how)
        stats.add(va, vb, scale)
        result.instances += 1
    result.elements = stats.elements
    if result.instances == 0:
        result.status = "missing"
        result.note = "no instance has this tensor on both sides"
        return result
    result.sqnr_db = stats.sqnr()
    result.max_abs_diff = stats.max_abs
    result.mean_abs_diff = stats.sum_abs / stats.elements if stats.elements else 0.0
    result.equal_fraction = stats.equal / stats.elements if stats.elements else 1.0
    result.max_diff_lsb = stats.max_lsb
    if stats.nonfinite:
        result.status = "nonfinite"
        result.note = f"{stats.nonfinite} differences are NaN or infinite"
    return result


def _quick_sqnr(a: np.ndarray, b: np.ndarray) -> float:
    stats = _Stats()
    stats.add(a, b, None)
    return stats.sqnr() if stats.nonfinite == 0 else -math.inf
