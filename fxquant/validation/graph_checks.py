"""The graph-only checks: they read the traced graph and the model, run nothing, export nothing.

``QuantizationSimModel`` runs these on the graph it has just traced (see
:func:`fxquant.validation.validator.graph_report`); :func:`fxquant.validate` runs them too.

Each check is ``check(ctx: ValidationContext) -> Iterable[Finding]``.

Example:
    >>> [str(f) for f in reused_module(graph_context(model, fxquant.trace(model)))]
    ["[fixed-by-preparer] reused_module: relu (node relu_1): ..."]
"""
from __future__ import annotations

import inspect
import operator
from collections import defaultdict
from typing import Any, Iterator

import torch
import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.tracing.source import format_source
from fxquant.validation.context import CONCRETE, FAILED, ValidationContext
from fxquant.validation.report import ERROR, FIXED, WARNING, Finding

__all__ = ["finding_at", "untraceable", "reused_module", "in_place", "shared_parameter", "training_mode",
           "GRAPH_CHECKS"]

_IN_PLACE_OPERATORS = frozenset({operator.iadd, operator.isub, operator.imul, operator.itruediv,
                                 operator.ifloordiv, operator.ipow, operator.imod,
                                 operator.iand, operator.ior, operator.ixor})


def finding_at(check: str, severity: str, message: str, fix: str, node: torch.fx.Node | None = None,
             module_path: str | None = None, source: str | None = None) -> Finding:
    if node is not None:
        module_path = _meta.module_path(node) if module_path is None else module_path
        source = source or _meta.source(node)
    return Finding(check, severity, message, fix, module_path or "",
                   node.name if node is not None else None, source)


# -- untraceable parts ---------------------------------------------------------------------------
def untraceable(ctx: ValidationContext) -> Iterator[Finding]:
    """Parts of the model symbolic tracing cannot follow, and what handles them.

    The root failing symbolically but tracing in concrete mode (``example_inputs``) is a warning
    (concrete mode handles it); failing in both is an error. A part that auto-leaf made opaque
    is a warning: its ops get no quantizers; the message says whether concrete mode traces it.
    """
    check = "untraceable"
    sym = ctx.symbolic_error
    if sym is not None:
        what = f"{sym.module_path or '<root>'} ({sym.module_class or type(ctx.model).__name__})"
        reason = str(sym).splitlines()[0]
        if ctx.trace_mode == CONCRETE:
            yield Finding(check, WARNING,
                          f"{what} cannot be traced symbolically ({reason}); concrete mode "
                          "(example_inputs) handles it", "trace with the input: gm = "
                          "fxquant.trace(model, example_inputs=model_input), then build the sim "
                          "on gm", sym.module_path, None, sym.source_line)
        elif ctx.trace_mode == FAILED:
            err = ctx.concrete_error or sym
            reason = str(err).splitlines()[0]
            tried = "" if ctx.concrete_error is None else " even in concrete mode (example_inputs)"
            yield Finding(check, ERROR, f"the model cannot be traced{tried}: {reason}",
                          "make the Python control flow independent of tensor values (torch.where "
                          "instead of `if` on a tensor) or move that code into a submodule, which "
                          "fxquant then keeps opaque", err.module_path, None,
                          err.source_line or sym.source_line)
    concrete = ctx.concrete_leaves
    concrete_keys = {(leaf.module_path, leaf.method) for leaf in concrete or ()}
    for leaf in ctx.symbolic_leaves:
        handled = concrete is not None and (leaf.module_path, leaf.method) not in concrete_keys
        part = leaf.module_path if leaf.method == "forward" else f"{leaf.module_path}.{leaf.method}()"
        if handled:
            yield Finding(check, WARNING,
                          f"{part or '<root>'} ({leaf.module_class}) cannot be traced "
                          f"symbolically ({leaf.error}); auto-leaf keeps it opaque (no quantizers "
                          "inside) and concrete mode (example_inputs) traces it",
                          "trace with the input: fxquant.trace(model, example_inputs=model_input)",
                          leaf.module_path, None, leaf.source)
        else:
            yield Finding(check, WARNING,
                          f"{part or '<root>'} ({leaf.module_class}) cannot be traced "
                          f"({leaf.error}); auto-leaf keeps it opaque: its ops stay float, "
                          "without quantizers", _leaf_fix(leaf), leaf.module_path, None,
                          leaf.source)
    if ctx.trace_mode == CONCRETE:  # parts concrete mode itself keeps opaque
        for leaf in concrete or ():
            part = leaf.module_path if leaf.method == "forward" else (
                f"{leaf.module_path}.{leaf.method}()")
            yield Finding(check, WARNING,
                          f"{part or '<root>'} ({leaf.module_class}) stays opaque even in "
                          f"concrete mode ({leaf.error}); its ops stay float, without quantizers",
                          _leaf_fix(leaf), leaf.module_path, None, leaf.source)


