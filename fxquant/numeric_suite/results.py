"""Results in the nested shape of ``torch.ao.ns._numeric_suite_fx`` (SPEC §6)::

    {layer_name: {"weight" | "node_output" | "node_input": {model_name: [entry, ...]}}}

Each entry has torch's keys (``type``, ``values``, ``prev_node_name``, ``prev_node_target_type``,
``ref_node_name``, ``ref_node_target_type``, ``index_within_arg``, ``index_of_arg``, ``fqn``,
``qconfig_str``, and one list per comparison added by
:func:`extend_logger_results_with_comparison`), plus fxquant's:

* ``layer_name``: the layer's canonical name in this entry's model;
* ``stats``: running sums of what the model computed (``count``, ``numel``, ``sum``, ``sum_sq``,
  ``mean``, ``min``, ``max``);
* ``comparison_stats``: ``{other model: {"count", "numel", "signal", "signal_b", "noise",
  "dot", "nonfinite"}}`` — the streaming comparison with the other model at this layer, with the
  other model as the reference (``signal`` = its power ``Σx²``, ``signal_b`` = this model's,
  ``noise`` = ``Σ(x − y)²``, ``dot`` = ``Σxy``, ``nonfinite`` = elements where either value was
  NaN or inf); :class:`fxquant.core.metrics.PairSums` reads it back (``PairSums.from_dict``).

``values`` holds every logged tensor, in call order (torch's semantics, the default of
:func:`~fxquant.numeric_suite.add_loggers` and :func:`~fxquant.numeric_suite.add_shadow_loggers`);
streaming loggers (``save_activations=False``, :func:`fxquant.compare`) keep it empty and report
through ``stats`` and ``comparison_stats``. A layer only one model logged never appears: it is
listed in ``unmatched``.
The dict is an :class:`NSResults`, whose ``unmatched`` lists the layers that were not compared.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from fxquant import _meta
from fxquant.numeric_suite._matching import UnmatchedLayer
from fxquant.numeric_suite.errors import PairingError
from fxquant.numeric_suite.loggers import CallClock, OutputLogger
from fxquant.numeric_suite.metrics import get_metric
from fxquant.numeric_suite.stats import Comparison

__all__ = ["NSResults", "extend_logger_results_with_comparison", "collect_logger_results",
           "logger_entry"]

logger = logging.getLogger(__name__)


class NSResults(dict):
    """A results dict (see the module docstring) that also lists what was not compared.

    Attributes:
        unmatched: :class:`~fxquant.numeric_suite.UnmatchedLayer` entries (layer, model, reason).

    Example:
        >>> results = fxquant.ns.extract_weights("float", model, "int8", sim)
        >>> [u.layer for u in results.unmatched]
        []
    """

    def __init__(self, *args: Any, unmatched: Iterable[UnmatchedLayer] = (), **kwargs: Any
                 ) -> None:
        super().__init__(*args, **kwargs)
        self.unmatched: tuple[UnmatchedLayer, ...] = tuple(unmatched)

    def __reduce__(self) -> Any:
        return (type(self), (dict(self),), {"unmatched": self.unmatched})


def logger_entry(log: OutputLogger, comparisons: Sequence[tuple[Comparison, int]] | None = None
                 ) -> dict[str, Any]:
    """The results entry of one logger (``comparisons`` defaults to all it feeds)."""
    links = log.links if comparisons is None else comparisons
    return {
        "type": log.results_type,
        "values": list(log.stats),
        "ref_node_name": log.ref_node_name,
        "ref_node_target_type": log.ref_node_target_type,
        "prev_node_name": log.prev_node_name,
        "prev_node_target_type": log.prev_node_target_type,
        "index_within_arg": log.index_within_arg,
        "index_of_arg": log.index_of_arg,
        "fqn": log.fqn,
        "qconfig_str": log.qconfig_str,
        "layer_name": log.ref_name,
        "stats": log.running.as_dict(),
        "comparison_stats": {c.model_names[1 - side]: _as_reference(c.stats.as_dict(), side)
                             for c, side in links},
    }


def _as_reference(stats: dict[str, Any], side: int) -> dict[str, Any]:
    """Orients pair sums so that ``signal`` is the *other* model's power (it is the reference
    when this entry's model is compared with it)."""
    if side == 1:
        return stats
    out = dict(stats)
    out["signal"], out["signal_b"] = stats["signal_b"], stats["signal"]
    return out


