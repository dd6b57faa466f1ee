"""AIMET's cross-layer equalization API (``aimet_torch.cross_layer_equalization``):
``equalize_model`` folds the batch norms, scales consecutive layers and absorbs high biases, in
place, with :class:`fxquant.passes.equalize.EqualizeLayersPass` doing the work on the graph.

ReLU6: AIMET before 2.4 replaced every ReLU6 by ReLU so that the pairs through it could be
scaled; AIMET 2.4+ leaves them and warns. fxquant does what 2.4+ does by default and what the
older versions did with ``relu6_to_relu=True`` (measure the float model afterwards: it changes
wherever a pre-activation exceeded 6).

Example:
    >>> model = torchvision.models.mobilenet_v2().eval()
    >>> fxquant.equalize_model(model, dummy_input=torch.randn(1, 3, 224, 224),
    ...                        relu6_to_relu=True)
    >>> sim = fxquant.QuantizationSimModel(model, torch.randn(1, 3, 224, 224))
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import torch.fx
from torch import nn

from fxquant.batch_norm_fold import FoldedPair, fold_all_batch_norms, write_layers_back
from fxquant.model_resolution import is_prepared
from fxquant.passes.base import Sequential
from fxquant.passes.equalize import EqualizeLayersPass
from fxquant.passes.fold_batchnorm import BatchNormFoldError
from fxquant.passes.prepare import PrepareModelPass
from fxquant.tracing import trace

__all__ = ["equalize_model", "equalize_bn_folded_model"]

logger = logging.getLogger(__name__)


def equalize_model(model: nn.Module, input_shapes: Any = None, dummy_input: Any = None, *,
                   relu6_to_relu: bool = False, high_bias_fold: bool = True
                   ) -> Mapping[str, Any]:
    """Cross-layer equalization of ``model``, in place (AIMET's ``equalize_model``): batch norms
    folded, consecutive conv/depthwise/linear layers scaled to equal per-channel weight ranges,
    high biases absorbed into the next layer.

    Args:
        model: an eval-mode ``nn.Module`` (its folded batch norms become ``nn.Identity`` and its
            layers' parameters are rewritten) or a ``torch.fx.GraphModule`` (changed in place).
        input_shapes: AIMET's argument, the input shape(s); only needed, like ``dummy_input``,
            to fold a Linear → BatchNorm1d pair safely.
        dummy_input: an example input (optional here: the graph is traced symbolically).
        relu6_to_relu: replace every ``nn.ReLU6`` module by ``nn.ReLU`` first, so the pairs
            through it are scaled too (AIMET < 2.4); changes the float model where a
            pre-activation exceeds 6.
        high_bias_fold: absorb high biases (AIMET always does).

    Returns:
        What was done: ``folded`` (layer, bn), ``scaled`` and ``absorbed`` (layer 1, layer 2)
        pairs, ``relu6_replaced`` and ``skipped`` (layer 1, layer 2, reason); AIMET returns
        None, so AIMET code ignores it.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        BatchNormFoldError: the model is in training mode.

    Example:
        >>> report = fxquant.equalize_model(model, dummy_input=torch.randn(1, 3, 224, 224))
        >>> report["scaled"][:1]
        [('layer1.0.conv1', 'layer1.0.conv2')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"equalize_model expects a torch.nn.Module, got {type(model).__qualname__}")
    if model.training:
        raise BatchNormFoldError(
            f"{type(model).__name__} is in training mode; equalization folds the batch norms "
            "with their eval-mode statistics. Call model.eval() before equalize_model.")
    if isinstance(model, torch.fx.GraphModule):
        passes = [] if is_prepared(model) else [PrepareModelPass()]
        result = Sequential(*passes, EqualizeLayersPass(
            high_bias_fold=high_bias_fold, relu6_to_relu=relu6_to_relu))(model)
        return _report(list(result.details.values())[-1])
    replaced = _replace_relu6(model) if relu6_to_relu else []
    pairs = fold_all_batch_norms(model, input_shapes, dummy_input)
    return _equalize_folded(model, pairs, high_bias_fold, replaced)


def equalize_bn_folded_model(model: nn.Module, input_shapes: Any,
                             folded_pairs: Sequence[tuple[nn.Module, nn.Module]],
                             dummy_input: Any = None) -> Mapping[str, Any]:
    """Scaling and high-bias absorption of a model whose batch norms were folded already, in place
    (AIMET's ``equalize_bn_folded_model``); ``folded_pairs`` is what ``fold_all_batch_norms``
    returned (the folded batch norms' γ and β give the high-bias statistics).

    Example:
        >>> pairs = fxquant.fold_all_batch_norms(model)
        >>> equalize_bn_folded_model(model, None, pairs)["scaled"][:1]
        [('layer1.0.conv1', 'layer1.0.conv2')]
    """
    del input_shapes, dummy_input  # AIMET's arguments; the graph is traced symbolically
    if not isinstance(model, nn.Module):
        raise TypeError(f"equalize_bn_folded_model expects a torch.nn.Module, got "
                        f"{type(model).__qualname__}")
    names = {id(m): n for n, m in model.named_modules()}
    checked = []
    for i, pair in enumerate(folded_pairs):
        if isinstance(pair, FoldedPair):
            checked.append(pair)
            continue
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or id(pair[0]) not in names
                or not isinstance(pair[1], nn.modules.batchnorm._BatchNorm)):
            raise BatchNormFoldError(
                f"folded_pairs[{i}] must be a (layer of the model, folded batch norm) pair as "
                "fold_all_batch_norms returns them")
        checked.append(FoldedPair(pair[0], pair[1], names[id(pair[0])], ""))
    return _equalize_folded(model, checked, True, [])


def _equalize_folded(model: nn.Module, pairs: Sequence[FoldedPair], high_bias_fold: bool,
                     replaced: list[str]) -> Mapping[str, Any]:
    stats = {pair.layer_name: (pair[1].weight, pair[1].bias) for pair in pairs
             if getattr(pair[1], "affine", False)}
    gm = trace(model)
    PrepareModelPass()(gm)
    before = {str(n.target): gm.get_submodule(str(n.target))
              for n in gm.graph.nodes if n.op == "call_module"}
    details = dict(EqualizeLayersPass(high_bias_fold=high_bias_fold, bn_stats=stats)(gm).details)
    changed = sorted({name for key in ("scaled", "absorbed") for pair in details[key]
                      for name in pair})
    write_layers_back(model, gm, before, changed)
    details["folded"] = [pair.names for pair in pairs]
    details["relu6_replaced"] = replaced
    return _report(details)


def _replace_relu6(model: nn.Module) -> list[str]:
    names = [name for name, m in model.named_modules() if type(m) is nn.ReLU6]
    for name in names:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.ReLU())
    return names


def _report(details: Mapping[str, Any]) -> Mapping[str, Any]:
    blocked = [s for s in details.get("skipped", ()) if "ReLU6" in s[2] or "Hardtanh" in s[2]]
    if blocked:
        logger.warning(
            "cross-layer equalization left %d layer pair(s) alone because a ReLU6 sits between "
            "them (%s%s); equalize_model(..., relu6_to_relu=True) replaces ReLU6 by ReLU first, "
            "as AIMET < 2.4 did, if the float model tolerates it", len(blocked),
            ", ".join(f"{a} -> {b}" for a, b, _ in blocked[:3]), " ..." if len(blocked) > 3 else "")
    return MappingProxyType(dict(details))
