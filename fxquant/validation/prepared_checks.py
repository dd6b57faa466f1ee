"""The checks that need the prepared graph, one run of it on the model input, or a real export.

Each check is ``check(ctx: ValidationContext) -> Iterable[Finding]``; each returns nothing when
what it needs is missing (``ctx.prepared`` is None in the sim's cheap validation).

Example:
    >>> ctx = build_context(model, (x,))
    >>> [f.module_path for f in activation_range(ctx)]
    ['fc']
"""
from __future__ import annotations

import copy
import operator
import re
from collections import Counter
from typing import Any, Iterator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fxquant import _meta
from fxquant.core.layers import is_layer, type_name
from fxquant.core.report import format_number
from fxquant.export import export_onnx
from fxquant.export.onnx_export import _origin_names, torch_export_reason
from fxquant.passes import fold_batchnorm
from fxquant.validation.context import PERCENTILE, ValidationContext
from fxquant.validation.graph_checks import finding_at
from fxquant.validation.report import ERROR, FIXED, WARNING, Finding

__all__ = ["functional_op", "batch_norm_fold", "data_dependent_shape", "activation_range",
           "onnx_export", "PREPARED_CHECKS", "MAX_ABS", "MIN_PERCENTILE_RATIO"]

#: An activation with |x| above this loses its small values to an 8-bit grid.
MAX_ABS = 1e4
#: An activation whose 99.99th percentile of |x| is below this fraction of max |x| spends its
#: grid on a few outliers.
MIN_PERCENTILE_RATIO = 0.01

# Ops that only move, select or retype values: no new range, so no quantizer is needed after
# them (they reuse their input's encoding), whether the preparer converts them or not.
_DATA_MOVEMENT = frozenset({
    "getitem", "getattr", "contiguous", "to", "type_as", "float", "half", "double", "clone",
    "detach", "expand", "expand_as", "view_as", "repeat", "narrow", "select", "flip", "roll",
    "index_select", "gather", "unbind", "movedim", "swapaxes", "t", "masked_fill",
    "_assert", "size", "dim", "numel", "cpu", "cuda", "requires_grad_", "zero_", "copy_",
    # constants made at run time (no input range to quantize)
    "tensor", "as_tensor", "new_full", "new_zeros", "new_ones", "new_empty", "new_tensor",
    "zeros", "ones", "full", "empty", "arange", "zeros_like", "ones_like", "full_like",
})
_FUNCTIONAL_LAYERS = {F.conv1d: "nn.Conv1d", F.conv2d: "nn.Conv2d", F.conv3d: "nn.Conv3d",
                      F.linear: "nn.Linear", F.conv_transpose1d: "nn.ConvTranspose1d",
                      F.conv_transpose2d: "nn.ConvTranspose2d",
                      F.conv_transpose3d: "nn.ConvTranspose3d"}


