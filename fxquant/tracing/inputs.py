"""Concrete mode's inputs: example inputs bound to ``forward``'s parameters, and the traced
``forward`` given back the model's argument names and defaults.

Example:
    >>> concrete_args, values, specs, defaults = bind_example_inputs(model, ([img],), None)
    >>> concrete_args                          # a list input of one tensor: one placeholder
    {'images': [PH]}
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
import torch.fx
from torch import nn
from torch.fx import _symbolic_trace as fx_symbolic_trace
from torch.utils import _pytree as pytree

from fxquant.tracing.records import Specialization

__all__ = ["bind_example_inputs", "use_input_defaults", "DefaultsPyTreeCodeGen"]


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
