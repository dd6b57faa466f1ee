"""``fxquant.compare``: the numeric suite in one call.

Compares model B with model A over a data set and returns a
:class:`~fxquant.numeric_suite.report.NumericSuiteReport`: per layer the weight metric, the output
metric with both models run unshadowed, and the output metric of B's layer shadowing A's. One
pass over the data runs the shadowed model (A with B's shadows; it provides A's side of both
comparisons) and model B; loggers stream, so memory does not grow with the number of batches.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from fxquant.core.metrics import PairAccumulator, PairSums
from fxquant.numeric_suite._instrument import Instrumented, instrument
from fxquant.numeric_suite._matching import LayerPair, Matching
from fxquant.numeric_suite.api import (prepare_pair, quantized_layers_by_default,
                                       weight_results)
from fxquant.numeric_suite.loggers import OutputLogger
from fxquant.numeric_suite.metrics import Metric, get_metric
from fxquant.numeric_suite.report import NumericSuiteLayerComparison, NumericSuiteReport
from fxquant.numeric_suite.results import NSResults, logger_entry

__all__ = ["compare"]

logger = logging.getLogger(__name__)


def _metrics(metrics: Sequence[str | Callable[..., Any]]) -> list[Metric]:
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)  # type: ignore[assignment]
    out = []
    for m in metrics:
        found = get_metric(m)
        if found is None:
            raise ValueError(f"compare: {m!r} is not a streaming metric; use 'sqnr', "
                             "'normalized_l2_error' or 'cosine_similarity' (for other functions "
                             "use add_loggers(..., save_activations=True) and "
                             "extend_logger_results_with_comparison)")
        out.append(found)
    if not out:
        raise ValueError("compare: metrics is empty; pass e.g. metrics=('sqnr',)")
    return out


def _unpack(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    raise TypeError(f"compare: cannot turn a batch of type {type(batch).__qualname__} into model "
                    "inputs; pass input_fn=lambda batch: (args_tuple, kwargs_dict)")


def _batches(data: Any) -> Iterable[Any]:
    if isinstance(data, (torch.Tensor, tuple, Mapping)):
        return [data]  # one batch: a tensor, a tuple of positional inputs, or keyword inputs
    try:
        return iter(data)
    except TypeError:
        raise TypeError(f"compare: data must be a tensor (one batch), a tuple of inputs (one "
                        f"batch) or an iterable of batches (list, DataLoader …), got "
                        f"{type(data).__qualname__}") from None


def _device(model: nn.Module) -> torch.device | None:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def compare(model_a: Any, model_b: Any, data: Any,
            metrics: Sequence[str | Callable[..., Any]] = ("sqnr",), *, name_a: str = "a",
            name_b: str = "b", shadow: bool = True, weights: bool = True,
            layers: Iterable[str] | str | None = None,
            input_fn: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]] | None = None,
            num_batches: int | None = None, progress: bool | None = None) -> NumericSuiteReport:
    """Compares model B with model A layer by layer over ``data``.

    Args:
        model_a: the reference (a float model, a sim, a prepared GraphModule).
        model_b: the compared model (a sim, a torch.ao-quantized model, a float model …).
        data: one batch (a tensor, or a tuple of positional inputs) or an iterable of batches
            (each a tensor, a tuple/list of positional inputs, or a dict of keyword inputs).
        metrics: metric names ("sqnr", "normalized_l2_error", "cosine_similarity") or
            fxquant's metric functions.
        name_a: model A's name in the report.
        name_b: model B's name.
        shadow: also compute the shadowed metrics (B's layer fed A's values).
        weights: also compare weights.
        layers: None (quantized layers when a model is quantized, else all), "all", or names.
        input_fn: ``batch -> (args, kwargs)``, e.g. ``lambda b: ((b[0],), {})`` for
            (input, label) batches; tensors are moved to model A's device either way.
        num_batches: stop after this many batches.
        progress: show a progress bar (None: only on a terminal).

    Returns:
        A :class:`~fxquant.numeric_suite.NumericSuiteReport` (a :class:`fxquant.ComparisonReport`).

    Raises:
        ValueError: unknown metric, no batches, or the errors of the numeric-suite functions.
        TypeError: ``data`` or a batch cannot be used as model inputs.

    Example:
        >>> report = fxquant.compare(model, sim, [torch.randn(8, 3, 224, 224)] * 4)
        >>> print(report.table(k=5))
        >>> report.worst(1)[0].name
        'layer4.1.relu_1'
    """
    wanted = _metrics(metrics)
    if num_batches is not None and (isinstance(num_batches, bool) or num_batches < 1):
        raise ValueError(f"compare: num_batches must be a positive integer or None, got "
                         f"{num_batches!r}")
    a, b, matching = prepare_pair(name_a, model_a, name_b, model_b)
    act_pairs, weight_pairs = matching.select(layers, quantized_layers_by_default(a, b))
    weight_res = weight_results(a, b, weight_pairs if weights else [], name_a,
                                matching.unmatched)
    inst = instrument(a, b, matching, act_pairs, logger_cls=OutputLogger, log_inputs=False,
                      save_activations=False, unshadowed=True, shadowed=shadow)
    runs = [m for m in (inst.shadow if shadow else inst.a, inst.b) if m is not None]
    device = _device(a.gm)
    count = 0
    bar = tqdm(desc="compared batches", unit="batch", leave=False, disable=None if progress is
               None else not progress)
    try:
        with torch.no_grad():
            for batch in _batches(data):
                if num_batches is not None and count >= num_batches:
                    break
                args, kwargs = input_fn(batch) if input_fn is not None else _unpack(batch)
                args, kwargs = _to(args, device), _to(kwargs, device)
                for model in runs:
                    model(*args, **kwargs)
                count += 1
                bar.update(1)
    finally:
        bar.close()
    if count == 0:
        raise ValueError("compare: data yielded no batches")
    if inst.pairing is not None:
        inst.pairing.check()  # both models ran each batch once, on the same inputs
    logger.info("compared %r with %r over %d batch(es)", name_b, name_a, count)
    rows = _rows(a.layers(), matching, act_pairs, inst, weight_res, wanted, name_a, name_b)
    results = {"weight": weight_res,
               "activation": _results(inst, act_pairs, "unshadowed", matching),
               "shadowed": _results(inst, act_pairs, "shadowed", matching) if shadow
               else NSResults(unmatched=inst.unmatched)}
    return NumericSuiteReport(rows, [m.name for m in wanted], name_a, name_b, count,
                              inst.unmatched, results)


def _rows(order: Mapping[str, Any], matching: Matching, pairs: list[LayerPair],
          inst: Instrumented, weight_res: NSResults, metrics: list[Metric], name_a: str,
          name_b: str) -> list[NumericSuiteLayerComparison]:
    by_key = {p.key_a: p for p in pairs}
    weight_types = {w.key_a: (w.key_b, w.op_type_a) for w in matching.weights}
    rows = []
    for layer in order:
        pair = by_key.get(layer)
        sums: dict[str, PairSums] = {}
        if pair is not None:
            site = (pair.key_a, "node_output", 0, 0)
            if site in inst.unshadowed:
                sums["activation"] = inst.unshadowed[site].stats.result()
            if site in inst.shadowed and inst.shadowed[site].stats.count:
                sums["shadowed"] = inst.shadowed[site].stats.result()
        if layer in weight_res:
            entries = weight_res[layer]["weight"]
            wa, wb = entries[name_a][0]["values"], entries[name_b][0]["values"]
            if wa and wb:
                sums["weight"] = PairAccumulator.of(wa[0], wb[0]).result()
        if not sums:
            continue
        if pair is not None:
            name_b_layer, op_type = pair.key_b, pair.op_type_a
        else:
            name_b_layer, op_type = weight_types[layer]
        values = {kind: {m.name: m.from_stats(s) for m in metrics} for kind, s in sums.items()}
        rows.append(NumericSuiteLayerComparison(
            layer, name_b=name_b_layer, op_type=op_type.rsplit(".", 1)[-1], **values,
            notes=_notes(sums)))
    flagged = [r.name for r in rows if r.notes]
    if flagged:
        logger.warning("%d layer(s) have NaN/inf values or an all-zero reference (see the "
                       "report's notes): %s", len(flagged), ", ".join(flagged[:10]))
    return rows


def _notes(sums: Mapping[str, PairSums]) -> tuple[str, ...]:
    """What the metric values alone do not say: NaN/inf inputs, an all-zero reference."""
    notes = []
    for kind, s in sums.items():
        if s.nonfinite:
            notes.append(f"{kind}: {s.nonfinite} NaN/inf element(s)")
        elif s.zero_reference:
            notes.append(f"{kind}: all-zero reference (SQNR -inf dB)")
    return tuple(notes)


def _results(inst: Instrumented, pairs: list[LayerPair], mode: str, matching: Matching
             ) -> NSResults:
    comparisons = inst.unshadowed if mode == "unshadowed" else inst.shadowed
    others = inst.loggers_b if mode == "unshadowed" else inst.loggers_shadow
    results = NSResults(unmatched=inst.unmatched)
    for pair in pairs:
        site = (pair.key_a, "node_output", 0, 0)
        comparison = comparisons.get(site)
        if comparison is None:
            continue
        by_model = results.setdefault(pair.key_a, {}).setdefault("node_output", {})
        by_model[matching.name_a] = [logger_entry(inst.loggers_a[site], [(comparison, 0)])]
        by_model[matching.name_b] = [logger_entry(others[site], [(comparison, 1)])]
    return results
