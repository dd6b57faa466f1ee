"""PrepareModelPass: every op a quantizer may sit after becomes a module with its own name.

* functional activations (``F.relu``, ``torch.sigmoid``, ``x.softmax(-1)`` …) with constant
  arguments become the matching ``torch.nn`` module (``nn.ReLU``, ``nn.Sigmoid``, ``nn.Softmax``);
* ``F.conv{1,2,3}d`` / ``F.linear`` whose weight is a parameter become real ``nn.Conv*d`` /
  ``nn.Linear`` modules carrying those same parameters, so BN folding and weight quantizers see
  them (e.g. "same"-padding conv subclasses that call the functional);
* other tensor ops (add/sub/mul/div/matmul/cat, interpolate, pooling, reshape-type data movement
  …) become :mod:`fxquant.nn` modules that call exactly the function they replace;
* a module called at several sites is split into one copy per call site (parameters stay
  shared, so tied weights stay tied);
* ``nn.Identity`` calls are removed (their users take the input): they compute nothing, and one
  left where a batch norm was folded (``fold_all_batch_norms`` on a module, as AIMET's flow does
  before building the sim) would otherwise split a conv → ReLU supergroup into two quantized
  outputs (AIMET's graph, traced with ``torch.jit``, has no Identity either).

New modules are named ``<scope>.module_<op>`` (``_1``, ``_2`` … for further ones in the same
scope) under the module whose code called the op, e.g. ``layer1.0.module_add``. Outputs are
bit-identical to the input graph module.
"""
from __future__ import annotations

import builtins
import copy
import logging
import operator
import re
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fxquant import _meta
from fxquant._fx_utils import is_hashable
from fxquant import nn as fxnn
from fxquant.passes.base import Pass, PassResult, at_node
from fxquant.tracing.tracer import record_node_meta

__all__ = ["PrepareModelPass"]

logger = logging.getLogger(__name__)

# --- functional activations -> torch.nn modules -------------------------------------------------
# (module class, names of the arguments after the input, defaults, kwargs that must keep defaults)
_ActSpec = tuple[type[nn.Module], tuple[str, ...], dict[str, Any]]
_ACT_SPECS: dict[str, _ActSpec] = {
    "relu": (nn.ReLU, ("inplace",), {"inplace": False}),
    "relu6": (nn.ReLU6, ("inplace",), {"inplace": False}),
    "gelu": (nn.GELU, ("approximate",), {"approximate": "none"}),
    "silu": (nn.SiLU, ("inplace",), {"inplace": False}),
    "sigmoid": (nn.Sigmoid, (), {}),
    "tanh": (nn.Tanh, (), {}),
    "hardswish": (nn.Hardswish, ("inplace",), {"inplace": False}),
    "hardsigmoid": (nn.Hardsigmoid, ("inplace",), {"inplace": False}),
    "softmax": (nn.Softmax, ("dim", "_stacklevel", "dtype"), {"dim": None, "_stacklevel": 3,
                                                             "dtype": None}),
    "log_softmax": (nn.LogSoftmax, ("dim", "_stacklevel", "dtype"),
                    {"dim": None, "_stacklevel": 3, "dtype": None}),
    "leaky_relu": (nn.LeakyReLU, ("negative_slope", "inplace"),
                   {"negative_slope": 0.01, "inplace": False}),
    "elu": (nn.ELU, ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}),
    "hardtanh": (nn.Hardtanh, ("min_val", "max_val", "inplace"),
                 {"min_val": -1.0, "max_val": 1.0, "inplace": False}),
    "mish": (nn.Mish, ("inplace",), {"inplace": False}),
    "softplus": (nn.Softplus, ("beta", "threshold"), {"beta": 1.0, "threshold": 20.0}),
}
# Arguments accepted by the function but not by the module constructor; they must keep defaults.
_ACT_FIXED = {"softmax": {"dtype": None}, "log_softmax": {"dtype": None}}
_ACT_DROP = {"softmax": ("_stacklevel",), "log_softmax": ("_stacklevel",)}

_ACT_FUNCTIONS: dict[Any, tuple[str, bool]] = {}  # target -> (spec name, in place)
for _name in _ACT_SPECS:
    if hasattr(F, _name):
        _ACT_FUNCTIONS[getattr(F, _name)] = (_name, False)
    if hasattr(torch, _name):
        _ACT_FUNCTIONS[getattr(torch, _name)] = (_name, False)
    if hasattr(torch, _name + "_"):
        _ACT_FUNCTIONS[getattr(torch, _name + "_")] = (_name, True)