def _unmatched_of(models: Iterable[nn.Module]) -> tuple[UnmatchedLayer, ...]:
    seen: dict[tuple[str, str], UnmatchedLayer] = {}
    for model in models:
        for u in _meta.graph_get(model, _meta.NS_UNMATCHED, ()):
            seen.setdefault((u.layer, u.model), u)
    return tuple(seen.values())


def collect_logger_results(models: Sequence[nn.Module], logger_cls: type,
                           model_name_to_use_for_layer_names: str | None) -> NSResults:
    """Gathers the entries of every ``logger_cls`` logger of ``models`` into an NSResults.

    Raises:
        TypeError: ``logger_cls`` is not an OutputLogger class.
        ValueError: no loggers found, or the model name is not one of the compared models.
    """
    if not (isinstance(logger_cls, type) and issubclass(logger_cls, OutputLogger)):
        raise TypeError(f"logger_cls must be fxquant.numeric_suite.OutputLogger or a subclass, "
                        f"got {logger_cls!r}; torch.ao.ns loggers cannot be read by fxquant")
    loggers: list[OutputLogger] = []
    seen: set[int] = set()
    for model in models:
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected models returned by add_loggers/add_shadow_loggers, got "
                            f"{type(model).__qualname__}")
        for module in model.modules():
            if isinstance(module, logger_cls) and id(module) not in seen:
                seen.add(id(module))
                loggers.append(module)
    if not loggers:
        raise ValueError(f"no {logger_cls.__name__} found in the given model(s); instrument them "
                         "with fxquant.ns.add_loggers or add_shadow_loggers and run them first")
    names = sorted({name for log in loggers for name in log.layer_names})
    use = model_name_to_use_for_layer_names
    if use is None:
        use = next(iter(loggers[0].layer_names))
    elif use not in names:
        raise ValueError(f"model_name_to_use_for_layer_names={use!r} is not one of the compared "
                         f"models {names}")
    _check_pairing(models, loggers)
    results = NSResults(unmatched=_unmatched_of(models))
    for log in loggers:
        key = log.layer_names.get(use, log.ref_name)
        by_model = results.setdefault(key, {}).setdefault(log.results_type, {})
        by_model.setdefault(log.model_name, []).append(logger_entry(log))
    _drop_one_sided(results, names)
    for by_type in results.values():
        for by_model in by_type.values():
            for entries in by_model.values():
                entries.sort(key=lambda e: (e["index_of_arg"], e["index_within_arg"]))
    return results


def _check_pairing(models: Sequence[nn.Module], loggers: Sequence[OutputLogger]) -> None:
    """Raises PairingError when the compared models' calls do not pair up."""
    pairings = {id(m.pairing): m.pairing for model in models for m in model.modules()
                if isinstance(m, CallClock) and m.pairing is not None}
    for pairing in pairings.values():
        pairing.check()
    for log in loggers:
        for comparison, side in log.links:
            if side == 0 and comparison.pending:
                for s in (0, 1):
                    waiting = comparison.pending_calls(s)
                    if waiting:
                        a, b = comparison.model_names[s], comparison.model_names[1 - s]
                        raise PairingError(
                            f"layer {comparison.key!r}: model {a!r} logged call(s) {waiting[:5]} "
                            f"here but model {b!r}'s same call(s) never reached this layer (did "
                            "its forward raise?); reset both models' loggers "
                            "(fxquant.ns.loggers_reset) and run them again",
                            layer=comparison.key, call=waiting[0])


