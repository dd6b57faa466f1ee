"""What the checks look at: one :class:`ValidationContext`, built once per validation.

Building it traces a private copy of the model (symbolically, as ``prepare_model`` and
``QuantizationSimModel`` do; in concrete mode with the model input when that fails or leaves parts
opaque), prepares a copy of the traced graph, and runs the prepared graph once on the input,
recording each node's output shape and, for every layer, its observed range. Checks then only read.

Example:
    >>> ctx = build_context(model, (torch.randn(1, 3, 32, 32),))
    >>> ctx.trace_mode, sorted(ctx.activations)[:1]
    ('symbolic', ['conv1'])
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import operator
import types
from typing import Any, Mapping

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from fxquant import _meta
from fxquant.bn_reestimation import keep_bn_statistics
from fxquant.core.layers import is_layer
from fxquant.errors import TraceError
from fxquant.passes.prepare import PrepareModelPass
from fxquant.tracing import AutoLeaf, auto_leaves, trace
from fxquant.tracing.data_dependence import DataDependenceProbe, data_dependent_reason

__all__ = ["ActivationStats", "ValidationContext", "build_context", "graph_context",
           "SYMBOLIC", "CONCRETE", "FAILED"]

logger = logging.getLogger(__name__)

SYMBOLIC = "symbolic"
CONCRETE = "concrete"
FAILED = "failed"

#: The percentile of |x| compared with max |x| by the activation-range check.
PERCENTILE = 99.99
# kthvalue on more elements than this runs on an evenly strided sample (cost stays linear).
_MAX_PERCENTILE_ELEMENTS = 4_000_000


@dataclasses.dataclass(frozen=True)
class ActivationStats:
    """A layer output's observed range on the model input.

    Attributes:
        abs_max: max |x|.
        percentile: the :data:`PERCENTILE` th percentile of |x|.
        numel: number of elements.
    """

    abs_max: float
    percentile: float
    numel: int


@dataclasses.dataclass(frozen=True)
class ValidationContext:
    """Everything the checks read (a check must not change any of it).

    Attributes:
        model: the caller's model (read only).
        args: the model input as the forward's positional arguments.
        traced: the traced graph, before preparation (None when tracing failed).
        trace_mode: :data:`SYMBOLIC`, :data:`CONCRETE` or :data:`FAILED`.
        symbolic_error: the :class:`TraceError` of a failed symbolic trace, or None.
        symbolic_leaves: what the symbolic trace made opaque (empty when it failed).
        concrete_error: the :class:`TraceError` of a failed concrete-mode trace, or None.
        concrete_leaves: what the concrete-mode trace made opaque; None when it did not run.
        prepared: a prepared copy of ``traced`` (None when not built: cheap validation, or
            tracing failed).
        prepare_details: ``PrepareModelPass`` details (``converted``, ``split``) or empty.
        activations: ``{layer name: ActivationStats}`` of float layer outputs on ``args``.
        data_dependent: ``{node name: reason}`` of nodes that ran a data-dependent torch op.
        run_error: one line saying why running the prepared graph on ``args`` failed, or None.
    """

    model: nn.Module
    args: tuple[Any, ...]
    traced: torch.fx.GraphModule | None
    trace_mode: str
    symbolic_error: TraceError | None = None
    symbolic_leaves: tuple[AutoLeaf, ...] = ()
    concrete_error: TraceError | None = None
    concrete_leaves: tuple[AutoLeaf, ...] | None = None
    prepared: torch.fx.GraphModule | None = None
    prepare_details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    activations: Mapping[str, ActivationStats] = dataclasses.field(default_factory=dict)
    data_dependent: Mapping[str, str] = dataclasses.field(default_factory=dict)
    run_error: str | None = None

    @property
    def graph(self) -> torch.fx.GraphModule | None:
        """The most processed graph there is: ``prepared``, else ``traced``."""
        return self.prepared if self.prepared is not None else self.traced


def graph_context(model: nn.Module, traced: torch.fx.GraphModule,
                  args: tuple[Any, ...] = ()) -> ValidationContext:
    """A context for the graph-only checks on a graph that is already traced (no copy, no
    forward, no preparation): what ``QuantizationSimModel`` validates while it is built.

    Example:
        >>> ctx = graph_context(model, fxquant.trace(model))
        >>> ctx.prepared is None
        True
    """
    return ValidationContext(model, tuple(args), traced, SYMBOLIC,
                             symbolic_leaves=auto_leaves(traced))


def build_context(model: nn.Module, args: tuple[Any, ...], *, run: bool = True
                  ) -> ValidationContext:
    """Traces, prepares and (with ``run``) runs a private copy of ``model`` on ``args``.

    Example:
        >>> build_context(model, (x,)).trace_mode
        'symbolic'
    """
    private = copy.deepcopy(model)
    fields: dict[str, Any] = {}
    traced: torch.fx.GraphModule | None = None
    mode = FAILED
    try:
        traced = trace(private)
        mode = SYMBOLIC
        fields["symbolic_leaves"] = auto_leaves(traced)
    except TraceError as exc:
        fields["symbolic_error"] = exc
    if (traced is None or fields["symbolic_leaves"]) and args:
        try:
            concrete = trace(private, example_inputs=args)
            fields["concrete_leaves"] = auto_leaves(concrete)
            if traced is None:
                traced, mode = concrete, CONCRETE
        except TraceError as exc:
            fields["concrete_error"] = exc
        except Exception as exc:  # the model does not run on the input at all
            fields["concrete_error"] = TraceError(
                f"the model cannot run on the input: {type(exc).__name__}: {exc}")
    if traced is None:
        return ValidationContext(model, args, None, FAILED, **fields)
    prepared_gm = torch.fx.GraphModule(traced, copy.deepcopy(traced.graph), type(model).__name__)
    prepared_gm.meta[_meta.META_KEY] = dict(_meta.graph_meta(traced))
    _meta.unshare_node_meta(prepared_gm)
    result = PrepareModelPass()(prepared_gm)
    fields.update(prepared=result.graph_module, prepare_details=dict(result.details))
    if run and args:
        fields.update(_observe(result.graph_module, args))
    return ValidationContext(model, args, traced, mode, **fields)


class _Observer(ShapeProp):
    """ShapeProp (so export finds ``tensor_meta`` and skips its own pass) that also records each
    layer's range and each node that ran a data-dependent torch op."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.activations: dict[str, ActivationStats] = {}
        self.data_dependent: dict[str, str] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op in ("call_function", "call_method"):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            reason = data_dependent_reason(_as_function(n), args, kwargs)
            if reason:
                self.data_dependent[n.name] = reason
        if n.op == "call_module":
            with DataDependenceProbe() as probe:
                result = super().run_node(n)
            if probe.reason:
                self.data_dependent[n.name] = probe.reason
        else:
            result = super().run_node(n)
        if is_layer(n) and isinstance(result, torch.Tensor) and result.is_floating_point():
            self.activations[_meta.layer_name(n)] = _stats(result)
        return result


