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
import dataclasses
import inspect
import math
import operator
import os
import sys
import weakref
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx import Node
from torch.fx import _symbolic_trace as fx_symbolic_trace
from torch.fx.proxy import Attribute, Proxy
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from fxquant._trace_replay import Replayer, input_versions, is_torch_callable, mutation_of
from fxquant.errors import DataDependentError, TraceError

__all__ = ["Specialization", "DataDependentError", "ConcreteTracerMixin", "bind_example_inputs",
           "use_input_defaults"]

# Frames in these packages are never "the user's source line".
_INTERNAL_DIRS = tuple(os.path.dirname(os.path.abspath(mod.__file__)) + os.sep
                       for mod in (torch, sys.modules[__name__.rpartition(".")[0]]))

# Queries whose answer does not depend on data even for a tensor of data-dependent shape.
_METADATA_ATTRS = frozenset({"dtype", "device", "ndim", "layout", "is_cuda", "is_sparse",
                             "is_quantized", "is_meta", "requires_grad", "is_leaf"})
_METADATA_METHODS = frozenset({"dim", "ndimension", "is_floating_point", "is_complex",
                               "get_device", "element_size", "is_contiguous", "is_signed"})
# torch functions / Tensor methods whose result (or result shape) depends on tensor values.
_DATA_DEPENDENT = frozenset({
    "item", "tolist", "numpy", "__int__", "__float__", "__index__", "__complex__",
    "_local_scalar_dense", "nonzero", "argwhere", "masked_select", "unique", "_unique",
    "_unique2", "unique_dim", "unique_consecutive", "bincount", "nms",
})
# torch ops returning a tuple whose *length* follows an input's shape.
_SHAPE_DEPENDENT_COUNT = frozenset({"split", "split_with_sizes", "unbind", "chunk",
                                    "tensor_split", "hsplit", "vsplit", "dsplit", "nonzero",
                                    "where", "meshgrid", "unsafe_split", "unsafe_chunk"})
_BINARY_SYMBOLS = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
    operator.floordiv: "//", operator.mod: "%", operator.pow: "**", operator.lt: "<",
    operator.le: "<=", operator.gt: ">", operator.ge: ">=", operator.eq: "==",
    operator.ne: "!=", operator.and_: "&", operator.or_: "|",
}


@dataclasses.dataclass(frozen=True)
class Specialization:
    """One assumption a concrete-mode trace made about the example inputs.

    Attributes:
        node: name of the graph node whose value was used (it may be gone from the final graph
            when nothing else uses it).
        module_path: dotted path of the module whose code asked ("" for the root).
        assumption: what was assumed, e.g. ``"len(images_1.shape[-2:]) == 2"``.
        kind: ``"shape"`` (a tensor's shape or a number derived from it), ``"structure"``
            (length / keys of a Python container, a value being None), ``"value"`` (another
            non-tensor Python value) or ``"input"`` (a non-tensor input fixed to its example or
            default value).
        source: the user's source line that asked, as ``"file:line: code"``, when known.
    """

    node: str
    module_path: str
    assumption: str
    kind: str
    source: str | None = None

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        return (f"{self.assumption} [{self.kind}] in {self.module_path or '<root>'} "
                f"(node {self.node}){where}")


