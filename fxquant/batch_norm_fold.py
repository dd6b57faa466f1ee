"""AIMET's batch-norm folding API: ``fold_all_batch_norms`` (BNs into a model's weights, in place)
and ``fold_all_batch_norms_to_scale`` (BNs of a sim into its weight quantizers' scales).

Both return AIMET's ``[(layer module, bn module), ...]``; each pair is a :class:`FoldedPair`, a
2-tuple that also carries the module paths (``pair.layer_name``, ``pair.bn_name``; see
:func:`folded_names`).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from fxquant import _meta
from fxquant.core.encoding import quant_range
from fxquant.core.layers import is_layer, layer_name, output_quantizer_node, param_quantizers
from fxquant.model_resolution import private_copy
from fxquant.passes.fold_batchnorm import BatchNormFoldError, FoldBatchNormPass
from fxquant.quantsim.encoding_analyzer import get_encoding_analyzer
from fxquant.quantsim.quantizer import AffineQuantizer, QuantizerBase
from fxquant.passes.prepare import PrepareModelPass
from fxquant.tracing import trace

__all__ = ["FoldedPair", "fold_all_batch_norms", "fold_all_batch_norms_to_scale",
           "fold_given_batch_norms", "folded_names"]

logger = logging.getLogger(__name__)


class FoldedPair(tuple):
    """One fold: the 2-tuple ``(layer module, bn module)`` AIMET returns, plus the names.

    Unpacks and indexes as AIMET's pair (``conv, bn = pair``; ``pair[0]``) and compares equal to
    that plain tuple of modules.

    Attributes:
        layer_name: module path of the layer the BN was folded into (``"layer1.0.conv1"``).
        bn_name: module path of the folded BN (``"layer1.0.bn1"``).

    Example:
        >>> pair = fold_all_batch_norms(model)[0]
        >>> conv, bn = pair
        >>> conv is model.conv1, pair.names
        (True, ('conv1', 'bn1'))
    """

    layer_name: str
    bn_name: str

    def __new__(cls, layer: nn.Module, bn: nn.Module, layer_name: str, bn_name: str
                ) -> "FoldedPair":
        pair = super().__new__(cls, (layer, bn))
        pair.layer_name = layer_name
        pair.bn_name = bn_name
        return pair

    @property
    def names(self) -> tuple[str, str]:
        """``(layer_name, bn_name)``."""
        return self.layer_name, self.bn_name

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self[0], self[1], self.layer_name, self.bn_name)

    def __repr__(self) -> str:
        return f"FoldedPair({self.layer_name!r} <- {self.bn_name!r})"


def folded_names(pairs: Sequence[FoldedPair]) -> list[tuple[str, str]]:
    """``[(layer name, bn name), ...]`` of what :func:`fold_all_batch_norms` returned.

    Example:
        >>> folded_names(fold_all_batch_norms(model))[:1]
        [('conv1', 'bn1')]
    """
    return [pair.names for pair in pairs]


def fold_all_batch_norms(model: nn.Module,
                         input_shapes: Sequence[int] | Sequence[Sequence[int]] | None = None,
                         dummy_input: Any = None) -> list[FoldedPair]:
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
        ``[(layer module, bn module), ...]`` for every fold made, as AIMET returns them: the
        layer that now holds the folded weights and the BN module folded away. Each pair is a
        :class:`FoldedPair` (``pair.layer_name``, ``pair.bn_name``).

    Raises:
        BatchNormFoldError: a batch norm is in training mode.

    Example:
        >>> model = torchvision.models.resnet18().eval()
        >>> pairs = fxquant.fold_all_batch_norms(model, input_shapes=(1, 3, 224, 224))
        >>> conv, bn = pairs[0]
        >>> conv is model.conv1, pairs[0].names
        (True, ('conv1', 'bn1'))
    """
    return _fold(model, input_shapes, dummy_input, "fold_all_batch_norms")


