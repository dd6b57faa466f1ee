"""Symbolic tracing of a model to a ``torch.fx.GraphModule``, with automatic leaf fallback.

``trace`` wraps ``torch.fx.Tracer`` and adds what quantization work needs:

* every node records its module path, a stable handle and the user's source line in
  ``node.meta["fxquant"]`` (see :mod:`fxquant._meta`);
* a submodule whose code cannot be traced (Python control flow on a Proxy, iteration over a
  Proxy, ...) becomes a leaf automatically; a *method* of a submodule that the parent calls and
  that cannot be traced becomes one opaque ``call_method`` node. What was made opaque, and why,
  is reported on the returned module (``gm.meta["fxquant"]["auto_leaves"]``, see
  :func:`auto_leaves`);
* failures of the root raise :class:`fxquant.errors.TraceError` naming the innermost failing
  module path and class, the user's source line and a hint.
"""
from __future__ import annotations

import dataclasses
import logging
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.errors import TraceError

__all__ = ["trace", "AutoLeaf", "auto_leaves", "PH"]

logger = logging.getLogger(__name__)

#: Placeholder marker for ``concrete_args`` structures, e.g. ``{"images": [PH, PH]}`` makes a
#: list input of two tensors two graph inputs.
PH = torch.fx._symbolic_trace.PH

_GM_META_KEY = "fxquant"
_MAX_FALLBACKS = 256
# Frames of these files are never "the user's source line".
_INTERNAL_FILES = ("/torch/fx/", "/torch/nn/modules/module.py", "/fxquant/")


@dataclasses.dataclass(frozen=True)
class AutoLeaf:
    """A piece of the model that tracing made opaque because its code could not be traced.

    Attributes:
        module_path: dotted path of the module ("" for the root).
        module_class: qualified class name of the module.
        method: "forward" when the whole module became a leaf, else the name of the method that
            became one opaque ``call_method`` node.
        error: the trace error, one line.
        source: the user's source line that failed ("file:line: code"), when known.
    """

    module_path: str
    module_class: str
    method: str
    error: str
    source: str | None = None

    def __str__(self) -> str:
        what = self.module_path if self.method == "forward" else f"{self.module_path}.{self.method}()"
        where = f" at {self.source}" if self.source else ""
        return f"{what} ({self.module_class}): {self.error}{where}"


def auto_leaves(gm: torch.fx.GraphModule) -> tuple[AutoLeaf, ...]:
    """What :func:`trace` made opaque in ``gm`` (empty when everything was traced).

    Example:
        >>> gm = fxquant.trace(model)
        >>> for leaf in fxquant.auto_leaves(gm):
        ...     print(leaf)
    """
    return tuple(getattr(gm, "meta", {}).get(_GM_META_KEY, {}).get("auto_leaves", ()))


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class _Tracer(torch.fx.Tracer):
    """fx tracer with user leaves (by path or class), opaque methods and stack traces."""

    def __init__(self, leaf_paths: set[str], leaf_classes: tuple[type, ...],
                 opaque_methods: set[tuple[str, str]],
                 autowrap_functions: tuple[Callable[..., Any], ...]) -> None:
        super().__init__(autowrap_functions=autowrap_functions)
        self.record_stack_traces = True
        self.leaf_paths = leaf_paths
        self.leaf_classes = leaf_classes
        self.opaque_methods = opaque_methods

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_paths:
            return True
        if self.leaf_classes and isinstance(m, self.leaf_classes):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def trace(self, root: nn.Module, concrete_args: dict[str, Any] | None = None) -> torch.fx.Graph:
        with _OpaqueMethodPatch(self, root):
            return super().trace(root, concrete_args)


