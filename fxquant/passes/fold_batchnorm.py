"""FoldBatchNormPass: batch norms folded into the conv / linear layers next to them.

Backward fold (layer → BN), with σ = sqrt(var + eps), per output channel c:
``W'[c] = W[c]·γ[c]/σ[c]``, ``b'[c] = β[c] + (b[c] − μ[c])·γ[c]/σ[c]``. Output channels are
weight axis 0 for Conv/Linear and axis 1 (per group) for ConvTranspose.

Forward fold (BN → conv), per input channel c with s = γ/σ and t = β − μ·s:
``W'[:, c] = W[:, c]·s[c]``, ``b' = b + Σ W·t``. Exact only without padding (padded zeros would
otherwise have to become t) and with groups == 1, so only then; never into ConvTranspose.
Backward fold wins when both apply. A layer whose output has other users than the BN, or whose
weight is shared with another module, is left alone. The folded layer is a new module put in
place of the old one in the graph module (a model that shares modules with the graph module, as
``torch.fx`` tracing does, is not changed); the BN node is removed.
"""
from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Any

import torch
import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.errors import FxQuantError
from fxquant.passes.base import Pass, PassResult, errors_at

__all__ = ["FoldBatchNormPass", "BatchNormFoldError", "training_batch_norms"]

logger = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BatchNormFoldError(FxQuantError):
    """Batch norms cannot be folded as asked (e.g. the model is in training mode)."""


def training_batch_norms(model: nn.Module) -> list[str]:
    """Module paths of ``model``'s batch norms that are in training mode and track statistics.

    QuantSim keeps these unfolded (QAT with batch norms; fold them later into the weight
    quantizers with ``fxquant.batch_norm_fold.fold_all_batch_norms_to_scale``).

    Example:
        >>> training_batch_norms(torchvision.models.resnet18().train())[:2]
        ['bn1', 'layer1.0.bn1']
        >>> training_batch_norms(torchvision.models.resnet18().eval())
        []
    """
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            and m.track_running_stats]


class FoldBatchNormPass(Pass):
    """Folds every foldable BatchNorm into its neighbouring Conv/ConvTranspose/Linear.

    Args:
        skip: module paths of batch norms to leave alone.

    Example:
        >>> result = FoldBatchNormPass()(fxquant.prepare_model(model.eval()))
        >>> result.details["folded"][:1]
        [('conv1', 'bn1')]
    """

    requires = frozenset()
    provides = frozenset({_meta.TAG_BN_FOLDED})
    preserves_numerics = True
    in_place = True

    def __init__(self, skip: frozenset[str] | tuple[str, ...] = ()) -> None:
        self.skip = frozenset(skip)

    def __repr__(self) -> str:
        return f"FoldBatchNormPass(skip={sorted(self.skip)})" if self.skip else "FoldBatchNormPass()"

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        modules = dict(gm.named_modules())
        _check_eval(gm, modules)
        param_owners = Counter(id(p) for m in modules.values()
                               for p in m.parameters(recurse=False))
        folded: list[tuple[str, str]] = []
        for node in list(gm.graph.nodes):
            bn = _module(node, modules, _BN)
            if bn is None or str(node.target) in self.skip or not bn.track_running_stats:
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue
            src = node.args[0] if node.args else None
            layer = _module(src, modules, (*_CONV, *_CONV_T, nn.Linear))
            if (layer is not None and len(src.users) == 1 and not node.kwargs
                    and len(node.args) == 1 and _unshared(layer, param_owners)
                    and _layer_channels(layer, output=True) == bn.num_features
                    and _rank_ok(layer, src)):
                with errors_at(node):
                    _fold_backward(_own_copy(gm, modules, str(src.target)), bn)
                node.replace_all_uses_with(src)
                gm.graph.erase_node(node)
                folded.append((str(src.target), str(node.target)))
                continue
            # forward fold: BN -> conv (the BN's only user)
            if len(node.users) != 1 or node.kwargs or len(node.args) != 1:
                continue
            user = next(iter(node.users))
            conv = _module(user, modules, _CONV)
            if (conv is None or user.args[:1] != (node,) or len(user.args) != 1 or user.kwargs
                    or conv.groups != 1 or not _no_padding(conv) or not _unshared(conv, param_owners)
                    or conv.in_channels != bn.num_features):
                continue
            with errors_at(node):
                _fold_forward(bn, _own_copy(gm, modules, str(user.target)))
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            folded.append((str(user.target), str(node.target)))
        if folded:
            gm.delete_all_unused_submodules()
        return PassResult(gm, bool(folded), {"folded": folded})