def fold_given_batch_norms(model: nn.Module, layer_pairs: Sequence[tuple[nn.Module, nn.Module]],
                           input_shapes: Sequence[int] | Sequence[Sequence[int]] | None = None,
                           dummy_input: Any = None) -> list[FoldedPair]:
    """Folds the given ``(layer, bn)`` (or ``(bn, layer)``) pairs of ``model``, in place (AIMET's
    ``batch_norm_fold.fold_given_batch_norms``).

    The pairs are checked against the model's graph first: each BN must directly follow its
    layer (or, for ``(bn, layer)``, directly precede a layer it can be folded forward into). If
    any pair cannot be folded, nothing is changed and the error names every such pair.

    Args:
        model: an ``nn.Module`` or ``torch.fx.GraphModule`` in eval mode.
        layer_pairs: ``[(conv_or_linear, bn), ...]`` modules of ``model``, as AIMET takes them.
        input_shapes: as in :func:`fold_all_batch_norms`.
        dummy_input: as in :func:`fold_all_batch_norms`.

    Returns:
        The folds made (:class:`FoldedPair`), in the model's order.

    Raises:
        BatchNormFoldError: the model is in training mode, a module of a pair is not part of
            ``model``, a pair holds no BatchNorm, or a pair cannot be folded (named).

    Example:
        >>> layer_list = [(model.conv1, model.bn1), (model.layer1[0].conv1, model.layer1[0].bn1)]
        >>> fold_given_batch_norms(model, layer_list)[0].names
        ('conv1', 'bn1')
    """
    names = {id(m): n for n, m in model.named_modules()}
    wanted: list[tuple[str, str]] = []
    for i, pair in enumerate(layer_pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise BatchNormFoldError(f"layer_pairs[{i}] must be a (layer, bn) pair of modules, "
                                     f"got {type(pair).__qualname__}")
        missing = [type(m).__name__ for m in pair if id(m) not in names]
        if missing:
            raise BatchNormFoldError(f"layer_pairs[{i}]: {missing} is not a submodule of "
                                     f"{type(model).__name__}; pass modules of the model itself")
        first, second = pair
        if isinstance(first, _BN) == isinstance(second, _BN):
            raise BatchNormFoldError(
                f"layer_pairs[{i}] ({names[id(first)]!r}, {names[id(second)]!r}) must hold one "
                "BatchNorm and one Conv/ConvTranspose/Linear")
        bn, layer = (first, second) if isinstance(first, _BN) else (second, first)
        wanted.append((names[id(layer)], names[id(bn)]))
    return _fold(model, input_shapes, dummy_input, "fold_given_batch_norms", only=wanted)


def _fold(model: nn.Module, input_shapes: Any, dummy_input: Any, api: str,
          only: list[tuple[str, str]] | None = None) -> list[FoldedPair]:
    """The fold behind both APIs; ``only`` limits it to these (layer path, bn path) pairs and
    refuses (before any change) when one of them cannot fold."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{api} expects a torch.nn.Module, got {type(model).__qualname__}")
    if model.training:
        raise BatchNormFoldError(
            f"{type(model).__name__} is in training mode; folding needs eval-mode batch-norm "
            f"statistics. Call model.eval() before {api}.")
    wanted_bns = None if only is None else {bn for _, bn in only}
    if isinstance(model, torch.fx.GraphModule):
        _shape_prop(model, input_shapes, dummy_input)
        # only the batch norms: holding the layers too would keep every pre-fold weight alive
        # while the pass builds the folded copies (2.6 GB more on regnet_y_128gf)
        bns = {}
        for target in _call_module_targets(model):
            module = model.get_submodule(target)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                bns[target] = module
        skip = frozenset() if wanted_bns is None else frozenset(set(bns) - wanted_bns)
        if only is not None:  # dry run on a copy: refuse before changing anything
            trial = FoldBatchNormPass(skip=skip)(private_copy(model)).details["folded"]
            _check_folded(only, trial, api)
        folded = FoldBatchNormPass(skip=skip)(model).details["folded"]
        return [FoldedPair(model.get_submodule(layer), bns[bn], layer, bn)
                for layer, bn in folded]
    gm = trace(model)
    prep = PrepareModelPass()(gm)
    split_bns = {n for pair in prep.details["split"] for n in pair}
    _shape_prop(gm, input_shapes, dummy_input)
    before = {str(n.target): gm.get_submodule(str(n.target))
              for n in gm.graph.nodes if n.op == "call_module"}
    skip = set(split_bns)
    if wanted_bns is not None:
        skip |= {name for name, m in before.items() if isinstance(m, _BN)} - wanted_bns
    folded = list(FoldBatchNormPass(skip=frozenset(skip))(gm).details["folded"])
    if only is not None:  # the pass works on copies of the layers: the model is still unchanged
        _check_folded(only, folded, api)
    owners = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    _write_back(model, gm, before, folded)
    # the layer AIMET returns is the user's module that owns the folded weight (a prepared
    # wrapper of a functional conv shares it)
    return [FoldedPair(owners.get(id(before[layer].weight), before[layer]), before[bn], layer, bn)
            for layer, bn in folded]


def _call_module_targets(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]


def _check_folded(wanted: list[tuple[str, str]], folded: Sequence[tuple[str, str]],
                  api: str) -> None:
    done = {(layer, bn) for layer, bn in folded}
    failed = [pair for pair in wanted if pair not in done]
    if failed:
        raise BatchNormFoldError(
            f"{api}: cannot fold {len(failed)} pair(s): {failed[:10]}; a BN folds into the "
            "Conv/ConvTranspose/Linear whose output it alone consumes (or, forward, into a "
            "layer without padding and groups=1 that alone consumes the BN's output). Nothing "
            "was changed; pass only pairs that are adjacent in the model's forward, or use "
            "fold_all_batch_norms")


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
    written into the parameters the model's layers use (see :func:`write_layers_back`) and
    folded BNs become ``nn.Identity``."""
    write_layers_back(model, gm, before, [layer for layer, _ in folded])
    for _, bn_name in folded:
        parent_name, _, attr = bn_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, nn.Identity())