def _as_function(node: torch.fx.Node) -> Any:
    """What ``data_dependent_reason`` expects: something with the op's ``__name__``."""
    if node.op == "call_method":
        return types.SimpleNamespace(__name__=str(node.target))
    if node.target is operator.getitem:
        return types.SimpleNamespace(__name__="__getitem__")
    return node.target


def _stats(t: torch.Tensor) -> ActivationStats:
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return ActivationStats(0.0, 0.0, 0)
    flat = flat.abs().float()
    abs_max = float(flat.max())
    sample = flat
    if flat.numel() > _MAX_PERCENTILE_ELEMENTS:
        sample = flat[::-(-flat.numel() // _MAX_PERCENTILE_ELEMENTS)]
    k = max(1, min(sample.numel(), round(sample.numel() * PERCENTILE / 100)))
    return ActivationStats(abs_max, float(sample.kthvalue(k).values), int(t.numel()))


def _observe(gm: torch.fx.GraphModule, args: tuple[Any, ...]) -> dict[str, Any]:
    observer = _Observer(gm)
    inputs = torch.utils._pytree.tree_map_only(torch.Tensor, torch.Tensor.clone, args)
    try:  # arguments left out take forward's defaults (concrete mode keeps them as inputs)
        bound = inspect.signature(gm.forward).bind(*inputs)
        bound.apply_defaults()
        inputs = bound.args
    except (TypeError, ValueError):
        pass  # the run below reports what does not fit
    try:
        with torch.no_grad(), keep_bn_statistics(gm):
            observer.propagate(*inputs)
    except Exception as exc:  # reported by the checks that needed the run
        direct = _run_with_hooks(gm, inputs, observer.activations)
        if direct is None:  # the graph runs as code but not node by node (fx's immutable args)
            logger.info("validation: node-by-node run failed (%s); ranges come from a plain run, "
                        "data-dependent shapes are not checked", exc)
            return {"activations": observer.activations, "data_dependent": {}}
        cause = direct.__cause__ or direct
        text = str(cause).strip().splitlines()
        logger.info("validation: running the prepared model on the input failed: %s", cause)
        return {"run_error": f"{type(cause).__name__}: {text[0] if text else ''}",
                "activations": observer.activations, "data_dependent": observer.data_dependent}
    return {"activations": observer.activations, "data_dependent": observer.data_dependent}


def _run_with_hooks(gm: torch.fx.GraphModule, inputs: tuple[Any, ...],
                    activations: dict[str, ActivationStats]) -> Exception | None:
    """Runs ``gm`` as code, recording layer ranges with forward hooks; the error, or None."""
    layers = {str(n.target): _meta.layer_name(n) for n in gm.graph.nodes if is_layer(n)}
    handles = []
    for path, name in layers.items():
        def hook(_module: nn.Module, _args: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                activations[name] = _stats(out)
        handles.append(gm.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad(), keep_bn_statistics(gm):
            gm(*inputs)
    except Exception as exc:
        return exc
    finally:
        for handle in handles:
            handle.remove()
    return None
