"""Symbolic tracing of a model to a ``torch.fx.GraphModule``, with automatic leaf fallback.

``trace`` wraps ``torch.fx.Tracer`` and adds what quantization work needs:

* every node records its module path, a stable handle and the user's source line in
  ``node.meta["fxquant"]`` (see :mod:`fxquant._meta`);
* a submodule whose code cannot be traced (Python control flow on a Proxy, iteration over a
  Proxy, ...) becomes a leaf automatically; a *method* of a submodule that the parent calls and
  that cannot be traced becomes one opaque ``call_method`` node on ``get_attr(<path>)``; a method
  of the root becomes ``call_method("__call__")`` on ``get_attr(<method name>)``, the model's
  bound method, which the GraphModule keeps. What was made opaque, and why, is reported on the
  returned module (``gm.meta["fxquant"]["auto_leaves"]``, see :func:`auto_leaves`);
* failures of the root raise :class:`fxquant.errors.TraceError` naming the innermost failing
  module path and class, the user's source line and a hint;
* with ``example_inputs``, tracing runs in *concrete mode* (:mod:`fxquant.tracing.concrete`): every
  node carries its value on the example inputs, so shape- and structure-driven Python code
  (``len(x.shape)``, ``for img in images``, ``h, w = x.shape[-2:]``, ``if x.dim() != 3``) is
  specialized to the example instead of failing. Each assumption is recorded (see
  :func:`specializations`); data-dependent control flow is never specialized -- the enclosing
  module becomes a leaf instead. The traced module is then valid for inputs with the same
  structure and, where shapes were specialized, the same shapes.

The model itself is left as it was: attributes that its code sets while being traced (and, in
concrete mode, buffers it updates) are restored afterwards.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.errors import TraceError
from fxquant.tracing.concrete import ConcreteTracerMixin
from fxquant.tracing.inputs import bind_example_inputs, use_input_defaults
from fxquant.tracing.records import AutoLeaf, Specialization
from fxquant.tracing.replay import AttemptLog, Replayer, ReplayInvalid
from fxquant.tracing.source import innermost_module_frame, innermost_source

__all__ = ["trace", "record_node_meta", "PH", "LEAF_MARKER"]

logger = logging.getLogger(__name__)

#: Placeholder marker for ``concrete_args`` structures, e.g. ``{"images": [PH, PH]}`` makes a
#: list input of two tensors two graph inputs.
PH = torch.fx._symbolic_trace.PH

#: Class attribute that makes :func:`trace` keep a module opaque (one ``call_module`` node), e.g.
#: ``class MyQuantizer(nn.Module): _fxquant_leaf = True``.
LEAF_MARKER = "_fxquant_leaf"

_MAX_FALLBACKS = 256


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
        if getattr(type(m), LEAF_MARKER, False):  # e.g. fxquant's quantizers
            return True
        if self.leaf_classes and isinstance(m, self.leaf_classes):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def trace(self, root: nn.Module, concrete_args: dict[str, Any] | None = None) -> torch.fx.Graph:
        with _OpaqueMethodPatch(self, root):
            return super().trace(root, concrete_args)


class _ConcreteTracer(ConcreteTracerMixin, _Tracer):
    """The tracer of concrete mode: nodes carry their values on the example inputs."""


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
            if torch.fx._symbolic_trace._find_proxy(args, kwargs) is None:
                return original(*args, **kwargs)
            if not path:  # a method of the root: the GraphModule keeps the bound method
                bound = tracer.create_proxy("get_attr", method, (), {})
                return tracer.create_proxy("call_method", "__call__", (bound, *args), kwargs)
            owner = tracer.create_proxy("get_attr", path, (), {})
            return tracer.create_proxy("call_method", method, (owner, *args), kwargs)

        return opaque

    def __exit__(self, *exc: object) -> None:
        for module, method in self.patched:
            module.__dict__.pop(method, None)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


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
            src = innermost_source(node.meta.get("stack_trace"))
            if src:
                meta[_meta.SOURCE] = src
        if node.op in ("call_module", "call_function", "call_method"):
            meta.setdefault(_meta.ROLE, _meta.ROLE_OP)
    _meta.assign_handles(gm.graph)


def trace(model: nn.Module, *, leaf_modules: Iterable[str | type[nn.Module]] = (),
          concrete_args: dict[str, Any] | None = None,
          autowrap_functions: Sequence[Callable[..., Any]] = (),
          strict: bool = False, example_inputs: Any = None) -> torch.fx.GraphModule:
    """Traces ``model`` to a ``torch.fx.GraphModule``; the model itself is not changed.

    Args:
        model: the module to trace.
        leaf_modules: module paths (``"backbone.body"``) or classes that stay opaque
            (one ``call_module`` node each). Modules whose class sets ``_fxquant_leaf = True``
            (fxquant's quantizers do) are always leaves.
        concrete_args: arguments of ``model.forward`` to fix while tracing (as in
            ``torch.fx.symbolic_trace``); use :data:`PH` inside a structure to make its leaves
            graph inputs, e.g. ``{"images": [PH]}`` for a list of one image.
        autowrap_functions: free functions to record as single nodes instead of tracing them
            (in concrete mode they run on the example values). Useful for a function with
            data-dependent loops that would otherwise make its whole calling module opaque, e.g.
            ``torchvision.models.detection.roi_heads.keypointrcnn_inference``.
        strict: when True, any untraceable submodule raises :class:`TraceError` instead of
            becoming a leaf.
        example_inputs: inputs to trace with in concrete mode: a tuple of positional
            arguments, a dict of arguments by name, or a single tensor / list for a
            one-argument ``forward`` (wrap a tuple argument in a tuple: ``((a, b),)``). Each
            tensor inside a list / tuple / dict input becomes one graph input, so the traced
            module is called with the same structure. Python code that asks about shapes or
            structure is specialized to these inputs (see :func:`specializations`); parameters
            not given keep their defaults. The model runs on these inputs (under
            ``torch.no_grad()``) while it is traced; buffers it updates are restored afterwards.
            When a fallback makes a part opaque and tracing restarts, an eval-mode model reuses
            the values computed before that part instead of running again.

    Returns:
        The traced module. ``fxquant.auto_leaves(gm)`` lists what was made opaque and why;
        ``fxquant.specializations(gm)`` what concrete mode assumed about the inputs.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``example_inputs`` do not fit its
            ``forward``.
        ValueError: a path in ``leaf_modules`` names no submodule, or an argument is given in
            both ``example_inputs`` and ``concrete_args``.
        TraceError: the root (or, with ``strict``, any module) cannot be traced.

    Example:
        >>> gm = fxquant.trace(torchvision.models.resnet18())
        >>> gm.graph.print_tabular()
        >>> detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        ...     weights=None, weights_backbone=None).eval()
        >>> images = [torch.rand(3, 320, 320)]
        >>> gm = fxquant.trace(detector, example_inputs=(images,))
        >>> detections = gm(images)  # same structure as the example
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
    concrete = example_inputs is not None
    input_specs: list[Specialization] = []
    if concrete:
        concrete_args, placeholder_values, input_specs, defaults = bind_example_inputs(
            model, example_inputs, concrete_args)
    opaque_methods: set[tuple[str, str]] = set()
    fallbacks: list[AutoLeaf] = []
    name = type(model).__name__
    snapshot = _ModelSnapshot(model, buffers=concrete)
    # Retries replay the previous attempt's values up to where they differ (eval mode only).
    replay = concrete and not any(m.training for m in model.modules())
    previous: AttemptLog | None = None
    try:
        for _ in range(_MAX_FALLBACKS):
            args = (leaf_paths, tuple(leaf_classes), opaque_methods, tuple(autowrap_functions))
            replayer = Replayer(previous) if replay else None
            previous = None
            if concrete:
                tracer: _Tracer = _ConcreteTracer(*args)
                tracer.init_concrete(_fresh_copies(placeholder_values), replayer)
            else:
                tracer = _Tracer(*args)
            try:
                graph = tracer.trace(model, concrete_args)
                _log_attempt(name, replayer, "succeeded")
                break
            except ReplayInvalid as exc:  # rare: run this attempt again without replay
                snapshot.restore()
                logger.debug("fxquant.trace(%s): not replaying: %s", name, exc)
            except Exception as exc:  # any failure of user code under tracing
                snapshot.restore()
                ran = getattr(tracer, "evaluation_failed", False)
                leaf = _fallback(exc, model, modules, leaf_paths, opaque_methods, strict,
                                 concrete, ran)
                logger.info("fxquant.trace: made %s opaque", leaf)
                fallbacks.append(leaf)
                _log_attempt(name, replayer, "failed")
                if replayer is not None:
                    previous = replayer.log
        else:  # pragma: no cover - would need > _MAX_FALLBACKS distinct failing modules
            raise TraceError(f"gave up tracing {name} after {_MAX_FALLBACKS} leaf fallbacks")
        if concrete:
            use_input_defaults(graph, concrete_args, defaults)
        # Unpickling a GraphModule re-traces its code with graph._tracer_cls; ours takes
        # constructor arguments, and the generated code needs none of its features.
        graph._tracer_cls = torch.fx.Tracer
        gm = torch.fx.GraphModule(tracer.root, graph, name)
    finally:
        snapshot.restore()
    specs = tuple(input_specs) + tuple(getattr(tracer, "specializations", ()))
    gm.meta[_meta.META_KEY] = {_meta.AUTO_LEAVES: tuple(fallbacks), _meta.SPECIALIZATIONS: specs}
    record_node_meta(gm)
    if fallbacks:
        logger.warning("fxquant.trace(%s): %d part(s) could not be traced and stay opaque: %s",
                       name, len(fallbacks), "; ".join(str(f) for f in fallbacks))
    if specs:
        for spec in specs:
            logger.info("fxquant.trace(%s): specialized %s", name, spec)
        logger.info("fxquant.trace(%s): %d specialization(s); the graph is valid for inputs with "
                    "the example's structure and specialized shapes", name, len(specs))
    return gm


