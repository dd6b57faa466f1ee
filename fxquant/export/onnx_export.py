"""Float ONNX export whose tensors carry fxquant's canonical names.

``torch.onnx.export(..., dynamo=True)`` names values after the exported program's nodes
(``relu_2``, ``add``). Every ONNX node carries ``metadata_props["pkg.torch.onnx.fx_node"]`` (its
exported-program node as text); following that node's ``meta["from_node"]`` chain to the oldest entry
gives the node of *our* GraphModule, whose ``call_module`` target is the canonical layer name
(``layer1.0.module_add``). :func:`export_onnx` renames, per layer:

* the layer's **output value** — the value produced by one of the layer's ONNX nodes and consumed
  by a node of another layer (or a graph output) — to the layer name: ``add`` →
  ``layer1.0.module_add``, ``relu_2`` → ``layer1.0.relu_1``;
* a layer with several output values: tuple outputs (``torch.chunk`` …) become ``<layer>#0``,
  ``<layer>#1`` … in ONNX production order; for a single-tensor layer the last value produced
  (in graph order) is the output, the others keep their names;
* a layer that produces no ONNX value (``nn.Identity``, eval ``Dropout``, a reshape folded into
  a constant) gets an ``Identity`` node ``<input value> → <layer>`` when its output is a float
  tensor and its input value is known, and the ONNX consumers of the layer's FX users are rewired
  to it (so a quantizer placed there acts on them); otherwise it is listed in ``unmapped_layers``.

A value already called like a canonical name that belongs to another value is renamed first
(``<name>__<k>``). Graph inputs keep the placeholder names and initializers their state-dict
names (``conv1.weight``); a parameter the exporter's optimizer dropped because it was all zeros
(``RemoveOptionalBiasFromConv``) is put back as ``<layer>.bias`` so every parameter keeps a tensor.
Graph outputs that are layer outputs are renamed too (``linear`` → ``fc``).

The exporter's graph optimizer is off by default (``optimize=False``): it merges equal-valued
initializers (fresh LayerNorm weights, zero biases) and constant-folds the transposed weight of a
Linear lowered to MatMul into an unnamed initializer, which loses parameter names.
``onnx_export_args={"optimize": True}`` turns it back on (names may then go missing and export
reports them).

Opset: the exporter's default (20 with torch 2.14.1) unless ``onnx_export_args["opset_version"]``
says otherwise; at least 13 is required (per-channel ``DequantizeLinear``).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import onnx
import torch
import torch.fx
from onnx import helper, numpy_helper
from torch import nn

from fxquant._fx_utils import as_args
from fxquant.core.files import atomic_write
from fxquant.export.errors import ExportError
from fxquant.tracing.records import AutoLeaf, auto_leaves
from fxquant.core.layers import has_quantizers, is_layer, layer_name
from fxquant.model_resolution import private_copy, resolve_model
from fxquant.passes.remove_quantizers import RemoveQuantizersPass

__all__ = ["OnnxExport", "export_onnx", "MIN_OPSET"]

logger = logging.getLogger(__name__)

#: Lowest opset export accepts (per-channel DequantizeLinear needs 13).
MIN_OPSET = 13

_FX_NODE_KEY = "pkg.torch.onnx.fx_node"
_FX_NAME = re.compile(r"^%([^\s:]+)\s*:")
_FORBIDDEN_ARGS = ("dynamo", "f", "input_names", "output_names")
#: One ONNX file is one protobuf message, which cannot exceed 2 GiB; larger models need ONNX's
#: external data, which this export does not write yet.
PROTOBUF_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """The exported float model and how its tensors relate to fxquant's names.

    Attributes:
        model: the renamed ``onnx.ModelProto``.
        graph_module: the float GraphModule that was exported (quantizers removed).
        layer_outputs: ``{canonical layer name: ONNX value name}`` for every layer with a value
            (the value name is the layer name itself, or ``<layer>#<i>`` for tuple outputs; a
            layer whose output was not renamed maps to the value that carries it).
        unmapped_layers: layers with no ONNX value.
        fx_values: ``{ONNX value name: FX node name}`` of every value an FX node's ONNX nodes
            produce for other nodes (layers and other nodes such as ``getitem``).
        opset: the default-domain opset of ``model``.
        path: where ``model`` was written, or None.
    """

    model: onnx.ModelProto
    graph_module: torch.fx.GraphModule
    layer_outputs: Mapping[str, str]
    unmapped_layers: tuple[str, ...]
    fx_values: Mapping[str, str]
    opset: int
    path: str | None = None


def float_graph_module(gm_or_model: nn.Module) -> torch.fx.GraphModule:
    """A prepared float GraphModule for export: prepares an ``nn.Module`` with
    :func:`fxquant.prepare_model`, and removes quantizers from a copy of a quantized one.

    Example:
        >>> float_graph_module(sim.model).graph.find_nodes(op="call_module")[0].target
        'conv1'
    """
    if not isinstance(gm_or_model, nn.Module):
        raise TypeError(f"export_onnx expects an nn.Module or a GraphModule, got "
                        f"{type(gm_or_model).__qualname__}")
    gm = resolve_model(gm_or_model, copy=False, what="export_onnx's model").gm
    if has_quantizers(gm):
        gm = RemoveQuantizersPass()(private_copy(gm)).graph_module
    return gm


def _export_kwargs(onnx_export_args: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(onnx_export_args or {})
    bad = [k for k in _FORBIDDEN_ARGS if k in kwargs]
    if bad:
        raise ValueError(f"onnx_export_args must not set {bad}: export always uses "
                         "torch.onnx.export(dynamo=True) and fxquant names inputs and outputs; "
                         "remove these keys")
    kwargs.setdefault("verbose", False)
    # The exporter's optimizer merges equal-valued initializers and constant-folds the transposed
    # weight of a MatMul-lowered Linear into an unnamed one: parameter names would be lost.
    kwargs.setdefault("optimize", False)
    kwargs.setdefault("external_data", False)
    return kwargs


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset version of ``model``."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("the ONNX model imports no default-domain opset")


def export_onnx(gm_or_model: nn.Module, dummy_input: Any, path: str | os.PathLike[str] | None = None,
                *, onnx_export_args: Mapping[str, Any] | None = None) -> OnnxExport:
    """Exports a (prepared) model to ONNX with canonical fxquant tensor names.

    Args:
        gm_or_model: a prepared GraphModule (``sim.model``, ``fxquant.prepare_model(m)``) or any
            ``nn.Module`` (prepared first). Quantizers are removed from a copy; the argument is
            not modified.
        dummy_input: example input (a tensor or a tuple of positional inputs).
        path: where to write the ``.onnx`` file (atomically), or None to only return the model.
        onnx_export_args: extra keyword arguments of ``torch.onnx.export`` (e.g.
            ``{"opset_version": 21}``); ``dynamo``, ``f``, ``input_names`` and ``output_names``
            are not allowed.

    Returns:
        An :class:`OnnxExport`: the model, the layer → value name mapping and the unmapped layers.

    Raises:
        ValueError: the opset is below 13, or forbidden export arguments.
        ExportError: ``torch.export`` failed on a model with parts :func:`fxquant.trace` made
            opaque (:func:`fxquant.auto_leaves`); the message names the leaf that blocks it (module
            path and class) and what to do; torch's error is chained as ``__cause__``.

    Example:
        >>> result = export_onnx(fxquant.prepare_model(resnet18), torch.randn(1, 3, 224, 224))
        >>> result.layer_outputs["layer1.0.module_add"]
        'layer1.0.module_add'
    """
    gm = float_graph_module(gm_or_model)
    args = as_args(dummy_input)
    if any(n.op == "call_module" and "tensor_meta" not in n.meta for n in gm.graph.nodes):
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(*args)  # output types decide tuple and float layers
    kwargs = _export_kwargs(onnx_export_args)
    _check_size(gm)
    try:
        program = torch.onnx.export(gm, args, dynamo=True, **kwargs)
    except Exception as exc:
        leaves = auto_leaves(gm)
        if not leaves:
            raise
        raise _leaf_export_error(exc, leaves) from exc
    model = program.model_proto
    opset = opset_of(model)
    if opset < MIN_OPSET:
        raise ValueError(f"the exported model has opset {opset}; fxquant export needs opset >= "
                         f"{MIN_OPSET}: pass onnx_export_args={{'opset_version': {MIN_OPSET}}} or higher")
    origin = _origin_names(program.exported_program)
    layer_outputs, unmapped, fx_values = _rename(model, gm, origin)
    _restore_dropped_params(model, gm, layer_outputs)
    onnx.checker.check_model(model)
    out_path = None
    if path is not None:
        out_path = os.fspath(path)
        atomic_write(out_path, lambda tmp: onnx.save_model(model, tmp), suffix=".onnx")
    return OnnxExport(model, gm, layer_outputs, tuple(unmapped), fx_values, opset, out_path)


def _check_size(gm: torch.fx.GraphModule) -> None:
    """Raises ExportError, before the (long) export, when the weights alone pass the 2 GiB limit
    of one ONNX file (protobuf would fail later with an opaque 'Failed to serialize proto')."""
    tensors = {id(t): t for t in (*gm.parameters(), *gm.buffers())}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if size > PROTOBUF_LIMIT:
        raise ExportError(
            f"the model holds {size / 2**30:.2f} GiB of weights, over the 2 GiB limit of one ONNX "
            "(protobuf) file, and fxquant's ONNX export does not write ONNX external data yet; "
            "export a smaller model, or export this one with torch.onnx.export(model, args, path, "
            "dynamo=True, external_data=True) for now")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CALL_MODULE_TARGET = re.compile(r"call_module\[target=([^\]]+)\]")


def torch_export_reason(exc: BaseException) -> str:
    """One line saying why torch.export / the ONNX exporter failed: the first line of the
    innermost error of the ``__cause__`` chain (the exporter wraps the real error, e.g.
    ``GuardOnDataDependentSymNode``, in a generic "Failed to export the model" one).

    Example:
        >>> try:
        ...     try:
        ...         raise ValueError("data-dependent: u0 > 6")
        ...     except ValueError as e:
        ...         raise RuntimeError("Failed to export the model") from e
        ... except RuntimeError as err:
        ...     torch_export_reason(err)
        'ValueError: data-dependent: u0 > 6'
    """
    inner, seen = exc, {id(exc)}
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        inner = inner.__cause__
        seen.add(id(inner))
    text = _ANSI.sub("", str(inner)).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(inner).__name__}: {line}" if line else type(inner).__name__


def _leaf_export_error(exc: BaseException, leaves: tuple[AutoLeaf, ...]) -> ExportError:
    """The ExportError for a torch.export failure on a model with auto-leaves: names the leaf
    whose call the failure happened in (or every leaf when torch does not say)."""
    text = _ANSI.sub("", "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None))
    targets = set(_CALL_MODULE_TARGET.findall(text))
    blocking = [leaf for leaf in leaves
                if leaf.module_path in targets
                or any(t.startswith(leaf.module_path + ".") for t in targets if leaf.module_path)]
    reason = torch_export_reason(exc)
    if blocking:
        leaf = blocking[0]
        where = f" at {leaf.source}" if getattr(leaf, "source", None) else ""
        return ExportError(
            f"cannot export to ONNX: {leaf.module_path or '<root>'} ({leaf.module_class}) is a "
            f"part fxquant.trace made opaque ({leaf.error}{where}) and torch.export cannot "
            f"export it either ({reason}). Make its {leaf.method}() traceable (e.g. torch.where "
            "or torch.cond instead of Python `if` on tensor values, no data-dependent shapes), "
            "or replace that module before building the sim.")
    listed = "; ".join(f"{leaf.module_path or '<root>'} ({leaf.module_class})" for leaf in leaves)
    return ExportError(
        f"cannot export to ONNX: torch.export failed ({reason}) on a model with {len(leaves)} "
        f"part(s) fxquant.trace made opaque: {listed}. These are the likely cause: make their "
        "code traceable (fxquant.auto_leaves(model) says why each one is opaque), or replace "
        "those modules before building the sim.")


# -------------------------------------------------------------------------------------------------
# Mapping ONNX nodes to FX nodes
# -------------------------------------------------------------------------------------------------
def _origin_names(exported_program: Any) -> dict[str, str]:
    """``{exported-program node name: name of the oldest from_node}`` (the FX node we exported)."""
    out = {}
    for node in exported_program.graph.nodes:
        chain = node.meta.get("from_node")
        if not chain:
            continue
        source = chain[0]
        while getattr(source, "from_node", None):
            source = source.from_node[0]
        out[node.name] = source.name
    return out


def _fx_node_of(onnx_node: onnx.NodeProto, origin: Mapping[str, str],
                fx_nodes: Mapping[str, torch.fx.Node]) -> torch.fx.Node | None:
    for prop in onnx_node.metadata_props:
        if prop.key == _FX_NODE_KEY:
            match = _FX_NAME.match(prop.value)
            if match is None:
                return None
            return fx_nodes.get(origin.get(match.group(1), ""))
    # Nodes rewritten by the exporter's optimizer can lose their metadata; their outputs are
    # still named after exported-program nodes (e.g. a Split producing "getitem").
    for name in onnx_node.output:
        if name in origin:
            return fx_nodes.get(origin[name])
    return None


def _layer_of(node: torch.fx.Node | None) -> str | None:
    return layer_name(node) if node is not None and is_layer(node) else None


def _is_tuple_meta(node: torch.fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, (list, tuple)) and not hasattr(meta, "dtype")


def _is_float_output(node: torch.fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return True
    dtype = getattr(meta, "dtype", None)
    return dtype is not None and dtype.is_floating_point


def _rename(model: onnx.ModelProto, gm: torch.fx.GraphModule, origin: Mapping[str, str]
            ) -> tuple[dict[str, str], list[str], dict[str, str]]:
    graph = model.graph
    fx_nodes = {n.name: n for n in gm.graph.nodes}
    onnx_fx = [_fx_node_of(n, origin, fx_nodes) for n in graph.node]
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for name in _node_inputs(node):
            consumers[name].append(i)
    graph_outputs = {o.name for o in graph.output}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, fx in enumerate(onnx_fx):
        if fx is not None:
            groups[fx.name].append(i)

    renames: dict[str, str] = {}
    layer_outputs: dict[str, str] = {}
    fx_values: dict[str, str] = {}
    value_of: dict[str, str] = {}  # FX node name -> ONNX value (before renaming)
    for fx_name, idxs in groups.items():
        fx = fx_nodes[fx_name]
        members = set(idxs)
        external = []
        for i in idxs:
            for v in graph.node[i].output:
                if v and (v in graph_outputs or any(c not in members for c in consumers.get(v, ()))):
                    external.append(v)
        if not external:
            continue
        layer = _layer_of(fx)
        if layer is not None and _is_tuple_meta(fx) and len(external) == len(fx.meta["tensor_meta"]):
            for k, v in enumerate(external):
                renames[v] = f"{layer}#{k}"
                layer_outputs[f"{layer}#{k}"] = v
                fx_values[v] = fx_name
            continue
        chosen = external[-1]
        value_of[fx_name] = chosen
        for v in external:
            fx_values[v] = fx_name
        if layer is not None:
            renames[chosen] = layer
            layer_outputs[layer] = chosen
            if len(external) > 1:
                logger.debug("layer %s has %d output values %s; %s is its output", layer,
                             len(external), external, chosen)

    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.name in {i.name for i in graph.input}:
            value_of[node.name] = node.name
    unmapped = _insert_identities(model, gm, onnx_fx, value_of, renames, layer_outputs, fx_values)

    protected = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for old, new in list(renames.items()):
        if new in protected:
            logger.warning("layer %s has the name of a graph input or initializer; its output keeps "
                           "the name %s", new, old)
            del renames[old]
            layer_outputs[new] = old
    new_names = set(renames.values())
    all_values = _all_value_names(graph)
    taken = (all_values - set(renames)) | new_names
    for value in sorted(all_values):
        if value in new_names and value not in renames and value not in protected:
            k = 1
            while f"{value}__{k}" in taken:
                k += 1
            renames[value] = f"{value}__{k}"
            taken.add(renames[value])
    _apply_renames(graph, renames)
    layer_outputs = {layer: renames.get(v, v) for layer, v in layer_outputs.items()}
    fx_values = {renames.get(v, v): n for v, n in fx_values.items()}
    return layer_outputs, unmapped, fx_values


def _insert_identities(model: onnx.ModelProto, gm: torch.fx.GraphModule,
                       onnx_fx: list[torch.fx.Node | None], value_of: dict[str, str],
                       renames: dict[str, str], layer_outputs: dict[str, str],
                       fx_values: dict[str, str]) -> list[str]:
    """Identity nodes for float layers without ONNX values; returns the layers left unmapped."""
    graph = model.graph
    unmapped: list[str] = []
    producer = {v: i for i, n in enumerate(graph.node) for v in n.output}
    mapped_fx = {fx.name for fx in onnx_fx if fx is not None}
    inserts: list[tuple[int, onnx.NodeProto]] = []
    effective: dict[str, frozenset[str]] = {}

    def eff(node: torch.fx.Node) -> frozenset[str]:
        """The nearest ancestors (or ``node`` itself) that have ONNX values."""
        if node.name in value_of or node.name in mapped_fx:
            return frozenset({node.name})
        if node.name not in effective:
            effective[node.name] = frozenset().union(*(eff(a) for a in node.all_input_nodes))
        return effective[node.name]

    for node in gm.graph.nodes:
        layer = _layer_of(node)
        if layer is None or layer in layer_outputs or any(
                k.startswith(f"{layer}#") for k in layer_outputs):
            continue
        if _is_tuple_meta(node):
            named = _name_tuple_items(node, layer, value_of, renames, layer_outputs)
            if not named:
                unmapped.append(layer)
            continue
        inputs = [a for a in node.all_input_nodes if a.name in value_of]
        if not _is_float_output(node) or len(node.all_input_nodes) != 1 or not inputs:
            unmapped.append(layer)
            continue
        source = inputs[0]
        v = value_of[source.name]
        out = f"{layer}::identity_output"  # renamed to the layer name with the others
        identity = helper.make_node("Identity", [v], [out], name=f"{layer}/Identity")
        value_of[node.name] = out
        effective.clear()
        for i, onnx_node in enumerate(graph.node):
            fx = onnx_fx[i]
            if fx is None:
                continue
            sources = frozenset().union(*(eff(a) for a in fx.all_input_nodes)) if (
                fx.all_input_nodes) else frozenset()
            if node.name not in sources or source.name in sources:
                continue
            for k, name in enumerate(onnx_node.input):
                if name == v:
                    onnx_node.input[k] = out
        inserts.append((producer.get(v, -1) + 1, identity))
        renames[out] = layer
        layer_outputs[layer] = out
        fx_values[out] = node.name
    for position, identity in sorted(inserts, key=lambda t: -t[0]):
        graph.node.insert(position, identity)
    if inserts:
        _topological_sort(graph)
    return unmapped


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Stable topological order of ``graph.node`` (inserted Identity chains may be out of order)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in _node_inputs(node)):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"the exported graph has a cycle or a dangling input at node "
                             f"{rest[0].name} ({rest[0].op_type}, inputs {list(rest[0].input)})")
        pending = rest
    new_nodes = [copy.deepcopy(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(new_nodes)


def _name_tuple_items(node: torch.fx.Node, layer: str, value_of: Mapping[str, str],
                      renames: dict[str, str], layer_outputs: dict[str, str]) -> bool:
    """Names the values of ``getitem`` users of a tuple layer ``<layer>#<index>``."""
    import operator

    named = False
    for user in node.users:
        if (user.op == "call_function" and user.target is operator.getitem
                and isinstance(user.args[1], int) and user.name in value_of):
            v = value_of[user.name]
            if v in renames:
                continue
            renames[v] = f"{layer}#{user.args[1]}"
            layer_outputs[f"{layer}#{user.args[1]}"] = v
            named = True
    return named


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs of ``node`` including outer-scope names used inside its subgraphs."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in sub.node:
                names.extend(_node_inputs(inner))
    return names


