"""Concrete-value tracing: the machinery behind ``fxquant.trace(model, example_inputs=...)``.

Plain ``torch.fx`` tracing cannot answer questions about values: ``len(x.shape)``, ``for img in
images``, ``if x.dim() != 3``, ``h, w = x.shape[-2:]`` all fail on a Proxy. In concrete mode every
node gets the value it has on the example inputs, computed eagerly as the node is created (leaf
modules, opaque methods and ``get_attr`` included: the real module or method runs on concrete
arguments). The proxies then answer such questions from those values -- they *specialize* the
graph on shapes and structure -- and every answer is recorded as a :class:`Specialization`.
``isinstance(proxy, torch.Tensor)`` (or ``int``, ``float``, ``bool``) answers as the value would,
and container outputs of leaf modules and opaque methods come back as real lists / tuples /
dicts of proxies.

What is never specialized silently: control flow on tensor *values* (``bool()`` / ``int()`` of a
tensor) and anything derived from data-dependent operations (``.item()``, ``.tolist()``,
``.numpy()``, ``nonzero``, boolean-mask indexing, ``nms``, ...). Those raise
:class:`DataDependentError`, so the enclosing module becomes a leaf by the usual fallback. A value
is *tainted* when it derives from such an operation; the taint follows the value through the
graph (rank, dtype and device queries clear it: they do not depend on data). Outputs of leaf
modules and opaque methods are tainted when data-dependent operations ran inside them (watched
with a ``TorchFunctionMode``); the *structure* of the containers they return (the length of a
list of per-image results, the keys of a dict) stays specializable.

The traced graph is valid for inputs with the same structure, and -- where shapes were specialized
-- the same shapes as the example inputs.
"""
from __future__ import annotations

import collections
import contextlib
import operator
import weakref
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx import Node
from torch.fx import _symbolic_trace as fx_symbolic_trace
from torch.fx.proxy import Proxy

from fxquant.errors import DataDependentError
from fxquant.tracing.data_dependence import (METADATA_ATTRS, METADATA_METHODS,
                                             SHAPE_DEPENDENT_COUNT, DataDependenceProbe)
from fxquant.tracing.proxy import (BINARY_SYMBOLS, ConcreteProxy, describe, is_lazy_attribute,
                                   is_proxy)
from fxquant.tracing.records import Specialization
from fxquant.tracing.replay import Replayer, input_versions, is_torch_callable, mutation_of
from fxquant.tracing.source import caller_source

__all__ = ["ConcreteTracerMixin"]


def _materialize(arg: Any, values: Mapping[Node, Any]) -> Any:
    """``arg`` (a node argument) with every Node replaced by its concrete value; containers are
    rebuilt as plain (mutable) containers, as generated GraphModule code builds them."""
    if isinstance(arg, Node):
        return values[arg]
    if isinstance(arg, list):
        return [_materialize(a, values) for a in arg]
    if isinstance(arg, tuple):
        items = [_materialize(a, values) for a in arg]
        if hasattr(arg, "_fields"):  # a namedtuple
            return type(arg)(*items)
        return tuple(items) if type(arg) is tuple else type(arg)(items)
    if isinstance(arg, dict):
        return {k: _materialize(v, values) for k, v in arg.items()}
    if isinstance(arg, slice):
        return slice(_materialize(arg.start, values), _materialize(arg.stop, values),
                     _materialize(arg.step, values))
    return arg


_PURE_FUNCTIONS = frozenset({*BINARY_SYMBOLS, getattr, operator.getitem, operator.not_,
                             operator.neg, operator.pos, operator.abs, operator.truth, len})
_PURE_METHODS = frozenset({"size", "numel", "nelement", "stride", *METADATA_METHODS})


def _is_pure_query(node: Node) -> bool:
    if node.op == "call_function":
        return node.target in _PURE_FUNCTIONS
    return node.op == "call_method" and node.target in _PURE_METHODS


def _is_opaque_call(node: Node) -> bool:
    """Whether ``node`` calls a method made opaque by fxquant (on a module or the root's method)."""
    owner = node.args[0] if node.args else None
    return isinstance(owner, Node) and owner.op == "get_attr"


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


