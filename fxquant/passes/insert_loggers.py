"""InsertLoggersPass: logger modules that record what a layer computes.

For every selected layer (see :mod:`fxquant.core.layers`; its canonical name is its module path
after the preparer, e.g. ``layer1.0.conv1``) the pass inserts a ``call_module`` node right after the value to record:

* ``node_output``: the layer's output — after its output quantizer when one follows it (what a
  quantized target computes), else the op's own output;
* ``node_input`` (``log_inputs=True``): every tensor argument of the op, including those inside
  lists (``torch.cat([a, b])``), right before the op runs.

Which module records the value is the caller's choice: ``make_logger(site)`` gets a
:class:`LogSite` describing the value and returns a module (or None to skip it); the numeric
suite passes its ``OutputLogger``. Loggers live under ``ns_loggers.<layer>.<kind>_logger`` and
their nodes carry ``role="logger"``, ``layer_name`` and ``logs`` ("output"/"input") in
``node.meta["fxquant"]``. Logger nodes have no users; the pass marks each logger module
``_is_impure`` so that ``graph.eliminate_dead_code()`` keeps them.

A site reports the value as its producer's (:func:`value_producer`: the layer, never the
quantizer after it), as torch.ao.ns's ``prev_node_name`` / ``prev_node_target_type`` do.
:func:`add_input_observer` adds a module that sees every model input before anything runs (the
numeric suite's call counter).

The module also holds the small graph helpers shared with
:mod:`fxquant.passes.insert_shadows` (logged values, tensor arguments, in-place ops); which nodes
are layers is :mod:`fxquant.core.layers`'s.
"""
from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Callable, Iterable, Iterator

import torch
import torch.fx
from torch import nn

from fxquant import _meta
from fxquant._fx_utils import is_hashable
from fxquant.core.layers import layer_nodes, output_quantizer_node, type_name
from fxquant.passes.base import Pass, PassResult, errors_at

__all__ = ["InsertLoggersPass", "LogSite", "LOGGER_ROOT", "logged_output_node",
           "may_mutate_input", "tensor_args", "logger_nodes", "value_producer",
           "add_input_observer"]

logger = logging.getLogger(__name__)

#: Root container of every logger module the numeric-suite passes add.
LOGGER_ROOT = "ns_loggers"

_INPLACE_OPERATORS = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift,
    operator.irshift, operator.imatmul,
})


@dataclasses.dataclass(frozen=True)
class LogSite:
    """One value a logger records.

    Attributes:
        layer: canonical name of the layer (the op node's module path).
        results_type: "node_output" or "node_input".
        op_node: name of the layer's op node.
        value_node: name of the node that computed the recorded value, looking through
            quantizers (:func:`value_producer`): the layer's op for an output (also when the
            value is taken after its output quantizer), the producing layer for an input.
        op_type: qualified class name of the layer's module.
        value_type: qualified class name (or function name) of ``value_node``'s module (e.g.
            ``torch.nn.modules.conv.Conv2d``), as torch.ao.ns reports it; never a quantizer.
        index_of_arg: position of the input among the op's arguments (0 for outputs).
        index_within_arg: position inside a list argument, e.g. ``cat([a, b])`` (0 otherwise).
    """

    layer: str
    results_type: str
    op_node: str
    value_node: str
    op_type: str
    value_type: str
    index_of_arg: int = 0
    index_within_arg: int = 0


def logged_output_node(node: torch.fx.Node, after_output_quantizer: bool = True) -> torch.fx.Node:
    """The node whose value stands for ``node``'s layer output (its output quantizer if any)."""
    if after_output_quantizer:
        quantizer = output_quantizer_node(node)
        if quantizer is not None:
            return quantizer
    return node


def value_producer(node: torch.fx.Node) -> torch.fx.Node:
    """The node that computed the value ``node`` holds, looking through quantizer nodes (a
    layer's output quantizer, an input quantizer): what a logger reports as the value's
    producer (torch.ao.ns's ``prev_node_name`` / ``prev_node_target_type``).

    Example:
        >>> value_producer(output_quantizer_node(layer_nodes(sim.model)["conv1"])).target
        'conv1'
    """
    seen = 0
    while _meta.get(node, _meta.ROLE) == _meta.ROLE_QUANTIZER and node.args \
            and isinstance(node.args[0], torch.fx.Node) and seen < 64:
        node, seen = node.args[0], seen + 1
    return node


