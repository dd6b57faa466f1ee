"""Building instrumented models: loggers on both models, shadows, and the links between loggers
that compare the same layer."""
from __future__ import annotations

import dataclasses
import logging

import torch
import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.numeric_suite._matching import LayerPair, Matching, UnmatchedLayer
from fxquant.core.layers import is_layer
from fxquant.numeric_suite.compared_models import (TORCH_QUANTIZED, PreparedModel,
                                                   is_torch_quantized_module)
from fxquant.numeric_suite.loggers import CallClock, OutputLogger
from fxquant.numeric_suite.stats import CallPairing, Comparison
from fxquant.passes.insert_loggers import (LOGGER_ROOT, InsertLoggersPass, LogSite,
                                           add_input_observer, logged_output_node)
from fxquant.passes.insert_shadows import InsertShadowsPass, ShadowSite
from fxquant.quantsim.quantizer import QuantizerBase

__all__ = ["Instrumented", "instrument", "Requantize"]

logger = logging.getLogger(__name__)

_SiteKey = tuple[str, str, int, int]  # (model A's key, results type, index of arg, within arg)


class Requantize(nn.Module):
    """Quantizes a (float or quantized) tensor per tensor, as a torch.ao quantized module
    quantizes its output: the quantization point of a torch.ao-quantized model B in a shadow.

    Example:
        >>> Requantize(0.1, 128)(torch.tensor([0.26])).dequantize()
        tensor([0.3000])
    """

    def __init__(self, scale: float, zero_point: int, dtype: torch.dtype = torch.quint8) -> None:
        super().__init__()
        self.scale = float(scale)
        self.zero_point = int(zero_point)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_quantized:
            x = x.dequantize()
        return torch.quantize_per_tensor(x, self.scale, self.zero_point, self.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, zero_point={self.zero_point}, dtype={self.dtype}"


def _torch_quantization_point(gm: torch.fx.GraphModule, node: torch.fx.Node
                              ) -> tuple[torch.fx.Node, nn.Module] | None:
    if not is_layer(node):
        return None
    module = gm.get_submodule(str(node.target))
    if not is_torch_quantized_module(module) or not hasattr(module, "scale"):
        return None
    return node, Requantize(float(module.scale), int(module.zero_point))


def _qconfig_str(p: PreparedModel, layer: str) -> str:
    node = p.layers().get(layer)
    if node is None:
        return ""
    value = logged_output_node(node)
    module = p.gm.get_submodule(str(value.target)) if value.op == "call_module" else None
    if isinstance(module, QuantizerBase):
        return f"{type(module).__name__}({module.extra_repr()})"
    return ""


class _Factory:
    """Creates the logger of one side for each wanted site and remembers it by site key."""

    def __init__(self, side: str, model_name: str, names: tuple[str, str],
                 wanted: dict[tuple[str, str], LayerPair], qconfig: dict[str, str],
                 logger_cls: type[OutputLogger], save_activations: bool) -> None:
        self.side = side
        self.model_name = model_name
        self.names = names
        self.wanted = wanted
        self.qconfig = qconfig
        self.logger_cls = logger_cls
        self.save_activations = save_activations
        self.created: dict[_SiteKey, OutputLogger] = {}

    def __call__(self, site: LogSite | ShadowSite) -> OutputLogger | None:
        lookup = site.key if isinstance(site, ShadowSite) else site.layer
        pair = self.wanted.get((lookup, site.results_type))
        if pair is None:
            return None
        own = pair.key_a if self.side == "a" else pair.key_b
        module = self.logger_cls(
            site.op_node, site.value_node, self.model_name, own, site.value_type, site.op_type,
            site.results_type, site.index_within_arg, site.index_of_arg, site.layer,
            self.qconfig.get(pair.key_a, ""), save_activations=self.save_activations)
        module.layer_names = {self.names[0]: pair.key_a, self.names[1]: pair.key_b}
        self.created[(pair.key_a, site.results_type, site.index_of_arg,
                      site.index_within_arg)] = module
        return module


@dataclasses.dataclass
class Instrumented:
    """Instrumented copies and the comparisons between their loggers.

    Attributes:
        a: model A with loggers (unshadowed mode), or None.
        b: model B with loggers (unshadowed or both modes), or None.
        shadow: model A with B's shadows and loggers on both (shadowed or both modes), or None.
        unshadowed: site key -> comparison of A's and B's loggers.
        shadowed: site key -> comparison of A's logger and the shadow's.
        loggers_a / loggers_b / loggers_shadow: site key -> logger.
        unmatched: layers not compared, with reasons (including unshadowable ones).
        pairing: checks that the two models' calls pair up (None for a shadowed model alone,
            whose two sides run in one forward).
    """

    a: torch.fx.GraphModule | None
    b: torch.fx.GraphModule | None
    shadow: torch.fx.GraphModule | None
    unshadowed: dict[_SiteKey, Comparison]
    shadowed: dict[_SiteKey, Comparison]
    loggers_a: dict[_SiteKey, OutputLogger]
    loggers_b: dict[_SiteKey, OutputLogger]
    loggers_shadow: dict[_SiteKey, OutputLogger]
    unmatched: list[UnmatchedLayer]
    pairing: CallPairing | None = None


def _link(first: dict[_SiteKey, OutputLogger], second: dict[_SiteKey, OutputLogger],
          names: tuple[str, str]) -> dict[_SiteKey, Comparison]:
    comparisons = {}
    for key, logger_a in first.items():
        logger_b = second.get(key)
        if logger_b is None:
            continue
        comparison = Comparison(key[0], names)
        logger_a.link(comparison, 0)
        logger_b.link(comparison, 1)
        comparisons[key] = comparison
    return comparisons


def _warn_unshadowable(name_a: str, name_b: str, unshadowable: list[tuple[str, str]]) -> None:
    logger.warning(
        "%d layer(s) of model %r cannot shadow model %r's and are left out of the shadow "
        "results (listed in results.unmatched): %s", len(unshadowable), name_b, name_a,
        "; ".join(f"{key} ({reason})" for key, reason in unshadowable[:5])
        + (" …" if len(unshadowable) > 5 else ""))


def _remember(gm: torch.fx.GraphModule, unmatched: list[UnmatchedLayer]) -> None:
    if not isinstance(getattr(gm, "meta", None), dict):
        gm.meta = {}
    _meta.graph_meta(gm)[_meta.NS_UNMATCHED] = tuple(unmatched)


def instrument(a: PreparedModel, b: PreparedModel, matching: Matching, pairs: list[LayerPair], *,
               logger_cls: type[OutputLogger], log_inputs: bool, save_activations: bool,
               unshadowed: bool, shadowed: bool) -> Instrumented:
    """Adds loggers (and shadows) to the prepared copies ``a`` and ``b`` for ``pairs``."""
    names = (a.name, b.name)
    want_a = {(p.key_a, "node_output"): p for p in pairs}
    want_b = {(p.key_b, "node_output"): p for p in pairs}
    want_s = {(p.key_a, "node_output"): p for p in pairs}
    if log_inputs:
        want_a.update({(p.input_a, "node_input"): p for p in pairs})
        want_b.update({(p.input_b, "node_input"): p for p in pairs})
        want_s.update({(p.key_a, "node_input"): p for p in pairs})
    q_a = {p.key_a: _qconfig_str(a, p.key_a) for p in pairs}
    q_b = {p.key_a: _qconfig_str(b, p.key_b) for p in pairs}
    fa = _Factory("a", a.name, names, want_a, q_a, logger_cls, save_activations)
    fb = _Factory("b", b.name, names, want_b, q_b, logger_cls, save_activations)
    fs = _Factory("b", b.name, names, want_s, q_b, logger_cls, save_activations)
    layers_a = sorted({name for name, _ in want_a})
    layers_b = sorted({name for name, _ in want_b})
    unmatched = list(matching.unmatched)
    gm_a = gm_b = gm_s = None
    if shadowed:
        if a.kind == TORCH_QUANTIZED:
            raise ValueError(f"model {a.name!r} is a torch.ao quantized model: its layers take "
                             "quantized tensors, so float layers cannot shadow them; pass it as "
                             "model b (the shadowed one) instead")
        point = {"quantization_point": _torch_quantization_point} \
            if b.kind == TORCH_QUANTIZED else {}
        result = InsertShadowsPass(
            b.gm, fs, {p.key_a: p.key_b for p in pairs}, counterparts=matching.counterparts,
            log_inputs=log_inputs, **point)(a.gm)
        for key, reason in result.details["unshadowable"]:
            unmatched.append(UnmatchedLayer(key, b.name, f"not shadowed: {reason}"))
        if result.details["unshadowable"]:
            _warn_unshadowable(a.name, b.name, result.details["unshadowable"])
        if not unshadowed:
            # a layer without its shadow would have model A's results only: log it in neither
            shadowed_keys = set(result.details["shadowed"])
            fa.wanted = {k: p for k, p in want_a.items() if p.key_a in shadowed_keys}
            layers_a = sorted({name for name, _ in fa.wanted})
        gm_s = InsertLoggersPass(fa, layers_a, log_inputs=log_inputs)(result).graph_module
    elif unshadowed:
        gm_a = InsertLoggersPass(fa, layers_a, log_inputs=log_inputs)(a.gm).graph_module
    if unshadowed:
        gm_b = InsertLoggersPass(fb, layers_b, log_inputs=log_inputs)(b.gm).graph_module
    logger.debug("instrumented %d layer pairs of %r and %r", len(pairs), a.name, b.name)
    pairing = CallPairing(names) if unshadowed else None
    first = gm_s if gm_s is not None else gm_a
    for gm, side in ((first, 0), (gm_b, 1)):
        if gm is not None:
            clock = CallClock(names[side], side, pairing)
            add_input_observer(gm, f"{LOGGER_ROOT}.call_clock", clock)
            gm.recompile()
            for module in gm.modules():
                if isinstance(module, OutputLogger):
                    module.clock = clock.state
    out = Instrumented(gm_a, gm_b, gm_s, _link(fa.created, fb.created, names) if unshadowed
                       else {}, _link(fa.created, fs.created, names) if shadowed else {},
                       fa.created, fb.created, fs.created, unmatched, pairing)
    for gm in (gm_a, gm_b, gm_s):
        if gm is not None:
            _remember(gm, unmatched)
    return out

