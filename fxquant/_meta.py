"""The one place that declares and reads fxquant's state: ``node.meta["fxquant"]`` and
``gm.meta["fxquant"]``.

Node keys (all optional except where a pass sets them):
    module_path: dotted path of the module whose code produced the node ("" for the root).
    handle: stable integer id assigned at trace time; copied when a pass replaces a node.
    source: "file:line: code" of the user's source line that produced the node.
    role: "op" (a model op), "quantizer", "logger" or "shadow" (a model-B copy of an op placed
        by the numeric suite's InsertShadowsPass).
    layer_name: canonical layer name: the module path after the preparer, written on every op
        node by ``PrepareModelPass``; quantizer, logger and shadow nodes carry their layer's.
    quantizes: on a quantizer node, what it quantizes: "input" or "output" of its layer.
    logs: on a logger node, what it logs ("output", "input", "input.<i>" …).
    shadow_of: on shadow nodes and their loggers, the layer they shadow.
    ns_unmatched: (graph-module key) layers the numeric suite could not match.

Graph-module keys: ``auto_leaves`` and ``specializations`` (set by tracing), and the pass
history / state tags (set by ``fxquant.passes.base``).

Passes never set ad-hoc attributes on nodes, and no module retypes a key: they use these
constants and helpers.
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
#: The name AIMET's ``prepare_model`` gives the same layer when it differs from ours (a module
#: made from a functional: ``<scope>.module_<fx node name>``, e.g. ``layer4.0.module_add_6``; a
#: split call of a reused module: ``<parent>.module_<child>_<k>``), written by the preparer so that
#: files keyed by AIMET's layer names (``<prefix>_torch.encodings``) load.
AIMET_NAME = "aimet_name"

QUANTIZES = "quantizes"
LOGS = "logs"
SHADOW_OF = "shadow_of"

#: Values of :data:`QUANTIZES`.
QUANTIZES_INPUT = "input"
QUANTIZES_OUTPUT = "output"

# Graph-module keys (under ``gm.meta[META_KEY]``).
AUTO_LEAVES = "auto_leaves"
SPECIALIZATIONS = "specializations"
NS_UNMATCHED = "ns_unmatched"

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


def graph_meta(gm: torch.nn.Module) -> dict[str, Any]:
    """Returns (creating it if missing) the fxquant metadata dict of a graph module."""
    meta = getattr(gm, "meta", None)
    if meta is None:
        meta = {}
        gm.meta = meta  # type: ignore[assignment]
    return meta.setdefault(META_KEY, {})


def graph_get(gm: torch.nn.Module, key: str, default: Any = None) -> Any:
    """Reads one fxquant metadata value of a graph module (``default`` if absent)."""
    return (getattr(gm, "meta", None) or {}).get(META_KEY, {}).get(key, default)


def unshare_node_meta(gm: torch.fx.GraphModule) -> None:
    """Gives every node of ``gm`` its own fxquant metadata dict.

    ``copy.deepcopy`` of a GraphModule copies ``node.meta`` shallowly, so without this a pass on
    the copy would write into the original's metadata.
    """
    for node in gm.graph.nodes:
        if META_KEY in node.meta:
            node.meta[META_KEY] = dict(node.meta[META_KEY])
    if isinstance(getattr(gm, "meta", None), dict) and META_KEY in gm.meta:
        gm.meta[META_KEY] = dict(gm.meta[META_KEY])


def module_path(node: torch.fx.Node) -> str | None:
    """The dotted module path recorded for ``node``, or None."""
    return get(node, MODULE_PATH)


def role(node: torch.fx.Node) -> str | None:
    """The role of ``node`` ("op", "quantizer", "logger", "shadow"), or None."""
    return get(node, ROLE)


def layer_name(node: torch.fx.Node) -> str | None:
    """The canonical layer name recorded on ``node``, or None."""
    return get(node, LAYER_NAME)


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


# --- graph-module state: tags and pass history ---------------------------------------------------
# Kept under ``gm.meta[META_KEY]`` by ``fxquant.passes.base.Pass.__call__``; passes declare the
# tags they need and establish with these constants (``requires = frozenset({TAG_PREPARED})``).

#: Graph-module key: the state tags established so far (a sorted list of tag strings).
TAGS = "tags"
#: Graph-module key: ``repr`` of every pass run on the graph module, oldest first.
PASS_HISTORY = "passes"

#: Every op a quantizer may sit after is a uniquely named module (PrepareModelPass).
TAG_PREPARED = "prepared"
#: Foldable batch norms are folded into their conv/linear layers (FoldBatchNormPass).
TAG_BN_FOLDED = "bn_folded"
#: Quantizer nodes and parametrizations are in place (InsertQuantizersPass).
TAG_QUANTIZED = "quantized"
#: No quantizer is left: the float graph (RemoveQuantizersPass).
TAG_FLOAT = "float"
#: Numeric-suite loggers are in place (InsertLoggersPass).
TAG_LOGGERS = "loggers"
#: Model B's shadows are in place (InsertShadowsPass).
TAG_SHADOWED = "shadowed"
#: Consecutive layers are cross-layer equalized (EqualizeLayersPass).
TAG_EQUALIZED = "equalized"


def state_tags(gm: torch.nn.Module) -> frozenset[str]:
    """The state tags established on ``gm`` by the passes run on it; reading creates nothing.

    Example:
        >>> state_tags(fxquant.prepare_model(model))
        frozenset({'prepared'})
    """
    return frozenset(graph_get(gm, TAGS, ()))


def pass_history(gm: torch.nn.Module) -> tuple[str, ...]:
    """``repr`` of every pass run on ``gm``, oldest first; reading creates nothing.

    Example:
        >>> pass_history(fxquant.prepare_model(model))
        ('PrepareModelPass()',)
    """
    return tuple(graph_get(gm, PASS_HISTORY, ()))


def record_pass(gm: torch.nn.Module, history: Iterable[str], tags: Iterable[str]) -> None:
    """Sets ``gm``'s pass history and state tags (new lists: a copy never shares them).

    Example:
        >>> record_pass(gm, [*pass_history(gm), "MyPass()"], state_tags(gm) | {"mine"})
    """
    meta = graph_meta(gm)
    meta[PASS_HISTORY] = list(history)
    meta[TAGS] = sorted(tags)
