"""EqualizeLayersPass: cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019).

Per-tensor weight quantization loses the channels whose ranges are small next to the largest
one. Two consecutive layers ``y = W2·f(W1·x + b1) + b2`` with ``f`` positively homogeneous per
channel (ReLU, identity, max/average pooling: ``f(x/s) = f(x)/s`` for ``s > 0``) compute the same
function when output channel ``i`` of layer 1 is divided by ``s_i`` and input channel ``i`` of
layer 2 multiplied by it. With ``r1_i = max|W1[i]|`` and ``r2_i = max|W2[:, i]|`` the choice
``s_i = sqrt(r1_i · r2_i) / r2_i`` gives both the range ``sqrt(r1_i · r2_i)``. A depthwise conv
maps input channel ``i`` to output channel ``i`` only, so in ``conv → depthwise → conv`` both pairs
are equalized; the pass repeats the pairwise step over every chain until the scales settle, which
for such a triplet is the closed form ``cbrt(r1·r2·r3)`` for all three ranges (the products
``r1·r2(·r3)`` are invariant). The scales are computed in float64 and applied once.

High-bias absorption (optional): after folding, layer 1's output channel ``i`` is distributed as
its batch norm said, mean ``β_i`` and standard deviation ``|γ_i|`` (both divided by ``s_i``). With
``c_i = max(0, β_i − 3|γ_i|)`` (ReLU between the layers; ``c_i = β_i`` with nothing between), the
bias ``c`` moves from layer 1 into layer 2: ``b1 −= c``, ``b2 += W2·c``. Exact wherever the
pre-activation stays above ``c`` (99.87% of a normal distribution); only into a layer without
padding (a padded border would see ``0`` instead of ``c``).

ReLU6 is not positively homogeneous (``min(x/s, 6) ≠ min(x, 6)/s``): pairs through ReLU6 are left
alone unless ``relu6_to_relu`` replaces every ReLU6 by ReLU first, as AIMET did before 2.4 (it
changes the float model wherever a pre-activation exceeds 6; AIMET 2.4+ warns instead).
"""
from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Any, Mapping

import torch
import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.passes.base import Pass, PassResult, errors_at
from fxquant.passes.fold_batchnorm import FoldBatchNormPass

__all__ = ["EqualizeLayersPass", "BnStats"]

logger = logging.getLogger(__name__)