def _leaf_fix(leaf: Any) -> str:
    return ("make its forward traceable (no Python `if`/loops on tensor values or shapes; "
            "torch.where, fixed loop counts) or accept that it stays float")


# -- modules called at several sites -----------------------------------------------------------
def reused_module(ctx: ValidationContext) -> Iterator[Finding]:
    """Modules called at several sites: one module would share one output quantizer between
    different tensors. The preparer splits them (one copy per call site, parameters tied)."""
    if ctx.traced is None:
        return
    splits: dict[str, list[str]] = defaultdict(list)
    for target, new in ctx.prepare_details.get("split", ()):
        splits[target].append(new)
    sites: dict[str, list[torch.fx.Node]] = defaultdict(list)
    for node in ctx.traced.graph.nodes:
        if node.op == "call_module" and _meta.role(node) in (None, _meta.ROLE_OP):
            sites[str(node.target)].append(node)
    for target, nodes in sites.items():
        if len(nodes) < 2:
            continue
        copies = splits.get(target) or [f"{target}_{i}" for i in range(1, len(nodes))]
        for node, copy_name in zip(nodes[1:], copies):
            yield finding_at(
                "reused_module", FIXED,
                f"module {target!r} is called at {len(nodes)} sites; this call gets its own copy "
                f"{copy_name!r} (parameters stay tied)",
                f"define one module per call site (e.g. self.{target.rpartition('.')[2]}_2 = "
                "a new instance) so each call site owns its quantizers",
                node, module_path=target)