def _log_attempt(name: str, replayer: Replayer | None, outcome: str) -> None:
    if replayer is not None:
        logger.debug("fxquant.trace(%s): attempt %s; it replayed %d node value(s) of the previous "
                     "attempt", name, outcome, replayer.replayed)


def _fallback(exc: Exception, model: nn.Module, modules: Mapping[int, str], leaf_paths: set[str],
              opaque_methods: set[tuple[str, str]], strict: bool, concrete: bool,
              ran: bool) -> AutoLeaf:
    """Makes the innermost module (or method) that failed opaque; raises when it cannot.

    ``ran``: the failure came from running the model on the example inputs (concrete mode).
    """
    culprit = innermost_module_frame(exc, modules)
    path, func, src = culprit if culprit else ("", "forward", None)
    module = model.get_submodule(path) if path else model
    is_forward = func in ("forward", "_call_impl", "_wrapped_call_impl")

    def error() -> TraceError:
        return _trace_error(exc, path, module, src, strict, concrete, ran)

    if strict or (path == "" and is_forward):
        raise error() from exc
    if path == "" and hasattr(torch.fx.GraphModule, func):
        raise error() from exc  # the method's name is taken on a GraphModule
    if is_forward:
        done = path in leaf_paths
        leaf_paths.add(path)
    else:
        done = (path, func) in opaque_methods
        opaque_methods.add((path, func))
    if done:
        raise error() from exc
    return AutoLeaf(path, _qualname(module), "forward" if is_forward else func, _one_line(exc),
                    source=src)


