"""InsertShadowsPass: model B's layers run on model A's values, inside model A's graph.

The pass returns a **new** GraphModule: model A's graph (its modules shared, not copied) plus, for
every selected layer of model B, a *shadow* — a copy of B's computation for that layer fed with
A's values — and a logger on the shadow's output. Comparing the shadow's output with A's own
output for the layer measures the error the layer adds by itself, separated from the error that
reaches it from earlier layers.

What a layer's shadow contains (model B's view of it):

* B's op node for the layer, followed by its output quantizer when it has one;
* walking back from the op, every B node up to B's nearest *quantization points* — for an fxquant
  sim the activation-quantizer nodes: ops fused into a supergroup (the conv before its ReLU) and
  data-movement ops (max-pool, flatten) after the last quantizer belong to the shadow, so it is
  exactly what the target computes between two quantized tensors. Multi-input layers (add, mul,
  cat) get one boundary per input;
* at each quantization point the shadow reads A's value for the quantized tensor's producer (the
  layer of the same canonical name in A, or the model input of the same name) through **B's
  quantizer** of that tensor — the input B's layer would see had everything before it computed
  what A computes.

When model B has no quantization points at all (two float models, or a model whose fake
quantization lives inside its layers) each shadow is the layer alone, fed A's inputs to it, as in
``torch.ao.ns``'s ``add_shadow_loggers``. Layers that cannot be shadowed (an input without a
counterpart in A, too many ops before the nearest quantized tensor) are reported in
``details["unshadowable"]`` with the reason; nothing is dropped silently.

Model B's modules are registered under ``ns_shadows.<path in B>`` (the same objects as in B:
pass a copy of B if it must stay untouched). Shadow nodes carry ``role="shadow"`` and
``layer_name`` (B's layer) in ``node.meta["fxquant"]``; shadow loggers live at
``ns_loggers.<key>.shadow_output_logger``. Values of A that an in-place op of the shadow (or of A,
before the shadow runs) would overwrite are cloned first, so A's outputs are unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import operator
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.passes.base import Pass, PassResult, at_node, errors_at
from fxquant.core.layers import is_layer, layer_name, layer_nodes, output_quantizer_node, type_name
from fxquant.passes.insert_loggers import (LOGGER_ROOT, LogSite, add_logger_node,
                                           may_mutate_input, tensor_args, value_producer)

__all__ = ["InsertShadowsPass", "ShadowSite", "QuantizationPoint", "SHADOW_ROOT",
           "quantizer_node_point", "shadow_nodes"]

logger = logging.getLogger(__name__)

#: Root container of model B's modules in the shadowed graph module.
SHADOW_ROOT = "ns_shadows"

#: ``point(model_b, node)``: when ``node`` of model B is a quantization point, returns
#: ``(producer, module)``: the B node whose counterpart in A supplies the value, and the module
#: applied to that value (B's quantizer); None otherwise.
QuantizationPoint = Callable[[torch.fx.GraphModule, torch.fx.Node],
                             "tuple[torch.fx.Node, nn.Module] | None"]

_ALIAS_METHODS = frozenset({"view", "reshape", "flatten", "permute", "transpose", "squeeze",
                            "unsqueeze", "expand", "expand_as", "contiguous", "narrow", "select",
                            "view_as", "t", "__getitem__", "unflatten", "movedim"})
_ALIAS_FUNCTIONS = frozenset({torch.reshape, torch.flatten, torch.permute, torch.transpose,
                              torch.squeeze, torch.unsqueeze, torch.narrow, torch.select,
                              operator.getitem, torch.t, torch.movedim})


@dataclasses.dataclass(frozen=True)
class ShadowSite(LogSite):
    """One value of a shadow that a logger records: a :class:`LogSite` of model B's layer, with
    the model-A layer it is compared with.

    Attributes (besides :class:`LogSite`'s, which here describe the shadow's copy of B's op):
        key: model A's canonical name of the layer it is compared with.
    """

    key: str = dataclasses.field(kw_only=True)


def quantizer_node_point(gm: torch.fx.GraphModule, node: torch.fx.Node
                         ) -> tuple[torch.fx.Node, nn.Module] | None:
    """fxquant's quantization points: activation-quantizer nodes (role "quantizer")."""
    if (node.op == "call_module" and _meta.get(node, _meta.ROLE) == _meta.ROLE_QUANTIZER
            and node.args and isinstance(node.args[0], torch.fx.Node)):
        return node.args[0], gm.get_submodule(str(node.target))
    return None


def shadow_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The shadow nodes of ``gm``, in graph order."""
    return [n for n in gm.graph.nodes if _meta.get(n, _meta.ROLE) == _meta.ROLE_SHADOW]


class _Unshadowable(Exception):
    """A layer cannot be shadowed; the message says why."""


@dataclasses.dataclass
class _Boundary:
    kind: str  # "value" | "quantized" | "attr"
    a_node: str | None = None
    module: nn.Module | None = None
    module_path: str | None = None
    attr: str | None = None


@dataclasses.dataclass
class _Plan:
    key: str
    layer: str
    nodes: list[torch.fx.Node]  # B nodes to copy, in B's order; the compared value is last
    op: torch.fx.Node
    boundaries: dict[torch.fx.Node, _Boundary]


class InsertShadowsPass(Pass):
    """Adds model B's layers, fed model A's values, to (a copy of) model A's graph.

    Run on model A's prepared graph module; returns a new graph module (A's modules shared).

    Args:
        model_b: model B's prepared graph module (its modules are used, not copied).
        make_logger: called with a :class:`ShadowSite` for every shadow value to record; returns
            a logger module (returning its input) or None.
        layers: which layers to shadow: a mapping ``{A's layer name: B's layer name}``, names
            present in both models, or None for every layer of B with a counterpart in A.
        counterparts: ``{B's layer name: A's layer name}`` where a value of B corresponds to a
            differently named layer of A (e.g. a fused module); identity elsewhere.
        quantization_point: how to recognise B's quantization points (default: fxquant
            quantizer nodes, :func:`quantizer_node_point`).
        log_inputs: also log the inputs of each shadowed op.
        max_segment: the most B nodes one shadow may hold before the layer is reported as
            unshadowable.

    Raises (as :class:`~fxquant.errors.PassError`):
        ValueError: a layer in ``layers`` is not a layer of model B.

    Example:
        >>> result = InsertShadowsPass(sim.model, lambda site: nn.Identity())(float_gm)
        >>> shadowed = result.graph_module
        >>> result.details["shadowed"][:2]
        ['conv1', 'relu']
    """

    requires = frozenset({_meta.TAG_PREPARED})
    provides = frozenset({_meta.TAG_SHADOWED})
    preserves_numerics = True
    in_place = False

    def __init__(self, model_b: torch.fx.GraphModule,
                 make_logger: Callable[[ShadowSite], nn.Module | None],
                 layers: Mapping[str, str] | Iterable[str] | None = None, *,
                 counterparts: Mapping[str, str] | None = None,
                 quantization_point: QuantizationPoint | None = None,
                 log_inputs: bool = False, max_segment: int = 256) -> None:
        if not isinstance(model_b, torch.fx.GraphModule):
            raise TypeError(f"InsertShadowsPass: model_b must be a torch.fx.GraphModule, got "
                            f"{type(model_b).__qualname__}; prepare it first: "
                            "fxquant.prepare_model(model_b)")
        if not callable(make_logger):
            raise TypeError(f"InsertShadowsPass: make_logger must be callable, got "
                            f"{make_logger!r}")
        if isinstance(layers, str):
            raise TypeError(f"InsertShadowsPass: layers must be a collection of layer names, got "
                            f"the string {layers!r}; write layers=[{layers!r}]")
        self.model_b = model_b
        self.make_logger = make_logger
        if layers is None or isinstance(layers, Mapping):
            self.layers = None if layers is None else dict(layers)
        else:
            self.layers = {name: name for name in layers}
        self.counterparts = dict(counterparts or {})
        self.quantization_point = quantization_point or quantizer_node_point
        self.log_inputs = log_inputs
        self.max_segment = max_segment

    def __repr__(self) -> str:
        args = ["model_b"]
        if self.layers is not None:
            args.append(f"layers=[{len(self.layers)} names]")
        if self.log_inputs:
            args.append("log_inputs=True")
        return f"InsertShadowsPass({', '.join(args)})"

    # -- planning ------------------------------------------------------------------------------
    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        b = self.model_b
        b_layers = layer_nodes(b)
        a_layers = layer_nodes(gm)
        if self.layers is None:
            wanted = {self.counterparts.get(name, name): name for name in b_layers
                      if self.counterparts.get(name, name) in a_layers}
        else:
            wanted = self.layers
            missing = [lb for lb in wanted.values() if lb not in b_layers]
            if missing:
                raise ValueError(f"{len(missing)} layer(s) to shadow are not layers of model_b, "
                                 f"e.g. {missing[0]!r}; use names from layer_nodes(model_b)")
        done = {_meta.get(n, _meta.SHADOW_OF) for n in shadow_nodes(gm)}
        a_inputs = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
        has_points = any(self.quantization_point(b, n) is not None for n in b.graph.nodes)

        def a_value(bnode: torch.fx.Node) -> torch.fx.Node | None:
            if bnode.op == "placeholder":
                return a_inputs.get(bnode.name)
            if is_layer(bnode):
                name = layer_name(bnode)
                return a_layers.get(self.counterparts.get(name, name))
            return None

        plans: list[_Plan] = []
        unshadowable: list[tuple[str, str]] = []
        for key, lb in wanted.items():
            if lb in done:
                continue
            try:
                plans.append(self._plan(b, key, b_layers[lb], a_value, has_points))
            except _Unshadowable as exc:
                unshadowable.append((key, str(exc)))
                logger.info("layer %r is not shadowed: %s", key, exc)
            except Exception as exc:
                raise at_node(b_layers[lb], exc)
        out = _copy_graph_module(gm)  # in_place = False: a new module, even when unmodified
        if not plans:
            return PassResult(out, False, {"shadowed": [], "unshadowable": unshadowable})
        for plan in plans:
            with errors_at(plan.op):
                self._insert(out, plan)
        return PassResult(out, True, {"shadowed": [p.key for p in plans],
                                      "unshadowable": unshadowable})

    def _plan(self, b: torch.fx.GraphModule, key: str, op: torch.fx.Node,
              a_value: Callable[[torch.fx.Node], torch.fx.Node | None],
              has_points: bool) -> _Plan:
        segment: set[torch.fx.Node] = {op}
        boundaries: dict[torch.fx.Node, _Boundary] = {}
        stack = [op]
        while stack:
            current = stack.pop()
            for p in current.all_input_nodes:
                if p in segment or p in boundaries:
                    continue
                boundaries_or_none = self._boundary(b, p, a_value, has_points)
                if boundaries_or_none is not None:
                    boundaries[p] = boundaries_or_none
                    continue
                segment.add(p)
                stack.append(p)
                if len(segment) > self.max_segment:
                    raise _Unshadowable(
                        f"more than {self.max_segment} ops of model b lie between "
                        f"{op.target!r} and its nearest quantized tensors; raise max_segment or "
                        "quantize an earlier tensor")
        nodes = [n for n in b.graph.nodes if n in segment]
        quantizer = output_quantizer_node(op)
        if quantizer is not None:
            nodes.append(quantizer)
        return _Plan(key, str(op.target), nodes, op, boundaries)

    def _boundary(self, b: torch.fx.GraphModule, p: torch.fx.Node,
                  a_value: Callable[[torch.fx.Node], torch.fx.Node | None],
                  has_points: bool) -> _Boundary | None:
        if p.op == "placeholder":
            a = a_value(p)
            if a is None:
                raise _Unshadowable(f"model b's input {p.name!r} has no input of that name in "
                                    "model a")
            return _Boundary("value", a.name)
        if p.op == "get_attr":
            return _Boundary("attr", attr=str(p.target))
        point = self.quantization_point(b, p)
        if point is not None:
            producer, module = point
            a = a_value(producer)
            if a is None:
                raise _Unshadowable(
                    f"the tensor model b quantizes at {p.name!r} comes from {producer.name!r}, "
                    "which has no counterpart in model a")
            own = p.op == "call_module" and _get(b, str(p.target)) is module
            path = f"{SHADOW_ROOT}.{p.target}" if own else f"{SHADOW_ROOT}.points.{p.name}"
            return _Boundary("quantized", a.name, module, path)
        if not has_points:
            a = a_value(p)
            if a is not None:
                return _Boundary("value", a.name)
        return None

    # -- insertion -----------------------------------------------------------------------------
    def _insert(self, gm: torch.fx.GraphModule, plan: _Plan) -> None:
        b = self.model_b
        graph = gm.graph
        by_name = {n.name: n for n in graph.nodes}
        order = {n: i for i, n in enumerate(graph.nodes)}
        a_nodes = {p: by_name[bd.a_node] for p, bd in plan.boundaries.items()
                   if bd.a_node is not None}
        if a_nodes:
            anchor = max(a_nodes.values(), key=order.__getitem__)
        else:
            anchor = [n for n in graph.nodes if n.op == "placeholder"][-1]
        # values of A overwritten (in place) before the shadow runs are cloned when produced
        for p, a in list(a_nodes.items()):
            if a is not anchor and _mutated_between(gm, a, anchor, order):
                with graph.inserting_after(a):
                    clone = graph.call_method("clone", (a,))
                _tag(clone, a, plan.layer, f"{a.name}.clone")
                a_nodes[p] = clone
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        cursor = anchor

        def emit(op: str, target: Any, args: tuple, kwargs: dict, name: str,
                 src: torch.fx.Node | None, path: str) -> torch.fx.Node:
            nonlocal cursor
            with graph.inserting_after(cursor):
                node = graph.create_node(op, target, args, kwargs, name=name)
            _tag(node, src, plan.layer, path)
            cursor = node
            return node

        for p, bd in plan.boundaries.items():  # B's order of insertion is irrelevant here
            if bd.kind == "value":
                env[p] = a_nodes[p]
            elif bd.kind == "attr":
                path = f"{SHADOW_ROOT}.{bd.attr}"
                _attach(gm, path, _get(b, str(bd.attr)))
                env[p] = emit("get_attr", path, (), {}, f"shadow_{p.name}", p, path)
            else:
                _attach(gm, str(bd.module_path), bd.module)
                env[p] = emit("call_module", bd.module_path, (a_nodes[p],), {},
                              f"shadow_{p.name}", p, str(bd.module_path))
        fresh: set[torch.fx.Node] = set()
        for s in plan.nodes:
            args = torch.fx.node.map_arg(s.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(s.kwargs, env.__getitem__)
            if may_mutate_input(b, s) and args and isinstance(args[0], torch.fx.Node) \
                    and args[0] not in fresh:
                first = emit("call_method", "clone", (args[0],), {}, f"shadow_{s.name}_in",
                             s, f"{s.name}.clone")
                fresh.add(first)
                args = (first, *args[1:])
            target: Any = s.target
            path = _meta.module_path(s) or ""
            if s.op == "call_module":
                path = f"{SHADOW_ROOT}.{s.target}"
                _attach(gm, path, b.get_submodule(str(s.target)))
                target = path
            node = emit(s.op, target, args, kwargs, f"shadow_{s.name}", s, path)
            env[s] = node
            fresh.add(node)
        op_new = env[plan.op]
        value = env[plan.nodes[-1]]
        op_type = type_name(b, plan.op)
        producer = value_producer(plan.nodes[-1])
        site = ShadowSite(plan.layer, "node_output", op_new.name,
                          env[producer].name if producer in env else value.name, op_type,
                          type_name(b, producer), key=plan.key)
        module = self.make_logger(site)
        if module is not None:
            log = add_logger_node(gm, f"{LOGGER_ROOT}.{plan.key}.shadow_output_logger", module,
                                  value, layer=plan.key, logs="output")
            _meta.set(log, _meta.SHADOW_OF, plan.layer)
        if self.log_inputs:
            b_args = {(i, j): arg for i, j, arg in tensor_args(plan.op)}
            for i, j, arg in list(tensor_args(op_new)):
                source = b_args.get((i, j))
                producer = value_producer(source) if source is not None else None
                value_type = (type_name(b, producer) if producer is not None
                              and producer.op != "placeholder" else type_name(gm, arg))
                site = ShadowSite(plan.layer, "node_input", op_new.name, arg.name,
                                  op_type, value_type, i, j, key=plan.key)
                module = self.make_logger(site)
                if module is not None:
                    log = add_logger_node(
                        gm, f"{LOGGER_ROOT}.{plan.key}.shadow_input_logger_{i}_{j}", module, arg,
                        layer=plan.key, logs="input", before=op_new)
                    _meta.set(log, _meta.SHADOW_OF, plan.layer)


def _tag(node: torch.fx.Node, src: torch.fx.Node | None, layer: str, path: str) -> None:
    if src is not None:
        _meta.copy_meta(src, node)
    meta = _meta.node_meta(node)
    for key in (_meta.HANDLE, _meta.LOGS, _meta.QUANTIZES):
        meta.pop(key, None)
    meta.update({_meta.ROLE: _meta.ROLE_SHADOW, _meta.LAYER_NAME: layer, _meta.MODULE_PATH: path,
                 _meta.SHADOW_OF: layer})
    _meta.assign_handles(node.graph, [node])


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for atom in path.split("."):
        obj = getattr(obj, atom)
    return obj


def _attach(gm: torch.fx.GraphModule, path: str, value: Any) -> None:
    """Registers a module, parameter or tensor of model B at ``path`` (once)."""
    owner_path, _, name = path.rpartition(".")
    try:
        if _get(gm, path) is value:
            return
    except AttributeError:
        pass
    if isinstance(value, nn.Module):
        gm.add_submodule(path, value)
        return
    try:
        owner = gm.get_submodule(owner_path)
    except AttributeError:
        gm.add_submodule(owner_path, nn.Module())
        owner = gm.get_submodule(owner_path)
    if isinstance(value, nn.Parameter):
        owner.register_parameter(name, value)
    elif isinstance(value, torch.Tensor):
        owner.register_buffer(name, value)
    else:
        setattr(owner, name, value)


def _may_alias(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Whether ``node``'s output may share memory with its first input (views, identity)."""
    if node.op == "call_method":
        return str(node.target) in _ALIAS_METHODS
    if node.op == "call_function":
        try:
            return node.target in _ALIAS_FUNCTIONS
        except TypeError:
            return False
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, (nn.Identity, nn.Dropout, nn.Flatten)):
            return True
        method, fn = getattr(module, "method", None), getattr(module, "fn", None)
        if isinstance(method, str) and method in _ALIAS_METHODS:
            return True
        try:
            return fn is not None and fn in _ALIAS_FUNCTIONS
        except TypeError:
            return False
    return False


def _mutated_between(gm: torch.fx.GraphModule, value: torch.fx.Node, anchor: torch.fx.Node,
                     order: Mapping[torch.fx.Node, int]) -> bool:
    """Whether a node after ``value`` and up to ``anchor`` writes into ``value`` (or a view)."""
    if order[anchor] <= order[value]:
        return False
    aliases = {value}
    node = value
    while node is not anchor:
        node = node.next
        first = node.args[0] if node.args else None
        if first in aliases:
            if may_mutate_input(gm, node):
                return True
            if _may_alias(gm, node):
                aliases.add(node)
    return False


def _copy_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A new GraphModule with a copy of ``gm``'s graph (private node metadata) and the same
    module objects."""
    out = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph), class_name=type(gm).__name__)
    out.meta[_meta.META_KEY] = (getattr(gm, "meta", None) or {}).get(_meta.META_KEY, {})
    _meta.unshare_node_meta(out)  # the copied graph's node metadata and this dict become its own
    return out