def write_layers_back(model: nn.Module, gm: torch.fx.GraphModule, before: dict[str, nn.Module],
                      layers: Sequence[str]) -> None:
    """Writes the weight and bias of each layer of ``gm`` named in ``layers`` into the parameters
    ``model``'s layer uses: ``before[name]`` is the module ``gm`` held at that path before a pass
    put a new one there (the traced model's own module, whose parameters ``model`` uses). A new
    bias goes to the module that owns the weight.

    Example:
        >>> before = {n: gm.get_submodule(n) for n in ("conv1",)}
        >>> EqualizeLayersPass()(gm)
        >>> write_layers_back(model, gm, before, ["conv1"])
    """
    owners = {}
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            owners[id(param)] = (module, pname)
    for layer_path in layers:
        new, old = gm.get_submodule(layer_path), before[layer_path]
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


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *_CONV_T, nn.Linear)


def fold_all_batch_norms_to_scale(sim: Any, input_shapes: Any = None,
                                  dummy_input: Any = None) -> list[FoldedPair]:
    """Folds the batch norms a sim kept into the preceding layers and their weight quantizers.

    AIMET's QAT-with-BN flow: a sim built on a training-mode model keeps its BNs; after training
    (and :func:`fxquant.bn_reestimation.reestimate_bn_stats`) each ``layer → BN`` pair is folded:
    with ``k = γ / sqrt(var + eps)`` per output channel, the layer's float weight becomes
    ``W·k`` and its bias ``(b − μ)·k + β``, and the weight quantizer's scale becomes
    ``scale·|k|`` (zero point mirrored on the grid where ``k < 0``), so the quantized weight is
    exactly ``k`` times the one before and the calibrated encodings stay valid. The BN's output
    quantizer becomes the layer's. A per-tensor weight quantizer becomes per-channel (one scale
    cannot absorb per-channel factors). The sim is changed in place.

    A pair is left unfolded, with a warning that says why (as AIMET does), when the layer's output
    is quantized (the BN must be fused with it: a supergroup, or QuantSim's rule for the BNs it
    keeps), its bias has a quantizer of its own, or it is a grouped ConvTranspose.

    Args:
        sim: a ``QuantizationSimModel`` (``sim.model`` is changed in place).
        input_shapes: accepted for AIMET 1.x code (``fold_all_batch_norms_to_scale(sim,
            input_shapes=(1, 3, 224, 224))``) and not needed: the sim's graph already knows its
            shapes. Ignored.
        dummy_input: likewise accepted and ignored.

    Returns:
        ``[(layer module, bn module), ...]`` of the folds made (:class:`FoldedPair`).

    Raises:
        TypeError: ``sim`` has no ``torch.fx.GraphModule`` ``model``.

    Example:
        >>> sim = QuantizationSimModel(model.train(), dummy_input)   # keeps its BNs
        >>> sim.compute_encodings(calibrate)
        >>> ...                                                     # QAT
        >>> reestimate_bn_stats(sim.model, train_loader, num_batches=100)
        >>> pairs = fold_all_batch_norms_to_scale(sim)
        >>> pairs[0].names
        ('conv1', 'bn1')
    """
    del input_shapes, dummy_input  # AIMET 1.x arguments; the sim's graph has its shapes
    gm = getattr(sim, "model", None)
    if not isinstance(gm, torch.fx.GraphModule):
        raise TypeError(f"fold_all_batch_norms_to_scale expects a QuantizationSimModel (with a "
                        f"GraphModule .model), got {type(sim).__qualname__}")
    modules = dict(gm.named_modules())
    folded: list[FoldedPair] = []
    for node in list(gm.graph.nodes):
        if not is_layer(node) or not isinstance(modules.get(str(node.target)), _BN):
            continue
        bn = modules[str(node.target)]
        src = node.args[0] if node.args else None
        reason = _cannot_fold_to_scale(node, src, modules)
        if reason is not None:
            logger.warning("fold_all_batch_norms_to_scale: not folding %s: %s", node.target, reason)
            continue
        layer = modules[str(src.target)]
        with torch.no_grad():
            _fold_to_scale(layer, bn)
        _move_output_quantizer(gm, node, src)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        gm.delete_submodule(str(node.target))
        folded.append(FoldedPair(layer, bn, layer_name(src) or str(src.target), str(node.target)))
    if folded:
        gm.graph.lint()
        gm.recompile()
    logger.info("folded %d batch norm(s) into their layers' weight quantizer scales", len(folded))
    return folded


