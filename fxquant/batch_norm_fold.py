"""``fold_all_batch_norms`` (AIMET's name): fold BNs into a model or a GraphModule in place."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from fxquant.passes.fold_batchnorm import BatchNormFoldError, FoldBatchNormPass
from fxquant.passes.prepare import PrepareModelPass
from fxquant.tracing import trace

__all__ = ["fold_all_batch_norms"]

logger = logging.getLogger(__name__)


def fold_all_batch_norms(model: nn.Module,
                         input_shapes: Sequence[int] | Sequence[Sequence[int]] | None = None,
                         dummy_input: Any = None) -> list[tuple[str, str]]:
    """Folds every foldable BatchNorm of ``model`` into its conv/linear neighbour, in place.

    On a ``GraphModule`` the BN nodes are removed from its graph. On any other module the folded
    parameters are written into its layers and each folded BN is replaced by ``nn.Identity``, so
    the caller keeps using the same object. ``input_shapes`` or ``dummy_input`` let the fold see
    tensor ranks (needed only to fold Linear → BatchNorm1d safely).

    Args:
        model: an ``nn.Module`` or ``torch.fx.GraphModule`` in eval mode.
        input_shapes: shape of the single input, or a list of shapes for several inputs.
        dummy_input: example input(s), used instead of ``input_shapes`` when given.

    Returns:
        ``[(layer name, bn name), ...]`` for every fold made.

    Raises:
        BatchNormFoldError: a batch norm is in training mode.

    Example:
        >>> model = torchvision.models.resnet18().eval()
        >>> pairs = fxquant.fold_all_batch_norms(model, input_shapes=(1, 3, 224, 224))
        >>> pairs[0]
        ('conv1', 'bn1')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_all_batch_norms expects a torch.nn.Module, "
                        f"got {type(model).__qualname__}")
    if model.training:
        raise BatchNormFoldError(
            f"{type(model).__name__} is in training mode; folding needs eval-mode batch-norm "
            "statistics. Call model.eval() before fold_all_batch_norms.")
    if isinstance(model, torch.fx.GraphModule):
        _shape_prop(model, input_shapes, dummy_input)
        return list(FoldBatchNormPass()(model).details["folded"])
    gm = trace(model)
    prep = PrepareModelPass()(gm)
    split_bns = {n for pair in prep.details["split"] for n in pair}
    _shape_prop(gm, input_shapes, dummy_input)
    before = {str(n.target): gm.get_submodule(str(n.target))
              for n in gm.graph.nodes if n.op == "call_module"}
    folded = list(FoldBatchNormPass(skip=frozenset(split_bns))(gm).details["folded"])
    _write_back(model, gm, before, folded)
    return folded


def _shape_prop(gm: torch.fx.GraphModule, input_shapes: Any, dummy_input: Any) -> None:
    """Records tensor shapes on the nodes (one forward pass), only when a Linear → BatchNorm pair
    needs its rank checked."""
    if dummy_input is None and input_shapes is None:
        return
    modules = dict(gm.named_modules())
    if not any(n.op == "call_module" and isinstance(modules.get(n.target), nn.Linear)
               and any(u.op == "call_module"
                       and isinstance(modules.get(u.target), nn.modules.batchnorm._BatchNorm)
                       for u in n.users)
               for n in gm.graph.nodes):
        return
    if dummy_input is None:
        shapes = input_shapes
        if shapes and isinstance(shapes[0], int):
            shapes = [shapes]
        device = next((p.device for p in gm.parameters()), torch.device("cpu"))
        dummy_input = tuple(torch.zeros(*s, device=device) for s in shapes)
    args = dummy_input if isinstance(dummy_input, (tuple, list)) else (dummy_input,)
    with torch.no_grad():
        ShapeProp(gm).propagate(*args)


def _write_back(model: nn.Module, gm: torch.fx.GraphModule, before: dict[str, nn.Module],
                folded: list[tuple[str, str]]) -> None:
    """Makes ``model`` compute what the folded ``gm`` computes: the folded weights and biases are
    written into the parameters the model's layers use (the traced layers share them), a new
    bias goes to the module that owns the weight, and folded BNs become ``nn.Identity``."""
    owners = {}
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            owners[id(param)] = (module, pname)
    for layer_name, bn_name in folded:
        new, old = gm.get_submodule(layer_name), before[layer_name]
        with torch.no_grad():
            old.weight.copy_(new.weight)
            if old.bias is not None:
                old.bias.copy_(new.bias)
            else:
                owner, pname = owners.get(id(old.weight), (old, "weight"))
                bias = nn.Parameter(new.bias.detach().clone(), requires_grad=old.weight.requires_grad)
                if pname == "weight" and getattr(owner, "bias", None) is None:
                    owner.bias = bias
                if owner is not old:
                    old.bias = bias
        parent_name, _, attr = bn_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, nn.Identity())