def _fresh_copies(values: Sequence[Any]) -> list[Any]:
    """Example values for one tracing attempt: tensors cloned, so in-place ops of the model touch
    neither the caller's inputs nor the next attempt's."""
    return [v.clone() if isinstance(v, torch.Tensor) else v for v in values]


class _ModelSnapshot:
    """Attributes (and optionally buffer contents) of every module, to undo what tracing did:
    fx stores constants on the root, model code may cache values (or proxies) on ``self``."""

    def __init__(self, model: nn.Module, buffers: bool) -> None:
        self.modules = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers),
                         dict(m._modules)) for m in model.modules()]
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if buffers:
            self.buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def restore(self) -> None:
        for module, attrs, params, bufs, children in self.modules:
            for current, saved in ((module.__dict__, attrs), (module._parameters, params),
                                   (module._buffers, bufs), (module._modules, children)):
                if current.keys() != saved.keys() or any(current[k] is not v
                                                         for k, v in saved.items()):
                    current.clear()
                    current.update(saved)
        with torch.no_grad():
            for buf, saved_value in self.buffers:
                buf.copy_(saved_value)


def _unknown_path_message(arg: str, path: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(path, sorted(k for k in known if k), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{arg}: {path!r} is not a submodule path of the model.{hint}"


def _trace_error(exc: BaseException, path: str, module: nn.Module, source: str | None,
                 strict: bool, concrete: bool = False, ran: bool = False) -> TraceError:
    where = path or "<root>"
    lines = [
        f"cannot trace module {where!r} ({_qualname(module)}): {_one_line(exc)}",
    ]
    if source:
        lines.append(f"  at {source}")
    if ran:
        lines.append(
            "  hint: this failed while running the model on example_inputs (concrete mode runs "
            "every op, leaf module and opaque method on them): check that example_inputs are "
            "inputs the model accepts, e.g. by calling the model on them.")
    elif path == "" and concrete:
        lines.append(
            "  hint: the root's own forward cannot be traced even with example_inputs (e.g. its "
            "control flow depends on tensor data). Move that code into a submodule or a method, "
            "which fxquant then keeps opaque, or into a function passed in autowrap_functions; "
            "concrete_args can fix other arguments.")
    elif path == "":
        lines.append(
            "  hint: the root's own forward cannot be traced. Fix the inputs that drive its "
            "Python control flow with concrete_args (e.g. concrete_args={'flag': False}, or "
            "{'images': [fxquant.PH]} for a list input), pass example_inputs to specialize "
            "shape- and structure-driven code to example inputs, or wrap the untraceable code "
            "in a submodule or a function passed in autowrap_functions.")
    elif strict:
        lines.append(
            f"  hint: pass leaf_modules=[{path!r}] to keep it opaque, or strict=False to let "
            "fxquant make untraceable submodules leaves automatically.")
    else:
        lines.append(f"  hint: pass leaf_modules=[{path!r}] or concrete_args to fix its inputs.")
    return TraceError("\n".join(lines), module_path=path, module_class=_qualname(module),
                      source_line=source)