class _OpaqueMethodPatch:
    """Patches ``module.method`` so that, while tracing, a call with Proxy arguments records one
    ``call_method`` node on ``get_attr(module)`` instead of tracing the method's body."""

    def __init__(self, tracer: _Tracer, root: nn.Module) -> None:
        self.tracer = tracer
        self.root = root
        self.patched: list[tuple[nn.Module, str]] = []

    def __enter__(self) -> "_OpaqueMethodPatch":
        for path, method in self.tracer.opaque_methods:
            module = self.root.get_submodule(path) if path else self.root
            original = getattr(module, method)
            module.__dict__[method] = self._wrap(path, method, original)
            self.patched.append((module, method))
        return self

    def _wrap(self, path: str, method: str, original: Callable[..., Any]) -> Callable[..., Any]:
        tracer = self.tracer

        def opaque(*args: Any, **kwargs: Any) -> Any:
            proxies: list[torch.fx.Proxy] = []
            torch.fx.node.map_aggregate(
                (args, kwargs), lambda a: proxies.append(a) if isinstance(a, torch.fx.Proxy) else None)
            if not proxies:
                return original(*args, **kwargs)
            owner = tracer.create_proxy("get_attr", path, (), {})
            return tracer.create_proxy("call_method", method, (owner, *args), kwargs)

        return opaque

    def __exit__(self, *exc: object) -> None:
        for module, method in self.patched:
            module.__dict__.pop(method, None)


def _innermost_module_frame(exc: BaseException, modules: Mapping[int, str]
                            ) -> tuple[str, str, str | None] | None:
    """(module path, function name, source line) of the innermost frame whose ``self`` is one of
    the model's modules, walking the traceback of ``exc`` from the raise point outwards."""
    frames = list(traceback.walk_tb(exc.__traceback__))
    for frame, lineno in reversed(frames):
        filename = frame.f_code.co_filename
        code = frame.f_code
        owner = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(owner, nn.Module) and id(owner) in modules:
            return modules[id(owner)], frame.f_code.co_name, _format_source(filename, lineno)
    return None