def _all_value_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(v for v in node.output if v)
    return names


def _apply_renames(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    if not renames:
        return
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]
        for k, name in enumerate(node.output):
            if name in renames:
                node.output[k] = renames[name]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _apply_renames(sub, renames)
    for vi in list(graph.output) + list(graph.value_info):
        if vi.name in renames:
            vi.name = renames[vi.name]


def _restore_dropped_params(model: onnx.ModelProto, gm: torch.fx.GraphModule,
                            layer_outputs: Mapping[str, str]) -> None:
    """Puts back biases the exporter's optimizer removed (all-zero Conv/ConvTranspose biases)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    by_output = {v: n for n in graph.node for v in n.output}
    state = gm.state_dict()
    for name, tensor in state.items():
        if name in initializers or not name.endswith(".bias"):
            continue
        layer = name[: -len(".bias")]
        value = layer_outputs.get(layer)
        node = by_output.get(value) if value is not None else None
        if node is None or node.op_type not in ("Conv", "ConvTranspose") or len(node.input) != 2:
            continue
        graph.initializer.append(numpy_helper.from_array(
            tensor.detach().cpu().to(torch.float32).numpy(), name))
        node.input.append(name)
        logger.debug("restored bias initializer %s (dropped by the exporter's optimizer)", name)