def bind_example_inputs(model: nn.Module, example_inputs: Any,
                        concrete_args: Mapping[str, Any] | None
                        ) -> tuple[dict[str, Any], list[Any], list[Specialization], dict[str, Any]]:
    """Maps ``example_inputs`` onto ``model.forward``'s parameters.

    Returns the ``concrete_args`` to trace with (tensor leaves of list / tuple / dict inputs become
    :data:`torch.fx.PH`, so the traced module takes the same structure; non-tensor values and
    unset defaults are fixed), the value of every placeholder fx will create, in creation order,
    the ``"input"`` specializations made, and the defaults used (parameter name -> value).

    Raises:
        TypeError: the example inputs do not fit ``forward``'s signature.
        ValueError: a parameter is given both in ``example_inputs`` and ``concrete_args``.
    """
    forward = inspect.unwrap(type(model).forward)
    sig = inspect.signature(forward)
    params = list(sig.parameters.values())[1:]  # drop self
    if isinstance(example_inputs, tuple):
        positional, keywords = example_inputs, {}
    elif isinstance(example_inputs, dict) and all(isinstance(k, str) for k in example_inputs) \
            and set(example_inputs) <= {p.name for p in params}:
        positional, keywords = (), dict(example_inputs)
    else:
        positional, keywords = (example_inputs,), {}
    try:
        bound = sig.bind(model, *positional, **keywords).arguments
    except TypeError as exc:
        raise TypeError(
            f"example_inputs do not fit {type(model).__qualname__}.forward{_strip_self(sig)}: "
            f"{exc}. Pass a tuple of positional arguments, a dict of arguments by name, or a "
            "single tensor / list for a one-argument forward.") from exc
    user_concrete = dict(concrete_args or {})
    out_concrete: dict[str, Any] = {}
    values: list[Any] = []
    specs: list[Specialization] = []
    defaults: dict[str, Any] = {}
    for param in params:
        name = param.name
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            if bound.get(name):
                raise TypeError(
                    f"example_inputs: {type(model).__qualname__}.forward takes "
                    f"{'*' if param.kind == param.VAR_POSITIONAL else '**'}{name}; concrete-mode "
                    "tracing needs named parameters. Wrap the model in a module whose forward "
                    "names its inputs.")
            values.append(() if param.kind == param.VAR_POSITIONAL else {})
            continue
        if name in user_concrete:
            if name in bound:
                raise ValueError(f"forward argument {name!r} is given in both example_inputs and "
                                 "concrete_args; give it in one of them.")
            given = user_concrete[name]
            leaves = pytree.tree_leaves(given)
            if any(isinstance(leaf, fx_symbolic_trace.PHBase) for leaf in leaves):
                raise ValueError(
                    f"concrete_args[{name!r}] holds PH placeholders, which have no example value "
                    f"in concrete mode; give {name!r} in example_inputs instead.")
            out_concrete[name] = given
            values.extend(leaves)
            continue
        if name in bound:
            value = pytree.tree_map(
                lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, bound[name])
            origin = "example"
        else:  # has a default (sig.bind checked)
            value, origin = param.default, "default"
            defaults[name] = value
        if isinstance(value, torch.Tensor) and origin == "example":
            values.append(value)  # a plain placeholder named after the parameter
            continue
        leaves = pytree.tree_leaves(value)
        out_concrete[name] = pytree.tree_map(
            lambda x: fx_symbolic_trace.PH if isinstance(x, torch.Tensor) else x, value)
        values.extend(leaves)
        fixed = [leaf for leaf in leaves if not isinstance(leaf, torch.Tensor)]
        if fixed:
            shown = repr(value) if not any(isinstance(x, torch.Tensor) for x in leaves) \
                else f"non-tensor leaves {fixed!r}"
            specs.append(Specialization(name, "", f"{name} = {shown} ({origin})", "input"))
    return out_concrete, values, specs, defaults