def _cannot_fold_to_scale(node: torch.fx.Node, src: Any, modules: dict[str, nn.Module]
                          ) -> str | None:
    if not (isinstance(src, torch.fx.Node) and src.op == "call_module"):
        return "its input is not a layer's output"
    if _meta.get(src, _meta.ROLE) == _meta.ROLE_QUANTIZER:
        return (f"its input is quantized ({src.target}); the layer before it has an output "
                "quantizer, so the BN is not fused with it (add the pair to a supergroup, e.g. "
                '{"op_list": ["Conv", "BatchNormalization"]}, or build the sim on the model in '
                "training mode)")
    layer = modules.get(str(src.target))
    if not isinstance(layer, _LAYERS):
        return f"{src.target} ({type(layer).__name__}) is not a Conv/ConvTranspose/Linear"
    if len(src.users) != 1 or len(node.args) != 1 or node.kwargs:
        return f"{src.target}'s output has other users than the BN"
    bn = modules[str(node.target)]
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if channels != bn.num_features:
        return f"{src.target} has {channels} output channels, the BN {bn.num_features}"
    if isinstance(layer, _CONV_T) and layer.groups != 1:
        return "folding to scale is not supported for a grouped ConvTranspose"
    if isinstance(layer, nn.Linear):
        shape = getattr(src.meta.get("tensor_meta"), "shape", None)
        if shape is None or len(shape) != 2:
            return f"{src.target}'s output is not known to be 2-D (N, C)"
    if isinstance(param_quantizers(layer).get("bias"), QuantizerBase):
        return f"{src.target}.bias has a quantizer of its own (its encoding would be invalid)"
    if bn.running_mean is None or bn.running_var is None:
        return "the BN tracks no running statistics"
    return None