class ConcreteTracerMixin:
    """Mixed into fxquant's ``torch.fx.Tracer``: each node gets its concrete value on creation.

    Call :meth:`init_concrete` before ``trace``. Afterwards ``specializations`` lists what was
    assumed.
    """

    # Set by init_concrete; declared for readers and type checkers.
    concrete_values: dict[Node, Any]
    taints: dict[Node, str]
    structural: set[Node]
    specializations: list[Specialization]

    def init_concrete(self, placeholder_values: Sequence[Any],
                      replayer: Replayer | None = None) -> None:
        """Prepares a trace: ``placeholder_values`` in placeholder creation order; ``replayer``
        hands out the values of the previous attempt (see :mod:`fxquant.tracing.replay`)."""
        self.replayer = replayer
        self.concrete_values = {}
        self.taints = {}
        self.structural = set()
        self.specializations = []
        self._placeholder_values = collections.deque(placeholder_values)
        self._evaluating = False
        self._live: dict[Node, int] = {}
        self.evaluation_failed = False

    def trace(self, root: Any, concrete_args: Any = None) -> torch.fx.Graph:
        with _recorded_tensor_constructors():
            graph = super().trace(root, concrete_args)  # type: ignore[misc]
        # Nodes only created to answer a question (x.shape, h > w, ...) or to expand a container
        # output nobody used compute nothing the model needs.
        for node in reversed(graph.nodes):
            if not node.users and _is_pure_query(node):
                graph.erase_node(node)
        return graph

    # --- torch.fx.Tracer hooks ---------------------------------------------------------------
    def proxy(self, node: Node) -> "ConcreteProxy":
        proxy = ConcreteProxy(node, self)
        if node.op in ("call_module", "call_method") or (
                node.op == "call_function" and node.target is not getattr):
            # Free the value once no proxy of the node is left: no later node can use it.
            self._live[node] = self._live.get(node, 0) + 1
            weakref.finalize(proxy, self._release, node).atexit = False
        return proxy

    def _release(self, node: Node) -> None:
        self._live[node] -= 1
        if not self._live[node]:
            del self._live[node]
            self.concrete_values.pop(node, None)

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, Proxy):  # before fx's Tensor checks: a ConcreteProxy may pass as a Tensor
            return a.node
        return super().create_arg(a)  # type: ignore[misc]

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                    type_expr: Any = None) -> Node:
        if self._evaluating:
            raise RuntimeError(f"fxquant internal error: node {kind} {target} created while "
                               "computing a concrete value")
        node = super().create_node(  # type: ignore[misc]
            kind, target, args, kwargs, name, type_expr)
        if kind != "output":
            self._evaluate(node)
        return node

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> Any:
        proxy = super().create_proxy(  # type: ignore[misc]
            kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if kind == "call_function" and target is operator.getitem \
                and self.concrete_values.get(node, 0) is None and not node.users:
            # x[i] is None: hand user code a real None so `is None` tests see it.
            self.record(proxy, f"{describe(node)} is None", "structure")
            self.graph.erase_node(node)
            self.concrete_values.pop(node, None)
            self.taints.pop(node, None)
            self.structural.discard(node)
            return None
        if kind == "call_module" or (kind == "call_method" and _is_opaque_call(node)):
            return self._expand(proxy)
        return proxy

    def _expand(self, proxy: Any) -> Any:
        """The output of a leaf module or opaque method as the Python containers it is (lists,
        tuples, dicts, namedtuples), holding proxies of its leaves, so that ``isinstance`` and
        unpacking behave as in eager mode. The structure is specialized (and recorded)."""
        value = self.concrete_values[proxy.node]
        container = type(value) in (list, tuple, dict, collections.OrderedDict) or (
            isinstance(value, tuple) and hasattr(value, "_fields"))
        if not container:
            return proxy
        if isinstance(value, dict):
            keys = list(value.keys())
            self.record(proxy, f"keys({describe(proxy)}) == {keys!r}", "structure")
            items = [(k, self._expand_item(proxy, k)) for k in keys]
            return type(value)(items)
        self.record(proxy, f"len({describe(proxy)}) == {len(value)}", "structure")
        items = [self._expand_item(proxy, i) for i in range(len(value))]
        if hasattr(value, "_fields"):
            return type(value)(*items)
        return type(value)(items)

    def _expand_item(self, proxy: Any, key: Any) -> Any:
        item = proxy[key]
        return None if item is None else self._expand(item)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if self._evaluating:  # running a leaf for its value: no tracing inside
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)  # type: ignore[misc]

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)  # type: ignore[misc]

    # --- concrete values -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _evaluation(self) -> Iterator[DataDependenceProbe]:
        was_tracing = fx_symbolic_trace._get_is_fx_tracing()
        fx_symbolic_trace._set_is_fx_tracing(False)
        self._evaluating = True
        probe = DataDependenceProbe()
        try:
            with torch.no_grad(), probe:
                yield probe
        finally:
            self._evaluating = False
            fx_symbolic_trace._set_is_fx_tracing(was_tracing)

    def _evaluate(self, node: Node) -> None:
        taint: str | None = None
        replayer = self.replayer
        hit, value = False, None
        if replayer is not None:
            hit, value, taint = replayer.lookup(node)
        if node.op == "placeholder":
            if not self._placeholder_values:
                raise RuntimeError(f"fxquant internal error: no example value for placeholder "
                                   f"{node.name}")
            example = self._placeholder_values.popleft()
            if not hit:
                value = example
                if replayer is not None:
                    replayer.computed(value, None, frozenset())
        elif node.op == "get_attr":  # always the module's own: constants are made anew
            with self._evaluation():
                value = _fetch_attr(self.root, node.target)  # type: ignore[attr-defined]
            if replayer is not None and not hit:
                replayer.computed(value, None, frozenset())
        elif hit:
            pass
        else:
            args = _materialize(node.args, self.concrete_values)
            kwargs = _materialize(node.kwargs, self.concrete_values)
            versions = input_versions(args, kwargs) if replayer is not None else None
            with self._evaluation() as probe:
                try:
                    if node.op == "call_function":
                        value = node.target(*args, **kwargs)
                    elif node.op == "call_method":
                        value = getattr(args[0], node.target)(*args[1:], **kwargs)
                    else:  # call_module
                        module = self.root.get_submodule(node.target)  # type: ignore[attr-defined]
                        value = module(*args, **kwargs)
                except Exception:
                    self.evaluation_failed = True  # the model itself failed on the examples
                    raise
            if probe.reason:
                taint = f"{probe.reason} in node {node.name}"
            elif not self._clears_taint(node):
                taint = next((self.taints[n] for n in node.all_input_nodes if n in self.taints),
                             None)
            if replayer is not None:
                inputs = [self.concrete_values[n] for n in node.all_input_nodes]
                mutated = None if versions is None else mutation_of(node, args, versions, inputs)
                replayer.computed(value, taint, mutated)
        self.concrete_values[node] = value
        if taint:
            self.taints[node] = taint
        if self._is_structural(node, value):
            self.structural.add(node)

    @staticmethod
    def _clears_taint(node: Node) -> bool:
        if node.op == "call_function" and node.target is getattr:
            return len(node.args) > 1 and node.args[1] in METADATA_ATTRS
        return node.op == "call_method" and node.target in METADATA_METHODS

    def _is_structural(self, node: Node, value: Any) -> bool:
        """Whether the length / keys of ``value`` are Python structure (not a tensor's shape)."""
        if not isinstance(value, (list, tuple, dict)) or isinstance(value, torch.Size):
            return False
        if node.op in ("placeholder", "get_attr", "call_module"):
            return True
        target = node.target
        if target in (operator.getitem, getattr):
            source = node.args[0]
            return isinstance(source, Node) and (source in self.structural or
                                                 source.op == "call_module")
        if node.op == "call_function" and not is_torch_callable(target):
            return True  # an autowrapped user function or a constructor
        if node.op == "call_method" and _is_opaque_call(node):
            return True
        name = target if isinstance(target, str) else getattr(target, "__name__", "")
        if name not in SHAPE_DEPENDENT_COUNT:
            return True
        # x.split([2, 3]) has as many parts as sizes given; x.split(2) depends on x's shape.
        return name in ("split", "split_with_sizes", "tensor_split") and len(node.args) > 1 \
            and isinstance(node.args[1], (list, tuple))

    def state(self, proxy: Proxy) -> tuple[Any, str | None, bool]:
        """(concrete value, taint, structural) of ``proxy``."""
        if is_lazy_attribute(proxy):
            value, taint, structural = self.state(proxy.root)
            attr_value = getattr(value, proxy.attr)
            if proxy.attr in METADATA_ATTRS:
                taint = None
            return attr_value, taint, structural and isinstance(attr_value, (list, tuple, dict))
        node = proxy.node
        return self.concrete_values[node], self.taints.get(node), node in self.structural

    def record(self, proxy: Any, assumption: str, kind: str) -> None:
        if is_lazy_attribute(proxy):
            name = f"{proxy.root.node.name}.{proxy.attr}"
        else:
            name = proxy.node.name if is_proxy(proxy) else str(proxy)
        if self.replayer is not None:
            self.replayer.assumption(assumption)
        stack = getattr(self, "module_stack", None)
        path = next(reversed(stack.values()))[0] if stack else ""
        self.specializations.append(Specialization(name, path, assumption, kind,
                                                   source=caller_source()))

    def refuse(self, proxy: Proxy, question: str, why: str) -> DataDependentError:
        stack = getattr(self, "module_stack", None)
        path = next(reversed(stack.values()))[0] if stack else ""
        source = caller_source()
        lines = [f"{question} of `{describe(proxy)}` depends on tensor data ({why})"]
        if source:
            lines.append(f"  at {source}")
        lines.append("  fxquant does not specialize data-dependent control flow: the enclosing "
                     "module or method becomes opaque (strict=False). To keep more of the module "
                     "traced, pass the free function holding this code in autowrap_functions.")
        return DataDependentError(
            "\n".join(lines),
            module_path=path, source_line=source)


@contextlib.contextmanager
def _recorded_tensor_constructors() -> Iterator[None]:
    """While tracing, ``torch.tensor(n)`` / ``torch.as_tensor(n)`` of a proxy (e.g. a number read
    from a shape) records one node, as plain tracing cannot: these do not dispatch
    ``__torch_function__`` on their data argument."""
    originals = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}

    def recorded(original: Callable[..., Any]) -> Callable[..., Any]:
        def constructor(*args: Any, **kwargs: Any) -> Any:
            proxy = fx_symbolic_trace._find_proxy(args, kwargs)
            if proxy is None:
                return original(*args, **kwargs)
            return proxy.tracer.create_proxy("call_function", original, args, kwargs)
        return constructor

    try:
        for name, original in originals.items():
            setattr(torch, name, recorded(original))
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)