def add_input_observer(gm: torch.fx.GraphModule, path: str, module: nn.Module
                       ) -> torch.fx.Node:
    """Registers ``module`` at ``path`` and calls it with every input of ``gm`` (its placeholders,
    in order) before anything else runs; tagged as a logger (``logs="calls"``), kept by
    dead-code elimination. The numeric suite's call counter is such a module.

    Example:
        >>> add_input_observer(gm, "ns_loggers.call_clock", CallClock("float"))
    """
    if not getattr(module, "_is_impure", False):
        module._is_impure = True  # type: ignore[attr-defined]
    gm.add_submodule(path, module)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first = next(n for n in gm.graph.nodes if n.op != "placeholder")
    with gm.graph.inserting_before(first):
        node = gm.graph.call_module(path, tuple(placeholders))
    _meta.node_meta(node).update({_meta.MODULE_PATH: path, _meta.ROLE: _meta.ROLE_LOGGER,
                                  _meta.LOGS: "calls"})
    _meta.assign_handles(gm.graph, [node])
    return node


def may_mutate_input(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Whether ``node`` may write into its first argument (``inplace=True`` modules,
    ``x += y``, ``x.relu_()`` …), so a value it reads must be copied first to stay intact."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if getattr(module, "inplace", False) is True:
            return True
        fn = getattr(module, "fn", None)
        method = getattr(module, "method", None)
        if fn is not None and is_hashable(fn) and fn in _INPLACE_OPERATORS:
            return True
        return isinstance(method, str) and _is_inplace_name(method)
    if node.op == "call_function":
        if is_hashable(node.target) and node.target in _INPLACE_OPERATORS:
            return True
        return _is_inplace_name(getattr(node.target, "__name__", ""))
    if node.op == "call_method":
        return _is_inplace_name(str(node.target))
    return False


def _is_inplace_name(name: str) -> bool:
    if name.startswith("__i") and name.endswith("__"):
        return True
    return name.endswith("_") and not name.startswith("_")


def tensor_args(node: torch.fx.Node) -> Iterator[tuple[int, int, torch.fx.Node]]:
    """``(index_of_arg, index_within_arg, producer)`` for every node argument of ``node``
    (positional arguments, then keyword arguments), looking one level into lists/tuples."""
    values = list(node.args) + list(node.kwargs.values())
    for i, arg in enumerate(values):
        if isinstance(arg, torch.fx.Node):
            yield i, 0, arg
        elif isinstance(arg, (list, tuple)):
            for j, item in enumerate(arg):
                if isinstance(item, torch.fx.Node):
                    yield i, j, item


def logger_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The logger nodes of ``gm``, in graph order."""
    return [n for n in gm.graph.nodes if _meta.get(n, _meta.ROLE) == _meta.ROLE_LOGGER]


def add_logger_node(gm: torch.fx.GraphModule, path: str, module: nn.Module,
                    value: torch.fx.Node, *, layer: str, logs: str,
                    before: torch.fx.Node | None = None) -> torch.fx.Node:
    """Registers ``module`` at ``path`` and calls it on ``value`` right after ``value`` (or
    right before ``before``); the node is tagged as a logger and kept by dead-code elimination."""
    if not getattr(module, "_is_impure", False):
        module._is_impure = True  # type: ignore[attr-defined]
    gm.add_submodule(path, module)
    ctx = gm.graph.inserting_before(before) if before is not None else \
        gm.graph.inserting_after(value)
    with ctx:
        node = gm.graph.call_module(path, (value,))
    _meta.copy_meta(value, node, **{_meta.MODULE_PATH: path, _meta.ROLE: _meta.ROLE_LOGGER,
                                    _meta.LAYER_NAME: layer, _meta.LOGS: logs})
    _meta.node_meta(node).pop(_meta.HANDLE, None)
    _meta.node_meta(node).pop(_meta.QUANTIZES, None)
    _meta.assign_handles(gm.graph, [node])
    return node


class InsertLoggersPass(Pass):
    """Inserts a logger after each selected layer's output (and, on request, before its inputs).

    Args:
        make_logger: called with a :class:`LogSite` for every value that can be logged; returns
            the logger module (any ``nn.Module`` returning its input), or None to skip the value.
        layers: canonical names of the layers to log; None logs every layer.
        log_outputs: log ``node_output`` values.
        log_inputs: log ``node_input`` values.
        after_output_quantizer: log a layer's output after its output quantizer when it has one.

    Raises (as :class:`~fxquant.errors.PassError`):
        ValueError: a name in ``layers`` is not a layer of the graph module.

    Example:
        >>> sites = []
        >>> def make(site):
        ...     sites.append(site)
        ...     return nn.Identity()
        >>> InsertLoggersPass(make, layers=["conv1"])(fxquant.prepare_model(model))
        >>> sites[0].layer, sites[0].results_type
        ('conv1', 'node_output')
    """

    requires = frozenset()
    provides = frozenset({_meta.TAG_LOGGERS})
    preserves_numerics = True
    in_place = True

    def __init__(self, make_logger: Callable[[LogSite], nn.Module | None],
                 layers: Iterable[str] | None = None, *, log_outputs: bool = True,
                 log_inputs: bool = False, after_output_quantizer: bool = True) -> None:
        if not callable(make_logger):
            raise TypeError(f"InsertLoggersPass: make_logger must be callable, got "
                            f"{make_logger!r}")
        if isinstance(layers, str):
            raise TypeError(f"InsertLoggersPass: layers must be a collection of layer names, got "
                            f"the string {layers!r}; write layers=[{layers!r}]")
        self.make_logger = make_logger
        self.layers = None if layers is None else tuple(layers)
        self.log_outputs = log_outputs
        self.log_inputs = log_inputs
        self.after_output_quantizer = after_output_quantizer

    def __repr__(self) -> str:
        args = [] if self.layers is None else [f"layers=[{len(self.layers)} names]"]
        if self.log_inputs:
            args.append("log_inputs=True")
        if not self.log_outputs:
            args.append("log_outputs=False")
        return f"InsertLoggersPass({', '.join(args)})"

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        layers = layer_nodes(gm)
        if self.layers is not None:
            missing = [name for name in self.layers if name not in layers]
            if missing:
                import difflib

                close = difflib.get_close_matches(missing[0], list(layers), n=3)
                raise ValueError(
                    f"{len(missing)} name(s) in layers are not layers of the graph module, e.g. "
                    f"{missing[0]!r}" + (f" (did you mean {', '.join(map(repr, close))}?)"
                                         if close else "")
                    + "; layer names are module paths after the preparer (layer_nodes(gm)).")
        selected = set(layers if self.layers is None else self.layers)
        existing = {(_meta.get(n, _meta.LAYER_NAME), str(n.target))
                    for n in logger_nodes(gm)}
        added: list[str] = []
        for name, op in layers.items():
            with errors_at(op):
                if name not in selected:
                    continue
                op_type = type_name(gm, op)
                if self.log_outputs:
                    value = logged_output_node(op, self.after_output_quantizer)
                    path = f"{LOGGER_ROOT}.{name}.output_logger"
                    if (name, path) not in existing:
                        producer = value_producer(value)
                        site = LogSite(name, "node_output", op.name, producer.name, op_type,
                                       type_name(gm, producer))
                        module = self.make_logger(site)
                        if module is not None:
                            add_logger_node(gm, path, module, value, layer=name, logs="output")
                            added.append(path)
                if self.log_inputs:
                    for i, j, arg in list(tensor_args(op)):
                        path = f"{LOGGER_ROOT}.{name}.input_logger_{i}_{j}"
                        if (name, path) in existing:
                            continue
                        producer = value_producer(arg)
                        site = LogSite(name, "node_input", op.name, producer.name, op_type,
                                       type_name(gm, producer), i, j)
                        module = self.make_logger(site)
                        if module is not None:
                            add_logger_node(gm, path, module, arg, layer=name, logs="input",
                                            before=op)
                            added.append(path)
        return PassResult(gm, bool(added), {"loggers": added})