def _op_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _is_float_tensor(node: torch.fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    dtype = getattr(meta, "dtype", None)
    return dtype is not None and dtype.is_floating_point


# -- functionals the preparer cannot turn into modules ------------------------------------------
def functional_op(ctx: ValidationContext) -> Iterator[Finding]:
    """Functionals and tensor methods: those the preparer made modules (fixed-by-preparer) and
    those it left as they are (a warning: no quantizer can sit after them, so their output
    reaches the next op unquantized). What the preparer converts is what its pass reports."""
    gm = ctx.prepared
    if gm is None:
        return
    nodes = {n.name: n for n in gm.graph.nodes}
    by_target = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module"}
    for traced_name, module_name in ctx.prepare_details.get("converted", ()):
        node = by_target.get(module_name)
        if node is None:
            continue
        yield finding_at("functional_op", FIXED,
                       f"functional {traced_name!r} becomes module {module_name!r}",
                       "nothing to do (or call an nn.Module in your forward to choose its name)",
                       node, module_path=module_name)
    for node in nodes.values():
        if node.op not in ("call_function", "call_method") or not _is_float_tensor(node):
            continue
        name = _op_name(node)
        if name in _DATA_MOVEMENT or node.target in (operator.getitem, getattr):
            continue
        if node.target in _FUNCTIONAL_LAYERS:
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            what = getattr(weight, "name", repr(weight))
            yield finding_at(
                "functional_op", WARNING,
                f"{name}() takes its weight from {what!r}, computed at run time, not a parameter: "
                "it stays a function, with no weight quantizer (per-channel or otherwise) and no "
                "BN folding", f"use an {_FUNCTIONAL_LAYERS[node.target]} module (or pass an "
                "nn.Parameter as the weight) so the preparer makes it a layer", node)
            continue
        yield finding_at(
            "functional_op", WARNING,
            f"{type_name(gm, node)} stays a function: the preparer has no module for it, so no "
            "quantizer follows it and its output reaches the next op unquantized",
            "wrap it in an nn.Module whose class sets _fxquant_leaf = True (traced as one "
            "layer, so it gets an output quantizer) and call that module in forward",
            node)


# -- batch norms that cannot be folded ----------------------------------------------------------
def batch_norm_fold(ctx: ValidationContext) -> Iterator[Finding]:
    """BatchNorms FoldBatchNormPass leaves alone, and why (it is run on a copy of the graph)."""
    gm = ctx.prepared
    if gm is None:
        return
    modules = dict(gm.named_modules())
    bns = [n for n in gm.graph.nodes
           if n.op == "call_module" and isinstance(modules.get(str(n.target)), fold_batchnorm._BN)]
    if not bns:
        return
    trial = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    modes = {m: m.training for m in modules.values()}
    try:
        for m in modules.values():  # the pass refuses training mode; training_mode reports it
            m.training = False
        folded = {bn for _, bn in fold_batchnorm.FoldBatchNormPass()(trial).details["folded"]}
    finally:
        for m, mode in modes.items():
            m.training = mode
    owners = Counter(id(p) for m in modules.values() for p in m.parameters(recurse=False))
    for node in bns:
        if str(node.target) in folded:
            continue
        reason, fix = _fold_blocker(gm, node, modules, owners)
        yield finding_at("batch_norm_fold", WARNING,
                       f"batch norm {str(node.target)!r} cannot be folded: {reason}; it stays a "
                       "separate op (its own quantizer, slower on target)", fix, node,
                       module_path=str(node.target))
    del trial


def _fold_blocker(gm: torch.fx.GraphModule, node: torch.fx.Node, modules: dict[str, nn.Module],
                  owners: Counter[int]) -> tuple[str, str]:
    bn = modules[str(node.target)]
    if not bn.track_running_stats or bn.running_mean is None:
        return ("it keeps no running statistics (track_running_stats=False)",
                "use track_running_stats=True, or replace it by a GroupNorm/LayerNorm")
    src = node.args[0] if node.args else None
    if isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target in (
            _FUNCTIONAL_LAYERS):
        return (f"it follows a functional {_op_name(src)}() the preparer could not convert "
                "(its weight is not a parameter)",
                "use a conv/linear module (or an nn.Parameter weight) before the batch norm")
    layer = fold_batchnorm._module(src, modules, (*fold_batchnorm._CONV, *fold_batchnorm._CONV_T,
                                                  nn.Linear))
    if layer is None:
        what = (f"{type_name(gm, src)} ({src.name})" if isinstance(src, torch.fx.Node)
                else repr(src))
        return (f"it follows {what}, not a conv/linear, and no unpadded groups=1 conv follows it",
                "put the batch norm right after a conv/linear layer (or drop it)")
    others = [u.name for u in src.users if u is not node]
    if others:
        return (f"the output of {str(src.target)!r} is also read by {', '.join(others)} (other "
                "users), so folding would change what they see",
                "give the batch norm the conv's output alone (read the BN's output elsewhere)")
    if not fold_batchnorm._unshared(layer, owners):
        return (f"the weights of {str(src.target)!r} are shared with another module",
                "give the layer its own weights (clone them)")
    if fold_batchnorm._layer_channels(layer, output=True) != bn.num_features:
        return (f"{str(src.target)!r} has {fold_batchnorm._layer_channels(layer, output=True)} "
                f"output channels, the batch norm {bn.num_features}",
                "make the batch norm's num_features match the layer's output channels")
    return (f"{str(src.target)!r} is a Linear whose output is not 2-D (N, C), so the batch norm "
            "normalizes another axis", "fold only BatchNorm1d after a Linear on (N, C) inputs")


# -- data-dependent shapes ------------------------------------------------------------------------
def data_dependent_shape(ctx: ValidationContext) -> Iterator[Finding]:
    """Ops whose output shape depends on tensor values (``nonzero``, boolean masks, ``unique``
    …), seen while running the model on its input: shapes after them change from input to input,
    so per-channel encodings (one per channel, fixed at calibration) and the exported graph's
    static shapes do not hold."""
    gm = ctx.prepared
    if gm is None:
        return
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, reason in ctx.data_dependent.items():
        node = nodes.get(name)
        if node is None:
            continue
        yield finding_at(
            "data_dependent_shape", WARNING,
            f"{reason} makes the shape of {name!r} depend on the data: per-channel encodings and "
            "static export shapes cannot follow it",
            "keep shapes fixed (masks multiplied in, torch.where(cond, x, 0), fixed top-k) in "
            "the quantized part of the model", node)


# -- extreme activation ranges --------------------------------------------------------------------
def activation_range(ctx: ValidationContext) -> Iterator[Finding]:
    """Layer outputs whose range on the model input is extreme: max |x| above :data:`MAX_ABS`,
    or a 99.99th percentile of |x| below :data:`MIN_PERCENTILE_RATIO` of max |x| (a few outliers
    stretch the grid and the rest quantize to a handful of levels)."""
    gm = ctx.prepared
    if gm is None:
        return
    layers = {_meta.layer_name(n): n for n in gm.graph.nodes if is_layer(n)}
    fix = ("bound the activation (ReLU6/Hardtanh, clamp), normalize the input, or calibrate with "
           "a percentile / tf_enhanced scheme")
    for name, stats in ctx.activations.items():
        if stats.numel == 0 or stats.abs_max == 0 or name not in layers:
            continue
        node = layers[name]
        if stats.abs_max > MAX_ABS:
            yield finding_at("activation_range", WARNING,
                           f"output of {name!r} reaches |x| = {format_number(stats.abs_max)} "
                           f"(> {MAX_ABS:g}): 8-bit quantization will lose its small values",
                           fix, node, module_path=name)
        elif stats.percentile / stats.abs_max < MIN_PERCENTILE_RATIO:
            yield finding_at("activation_range", WARNING,
                           f"output of {name!r}: {PERCENTILE:g}th percentile of |x| is "
                           f"{format_number(stats.percentile, '.3g')}, max |x| "
                           f"{format_number(stats.abs_max, '.3g')} (ratio < "
                           f"{MIN_PERCENTILE_RATIO:g}): outliers will take the whole grid",
                           fix, node, module_path=name)


# -- ONNX export ----------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXPORTED_NODE = re.compile(r"translating node %([A-Za-z0-9_]+)")
_TARGET_MODULE = re.compile(r"call_module\[target=([^\]]+)\]")


def onnx_export(ctx: ValidationContext) -> Iterator[Finding]:
    """Exports the prepared graph with ``fxquant.export.export_onnx`` (dynamo exporter); a
    failure is an error naming the op (and its source line) with the exporter's reason."""
    gm = ctx.prepared
    if gm is None or not ctx.args or ctx.run_error is not None:
        return
    try:
        export_onnx(gm, ctx.args)
    except Exception as exc:  # the exporter's own errors are the finding
        yield _export_finding(gm, ctx.args, exc)


def _reason(exc: BaseException) -> str:
    text = _ANSI.sub("", "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None))
    for line in text.splitlines():  # the dynamo exporter's summary names the failing op
        if "No ONNX function found" in line or "DispatchError" in line:
            return line.strip().lstrip("<").replace("class 'torch.onnx._internal.exporter."
                                                    "_errors.", "").replace("'>", "")
    return torch_export_reason(exc)


def _export_finding(gm: torch.fx.GraphModule, args: tuple[Any, ...], exc: BaseException
                    ) -> Finding:
    reason = _reason(exc)
    text = _ANSI.sub("", "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None))
    node = _failing_node(gm, args, text)
    if node is None:
        targets = [t for t in _TARGET_MODULE.findall(text) if t]
        nodes = [n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) in targets]
        node = nodes[0] if nodes else None
    fix = ("replace the op by ones ONNX has (see the reason), or keep it out of the exported "
           "model (move it to pre/post-processing)")
    if "DataDependent" in reason or "data-dependent" in reason:
        fix = ("make the control flow traceable: torch.where / torch.clamp / torch.cond instead "
               "of a Python `if` on tensor values, no shapes that depend on the data")
    elif "2 GiB limit of one ONNX" in reason:
        fix = ("export with torch.onnx.export(..., dynamo=True, external_data=True) until "
               "fxquant's export writes external data, or quantize a smaller model")
    message = f"the ONNX exporter cannot export this model: {reason}"
    if node is not None:
        message = f"the ONNX exporter cannot export {_describe(gm, node)}: {reason}"
    return finding_at("onnx_export", ERROR, message, fix, node)


def _describe(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    return f"{type_name(gm, node)} ({node.name})"


def _failing_node(gm: torch.fx.GraphModule, args: tuple[Any, ...], text: str
                  ) -> torch.fx.Node | None:
    """The node of ``gm`` the failing exported-program node comes from: the program is made
    again (torch.export only) to follow its ``from_node`` chain."""
    match = _EXPORTED_NODE.search(text)
    if match is None:
        return None
    nodes = {n.name: n for n in gm.graph.nodes}
    try:
        program = torch.export.export(gm, args)
        origin = _origin_names(program).get(match.group(1))
    except Exception:  # the mapping is a convenience; the finding stands without it
        origin = None
    if origin in nodes:
        return nodes[origin]
    bare = match.group(1).lstrip("_")
    return nodes.get(bare) or nodes.get(match.group(1))


#: The checks that need the prepared graph, a run or an export, in report order.
PREPARED_CHECKS = (functional_op, batch_norm_fold, data_dependent_shape, activation_range,
                   onnx_export)
