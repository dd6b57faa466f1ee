"""The one place that reads and writes fxquant's per-node state, ``node.meta["fxquant"]``.

Keys (all optional except where a pass sets them):
    module_path: dotted path of the module whose code produced the node ("" for the root).
    handle: stable integer id assigned at trace time; copied when a pass replaces a node.
    source: "file:line: code" of the user's source line that produced the node.
    role: "op" (a model op), "quantizer", "logger" or "shadow" (a model-B copy of an op placed
        by the numeric suite's InsertShadowsPass).
    layer_name: canonical layer name (the module path after the preparer) for quantizable ops.

Passes never set ad-hoc attributes on nodes; they call these helpers.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch.fx

META_KEY = "fxquant"
MODULE_PATH = "module_path"
HANDLE = "handle"
SOURCE = "source"
ROLE = "role"
LAYER_NAME = "layer_name"

ROLE_OP = "op"
ROLE_QUANTIZER = "quantizer"
ROLE_LOGGER = "logger"
ROLE_SHADOW = "shadow"

_HANDLE_COUNTER = "_fxquant_next_handle"


def node_meta(node: torch.fx.Node) -> dict[str, Any]:
    """Returns (creating it if missing) the fxquant metadata dict of ``node``."""
    return node.meta.setdefault(META_KEY, {})


def get(node: torch.fx.Node, key: str, default: Any = None) -> Any:
    """Reads one fxquant metadata value of ``node``."""
    return node.meta.get(META_KEY, {}).get(key, default)


def set(node: torch.fx.Node, key: str, value: Any) -> None:  # noqa: A001 - mirrors dict API
    """Writes one fxquant metadata value of ``node``."""
    node_meta(node)[key] = value


def copy_meta(src: torch.fx.Node, dst: torch.fx.Node, **overrides: Any) -> None:
    """Copies ``src``'s fxquant metadata (and its stack trace) onto ``dst``, then applies overrides."""
    meta = dict(src.meta.get(META_KEY, {}))
    meta.update(overrides)
    dst.meta[META_KEY] = meta
    if "stack_trace" in src.meta and "stack_trace" not in dst.meta:
        dst.meta["stack_trace"] = src.meta["stack_trace"]


def module_path(node: torch.fx.Node) -> str | None:
    """The dotted module path recorded for ``node``, or None."""
    return get(node, MODULE_PATH)


def source(node: torch.fx.Node) -> str | None:
    """The user's source line recorded for ``node``, or None."""
    return get(node, SOURCE)


def handle(node: torch.fx.Node) -> int | None:
    """The stable handle of ``node``, or None."""
    return get(node, HANDLE)


def assign_handles(graph: torch.fx.Graph, nodes: Iterable[torch.fx.Node] | None = None) -> None:
    """Gives every node of ``graph`` (or only ``nodes``) lacking a handle the next free one.

    Handles are unique within a graph and never reused, so they identify an op across passes.
    """
    next_handle = getattr(graph, _HANDLE_COUNTER, None)
    if next_handle is None:
        existing = [h for n in graph.nodes if (h := handle(n)) is not None]
        next_handle = max(existing, default=-1) + 1
    for node in graph.nodes if nodes is None else nodes:
        if handle(node) is None:
            set(node, HANDLE, next_handle)
            next_handle += 1
    setattr(graph, _HANDLE_COUNTER, next_handle)


def describe(node: torch.fx.Node) -> str:
    """One line naming ``node`` for error messages: its format, module path and source line."""
    parts = [node.format_node()]
    path = module_path(node)
    if path is not None:
        parts.append(f"module path: {path or '<root>'}")
    src = source(node)
    if src:
        parts.append(f"source: {src}")
    return "; ".join(parts)