_ACT_FUNCTIONS[F.relu_] = ("relu", True)
_ACT_METHODS: dict[str, tuple[str, bool]] = {}
for _name in _ACT_SPECS:
    if hasattr(torch.Tensor, _name):
        _ACT_METHODS[_name] = (_name, False)
    if hasattr(torch.Tensor, _name + "_"):
        _ACT_METHODS[_name + "_"] = (_name, True)

# Functions/methods whose result is never a tensor (shape queries and the like).
_NON_TENSOR_FUNCTIONS = {builtins.getattr, builtins.len, builtins.isinstance, torch._assert,
                         torch.numel, builtins.int, builtins.float}
_NON_TENSOR_METHODS = {"size", "dim", "numel", "item", "tolist", "__len__", "element_size",
                       "ndimension", "nelement", "is_contiguous", "stride", "get_device",
                       "data_ptr", "type"}

_CONV_FUNCTIONS: dict[Any, tuple[type[nn.Module], int]] = {
    F.conv1d: (nn.Conv1d, 1), F.conv2d: (nn.Conv2d, 2), F.conv3d: (nn.Conv3d, 3),
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower()


class PrepareModelPass(Pass):
    """Makes every quantizable op a uniquely named module; see the module docstring.

    Args:
        modules_to_exclude: module paths whose own code is left as traced (their functionals are
            not converted and, if called at several sites, they are not split).
        module_classes_to_exclude: module classes treated the same way.

    Example:
        >>> result = PrepareModelPass()(fxquant.trace(model))
        >>> result.details["converted"][:2]
        [('add', 'layer1.0.module_add'), ('add_1', 'layer1.1.module_add')]
    """

    requires = frozenset()
    provides = frozenset({_meta.TAG_PREPARED})
    preserves_numerics = True
    in_place = True

    def __init__(self, modules_to_exclude: tuple[str, ...] = (),
                 module_classes_to_exclude: tuple[type[nn.Module], ...] = ()) -> None:
        self.modules_to_exclude = tuple(modules_to_exclude)
        self.module_classes_to_exclude = tuple(module_classes_to_exclude)

    def __repr__(self) -> str:
        args = []
        if self.modules_to_exclude:
            args.append(f"modules_to_exclude={list(self.modules_to_exclude)}")
        if self.module_classes_to_exclude:
            args.append("module_classes_to_exclude="
                        f"{[c.__name__ for c in self.module_classes_to_exclude]}")
        return f"PrepareModelPass({', '.join(args)})"

    # -- helpers -----------------------------------------------------------------------------
    def _excluded_scope(self, gm: torch.fx.GraphModule, scope: str, node: torch.fx.Node) -> bool:
        for path in self.modules_to_exclude:
            if scope == path or scope.startswith(path + "."):
                return True
        if self.module_classes_to_exclude:
            stack = node.meta.get("nn_module_stack") or {}
            for _, (_path, cls) in stack.items():
                if isinstance(cls, type) and issubclass(cls, self.module_classes_to_exclude):
                    return True
        return False

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        # a graph module traced by torch.fx itself (symbolic_trace) lacks the module paths and
        # op roles fxquant.trace records: without them no layer would be named, and a sim built
        # on the result would quantize nothing but its input
        record_node_meta(gm)
        tensors = _tensor_nodes(gm)
        used_names = {name for name, _ in gm.named_modules()}
        converted: list[tuple[str, str]] = []
        for node in list(gm.graph.nodes):
            if node.op not in ("call_function", "call_method") or node not in tensors:
                continue
            scope = _meta.module_path(node) or ""
            if self._excluded_scope(gm, scope, node):
                continue
            try:
                module = _module_for(gm, node)
            except Exception as exc:
                raise at_node(node, exc)
            if module is None:
                continue
            kind = _snake(type(module).__name__)
            name = _unique_name(f"{scope}.module_{kind}" if scope else f"module_{kind}", used_names)
            used_names.add(name)
            gm.add_submodule(name, module)
            traced_name = node.name
            new = _replace_with_module(gm, node, name, module)
            _meta.set(new, _meta.AIMET_NAME,
                      f"{scope}.module_{traced_name}" if scope else f"module_{traced_name}")
            converted.append((traced_name, name))
        identities = self._remove_identities(gm)
        split = self._split_reused(gm, used_names)
        removed = _erase_dead_attrs(gm)
        named = _name_layers(gm)
        modified = bool(converted or split or removed or named or identities)
        if converted or split or removed or identities:
            gm.delete_all_unused_submodules()
        return PassResult(gm, modified, {"converted": converted, "split": split, "named": named,
                                         "identities_removed": identities})

    def _remove_identities(self, gm: torch.fx.GraphModule) -> list[str]:
        removed = []
        for node in list(gm.graph.nodes):
            if (node.op != "call_module" or len(node.args) != 1 or node.kwargs
                    or not isinstance(node.args[0], torch.fx.Node)):
                continue
            target = str(node.target)
            if type(gm.get_submodule(target)) is not nn.Identity or self._excluded_scope(
                    gm, target, node):
                continue
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed.append(target)
        return removed

    def _split_reused(self, gm: torch.fx.GraphModule, used_names: set[str]
                      ) -> list[tuple[str, str]]:
        seen: dict[str, torch.fx.Node] = {}
        split: list[tuple[str, str]] = []
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            target = str(node.target)
            if target not in seen:
                seen[target] = node
                continue
            if self._excluded_scope(gm, target, node):
                continue
            original = gm.get_submodule(target)
            if isinstance(original, self.module_classes_to_exclude or ()):
                continue
            memo = {id(p): p for p in original.parameters()}  # keep parameters tied
            clone = copy.deepcopy(original, memo)
            name = _unique_name(target, used_names, start=1)
            used_names.add(name)
            gm.add_submodule(name, clone)
            node.target = name
            _meta.set(node, _meta.MODULE_PATH, name)
            parent, _, child = target.rpartition(".")
            aimet = f"module_{child}_{node.name.rsplit('_', 1)[-1]}"  # AIMET's reused-call name
            _meta.set(node, _meta.AIMET_NAME, f"{parent}.{aimet}" if parent else aimet)
            split.append((target, name))
        return split


def _name_layers(gm: torch.fx.GraphModule) -> int:
    """Writes the canonical layer name (the module path) on every ``call_module`` op node.

    Returns how many names were written or changed (0 on an already prepared graph module).
    """
    named = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or _meta.role(node) != _meta.ROLE_OP:
            continue
        name = str(node.target)
        if _meta.layer_name(node) != name:
            _meta.set(node, _meta.LAYER_NAME, name)
            named += 1
    return named


def _unique_name(base: str, used: set[str], start: int | None = None) -> str:
    if start is None and base not in used:
        return base
    i = start or 1
    while f"{base}_{i}" in used:
        i += 1
    return f"{base}_{i}"


def _tensor_nodes(gm: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """Nodes whose value is a tensor (or a tuple/list of tensors), by a forward type inference.

    Shape arithmetic (``x.size(0) * 2``) must not become a layer, so ops are converted only when
    one of their inputs is known to be a tensor.
    """
    tensors: set[torch.fx.Node] = set()

    def any_tensor(args: Any) -> bool:
        found = False

        def visit(a: Any) -> Any:
            nonlocal found
            found = found or (isinstance(a, torch.fx.Node) and a in tensors)
            return a

        torch.fx.node.map_aggregate(args, visit)
        return found

    for node in gm.graph.nodes:
        if node.op == "placeholder" or node.op == "call_module":
            tensors.add(node)
        elif node.op == "get_attr":
            try:
                value = _fetch_attr(gm, str(node.target))
            except AttributeError:
                continue
            if isinstance(value, torch.Tensor):
                tensors.add(node)
        elif node.op == "call_method":
            if node.target not in _NON_TENSOR_METHODS and node.args and any_tensor(node.args[0]):
                tensors.add(node)
        elif node.op == "call_function":
            if node.target in _NON_TENSOR_FUNCTIONS:
                continue
            if node.target is operator.getitem:
                if any_tensor(node.args[0]):
                    tensors.add(node)
            elif any_tensor((node.args, node.kwargs)):
                tensors.add(node)
    return tensors


def _fetch_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _bind(node: torch.fx.Node, names: tuple[str, ...], defaults: dict[str, Any]
          ) -> dict[str, Any] | None:
    """Binds the arguments after the input of ``node`` to ``names``; None if any is a Node."""
    values = dict(defaults)
    extra = node.args[1:]
    if len(extra) > len(names):
        return None
    values.update(zip(names, extra))
    for key, value in node.kwargs.items():
        if key == "input":
            continue
        if key not in names:
            return None
        values[key] = value
    if any(isinstance(v, torch.fx.Node) for v in values.values()):
        return None
    return values


def _activation_module(node: torch.fx.Node) -> nn.Module | None:
    if node.op == "call_function":
        spec = _ACT_FUNCTIONS.get(node.target) if is_hashable(node.target) else None
    else:
        spec = _ACT_METHODS.get(node.target)
    if spec is None:
        return None
    name, in_place = spec
    cls, arg_names, defaults = _ACT_SPECS[name]
    if not node.args and "input" not in node.kwargs:
        return None
    values = _bind(node, arg_names, defaults)
    if values is None:
        return None
    for key, required in _ACT_FIXED.get(name, {}).items():
        if values.get(key) != required:
            return None
    for key in (*_ACT_DROP.get(name, ()), *_ACT_FIXED.get(name, {})):
        values.pop(key, None)
    if in_place:
        if "inplace" not in values:
            return None  # e.g. torch.sigmoid_: no module with in-place semantics
        values["inplace"] = True
    return cls(**values)


def _conv_or_linear_module(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    """A real Conv/Linear module for ``F.conv*d`` / ``F.linear`` on parameter weights."""
    if node.op != "call_function" or not is_hashable(node.target):
        return None
    if node.target is F.linear:
        names, defaults = ("input", "weight", "bias"), {"bias": None}
    elif node.target in _CONV_FUNCTIONS:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    else:
        return None
    values = dict(defaults)
    values.update(zip(names, node.args))
    values.update(node.kwargs)
    weight_node, bias_node = values["weight"], values["bias"]
    params: dict[str, nn.Parameter | None] = {}
    for key, arg in (("weight", weight_node), ("bias", bias_node)):
        if arg is None and key == "bias":
            params[key] = None
            continue
        if not (isinstance(arg, torch.fx.Node) and arg.op == "get_attr"):
            return None
        value = _fetch_attr(gm, str(arg.target))
        if not isinstance(value, nn.Parameter):
            return None
        params[key] = value
    if any(isinstance(values[k], torch.fx.Node) for k in values if k not in names[:3]):
        return None
    weight = params["weight"]
    bias = params["bias"]
    if node.target is F.linear:
        module: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                      device="meta")
    else:
        cls, _ = _CONV_FUNCTIONS[node.target]
        groups = values["groups"]
        module = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                     stride=values["stride"], padding=values["padding"],
                     dilation=values["dilation"], groups=groups, bias=bias is not None,
                     device="meta")
    module.weight = weight
    if bias is not None:
        module.bias = bias
    return module


def _module_for(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    module = _conv_or_linear_module(gm, node)
    if module is not None:
        return module
    module = _activation_module(node)
    if module is not None:
        return module
    cls = fxnn.module_class_for(node.op, node.target)
    if cls is None:
        return None
    if node.op == "call_method":
        return cls(method=str(node.target))
    return cls(fn=node.target)


def _replace_with_module(gm: torch.fx.GraphModule, node: torch.fx.Node, name: str,
                         module: nn.Module) -> torch.fx.Node:
    if isinstance(module, fxnn.FunctionalModule):
        args, kwargs = node.args, node.kwargs
    elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        args = (node.args[0] if node.args else node.kwargs["input"],)
        kwargs = {}
    else:  # activation: only the input remains an argument
        args = (node.args[0] if node.args else node.kwargs["input"],)
        kwargs = {}
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args, kwargs)
    _meta.copy_meta(node, new, **{_meta.MODULE_PATH: name})
    new.meta["nn_module_stack"] = dict(node.meta.get("nn_module_stack") or {})
    new.meta["nn_module_stack"][name] = (name, type(module))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _erase_dead_attrs(gm: torch.fx.GraphModule) -> list[str]:
    """Erases unused get_attr nodes (weights moved into new modules) and their attributes when
    no other node refers to them and they belong to no module the graph still calls."""
    removed: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            target = str(node.target)
            gm.graph.erase_node(node)
            removed.append(target)
    if not removed:
        return removed
    still_used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    called = [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    for target in removed:
        if target in still_used:
            continue
        owner_path, _, attr = target.rpartition(".")
        if any(owner_path == c or owner_path.startswith(c + ".") for c in called):
            continue
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]
        elif hasattr(owner, attr) and not isinstance(getattr(owner, attr), nn.Module):
            delattr(owner, attr)
    return removed