def _fold_to_scale(layer: nn.Module, bn: nn.Module) -> None:
    dtype = torch.float64
    mean, var = bn.running_mean.to(dtype), bn.running_var.to(dtype)
    gamma = bn.weight.detach().to(dtype) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(dtype) if bn.bias is not None else torch.zeros_like(mean)
    k = gamma / torch.sqrt(var + bn.eps)
    axis = 1 if isinstance(layer, _CONV_T) else 0
    quantizers = param_quantizers(layer)
    weight = (layer.parametrizations.weight.original if "weight" in quantizers
              else layer.weight)
    view = [1] * weight.dim()
    view[axis] = -1
    weight.copy_((weight.to(dtype) * k.view(view)).to(weight.dtype))
    if "bias" in quantizers:      # an int32 bias simulation: its scale follows the weight's
        bias = layer.parametrizations.bias.original
    else:
        bias = layer.bias
    if bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(mean, dtype=weight.dtype),
                                  requires_grad=weight.requires_grad)
        bias = layer.bias
    bias.copy_(((bias.to(dtype) - mean) * k + beta).to(bias.dtype))
    wq = quantizers.get("weight")
    if isinstance(wq, AffineQuantizer) and wq.encoding is not None:
        _scale_encoding(wq, k, axis)


def _scale_encoding(quantizer: AffineQuantizer, k: torch.Tensor, axis: int) -> None:
    """``quantizer``'s grid stretched by ``|k|`` per channel (mirrored where ``k < 0``): the
    quantized weight ``W·k`` is then exactly ``k`` times the quantized ``W``."""
    enc = quantizer.encoding
    channels = k.numel()
    scale = enc.scale.to(torch.float64).reshape(-1).expand(channels)
    zero_point = enc.zero_point.reshape(-1).expand(channels).clone()
    if not enc.symmetric:
        qmin, qmax = quant_range(enc.bitwidth, enc.signed, enc.symmetric, enc.strict)
        zero_point = torch.where(k.to(zero_point.device) < 0, qmin + qmax - zero_point,
                                 zero_point)
    new = dataclasses.replace(enc, scale=(scale * k.abs().to(scale.device)).to(torch.float32),
                              zero_point=zero_point, axis=axis)
    if quantizer.axis is None:
        logger.info("%s: per-tensor weight encoding made per-channel (axis %d) to absorb the "
                    "folded batch norm", quantizer.name, axis)
        quantizer.axis = axis
        quantizer.encoding_analyzer = get_encoding_analyzer(quantizer.quant_scheme, axis=axis,
                                                            name=quantizer.name or None)
    quantizer.set_encoding(new)  # (a frozen encoding stays frozen)


def _move_output_quantizer(gm: torch.fx.GraphModule, bn_node: torch.fx.Node,
                           src: torch.fx.Node) -> None:
    """The BN's output quantizer becomes the layer's (``<layer>.output_quantizer``)."""
    qnode = output_quantizer_node(bn_node)
    if qnode is None:
        return
    quantizer = gm.get_submodule(str(qnode.target))
    layer = layer_name(src) or str(src.target)
    target = f"{src.target}.output_quantizer"
    gm.add_submodule(target, quantizer)
    qnode.target = target
    _meta.set(qnode, _meta.MODULE_PATH, target)
    _meta.set(qnode, _meta.LAYER_NAME, layer)
    if isinstance(quantizer, QuantizerBase):
        quantizer.name = f"{layer}.output"
