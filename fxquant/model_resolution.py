"""Model resolution: what a user hands us, turned into a prepared GraphModule plus what it is.

Users pass an ``nn.Module``, a GraphModule that :func:`fxquant.prepare_model` (or a sim) made, a
``QuantizationSimModel`` or a sim's ``.model``, or a torch.ao-quantized model. Every feature
package (numeric suite, layer outputs, export, the analyzer, the validator) resolves it here, the
same way:

* a sim (anything with a GraphModule ``.model`` and a ``quantizers()`` method) → its ``.model``;
* a prepared GraphModule (state tag ``prepared``) → itself, never re-traced, so its layer names,
  node metadata and source lines stay as they are;
* any other ``nn.Module`` → :func:`fxquant.prepare_model` (which traces a copy).

With ``copy=True`` (the default) the result is private: the caller's model is never changed.
Sits above :mod:`fxquant.passes` and below :mod:`fxquant.quantsim` (the sim is recognised by what
it has, not by importing its class).

Example:
    >>> resolved = resolve_model(sim)
    >>> resolved.kind, resolved.source
    ('sim', 'sim')
"""
from __future__ import annotations

import copy as copy_module
import dataclasses
from typing import Any

import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.core.layers import quantizer_nodes
from fxquant.model_preparer import prepare_model
from fxquant.passes.base import state_tags
from fxquant.tracing import trace

__all__ = ["ResolvedModel", "resolve_model", "graph_module_to_transform", "private_copy", "is_sim",
           "is_prepared", "is_torch_quantized_module", "model_kind", "FLOAT", "SIM",
           "TORCH_QUANTIZED"]

#: Kinds of resolved models.
FLOAT = "float"
SIM = "sim"
TORCH_QUANTIZED = "torch_quantized"

_TORCH_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                             "torch.nn.quantized", "torch.nn.intrinsic.quantized")


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """A prepared graph module and what it was made from.

    Attributes:
        gm: the prepared GraphModule (private unless resolved with ``copy=False``).
        kind: :data:`SIM` (fxquant quantizer nodes), :data:`TORCH_QUANTIZED` (torch.ao quantized
            modules) or :data:`FLOAT`.
        source: what the user passed: "sim", "prepared" (a prepared GraphModule, a sim's
            ``.model`` included) or "module" (prepared here).
        description: a short human-readable description for reports and manifests.
    """

    gm: torch.fx.GraphModule
    kind: str
    source: str
    description: str


def is_sim(obj: Any) -> bool:
    """Whether ``obj`` is a quantization sim: not a module itself, with a GraphModule ``.model``
    and a ``quantizers()`` method (``fxquant.QuantizationSimModel``).

    Example:
        >>> is_sim(sim), is_sim(sim.model)
        (True, False)
    """
    return (not isinstance(obj, nn.Module)
            and isinstance(getattr(obj, "model", None), torch.fx.GraphModule)
            and callable(getattr(obj, "quantizers", None)))


def is_prepared(model: Any) -> bool:
    """Whether ``model`` is a GraphModule made by the preparer (state tag ``prepared``)."""
    return isinstance(model, torch.fx.GraphModule) and _meta.TAG_PREPARED in state_tags(model)


def is_torch_quantized_module(module: nn.Module) -> bool:
    """Whether ``module`` is one of torch.ao's quantized modules (``nnq.Conv2d``,
    ``nniq.ConvReLU2d``, dynamic ``nnqd.Linear`` …), which take and return quantized tensors.

    Example:
        >>> is_torch_quantized_module(torch.ao.nn.quantized.Linear(4, 4))
        True
    """
    return type(module).__module__.startswith(_TORCH_QUANTIZED_PACKAGES)


def model_kind(gm: torch.fx.GraphModule) -> str:
    """:data:`SIM`, :data:`TORCH_QUANTIZED` or :data:`FLOAT` for a prepared graph module."""
    if quantizer_nodes(gm):
        return SIM
    if any(is_torch_quantized_module(m) for m in gm.modules()):
        return TORCH_QUANTIZED
    return FLOAT


def private_copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A deep copy of ``gm`` whose node metadata is its own (``copy.deepcopy`` alone shares the
    inner metadata dicts with the original, so a pass on the copy would edit the original's).

    Example:
        >>> mine = private_copy(sim.model)
        >>> mine is sim.model, mine.code == sim.model.code
        (False, True)
    """
    out = copy_module.deepcopy(gm)
    _meta.unshare_node_meta(out)
    return out


def resolve_model(model: Any, *, copy: bool = True, what: str = "model") -> ResolvedModel:
    """Resolves what a user passed to a prepared GraphModule (see the module docstring).

    Args:
        model: an ``nn.Module``, a prepared GraphModule, a sim or a sim's ``.model``.
        copy: return a private copy (the default); with False a sim's or prepared model's own
            graph module is returned (for callers that only run it, e.g. layer-output capture).
            An unprepared module is always prepared on a copy.
        what: how the argument is called in error messages (e.g. ``"model_a"``).

    Returns:
        The :class:`ResolvedModel`.

    Raises:
        TypeError: ``model`` is neither an ``nn.Module`` nor a sim.

    Example:
        >>> resolve_model(torchvision.models.resnet18()).kind
        'float'
    """
    if is_sim(model):
        gm, source, description = model.model, SIM, repr(model)
    elif is_prepared(model):
        gm, source, description = model, "prepared", f"prepared {type(model).__name__}"
    elif isinstance(model, nn.Module):
        gm = prepare_model(model)
        return ResolvedModel(gm, model_kind(gm), "module", type(model).__qualname__)
    else:
        raise TypeError(f"{what} must be a torch.nn.Module or a fxquant.QuantizationSimModel "
                        f"(a GraphModule from fxquant.prepare_model is a module), got "
                        f"{type(model).__qualname__}")
    if copy:
        gm = private_copy(gm)
    return ResolvedModel(gm, model_kind(gm), source, description)


def graph_module_to_transform(model: nn.Module, *, in_place: bool = False) -> torch.fx.GraphModule:
    """The graph module a builder (e.g. ``QuantizationSimModel``) runs its passes on.

    A prepared GraphModule is used as it is (``in_place=True``) or as a :func:`private_copy`,
    never re-traced, so a sim built from ``prepare_model(m)`` has exactly the names of one built
    from ``m``. Any other module is traced (a copy of it unless ``in_place``; tracing shares
    submodules with its input).

    Example:
        >>> gm = graph_module_to_transform(fxquant.prepare_model(model))
        >>> PrepareModelPass()(gm).modified
        False
    """
    if is_prepared(model):
        return model if in_place else private_copy(model)  # type: ignore[arg-type]
    return trace(model if in_place else copy_module.deepcopy(model))