class DefaultsPyTreeCodeGen(torch.fx.graph._PyTreeCodeGen):
    """fx's pytree code generator (a GraphModule called with the structure the model takes),
    plus the defaults of ``forward`` parameters the example inputs left out, so that
    ``gm(images)`` works like ``model(images)``. fx itself would drop them."""

    def __init__(self, pytree_info: Any, defaults: Mapping[str, str]) -> None:
        super().__init__(pytree_info)
        self.defaults = dict(defaults)

    def gen_fn_def(self, free_vars: list[str], maybe_return_annotation: str, *,
                   expanded_def: bool = False) -> str:
        if self.pytree_info is None:
            return super().gen_fn_def(free_vars, maybe_return_annotation,
                                      expanded_def=expanded_def)
        fn_args = list(self.pytree_info.orig_args)
        if fn_args and fn_args[0] == "self":
            free_vars.insert(0, "self")
        shown = list(fn_args)
        for i in range(len(fn_args) - 1, -1, -1):  # defaults only on a trailing run
            if fn_args[i] not in self.defaults:
                break
            shown[i] = f"{fn_args[i]}={self.defaults[fn_args[i]]}"
        definition = torch.fx.graph.CodeGen.gen_fn_def(self, shown, maybe_return_annotation,
                                                       expanded_def=expanded_def)
        if free_vars:
            definition += self.gen_var_bindings(fn_args, free_vars, expanded_def)
        return definition


def use_input_defaults(graph: torch.fx.Graph, concrete_args: Mapping[str, Any],
                       defaults: Mapping[str, Any]) -> None:
    """Makes the traced ``forward`` take arguments as ``model.forward`` does: named as the model
    names them, with the defaults of the parameters the example inputs left out."""
    codegen = graph._codegen
    if type(codegen) is not torch.fx.graph._PyTreeCodeGen:
        # Flat inputs: fx names a fixed argument "<name>_1"; give it back its own name.
        placeholders = {node.target: node for node in graph.nodes if node.op == "placeholder"}
        for name, value in concrete_args.items():
            node = placeholders.get(f"{name}_1")
            if node is not None and pytree.tree_structure(value).is_leaf() \
                    and name not in placeholders:
                node.target = name
                node._rename(name)
        return
    for node in graph.nodes:
        if node.op == "placeholder":
            node.args = ()  # a default here would break fx's generated unpacking line
    shown = {}
    for name, value in defaults.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            shown[name] = repr(value)
    graph._codegen = DefaultsPyTreeCodeGen(codegen.pytree_info, shown)


def _strip_self(sig: inspect.Signature) -> str:
    return str(sig.replace(parameters=list(sig.parameters.values())[1:]))