def _own_copy(gm: torch.fx.GraphModule, modules: dict[str, nn.Module], path: str) -> nn.Module:
    """Replaces the module at ``path`` in ``gm`` by a copy (fresh parameters) and returns it."""
    clone = copy.deepcopy(modules[path])
    parent_path, _, attr = path.rpartition(".")
    setattr(gm.get_submodule(parent_path) if parent_path else gm, attr, clone)
    modules[path] = clone
    return clone


def _module(node: Any, modules: dict[str, nn.Module], classes: tuple[type, ...]) -> Any:
    if not isinstance(node, torch.fx.Node) or node.op != "call_module":
        return None
    module = modules.get(str(node.target))
    return module if isinstance(module, classes) else None


def _check_eval(gm: torch.fx.GraphModule, modules: dict[str, nn.Module]) -> None:
    for name, module in modules.items():
        if isinstance(module, _BN) and module.training:
            raise BatchNormFoldError(
                f"batch norm {name!r} is in training mode; folding needs its eval-mode running "
                "statistics (training mode normalizes with batch statistics instead). Call "
                "model.eval() before folding.")


def _unshared(layer: nn.Module, param_owners: Counter[int]) -> bool:
    return all(param_owners[id(p)] <= 1 for p in layer.parameters(recurse=False))


def _layer_channels(layer: nn.Module, output: bool) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features if output else layer.in_features
    return layer.out_channels if output else layer.in_channels


def _rank_ok(layer: nn.Module, node: torch.fx.Node) -> bool:
    """Linear → BatchNorm1d is a per-channel fold only on 2-D activations (N, C); a 3-D input
    would normalize another axis. Needs the shape recorded by ShapeProp; unknown → no fold."""
    if not isinstance(layer, nn.Linear):
        return True
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    if shape is None:
        logger.info("not folding the batch norm after linear %s: its output rank is unknown "
                    "(pass dummy_input or input_shapes to fold_all_batch_norms)", node.target)
        return False
    return len(shape) == 2


def _no_padding(conv: nn.Module) -> bool:
    padding = conv.padding
    if isinstance(padding, str):
        return padding == "valid"
    return all(p == 0 for p in padding)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64


def _bn_scale_shift(bn: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mean = bn.running_mean.to(dtype)
    std = torch.sqrt(bn.running_var.to(dtype) + bn.eps)
    gamma = bn.weight.detach().to(dtype) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(dtype) if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / std
    return scale, beta - mean * scale


def _set_bias(layer: nn.Module, value: torch.Tensor) -> None:
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(value.to(layer.weight.dtype),
                                      requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.copy_(value)


def _fold_backward(layer: nn.Module, bn: nn.Module) -> None:
    w = layer.weight.detach()
    dtype = _work_dtype(w)
    scale, shift = _bn_scale_shift(bn, dtype)
    out_channels = scale.numel()
    if isinstance(layer, _CONV_T):
        groups = layer.groups
        shape = (groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
        factor = scale.view(groups, 1, w.shape[1], *([1] * (w.dim() - 2)))
        new_w = w.to(dtype, copy=True).reshape(shape).mul_(factor).reshape(w.shape)
    else:  # one float64 copy of the weight, scaled in place (the largest layers are GBs)
        new_w = w.to(dtype, copy=True).mul_(scale.view(out_channels, *([1] * (w.dim() - 1))))
    bias = layer.bias.detach().to(dtype) if layer.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        layer.weight.copy_(new_w)
    _set_bias(layer, shift + bias * scale)


def _fold_forward(bn: nn.Module, conv: nn.Module) -> None:
    w = conv.weight.detach()
    dtype = _work_dtype(w)
    scale, shift = _bn_scale_shift(bn, dtype)
    w64 = w.to(dtype)
    bias = conv.bias.detach().to(dtype) if conv.bias is not None else torch.zeros(
        w.shape[0], dtype=dtype, device=w.device)
    reduce_dims = tuple(range(2, w.dim()))
    new_bias = bias + (w64 * shift.view(1, -1, *([1] * (w.dim() - 2)))).sum(
        dim=(1, *reduce_dims))
    with torch.no_grad():
        conv.weight.copy_(w64 * scale.view(1, -1, *([1] * (w.dim() - 2))))
    _set_bias(conv, new_bias)
