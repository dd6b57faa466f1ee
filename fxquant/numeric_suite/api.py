"""The numeric-suite functions, with the call shapes of ``torch.ao.ns._numeric_suite_fx``.

Models can be float ``nn.Module``s, fxquant sims (``QuantizationSimModel`` or its ``.model``),
prepared GraphModules, or torch.ao-quantized models (``convert_fx`` output). Each function works on
private prepared copies: the caller's models are never changed. Layers are matched by canonical
name (see :mod:`fxquant.numeric_suite._matching`); what cannot be matched is listed in the
results' ``unmatched`` and logged; two models with no layer in common raise
:class:`~fxquant.numeric_suite.NoMatchingLayersError` at once.

By default (``layers=None``) a comparison involving a quantized model covers its quantized layers:
for a sim, the layers with an output quantizer (activations) or weight quantizer (weights) —
enabled or disabled: a layer whose quantizers were turned off is still reported — with the
activation taken after the output quantizer; for a torch.ao model every layer, as torch reports.
``layers="all"`` compares every matched layer, a list compares those.

Entries report, as torch does, the type of the layer that computed the value
(``prev_node_target_type``, e.g. ``"torch.nn.modules.conv.Conv2d"``), never the quantizer.

Example:
    >>> a_ns, b_ns = fxquant.ns.add_loggers("float", model, "int8", sim)
    >>> with torch.no_grad():
    ...     for x in batches:
    ...         a_ns(x); b_ns(x)
    >>> results = fxquant.ns.extract_logger_info(a_ns, b_ns, fxquant.ns.OutputLogger, "float")
    >>> fxquant.ns.extend_logger_results_with_comparison(results, "float", "int8",
    ...                                                 fxquant.ns.compute_sqnr, "sqnr")
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, cast

import torch
import torch.fx
from torch import nn

from fxquant.numeric_suite._instrument import Instrumented, instrument
from fxquant.numeric_suite._matching import Matching, UnmatchedLayer, WeightPair, match_layers
from fxquant.numeric_suite.compared_models import (FLOAT, PreparedModel,
                                                   align_batch_norm_folding,
                                                   prepare_for_comparison, weight_of)
from fxquant.numeric_suite.loggers import OutputLogger
from fxquant.numeric_suite.results import NSResults, collect_logger_results
from fxquant.core.layers import param_quantizers, type_name
from fxquant.numeric_suite.errors import NoMatchingLayersError

__all__ = ["extract_weights", "add_loggers", "add_shadow_loggers", "extract_logger_info",
           "extract_shadow_logger_info", "prepare_pair", "weight_results",
           "quantized_layers_by_default"]

logger = logging.getLogger(__name__)


def _reject_torch_options(function: str, **options: Any) -> None:
    for name, value in options.items():
        if value is not None:
            raise TypeError(f"{function}: {name} is a torch.ao.ns option fxquant does not use "
                            "(layers are matched by canonical layer name, not by op type); drop "
                            "it, and choose layers with layers=[...]")


def _check_names(name_a: Any, name_b: Any) -> None:
    for label, name in (("name_a", name_a), ("name_b", name_b)):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{label} must be a non-empty string naming the model, got "
                             f"{name!r}")
    if name_a == name_b:
        raise ValueError(f"the two models need different names, both are {name_a!r}")


def _check_logger_cls(logger_cls: Any) -> type[OutputLogger]:
    if not (isinstance(logger_cls, type) and issubclass(logger_cls, OutputLogger)):
        raise TypeError(f"logger_cls must be fxquant.numeric_suite.OutputLogger or a subclass, "
                        f"got {logger_cls!r}")
    return logger_cls


def prepare_pair(name_a: str, model_a: Any, name_b: str, model_b: Any
                 ) -> tuple[PreparedModel, PreparedModel, Matching]:
    """Private prepared copies of both models (batch-norm folding aligned) and their matching.

    Example:
        >>> a, b, matching = prepare_pair("float", model, "int8", sim)
        >>> [u.layer for u in matching.unmatched]
        []
    """
    _check_names(name_a, name_b)
    a = prepare_for_comparison(model_a, name_a)
    b = prepare_for_comparison(model_b, name_b)
    align_batch_norm_folding(a, b)
    matching = match_layers(a, b)
    if not matching.activations:
        raise NoMatchingLayersError(_nothing_matched(a, b, matching))
    _log_unmatched(matching.unmatched)
    return a, b, matching


def _layer_list(p: PreparedModel, limit: int = 6) -> str:
    layers = p.layers()
    shown = [f"{name} ({type_name(p.gm, node).rsplit('.', 1)[-1]})"
             for name, node in list(layers.items())[:limit]]
    more = f", … ({len(layers)} in all)" if len(layers) > limit else ""
    return (", ".join(shown) + more) if shown else "none"


def _nothing_matched(a: PreparedModel, b: PreparedModel, matching: Matching) -> str:
    """Why no layer of ``a`` matched one of ``b``, and what to do."""
    why = [u for u in matching.unmatched if "has a" in u.reason]
    detail = f"; e.g. {why[0].layer!r}: {why[0].reason}" if why else ""
    return (f"no layer of model {a.name!r} matches a layer of model {b.name!r}: layers are "
            f"matched by canonical name (module path after fxquant.prepare_model) and type, "
            f"and model {a.name!r} has [{_layer_list(a)}] while model {b.name!r} has "
            f"[{_layer_list(b)}]{detail}. Compare two versions of the same architecture "
            f"(e.g. a model and fxquant.QuantizationSimModel(model, ...)), with the same "
            f"module names")


def _log_unmatched(unmatched: Iterable[UnmatchedLayer]) -> None:
    unmatched = list(unmatched)
    if unmatched:
        logger.info("%d layer(s) are not compared: %s", len(unmatched),
                    "; ".join(f"{u.model}:{u.layer} ({u.reason})" for u in unmatched[:10])
                    + (" …" if len(unmatched) > 10 else ""))


def quantized_layers_by_default(a: PreparedModel, b: PreparedModel) -> bool:
    """Whether ``layers=None`` means "only the quantized layers" (a model is quantized)."""
    return a.kind != FLOAT or b.kind != FLOAT


def extract_weights(name_a: str, model_a: Any, name_b: str, model_b: Any,
                    base_name_to_sets_of_related_ops: Any = None,
                    unmatchable_types_map: Any = None,
                    op_to_type_to_weight_extraction_fn: Any = None, *,
                    layers: Iterable[str] | str | None = None,
                    model_name_to_use_for_layer_names: str | None = None) -> NSResults:
    """The weights of matched layers of both models, in torch's results shape.

    A sim's weight is the fake-quantized one (its parametrization); a torch.ao quantized
    module's is ``module.weight()`` dequantized.

    Args:
        name_a: name of model A (the reference) in the results.
        model_a: model A.
        name_b: name of model B.
        model_b: model B.
        base_name_to_sets_of_related_ops: torch option, not used (must be None).
        unmatchable_types_map: torch option, not used (must be None).
        op_to_type_to_weight_extraction_fn: torch option, not used (must be None).
        layers: None (quantized weights when a model is quantized, else all), "all", or names.
        model_name_to_use_for_layer_names: whose layer names key the results (default A's).

    Returns:
        ``{layer: {"weight": {name_a: [entry], name_b: [entry]}}}`` (an :class:`NSResults`).

    Raises:
        TypeError: a torch-only option was given, or a model is not a module.
        ValueError: bad names, unknown layers, or an uncalibrated sim.

    Example:
        >>> results = extract_weights("float", model, "int8", sim)
        >>> extend_logger_results_with_comparison(results, "float", "int8", compute_sqnr, "sqnr")
        >>> results["conv1"]["weight"]["int8"][0]["sqnr"]
        [tensor(43.1)]
    """
    _reject_torch_options("extract_weights",
                          base_name_to_sets_of_related_ops=base_name_to_sets_of_related_ops,
                          unmatchable_types_map=unmatchable_types_map,
                          op_to_type_to_weight_extraction_fn=op_to_type_to_weight_extraction_fn)
    a, b, matching = prepare_pair(name_a, model_a, name_b, model_b)
    _, pairs = matching.select(layers, quantized_layers_by_default(a, b))
    use = model_name_to_use_for_layer_names or name_a
    if use not in (name_a, name_b):
        raise ValueError(f"model_name_to_use_for_layer_names={use!r} is not one of the compared "
                         f"models {[name_a, name_b]}")
    return weight_results(a, b, pairs, use, matching.unmatched)


def weight_results(a: PreparedModel, b: PreparedModel, pairs: Iterable[WeightPair], use: str,
                   unmatched: Iterable[UnmatchedLayer] = ()) -> NSResults:
    """``{layer: {"weight": {a.name: [entry], b.name: [entry]}}}`` for ``pairs``, keyed by the
    layer names of model ``use``."""
    results = NSResults(unmatched=unmatched)
    for pair in pairs:
        key = pair.key_a if use == a.name else pair.key_b
        entry: dict[str, list[dict[str, Any]]] = {}
        for p, layer, op_type in ((a, pair.key_a, pair.op_type_a),
                                  (b, pair.key_b, pair.op_type_b)):
            weight = weight_of(p.gm.get_submodule(layer))
            node = p.layers()[layer]
            entry[p.name] = [{
                "type": "weight", "values": [] if weight is None else [weight],
                "prev_node_name": node.name, "prev_node_target_type": op_type,
                "ref_node_name": node.name, "ref_node_target_type": op_type,
                "index_within_arg": 0, "index_of_arg": 0, "fqn": layer,
                "qconfig_str": _weight_qconfig(p, layer), "layer_name": layer}]
        results[key] = {"weight": entry}
    return results


def _weight_qconfig(p: PreparedModel, layer: str) -> str:
    quantizer = param_quantizers(p.gm.get_submodule(layer)).get("weight")
    if quantizer is None:
        return ""
    return f"{type(quantizer).__name__}({quantizer.extra_repr()})"


def add_loggers(name_a: str, model_a: Any, name_b: str, model_b: Any,
                logger_cls: type[OutputLogger] = OutputLogger, should_log_inputs: bool = False,
                base_name_to_sets_of_related_ops: Any = None,
                unmatchable_types_map: Any = None, *,
                layers: Iterable[str] | str | None = None,
                save_activations: bool = True
                ) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    """Copies of both models with a logger after each matched layer (unshadowed comparison).

    Run both returned models on the same inputs in the same order (alternately per batch, or
    all of A's batches then all of B's): call ``i`` of model A is compared with call ``i`` of
    model B, and a call whose inputs differ from the other model's call of the same index raises
    :class:`~fxquant.numeric_suite.PairingError` (at once on the CPU; when results are extracted
    on an accelerator). As torch's loggers do, every logged tensor is kept (``values``); pass
    ``save_activations=False`` to stream instead (running sums compared on the fly, memory
    constant over any number of batches; :func:`fxquant.compare` always streams). The
    difference at a layer includes the error propagated from earlier layers; see
    :func:`add_shadow_loggers` to separate a layer's own error.

    Args:
        name_a: name of model A (the reference).
        model_a: model A.
        name_b: name of model B.
        model_b: model B.
        logger_cls: :class:`OutputLogger` or a subclass.
        should_log_inputs: also log each layer's inputs ("node_input" results).
        base_name_to_sets_of_related_ops: torch option, not used (must be None).
        unmatchable_types_map: torch option, not used (must be None).
        layers: None (quantized layers when a model is quantized, else all), "all", or names.
        save_activations: keep every logged tensor in ``values`` (torch's semantics, the
            default; memory grows with batches); False streams (statistics only).

    Returns:
        ``(model_a_with_loggers, model_b_with_loggers)``, GraphModules.

    Raises:
        NoMatchingLayersError: the two models have no layer in common, or none is selected.

    Example:
        >>> a_ns, b_ns = add_loggers("float", model, "int8", sim)
        >>> with torch.no_grad():
        ...     a_ns(x); b_ns(x)
        >>> results = extract_logger_info(a_ns, b_ns, OutputLogger, "float")
    """
    _reject_torch_options("add_loggers",
                          base_name_to_sets_of_related_ops=base_name_to_sets_of_related_ops,
                          unmatchable_types_map=unmatchable_types_map)
    inst = _instrumented((name_a, model_a, name_b, model_b), logger_cls, layers,
                         log_inputs=should_log_inputs, save_activations=save_activations,
                         shadowed=False)
    return cast(torch.fx.GraphModule, inst.a), cast(torch.fx.GraphModule, inst.b)


def add_shadow_loggers(name_a: str, model_a: Any, name_b: str, model_b: Any,
                       logger_cls: type[OutputLogger] = OutputLogger,
                       should_log_inputs: bool = False,
                       base_name_to_sets_of_related_ops: Any = None,
                       node_type_to_io_type_map: Any = None,
                       unmatchable_types_map: Any = None, *,
                       layers: Iterable[str] | str | None = None,
                       save_activations: bool = True) -> torch.fx.GraphModule:
    """One model that runs model A and, beside each matched layer, model B's version of it fed
    model A's values (a *shadow*), with loggers on both.

    The shadow of a sim's layer is what the target computes between two quantized tensors: the
    layer's op, the ops fused with it (the conv before its ReLU) and data-movement ops after the
    last quantizer, then the layer's output quantizer; its inputs are model A's values passed
    through model B's quantizers of those tensors. Multi-input layers (add, mul, cat) are
    shadowed like any other. Comparing A's output with the shadow's measures the layer's own
    error, without what earlier layers propagate. Layers that cannot be shadowed are listed in
    the results' ``unmatched``.

    Args:
        name_a: name of model A (the reference; its graph runs).
        model_a: model A (not a torch.ao quantized model).
        name_b: name of model B (the shadowed one).
        model_b: model B.
        logger_cls: :class:`OutputLogger` or a subclass.
        should_log_inputs: also log the inputs of each layer and its shadow.
        base_name_to_sets_of_related_ops: torch option, not used (must be None).
        node_type_to_io_type_map: torch option, not used (must be None).
        unmatchable_types_map: torch option, not used (must be None).
        layers: None (quantized layers when a model is quantized, else all), "all", or names.
        save_activations: keep every logged tensor in ``values`` (torch's semantics, the
            default); False streams (statistics only).

    Returns:
        The shadowed GraphModule; its outputs are model A's.

    Raises:
        NoMatchingLayersError: the two models have no layer in common, or none is selected.

    Example:
        >>> shadow = add_shadow_loggers("float", model, "int8", sim)
        >>> with torch.no_grad():
        ...     shadow(x)
        >>> results = extract_shadow_logger_info(shadow, OutputLogger, "float")
    """
    _reject_torch_options("add_shadow_loggers",
                          base_name_to_sets_of_related_ops=base_name_to_sets_of_related_ops,
                          node_type_to_io_type_map=node_type_to_io_type_map,
                          unmatchable_types_map=unmatchable_types_map)
    inst = _instrumented((name_a, model_a, name_b, model_b), logger_cls, layers,
                         log_inputs=should_log_inputs, save_activations=save_activations,
                         shadowed=True)
    return cast(torch.fx.GraphModule, inst.shadow)


def _instrumented(models: tuple[str, Any, str, Any], logger_cls: Any,
                  layers: Iterable[str] | str | None, *, log_inputs: bool,
                  save_activations: bool, shadowed: bool) -> Instrumented:
    """Prepares ``(name_a, model_a, name_b, model_b)`` and puts loggers on the selected layers:
    unshadowed (on both models) or shadowed (B's shadows in A)."""
    logger_cls = _check_logger_cls(logger_cls)
    a, b, matching = prepare_pair(*models)
    pairs, _ = matching.select(layers, quantized_layers_by_default(a, b))
    if not pairs:
        raise NoMatchingLayersError(
            f"no layer of model {a.name!r} and model {b.name!r} is selected for logging: "
            f"layers={layers!r} selects the layers that a model quantizes, and neither model "
            f"has a quantizer on a matched layer's output; pass layers='all' to log every "
            f"matched layer ({len(matching.activations)})")
    return instrument(a, b, matching, pairs, logger_cls=logger_cls, log_inputs=log_inputs,
                      save_activations=save_activations, unshadowed=not shadowed,
                      shadowed=shadowed)


def extract_logger_info(model_a: nn.Module, model_b: nn.Module,
                        logger_cls: type[OutputLogger] = OutputLogger,
                        model_name_to_use_for_layer_names: str | None = None) -> NSResults:
    """The results of the loggers :func:`add_loggers` put in both models.

    Args:
        model_a: first returned model.
        model_b: second returned model.
        logger_cls: the logger class used.
        model_name_to_use_for_layer_names: whose canonical layer names key the results (they
            differ only across torch.ao fused modules); default model A's.

    Returns:
        ``{layer: {"node_output" | "node_input": {model: [entry]}}}`` (an :class:`NSResults`).

    Raises:
        ValueError: no loggers found, or an unknown model name.

    Example:
        >>> results = extract_logger_info(a_ns, b_ns, OutputLogger, "float")
        >>> results["conv1"]["node_output"]["int8"][0]["comparison_stats"]["float"]["noise"]
        0.0123
    """
    return collect_logger_results([model_a, model_b], logger_cls,
                                  model_name_to_use_for_layer_names)


def extract_shadow_logger_info(model_a_shadows_b: nn.Module,
                               logger_cls: type[OutputLogger] = OutputLogger,
                               model_name_to_use_for_layer_names: str | None = None
                               ) -> NSResults:
    """The results of the loggers :func:`add_shadow_loggers` put in the shadowed model.

    Args:
        model_a_shadows_b: the model returned by :func:`add_shadow_loggers`.
        logger_cls: the logger class used.
        model_name_to_use_for_layer_names: whose layer names key the results; default A's.

    Returns:
        ``{layer: {"node_output": {name_a: [entry], name_b: [entry]}}}`` (an NSResults).

    Example:
        >>> results = extract_shadow_logger_info(shadow, OutputLogger, "float")
        >>> extend_logger_results_with_comparison(results, "float", "int8", compute_sqnr, "sqnr")
    """
    return collect_logger_results([model_a_shadows_b], logger_cls,
                                  model_name_to_use_for_layer_names)
