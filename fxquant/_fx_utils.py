"""Small helpers shared by passes, QuantSim and export."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx

__all__ = ["as_args", "graph_output_nodes", "is_hashable"]


def as_args(dummy_input: Any) -> tuple[Any, ...]:
    """A model's example input as the tuple of positional arguments of its forward.

    A tuple is taken as the arguments; a list of tensors likewise (AIMET accepts both); anything
    else (a tensor, a dict …) is the single argument.

    Example:
        >>> as_args(torch.zeros(1))
        (tensor([0.]),)
    """
    if isinstance(dummy_input, tuple):
        return dummy_input
    if isinstance(dummy_input, list) and all(isinstance(t, torch.Tensor) for t in dummy_input):
        return tuple(dummy_input)
    return (dummy_input,)


def graph_output_nodes(gm: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """The nodes whose values the graph returns."""
    out: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "output":
            torch.fx.node.map_arg(node.args, out.add)
    return out


def is_hashable(obj: Any) -> bool:
    """Whether ``obj`` can be a dict key / set member (fx targets can be unhashable partials).

    Example:
        >>> is_hashable(operator.add), is_hashable([1])
        (True, False)
    """
    try:
        hash(obj)
    except TypeError:
        return False
    return True