#: ``(γ, β)`` of the batch norm folded into a layer: its output's standard deviation and mean.
BnStats = tuple[torch.Tensor, torch.Tensor]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# per-channel ops f with f(x / s) = f(x) / s for s > 0 (channels kept in place)
_HOMOGENEOUS = (nn.ReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAX_SWEEPS = 200
_SETTLED = 1e-9  # |log s| below which a scale is 1 (second runs change nothing)


class EqualizeLayersPass(Pass):
    """Cross-layer scaling of consecutive conv/depthwise/linear layers, with batch norms folded
    first and, optionally, high-bias absorption and ReLU6 → ReLU (see the module docstring).

    Args:
        high_bias_fold: absorb high biases into the next layer. Needs each layer's batch-norm
            statistics: those of the batch norms this pass folds itself, or ``bn_stats``.
        bn_stats: ``{layer module path: (γ, β)}`` of batch norms folded before the pass ran
            (``fxquant.fold_all_batch_norms`` returns the pairs).
        relu6_to_relu: replace every ReLU6 module by ReLU first, so pairs through it can be
            scaled (changes the float model where a pre-activation exceeds 6).

    Without ``high_bias_fold`` and ``relu6_to_relu`` the pass preserves numerics (float32
    rounding aside); with either it does not, and says so in ``preserves_numerics``.

    ``details``: ``folded`` (layer, bn) pairs, ``scaled`` (layer 1, layer 2) pairs,
    ``absorbed`` pairs, ``relu6_replaced`` module paths, ``skipped`` ``(layer 1, layer 2,
    reason)``, ``sweeps`` until the scales settled.

    Example:
        >>> result = EqualizeLayersPass()(fxquant.prepare_model(model.eval()))
        >>> result.details["scaled"][:1]
        [('features.0.0', 'features.1.conv.0.0')]
    """

    requires = frozenset({_meta.TAG_PREPARED})
    provides = frozenset({_meta.TAG_BN_FOLDED, _meta.TAG_EQUALIZED})
    preserves_numerics = True
    in_place = True

    def __init__(self, *, high_bias_fold: bool = False,
                 bn_stats: Mapping[str, BnStats] | None = None,
                 relu6_to_relu: bool = False) -> None:
        self.high_bias_fold = bool(high_bias_fold)
        self.bn_stats = dict(bn_stats or {})
        self.relu6_to_relu = bool(relu6_to_relu)
        # instance attribute shadows the ClassVar: the lossy options change numerics
        self.preserves_numerics = not (self.high_bias_fold or self.relu6_to_relu)  # type: ignore[misc]

    def __repr__(self) -> str:
        args = [f"{k}=True" for k in ("high_bias_fold", "relu6_to_relu") if getattr(self, k)]
        if self.bn_stats:
            args.append(f"bn_stats=<{len(self.bn_stats)} layers>")
        return f"EqualizeLayersPass({', '.join(args)})"

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        stats = {name: (g.detach().double(), b.detach().double())
                 for name, (g, b) in self.bn_stats.items()}
        stats.update(_foldable_bn_stats(gm))
        folded = list(FoldBatchNormPass().call(gm).details["folded"])  # one pass in the history
        stats = {k: v for k, v in stats.items()
                 if k in self.bn_stats or any(layer == k for layer, _ in folded)}
        replaced = _replace_relu6(gm) if self.relu6_to_relu else []
        modules = dict(gm.named_modules())
        pairs, skipped = _find_pairs(gm, modules)
        weights = {name: _weights64(modules[name]) for pair in pairs for name in pair[:2]}
        scales, sweeps = _solve(pairs, modules, weights)
        scaled = [(p[0], p[1]) for p, s in zip(pairs, scales) if _moves(s)]
        for (l1, l2, _, _), s in zip(pairs, scales):
            if _moves(s):
                _scale_pair(modules[l1], modules[l2], weights[l1], weights[l2], s)
                if l1 in stats:
                    gamma, beta = stats[l1]
                    stats[l1] = (gamma / s, beta / s)
        absorbed = []
        if self.high_bias_fold:
            for l1, l2, relu, padded in pairs:
                if l1 not in stats or padded:
                    continue
                if _absorb(weights[l1], weights[l2], modules[l2], stats[l1], relu):
                    absorbed.append((l1, l2))
        changed = {name for pair in scaled + absorbed for name in pair}
        for name in sorted(changed):
            node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == name)
            with errors_at(node):
                _write(gm, modules, name, weights[name])
        if sweeps and scaled:
            logger.info("equalized %d layer pair(s) in %d sweep(s); absorbed high biases of %d",
                        len(scaled), sweeps, len(absorbed))
        modified = bool(folded or replaced or changed)
        return PassResult(gm, modified, {
            "folded": folded, "scaled": scaled, "absorbed": absorbed,
            "relu6_replaced": replaced, "skipped": skipped, "sweeps": sweeps})


def _foldable_bn_stats(gm: torch.fx.GraphModule) -> dict[str, BnStats]:
    """``{layer: (γ, β)}`` of every batch norm that directly follows a layer (what
    FoldBatchNormPass folds backward; the ones it does not fold are dropped afterwards)."""
    out: dict[str, BnStats] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        bn = gm.get_submodule(str(node.target))
        src = node.args[0]
        if (isinstance(bn, _BN) and bn.affine and isinstance(src, torch.fx.Node)
                and src.op == "call_module"):
            out[str(src.target)] = (bn.weight.detach().double().clone(),
                                    bn.bias.detach().double().clone())
    return out


def _replace_relu6(gm: torch.fx.GraphModule) -> list[str]:
    replaced = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(gm.get_submodule(str(node.target))) is nn.ReLU6:
            path = str(node.target)
            parent, _, attr = path.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, nn.ReLU())
            replaced.append(path)
    return replaced


