"""``compare_layer_outputs``: two layer-output dumps side by side, and where they part.

Per tensor present in both dumps (matched by original name; a dump without manifest is matched
by file stem, :mod:`~fxquant.layer_outputs.matching`), over every common instance:

* ``sqnr_db``: SQNR of B against the reference A (``dir_a``), in dB, as
  :mod:`fxquant.core.metrics` defines it (``inf`` when bit-equal, ``-inf`` when A is all zero
  and B is not; NaN/inf values set the status ``"nonfinite"``);
* ``max_abs_diff``, ``mean_abs_diff``, ``equal_fraction`` (share of elements bit-equal);
* with ``encodings``: ``scale`` and ``max_diff_lsb`` = max |a − b| / scale (the tensor's output
  quantization step; per-channel scales along their axis; :mod:`~fxquant.layer_outputs.scales`).

The first tensor (in ``dir_a``'s topological order) whose SQNR is below ``sqnr_threshold`` is
``first_divergence``.

Findings (``report.findings``; each fails ``fxquant compare-outputs --check``): NaN or ±Inf values
in either dump (counted per side), tensors only one dump has, tensors that no common instance has
on both sides or that only some instances have, tensors whose sizes differ, and instances only one
dump has. A comparison is never "no divergence" because nothing could be compared.

Layouts (:mod:`~fxquant.layer_outputs.alignment`): when both dumps record their layouts
(``manifest.json``), B is permuted into A's layout (NHWC → NCHW …). Otherwise, when the shapes
differ only by an axis permutation, or B is a flat raw file of the same size (an AIMET or target
dump without shapes), the candidates are tried on the first instance and the one with the highest
SQNR is kept; ``permutation`` in the report says which was used (``ambiguous=True`` when more
than one fitted the shapes).

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
import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fxquant.core.metrics import PairSums, pair_sums
from fxquant.layer_outputs.alignment import align, alignment_candidates
from fxquant.layer_outputs.dump_reader import LayerOutputDump
from fxquant.layer_outputs.matching import match_tensor_names
from fxquant.layer_outputs.report import DumpComparisonReport, DumpFinding, DumpLayerComparison
from fxquant.layer_outputs.scales import scales_from_encodings

__all__ = ["compare_layer_outputs", "DEFAULT_SQNR_THRESHOLD"]

logger = logging.getLogger(__name__)

#: Default SQNR (dB) below which a tensor counts as diverged.
DEFAULT_SQNR_THRESHOLD = 20.0

Scale = tuple[np.ndarray, int | None]


class _TensorDiff:
    """One tensor's differences over instances: the core's :class:`PairSums` (SQNR), plus
    |a − b| (max, sum), bit-equal elements and the largest difference in LSBs."""

    def __init__(self) -> None:
        self.sums = PairSums()
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.equal = 0
        self.max_lsb: float | None = None
        self.bad = {"A": [0, 0], "B": [0, 0]}  # side: [NaN count, ±Inf count]

    def add(self, a: np.ndarray, b: np.ndarray, scale: Scale | None) -> None:
        for side, values in (("A", a), ("B", b)):
            if values.dtype.kind == "f":
                nan = int(np.count_nonzero(np.isnan(values)))
                self.bad[side][0] += nan
                self.bad[side][1] += int(values.size - np.count_nonzero(np.isfinite(values))) - nan
        a64 = a.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):  # inf - inf: counted as non-finite by pair_sums
            diff = a64 - b.astype(np.float64, copy=False)
        self.sums = self.sums + pair_sums(a64, b, diff)
        absdiff = np.abs(diff)
        if absdiff.size:
            self.max_abs = float(np.max([self.max_abs, absdiff.max()]))  # NaN propagates
        self.sum_abs += float(absdiff.sum())
        self.equal += int(np.count_nonzero(a == b))
        if scale is not None and absdiff.size and np.isfinite(absdiff).all():
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

    def nonfinite_note(self) -> str:
        """``"A: 3 NaN; B: 1 Inf"`` for the sides with non-finite values, or ""."""
        parts = []
        for side, (nan, inf) in self.bad.items():
            what = [f"{n} {label}" for n, label in ((nan, "NaN"), (inf, "Inf")) if n]
            if what:
                parts.append(f"{side} has {' and '.join(what)}")
        return "; ".join(parts)

    def fields(self) -> dict[str, Any]:
        """The :class:`DumpLayerComparison` fields these differences give."""
        n = self.sums.numel
        out: dict[str, Any] = {
            "elements": n, "sqnr_db": self.sums.sqnr_db, "max_abs_diff": self.max_abs,
            "mean_abs_diff": self.sum_abs / n if n else 0.0,
            "equal_fraction": self.equal / n if n else 1.0, "max_diff_lsb": self.max_lsb}
        if self.sums.nonfinite or self.nonfinite_note():
            out.update(status="nonfinite", note=self.nonfinite_note()
                       or f"{self.sums.nonfinite} differences are NaN or infinite")
        elif self.sums.zero_reference:
            out["note"] = "A is all zero and B is not (SQNR -inf dB)"
        return out


def compare_layer_outputs(dir_a: str | os.PathLike[str] | LayerOutputDump,
                          dir_b: str | os.PathLike[str] | LayerOutputDump, *,
                          encodings: Any = None,
                          sqnr_threshold: float = DEFAULT_SQNR_THRESHOLD,
                          instances: Iterable[int] | None = None,
                          names: Sequence[str] | None = None,
                          layout_a: str | None = None, layout_b: str | None = None
                          ) -> DumpComparisonReport:
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
        A :class:`~fxquant.layer_outputs.DumpComparisonReport` (a
        :class:`fxquant.ComparisonReport`).

    Raises:
        DumpFormatError: a directory is not a dump.
        ValueError: the dumps have no instance in common.
        TypeError: ``encodings`` is not one of the accepted forms.

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
    scales = scales_from_encodings(encodings)
    pairs, only_a, only_b = match_tensor_names(a, b)
    if names is not None:
        keep = set(names)
        pairs = [p for p in pairs if p[0] in keep]
    results = []
    first = None
    for name_a, name_b in pairs:
        r = _compare_one(a, b, name_a, name_b, common, scales.get(name_a))
        if r.status in ("ok", "below_threshold") and r.sqnr_db < sqnr_threshold:
            r = dataclasses.replace(r, status="below_threshold")
            first = r.name if first is None else first
        results.append(r)
    findings = _findings(a, b, results, only_a, only_b, common, instances is not None)
    report = DumpComparisonReport(a.dir_path, b.dir_path, results, only_a, only_b, common,
                                  float(sqnr_threshold), first, findings)
    logger.info("%s", report.summary())
    return report


def _findings(a: LayerOutputDump, b: LayerOutputDump, results: Sequence[DumpLayerComparison],
              only_a: Sequence[str], only_b: Sequence[str], common: Sequence[int],
              instances_given: bool) -> list[DumpFinding]:
    """What the comparison could not vouch for: non-finite values, tensors or instances on one
    side only, tensors not compared or compared on some instances only, size mismatches."""
    out = []
    for r in results:
        if r.status == "nonfinite":
            out.append(DumpFinding("nonfinite", r.name, r.note))
        elif r.status == "missing":
            out.append(DumpFinding("not_compared", r.name, r.note))
        elif r.status == "shape_mismatch":
            out.append(DumpFinding("shape_mismatch", r.name, r.note))
        if r.status != "missing" and 0 < r.instances < len(common):
            out.append(DumpFinding("not_compared", r.name,
                                   f"compared on {r.instances} of {len(common)} instances (the "
                                   "others lack it on one side)"))
    for name in only_a:
        out.append(DumpFinding("only_in_a", name, f"{b.dir_path} has no tensor {name!r}"))
    for name in only_b:
        out.append(DumpFinding("only_in_b", name, f"{a.dir_path} has no tensor {name!r}"))
    if not instances_given:
        for side, dump, other in (("A", a, b), ("B", b, a)):
            lone = sorted(set(dump.instances) - set(other.instances))
            if lone:
                out.append(DumpFinding(f"instances_only_in_{side.lower()}", None,
                                       f"instances {lone[:20]} of {dump.dir_path} are not in "
                                       f"{other.dir_path}"))
    return out


def _compare_one(a: LayerOutputDump, b: LayerOutputDump, name_a: str, name_b: str,
                 instances: Sequence[int], scale: Scale | None) -> DumpLayerComparison:
    info_a = a.info(name_a)
    info_b = b.info(name_b)
    fields: dict[str, Any] = {"name": name_a, "name_b": None if name_b == name_a else name_b,
                              "shape_a": info_a.shape, "shape_b": info_b.shape}
    if scale is not None and scale[0].size == 1:
        fields["scale"] = float(scale[0][0])
    diff = _TensorDiff()
    how: Any = None
    compared = 0
    for k in instances:
        if not (a.has(name_a, k) and b.has(name_b, k)):
            continue
        va = a.load(name_a, k)
        vb = b.load(name_b, k)
        if info_a.shape is None and info_b.shape is not None:  # only B knows the shape
            va = va.reshape(vb.shape) if va.size == vb.size else va
        shape_a = tuple(va.shape)
        if compared == 0:
            chosen = _choose_alignment(va, vb, info_a, info_b)
            if isinstance(chosen, str):
                return DumpLayerComparison(**fields, status="shape_mismatch", note=chosen)
            how, fields["permutation"], fields["ambiguous"] = chosen
        diff.add(va, align(vb, shape_a, how), scale)
        compared += 1
    if compared == 0:
        return DumpLayerComparison(**fields, status="missing",
                                   note="no instance has this tensor on both sides")
    return DumpLayerComparison(**fields, instances=compared, **diff.fields())


def _choose_alignment(va: np.ndarray, vb: np.ndarray, info_a: Any, info_b: Any
                      ) -> tuple[Any, str | None, bool] | str:
    """``(how, permutation label, ambiguous)`` for B's first instance, or why they cannot be
    compared."""
    shape_a = tuple(va.shape)
    if va.size != vb.size:
        return f"A has {va.size} elements {list(va.shape)}, B has {vb.size} {list(vb.shape)}"
    cands = alignment_candidates(shape_a, dataclasses.replace(info_b, shape=tuple(vb.shape))
                                 if info_b.shape is not None else info_b, info_a.layout)
    if not cands:
        return (f"shapes {list(shape_a)} and {list(vb.shape)} differ by more than an axis "
                "permutation")
    best = cands[0] if len(cands) == 1 else max(
        cands, key=lambda c: _quick_sqnr(va, align(vb, shape_a, c[0])))
    how, label = best
    if how is None and label == "reshape" and info_b.shape is not None:
        label = None
    return how, label, len(cands) > 1


def _quick_sqnr(a: np.ndarray, b: np.ndarray) -> float:
    sums = pair_sums(a, b)
    return sums.sqnr_db if sums.finite else -math.inf