# -- in-place ops ------------------------------------------------------------------------------
def _is_in_place(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        try:
            module = gm.get_submodule(str(node.target))
        except AttributeError:
            return False
        method = getattr(module, "method", None)
        fn = getattr(module, "fn", None)
        return (getattr(module, "inplace", False) is True
                or (isinstance(method, str) and _in_place_name(method))
                or fn in _IN_PLACE_OPERATORS)
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_method":
        return _in_place_name(str(node.target))
    if node.op == "call_function":
        if node.target in _IN_PLACE_OPERATORS:
            return True
        name = getattr(node.target, "__name__", "")
        return _in_place_name(name) and getattr(node.target, "__module__", "") in (
            "torch", "torch.nn.functional", "torch._C._nn", "torch._C._VariableFunctions")
    return False


def _in_place_name(name: str) -> bool:
    if name.startswith("__i") and name.endswith("__"):
        return True  # __iadd__ ...
    return name.endswith("_") and not name.endswith("__") and not name.startswith("_")


def in_place(ctx: ValidationContext) -> Iterator[Finding]:
    """In-place ops on a tensor that something else reads afterwards (reused) or that the caller
    owns (a model input: captured). A quantizer or logger placed on the tensor sees it before or
    after the write depending on where it sits, so the sim and the exported model can disagree:
    an error for a tensor read afterwards, a warning for a model input."""
    gm = ctx.traced
    if gm is None:
        return
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method") or not node.args:
            continue
        target = node.args[0]
        if not isinstance(target, torch.fx.Node) or not _is_in_place(gm, node):
            continue
        later = [u for u in target.users if u is not node and order[u] > order[node]]
        op = _describe_op(node)
        if later:
            readers = ", ".join(u.name if u.op != "output" else "the model output" for u in later)
            yield finding_at(
                "in_place", ERROR,
                f"{op} overwrites {target.name!r} in place, which {readers} read(s) afterwards: "
                "a quantizer on it would change what those ops see",
                "use the out-of-place op (x = x.relu() / nn.ReLU(inplace=False), y = x + z)", node)
        elif target.op == "placeholder":
            yield finding_at(
                "in_place", WARNING,
                f"{op} overwrites the model input {target.name!r} in place (the caller's tensor); "
                "with an input quantizer it overwrites the quantized copy instead",
                "use the out-of-place op so the model does not change its input", node)


def _describe_op(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"module {str(node.target)!r}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__qualname__", None) or str(node.target)


# -- parameters used by more than one op --------------------------------------------------------
def shared_parameter(ctx: ValidationContext) -> Iterator[Finding]:
    """Parameters read by more than one op (other than the call sites of one reused module,
    reported by ``reused_module``): each op gets its own weight quantizer, so one tensor ends up
    with several encodings, and BN folding cannot change a weight another op also uses."""
    gm = ctx.traced
    if gm is None:
        return
    users: dict[int, list[tuple[torch.fx.Node, str]]] = defaultdict(list)
    names: dict[int, str] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            try:
                module = gm.get_submodule(str(node.target))
            except AttributeError:
                continue
            for pname, param in module.named_parameters():
                users[id(param)].append((node, str(node.target)))
                names.setdefault(id(param), f"{node.target}.{pname}")
        elif node.op == "get_attr":
            value = _fetch(gm, str(node.target))
            if isinstance(value, nn.Parameter):
                for user in node.users:  # fx reads an attribute once for all its users
                    users[id(value)].append((user, str(node.target).rpartition(".")[0]))
                names.setdefault(id(value), str(node.target))
    for pid, uses in users.items():
        owners = {owner for _, owner in uses}
        if len(uses) < 2 or (len(owners) == 1 and all(n.op == "call_module" for n, _ in uses)):
            continue
        node = uses[1][0]
        ops = ", ".join(sorted({n.name for n, _ in uses}))
        yield finding_at(
            "shared_parameter", WARNING,
            f"parameter {names[pid]!r} is used by {len(uses)} ops ({ops}): each gets its own "
            "weight quantizer, so one tensor gets several encodings, and BN folding skips it",
            "give each op its own parameter (clone it), or keep the sharing and expect one "
            "encoding per use", node, module_path=sorted(owners)[0])


def _fetch(gm: torch.fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for atom in target.split("."):
        obj = getattr(obj, atom, None)
        if obj is None:
            return None
    return obj


# -- training mode ------------------------------------------------------------------------------
def training_mode(ctx: ValidationContext) -> Iterator[Finding]:
    """Modules in training mode whose behaviour depends on it (batch norms, dropout, modules
    with their own parameters or buffers): dropout stays random, batch norms normalize with batch
    statistics and are not folded (QAT keeps them on purpose). One finding at the root when the
    root is in training mode, else one per such module."""
    training = [name for name, m in ctx.model.named_modules()
                if m.training and _mode_matters(m)]
    if not training:
        return
    names = [""] if ctx.model.training else training
    for name in names:
        module = ctx.model.get_submodule(name) if name else ctx.model
        inside = f" and {len(training)} module(s) inside it" if not name else ""
        yield Finding(
            "training_mode", WARNING,
            f"{name or '<root>'} ({type(module).__name__}){inside} in training mode: dropout "
            "stays random and batch norms use batch statistics (not folded)",
            "call model.eval() before calibration (keep training mode only for QAT)",
            name, None, _class_source(type(module)))


def _mode_matters(module: nn.Module) -> bool:
    return (isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))
            or any(True for _ in module.parameters(recurse=False))
            or any(True for _ in module.buffers(recurse=False)))


def _class_source(cls: type) -> str | None:
    try:
        _, line = inspect.getsourcelines(cls)
        return format_source(inspect.getsourcefile(cls) or "", line)
    except (OSError, TypeError):
        return None


#: The graph-only checks, in report order.
GRAPH_CHECKS = (untraceable, training_mode, reused_module, in_place, shared_parameter)