def _is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, _CONV) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def _equalizable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, _CONV) and (module.groups == 1 or _is_depthwise(module))


def _padded(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return False
    if isinstance(module.padding, str):
        return module.padding != "valid"
    return any(p != 0 for p in module.padding)


def _find_pairs(gm: torch.fx.GraphModule, modules: dict[str, nn.Module]
                ) -> tuple[list[tuple[str, str, bool, bool]], list[tuple[str, str, str]]]:
    """``[(layer 1, layer 2, ReLU between, layer 2 padded)]`` that can be scaled, and the
    near-misses with the reason (for ``details["skipped"]``)."""
    owners = Counter(id(p) for m in modules.values() for p in m.parameters(recurse=False))
    uses = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    pairs: list[tuple[str, str, bool, bool]] = []
    skipped: list[tuple[str, str, str]] = []
    for node in gm.graph.nodes:
        first = _layer(node, modules)
        if first is None:
            continue
        between: list[nn.Module] = []
        cur = node
        reason = blocked = ""
        while True:
            if len(cur.users) != 1:
                reason = "its output has several users"
                break
            nxt = next(iter(cur.users))
            if nxt.op != "call_module" or nxt.args[:1] != (cur,) or len(nxt.args) != 1 \
                    or nxt.kwargs:
                reason = f"followed by {nxt.format_node()}"
                break
            mod = modules[str(nxt.target)]
            if _layer(nxt, modules) is not None:
                break
            if isinstance(mod, nn.Hardtanh):  # ReLU6 and its base class: the walk goes on
                blocked = blocked or (              # to name the pair it leaves alone
                    f"{type(mod).__name__} between (not positively homogeneous; "
                    "relu6_to_relu=True replaces ReLU6 by ReLU)")
            elif not isinstance(mod, _HOMOGENEOUS):
                reason = f"{type(mod).__name__} between"
                break
            between.append(mod)
            cur = nxt
        second = next(iter(cur.users)) if len(cur.users) == 1 else None
        name1 = str(node.target)
        if reason or second is None or _layer(second, modules) is None:
            if reason and second is not None and _layer(second, modules) is not None:
                skipped.append((name1, str(second.target), reason))
            continue
        name2 = str(second.target)
        if blocked:
            skipped.append((name1, name2, blocked))
            continue
        m1, m2 = modules[name1], modules[name2]
        if uses[name1] > 1 or uses[name2] > 1 or any(
                owners[id(p)] > 1 for m in (m1, m2) for p in m.parameters(recurse=False)):
            skipped.append((name1, name2, "a layer or its weight is shared"))
            continue
        if _out_channels(m1) != _in_channels(m2):
            skipped.append((name1, name2, "channel counts differ (a reshape between)"))
            continue
        relu = any(isinstance(m, nn.ReLU) for m in between)
        plain = all(isinstance(m, (nn.ReLU, nn.Identity)) or isinstance(m, nn.modules.dropout._DropoutNd)
                    for m in between)
        pairs.append((name1, name2, relu, _padded(m2) or not plain))
    return pairs, skipped


def _layer(node: Any, modules: dict[str, nn.Module]) -> nn.Module | None:
    if not isinstance(node, torch.fx.Node) or node.op != "call_module":
        return None
    module = modules.get(str(node.target))
    return module if module is not None and _equalizable(module) else None


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _in_channels(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _weights64(module: nn.Module) -> dict[str, torch.Tensor]:
    out = {"weight": module.weight.detach().double().clone()}
    if module.bias is not None:
        out["bias"] = module.bias.detach().double().clone()
    return out


def _out_ranges(w: torch.Tensor) -> torch.Tensor:
    return w.abs().flatten(1).amax(1)


def _in_ranges(module: nn.Module, w: torch.Tensor) -> torch.Tensor:
    if _is_depthwise(module):
        return w.abs().flatten(1).amax(1)
    return w.abs().transpose(0, 1).flatten(1).amax(1)


def _solve(pairs: list[tuple[str, str, bool, bool]], modules: dict[str, nn.Module],
           weights: dict[str, dict[str, torch.Tensor]]) -> tuple[list[torch.Tensor], int]:
    """Total scale per pair (float64), found by repeating the pairwise step over all pairs on
    scratch copies until every step's scale is 1 to ``_SETTLED``; the weights are untouched."""
    scratch = {name: w["weight"].clone() for name, w in weights.items()}
    totals = [torch.ones_like(_out_ranges(scratch[p[0]])) for p in pairs]
    sweeps = 0
    for sweeps in range(1, _MAX_SWEEPS + 1):
        largest = 0.0
        for k, (l1, l2, _, _) in enumerate(pairs):
            r1 = _out_ranges(scratch[l1])
            r2 = _in_ranges(modules[l2], scratch[l2])
            s = torch.where((r1 > 0) & (r2 > 0), (r1 / r2.clamp_min(1e-300)).sqrt(),
                            torch.ones_like(r1))
            largest = max(largest, float(s.log().abs().max()))
            _scale_weights(modules[l2], scratch[l1], scratch[l2], s)
            totals[k] = totals[k] * s
        if largest < _SETTLED:
            break
    else:
        logger.warning("cross-layer scaling did not settle in %d sweeps (last step %.3g)",
                       _MAX_SWEEPS, largest)
    if all(not _moves(t) for t in totals):
        sweeps = 0
    return totals, sweeps


def _moves(s: torch.Tensor) -> bool:
    return bool(s.numel()) and float(s.log().abs().max()) > 1e-6


def _scale_weights(m2: nn.Module, w1: torch.Tensor, w2: torch.Tensor, s: torch.Tensor) -> None:
    """In place: layer 1's output channels / s, layer 2's input channels · s."""
    w1.div_(s.reshape(-1, *([1] * (w1.dim() - 1))))
    if _is_depthwise(m2):
        w2.mul_(s.reshape(-1, *([1] * (w2.dim() - 1))))
    else:
        w2.mul_(s.reshape(1, -1, *([1] * (w2.dim() - 2))))


def _scale_pair(m1: nn.Module, m2: nn.Module, w1: dict[str, torch.Tensor],
                w2: dict[str, torch.Tensor], s: torch.Tensor) -> None:
    _scale_weights(m2, w1["weight"], w2["weight"], s)
    if "bias" in w1:
        w1["bias"].div_(s)


def _absorb(w1: dict[str, torch.Tensor], w2: dict[str, torch.Tensor], m2: nn.Module,
            stats: BnStats, relu: bool) -> bool:
    """Moves ``c`` from layer 1's bias into layer 2's (float64 copies); False if nothing moved."""
    if "bias" not in w1:
        return False
    gamma, beta = stats
    c = (beta - 3 * gamma.abs()).clamp_min(0) if relu else beta.clone()
    if not bool((c != 0).any()):
        return False
    w = w2["weight"]
    if _is_depthwise(m2):
        shift = w.flatten(1).sum(1) * c
    else:
        shift = (w.flatten(2).sum(2) if w.dim() > 2 else w) @ c
    w1["bias"] -= c
    w2["bias"] = w2.get("bias", torch.zeros_like(shift)) + shift
    return True


def _write(gm: torch.fx.GraphModule, modules: dict[str, nn.Module], name: str,
           values: dict[str, torch.Tensor]) -> None:
    """Puts a copy of layer ``name`` holding ``values`` in place of it in ``gm`` (a model that
    shares modules with ``gm`` is not changed, as in FoldBatchNormPass)."""
    old = modules[name]
    new = copy.deepcopy(old)
    with torch.no_grad():
        new.weight.copy_(values["weight"].to(old.weight.dtype))
        if "bias" in values:
            bias = values["bias"].to(device=old.weight.device, dtype=old.weight.dtype)
            if new.bias is None:
                new.bias = nn.Parameter(bias, requires_grad=old.weight.requires_grad)
            else:
                new.bias.copy_(bias)
    parent, _, attr = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, attr, new)
    modules[name] = new