class _DataDependenceProbe(TorchFunctionMode):
    """Notes the first data-dependent torch operation run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def __torch_function__(self, func: Callable[..., Any], types_: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.reason is None:
            self.reason = _data_dependent_reason(func, args, kwargs)
        return func(*args, **kwargs)


def _data_dependent_reason(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    name = getattr(func, "__name__", "") or ""
    name = name.split(".")[0]
    if name == "__getitem__" and len(args) > 1 and _has_bool_index(args[1]):
        return "boolean-mask indexing"
    if name == "where" and len(args) + len(kwargs) == 1:
        return "torch.where(condition)"
    if name == "repeat_interleave":
        repeats = kwargs.get("repeats", args[1] if len(args) > 1 else None)
        if isinstance(repeats, torch.Tensor) or (len(args) == 1 and not kwargs):
            return "repeat_interleave(tensor repeats)"
    if name in _DATA_DEPENDENT:
        return f"{name}()"
    return None


def _has_bool_index(index: Any) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype in (torch.bool, torch.uint8)
    if isinstance(index, (tuple, list)):
        return any(_has_bool_index(i) for i in index)
    return False


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


_PURE_FUNCTIONS = frozenset({*_BINARY_SYMBOLS, getattr, operator.getitem, operator.not_,
                             operator.neg, operator.pos, operator.abs, operator.truth, len})
_PURE_METHODS = frozenset({"size", "numel", "nelement", "stride", *_METADATA_METHODS})


def _is_pure_query(node: Node) -> bool:
    if node.op == "call_function":
        return node.target in _PURE_FUNCTIONS
    return node.op == "call_method" and node.target in _PURE_METHODS


# Type checks on proxies go through type(): isinstance() would consult ConcreteProxy.__class__.
def _is_proxy(obj: Any) -> bool:
    return issubclass(type(obj), Proxy)


def _is_lazy_attribute(obj: Any) -> bool:
    return issubclass(type(obj), Attribute) and obj._node is None


def _is_opaque_call(node: Node) -> bool:
    """Whether ``node`` calls a method made opaque by fxquant (on a module or the root's method)."""
    owner = node.args[0] if node.args else None
    return isinstance(owner, Node) and owner.op == "get_attr"


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def is_internal_file(filename: str) -> bool:
    """Whether ``filename`` belongs to torch or fxquant (so it is not the user's source)."""
    return os.path.abspath(filename).startswith(_INTERNAL_DIRS)


def _user_source() -> str | None:
    """"file:line: code" of the innermost frame on the current stack outside torch.fx/fxquant."""
    import linecache

    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_internal_file(filename):
            where = f"{filename}:{frame.f_lineno}"
            code = linecache.getline(filename, frame.f_lineno).strip()
            return f"{where}: {code}" if code else where
        frame = frame.f_back
    return None


def _describe(arg: Any, depth: int = 4) -> str:
    """A short Python-like expression for a node argument, for specialization records."""
    for level in range(depth, -1, -1):
        text = _expression(arg, level)
        if len(text) <= 100:
            return text
    return text[:97] + "..."


def _expression(arg: Any, depth: int) -> str:
    if _is_proxy(arg):
        if _is_lazy_attribute(arg):
            return f"{_expression(arg.root, depth)}.{arg.attr}"
        arg = arg.node
    if isinstance(arg, slice):
        parts = [_expression(p, depth) if p is not None else "" for p in (arg.start, arg.stop)]
        step = f":{_expression(arg.step, depth)}" if arg.step is not None else ""
        return ":".join(parts) + step
    if isinstance(arg, (list, tuple)) and not isinstance(arg, torch.Size):
        inner = ", ".join(_expression(a, depth) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner})"
    if not isinstance(arg, Node):
        return repr(arg)
    node = arg
    if depth <= 0 or node.op in ("placeholder", "get_attr", "call_module"):
        return node.name if node.op != "get_attr" else str(node.target)
    args = node.args
    sub = depth - 1
    if node.op == "call_function":
        if node.target is getattr and len(args) == 2:
            return f"{_expression(args[0], sub)}.{args[1]}"
        if node.target is operator.getitem:
            index = args[1]
            text = ", ".join(_expression(i, sub) for i in index) if isinstance(index, tuple) \
                else _expression(index, sub)
            return f"{_expression(args[0], sub)}[{text}]"
        if node.target in _BINARY_SYMBOLS and len(args) == 2:
            return f"({_expression(args[0], sub)} {_BINARY_SYMBOLS[node.target]} " \
                   f"{_expression(args[1], sub)})"
        name = getattr(node.target, "__name__", str(node.target))
        return f"{name}({', '.join(_expression(a, sub) for a in args)})"
    if node.op == "call_method" and args:
        rest = ", ".join(_expression(a, sub) for a in args[1:])
        return f"{_expression(args[0], sub)}.{node.target}({rest})"
    return node.name


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
        hands out the values of the previous attempt (see :mod:`fxquant._trace_replay`)."""
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
            self.record(proxy, f"{_describe(node)} is None", "structure")
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
            self.record(proxy, f"keys({_describe(proxy)}) == {keys!r}", "structure")
            items = [(k, self._expand_item(proxy, k)) for k in keys]
            return type(value)(items)
        self.record(proxy, f"len({_describe(proxy)}) == {len(value)}", "structure")
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
    def _evaluation(self) -> Iterator[_DataDependenceProbe]:
        was_tracing = fx_symbolic_trace._get_is_fx_tracing()
        fx_symbolic_trace._set_is_fx_tracing(False)
        self._evaluating = True
        probe = _DataDependenceProbe()
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
            return len(node.args) > 1 and node.args[1] in _METADATA_ATTRS
        return node.op == "call_method" and node.target in _METADATA_METHODS

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
        if name not in _SHAPE_DEPENDENT_COUNT:
            return True
        # x.split([2, 3]) has as many parts as sizes given; x.split(2) depends on x's shape.
        return name in ("split", "split_with_sizes", "tensor_split") and len(node.args) > 1 \
            and isinstance(node.args[1], (list, tuple))

    def state(self, proxy: Proxy) -> tuple[Any, str | None, bool]:
        """(concrete value, taint, structural) of ``proxy``."""
        if _is_lazy_attribute(proxy):
            value, taint, structural = self.state(proxy.root)
            attr_value = getattr(value, proxy.attr)
            if proxy.attr in _METADATA_ATTRS:
                taint = None
            return attr_value, taint, structural and isinstance(attr_value, (list, tuple, dict))
        node = proxy.node
        return self.concrete_values[node], self.taints.get(node), node in self.structural

    def record(self, proxy: Any, assumption: str, kind: str) -> None:
        if _is_lazy_attribute(proxy):
            name = f"{proxy.root.node.name}.{proxy.attr}"
        else:
            name = proxy.node.name if _is_proxy(proxy) else str(proxy)
        if self.replayer is not None:
            self.replayer.assumption(assumption)
        stack = getattr(self, "module_stack", None)
        path = next(reversed(stack.values()))[0] if stack else ""
        self.specializations.append(Specialization(name, path, assumption, kind, _user_source()))

    def refuse(self, proxy: Proxy, question: str, why: str) -> DataDependentError:
        stack = getattr(self, "module_stack", None)
        path = next(reversed(stack.values()))[0] if stack else ""
        source = _user_source()
        lines = [f"{question} of `{_describe(proxy)}` depends on tensor data ({why})"]
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


def _tracer(proxy: Proxy) -> ConcreteTracerMixin:
    return proxy.tracer  # type: ignore[return-value]


def _check_question(proxy: Proxy, question: str, value: Any, taint: str | None,
                    structural: bool) -> str:
    """Raises when ``question`` on ``proxy`` would depend on data; else returns the record kind."""
    container = isinstance(value, (list, tuple, dict)) and not isinstance(value, torch.Size)
    if container and structural:
        return "structure"
    if taint:
        raise _tracer(proxy).refuse(proxy, question, f"derived from {taint}")
    if container:
        return "structure"
    if isinstance(value, (torch.Tensor, torch.Size)):
        return "shape"
    return "value"


class ConcreteProxy(Proxy):
    """A ``torch.fx.Proxy`` that knows its value on the example inputs (see module docstring)."""

    def __repr__(self) -> str:
        return f"ConcreteProxy({self.node.name})"

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D401 - lets isinstance(p, torch.Tensor / int) answer
        cls = self.__dict__.get("_fxquant_class")
        if cls is None:
            try:
                value = _tracer(self).state(self)[0]
            except Exception:  # noqa: BLE001 - any failure: behave as a plain proxy
                value = None
            scalar = isinstance(value, (torch.Tensor, bool, int, float))
            cls = type(value) if scalar else type(self)
            self.__dict__["_fxquant_class"] = cls
        return cls

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)
        value = _tracer(self).state(self)[0]
        if not hasattr(value, k):
            raise AttributeError(f"{type(value).__name__!r} object has no attribute {k!r}")
        attribute = _ConcreteAttribute(self, k)
        if getattr(value, k) is None:
            _tracer(self).record(attribute, f"{_describe(attribute)} is None", "structure")
            return None
        return attribute

    def __bool__(self) -> bool:
        value, taint, structural = _tracer(self).state(self)
        if isinstance(value, torch.Tensor):
            raise _tracer(self).refuse(self, "bool()", "control flow on a tensor value")
        kind = _check_question(self, "bool()", value, taint, structural)
        result = bool(value)
        text = _describe(self)
        _tracer(self).record(self, f"{text} is {result}" if self.node.op == "call_function"
                             and self.node.target in _BINARY_SYMBOLS
                             else f"bool({text}) is {result}", kind)
        return result

    def __len__(self) -> int:
        value, taint, structural = _tracer(self).state(self)
        kind = _check_question(self, "len()", value, taint, structural)
        length = len(value)
        _tracer(self).record(self, f"len({_describe(self)}) == {length}", kind)
        return length

    def __iter__(self) -> Iterator[Any]:
        value, taint, structural = _tracer(self).state(self)
        kind = _check_question(self, "iteration", value, taint, structural)
        if isinstance(value, Mapping):
            keys = list(value.keys())
            _tracer(self).record(self, f"keys({_describe(self)}) == {keys!r}", kind)
            return iter(keys)
        if not isinstance(value, (torch.Tensor, list, tuple)):
            raise TraceError(f"cannot iterate `{_describe(self)}`: its value is a "
                             f"{type(value).__qualname__}, not a tensor, list, tuple or dict")
        length = len(value)
        _tracer(self).record(self, f"len({_describe(self)}) == {length}", kind)
        return iter([self[i] for i in range(length)])

    def keys(self) -> Any:  # ``**proxy`` and ``proxy.keys()``
        value, taint, structural = _tracer(self).state(self)
        if not isinstance(value, Mapping):
            return _ConcreteAttribute(self, "keys")()
        kind = _check_question(self, "keys()", value, taint, structural)
        _tracer(self).record(self, f"keys({_describe(self)}) == {list(value.keys())!r}", kind)
        return value.keys()

    def __contains__(self, item: Any) -> bool:
        value, taint, structural = _tracer(self).state(self)
        if isinstance(value, torch.Tensor):
            raise _tracer(self).refuse(self, "`in`", "membership in a tensor")
        if isinstance(value, Mapping) and not _is_proxy(item):
            kind = _check_question(self, "`in`", value, taint, structural)
            result = item in value
            _tracer(self).record(self, f"({item!r} in {_describe(self)}) is {result}", kind)
            return result
        return any(element is item or bool(element == item) for element in self)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def _number(self, convert: Callable[[Any], Any]) -> Any:
        value, taint, structural = _tracer(self).state(self)
        question = f"{convert.__name__}()"
        if isinstance(value, torch.Tensor):
            raise _tracer(self).refuse(self, question, "a tensor value read as a Python number")
        kind = _check_question(self, question, value, taint, structural)
        result = convert(value)
        _tracer(self).record(self, f"{convert.__name__}({_describe(self)}) == {result!r}", kind)
        return result

    def __int__(self) -> int:
        return self._number(int)

    def __float__(self) -> float:
        return self._number(float)

    def __index__(self) -> int:
        return self._number(operator.index)

    def __complex__(self) -> complex:
        return self._number(complex)

    def __round__(self, ndigits: Any = None) -> Any:
        args = (self,) if ndigits is None else (self, ndigits)
        return self.tracer.create_proxy("call_function", round, args, {})

    def __trunc__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.trunc, (self,), {})

    def __floor__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.floor, (self,), {})

    def __ceil__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.ceil, (self,), {})


class _ConcreteAttribute(ConcreteProxy, Attribute):
    """``proxy.attr`` before it is used: a method call records one ``call_method`` node."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.attr in ("keys", "values", "items") and not args and not kwargs:
            value, taint, structural = _tracer(self).state(self.root)
            if isinstance(value, Mapping):
                kind = _check_question(self.root, f"{self.attr}()", value, taint, structural)
                keys = list(value.keys())
                _tracer(self).record(self.root, f"keys({_describe(self.root)}) == {keys!r}", kind)
                if self.attr == "keys":
                    return value.keys()
                if self.attr == "values":
                    return [self.root[k] for k in keys]
                return [(k, self.root[k]) for k in keys]
        return Attribute.__call__(self, *args, **kwargs)