def _drop_one_sided(results: NSResults, names: Sequence[str]) -> None:
    """Moves layers that only one model logged from ``results`` to ``results.unmatched``
    (torch-style code indexes both models at every layer)."""
    if len(names) < 2:
        return
    dropped: list[UnmatchedLayer] = []
    for layer in list(results):
        for results_type in list(results[layer]):
            by_model = results[layer][results_type]
            if len(by_model) < len(names):
                present = sorted(by_model)
                missing = [n for n in names if n not in by_model]
                dropped.append(UnmatchedLayer(layer, present[0], (
                    f"{results_type} logged by model(s) {present} only, not by {missing}")))
                del results[layer][results_type]
        if not results[layer]:
            del results[layer]
    if dropped:
        results.unmatched = results.unmatched + tuple(dropped)
        logger.warning("%d layer(s) have results of one model only and are listed in "
                       "results.unmatched instead: %s", len(dropped),
                       ", ".join(u.layer for u in dropped[:10]))


def extend_logger_results_with_comparison(results: dict[str, Any], model_name_1: str,
                                          model_name_2: str,
                                          comparison_fn: Callable[[Any, Any], Any],
                                          comparison_name: str) -> None:
    """Compares ``model_name_2``'s values with ``model_name_1``'s at every layer and stores the
    outcome in ``model_name_2``'s entries under ``comparison_name`` (in place), as torch does.

    When both entries hold tensors (weights, or loggers with ``save_activations=True``) the
    comparison is ``[comparison_fn(v1, v2)]`` per recorded value, as in torch. Streaming loggers
    keep no tensors: for fxquant's (or torch's) ``compute_sqnr``,
    ``compute_normalized_l2_error`` and ``compute_cosine_similarity`` the value is computed from
    the running sums over every batch, as a one-element list.

    Args:
        results: from :func:`extract_weights`, :func:`extract_logger_info` or
            :func:`extract_shadow_logger_info`.
        model_name_1: the reference model.
        model_name_2: the compared model.
        comparison_fn: ``fn(x_ref, y) -> Tensor``.
        comparison_name: key to store the values under, e.g. "sqnr".

    Raises:
        ValueError: a model name is missing from a layer's results, or a custom comparison
            needs tensors that streaming loggers did not keep.

    Example:
        >>> results = fxquant.ns.extract_logger_info(a_ns, b_ns, OutputLogger, "float")
        >>> extend_logger_results_with_comparison(results, "float", "int8", compute_sqnr, "sqnr")
        >>> results["layer1.0.relu"]["node_output"]["int8"][0]["sqnr"]
        [tensor(31.2)]
    """
    metric = get_metric(comparison_fn)
    for layer, by_type in results.items():
        for results_type, by_model in by_type.items():
            for name in (model_name_1, model_name_2):
                if name not in by_model:
                    raise ValueError(f"layer {layer!r} ({results_type}) has no results of model "
                                     f"{name!r}; its results are for {sorted(by_model)}")
            firsts = {(e["index_of_arg"], e["index_within_arg"]): e
                      for e in by_model[model_name_1]}
            for entry in by_model[model_name_2]:
                index = (entry["index_of_arg"], entry["index_within_arg"])
                first = firsts.get(index)
                if first is None:
                    raise ValueError(f"layer {layer!r}: model {model_name_1!r} has no "
                                     f"{results_type} at argument {index}")
                if first["values"] and entry["values"]:
                    entry[comparison_name] = [comparison_fn(v1, v2) for v1, v2
                                              in zip(first["values"], entry["values"])]
                    continue
                stats = entry.get("comparison_stats", {}).get(model_name_1)
                if metric is None or stats is None:
                    raise ValueError(
                        f"layer {layer!r}: {comparison_name!r} needs the tensors both models "
                        f"computed, but the loggers kept running sums only; use compute_sqnr, "
                        f"compute_normalized_l2_error or compute_cosine_similarity, or add "
                        f"loggers with save_activations=True")
                entry[comparison_name] = [torch.tensor(metric.from_stats(stats),
                                                       dtype=torch.float32)]