def _format_source(filename: str, lineno: int) -> str:
    import linecache

    code = linecache.getline(filename, lineno).strip()
    return f"{filename}:{lineno}: {code}" if code else f"{filename}:{lineno}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _innermost_source(stack_trace: str | None) -> str | None:
    """"file:line: code" of the innermost frame of an fx stack-trace string."""
    if not stack_trace:
        return None
    lines = [ln for ln in stack_trace.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if line.startswith("File ") and not any(s in line for s in _INTERNAL_FILES):
            try:
                file_part, line_part = line.split(", line ")
                lineno = line_part.split(",")[0]
                filename = file_part[len('File "'):-1]
            except ValueError:
                return line
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{filename}:{lineno}: {code}" if code else f"{filename}:{lineno}"
    return None


def record_node_meta(gm: torch.fx.GraphModule) -> None:
    """Fills module path, source and role of every node of ``gm`` lacking them, then handles."""
    for node in gm.graph.nodes:
        meta = _meta.node_meta(node)
        if _meta.MODULE_PATH not in meta:
            if node.op == "call_module":
                meta[_meta.MODULE_PATH] = str(node.target)
            else:
                stack = node.meta.get("nn_module_stack") or {}
                meta[_meta.MODULE_PATH] = next(reversed(stack.values()))[0] if stack else ""
        if _meta.SOURCE not in meta:
            src = _innermost_source(node.meta.get("stack_trace"))
            if src:
                meta[_meta.SOURCE] = src
        if node.op in ("call_module", "call_function", "call_method"):
            meta.setdefault(_meta.ROLE, _meta.ROLE_OP)
    _meta.assign_handles(gm.graph)


def trace(model: nn.Module, *, leaf_modules: Iterable[str | type[nn.Module]] = (),
          concrete_args: dict[str, Any] | None = None,
          autowrap_functions: Sequence[Callable[..., Any]] = (),
          strict: bool = False) -> torch.fx.GraphModule:
    """Traces ``model`` to a ``torch.fx.GraphModule``; the model itself is not changed.

    Args:
        model: the module to trace.
        leaf_modules: module paths (``"backbone.body"``) or classes that stay opaque
            (one ``call_module`` node each).
        concrete_args: arguments of ``model.forward`` to fix while tracing (as in
            ``torch.fx.symbolic_trace``); use :data:`PH` inside a structure to make its leaves
            graph inputs, e.g. ``{"images": [PH]}`` for a list of one image.
        autowrap_functions: free functions to record as single nodes instead of tracing them.
        strict: when True, any untraceable submodule raises :class:`TraceError` instead of
            becoming a leaf.

    Returns:
        The traced module. ``fxquant.auto_leaves(gm)`` lists what was made opaque and why.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a path in ``leaf_modules`` names no submodule.
        TraceError: the root (or, with ``strict``, any module) cannot be traced.

    Example:
        >>> gm = fxquant.trace(torchvision.models.resnet18())
        >>> gm.graph.print_tabular()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"fxquant.trace expects a torch.nn.Module, got {type(model).__qualname__}; "
            "wrap a function in an nn.Module whose forward calls it.")
    modules = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
    module_names = {name for name, _ in model.named_modules()}
    leaf_paths: set[str] = set()
    leaf_classes: list[type] = []
    for leaf in leaf_modules:
        if isinstance(leaf, type) and issubclass(leaf, nn.Module):
            leaf_classes.append(leaf)
        elif isinstance(leaf, str):
            if leaf not in module_names or leaf == "":
                raise ValueError(_unknown_path_message("leaf_modules", leaf, module_names))
            leaf_paths.add(leaf)
        else:
            raise TypeError(f"leaf_modules entries must be module paths or nn.Module classes, "
                            f"got {leaf!r}")
    opaque_methods: set[tuple[str, str]] = set()
    fallbacks: list[AutoLeaf] = []
    name = type(model).__name__
    for _ in range(_MAX_FALLBACKS):
        tracer = _Tracer(leaf_paths, tuple(leaf_classes), opaque_methods, tuple(autowrap_functions))
        try:
            graph = tracer.trace(model, concrete_args)
            break
        except Exception as exc:  # any failure of user code under tracing
            culprit = _innermost_module_frame(exc, modules)
            path, func, src = culprit if culprit else ("", "forward", None)
            module = model.get_submodule(path) if path else model
            if strict or path == "":
                raise _trace_error(exc, path, module, src, strict) from exc
            if func == "forward" or func == "_call_impl" or func == "_wrapped_call_impl":
                key_done = path in leaf_paths
                leaf_paths.add(path)
            else:
                parent_call = (path, func)
                key_done = parent_call in opaque_methods
                opaque_methods.add(parent_call)
            if key_done:
                raise _trace_error(exc, path, module, src, strict) from exc
            leaf = AutoLeaf(path, _qualname(module), func, _one_line(exc), src)
            logger.info("fxquant.trace: made %s opaque", leaf)
            fallbacks.append(leaf)
    else:  # pragma: no cover - would need > _MAX_FALLBACKS distinct failing modules
        raise TraceError(f"gave up tracing {name} after {_MAX_FALLBACKS} leaf fallbacks")
    gm = torch.fx.GraphModule(tracer.root, graph, name)
    gm.meta[_GM_META_KEY] = {"auto_leaves": tuple(fallbacks)}
    record_node_meta(gm)
    if fallbacks:
        logger.warning("fxquant.trace(%s): %d part(s) could not be traced and stay opaque: %s",
                       name, len(fallbacks), "; ".join(str(f) for f in fallbacks))
    return gm


def _unknown_path_message(arg: str, path: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(path, sorted(k for k in known if k), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{arg}: {path!r} is not a submodule path of the model.{hint}"


def _trace_error(exc: BaseException, path: str, module: nn.Module, source: str | None,
                 strict: bool) -> TraceError:
    where = path or "<root>"
    lines = [
        f"cannot trace module {where!r} ({_qualname(module)}): {_one_line(exc)}",
    ]
    if source:
        lines.append(f"  at {source}")
    if path == "":
        lines.append(
            "  hint: the root's own forward cannot be traced. Fix the inputs that drive its "
            "Python control flow with concrete_args (e.g. concrete_args={'flag': False}, or "
            "{'images': [fxquant.PH]} for a list input), or wrap the untraceable code in a "
            "submodule or a function passed in autowrap_functions.")
    elif strict:
        lines.append(
            f"  hint: pass leaf_modules=[{path!r}] to keep it opaque, or strict=False to let "
            "fxquant make untraceable submodules leaves automatically.")
    else:
        lines.append(f"  hint: pass leaf_modules=[{path!r}] or concrete_args to fix its inputs.")
    return TraceError("\n".join(lines), module_path=path, module_class=_qualname(module),
                      source_line=source)
