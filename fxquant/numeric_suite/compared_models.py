"""The two models a numeric-suite comparison runs: private prepared copies with canonical names.

What a user passes is resolved by :func:`fxquant.model_resolution.resolve_model` (never changing
the caller's model); this module adds what a comparison needs on top: a calibration check, the
per-layer quantized/unquantized facts, and batch-norm folding aligned between the two models (a
sim folds by default; torch.ao's convert always does), so weights and outputs are compared like
for like.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from fxquant import _meta
from fxquant.core.layers import layer_nodes, output_quantizer_node, param_quantizers
from fxquant.model_preparer import prepare_model
from fxquant.model_resolution import (FLOAT, SIM, TORCH_QUANTIZED, is_prepared, is_sim,
                                      is_torch_quantized_module, model_kind, resolve_model)
from fxquant.passes.base import state_tags
from fxquant.passes.fold_batchnorm import FoldBatchNormPass
from fxquant.quantsim.quantizer import QuantizerBase

__all__ = ["PreparedModel", "prepare_for_comparison", "align_batch_norm_folding", "weight_of",
           "fused_head",
           "is_torch_quantized_module", "SIM", "TORCH_QUANTIZED", "FLOAT"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedModel:
    """A private prepared copy of one compared model.

    Attributes:
        gm: the prepared graph module (ours to instrument).
        kind: "sim" (fxquant quantizer nodes), "torch_quantized" (torch.ao quantized modules) or
            "float".
        name: the model's name in results.
    """

    gm: torch.fx.GraphModule
    kind: str
    name: str
    _layers: dict[str, torch.fx.Node] | None = dataclasses.field(default=None, repr=False)

    def layers(self) -> dict[str, torch.fx.Node]:
        """``{canonical name: op node}`` in graph order (read once, before instrumenting)."""
        if self._layers is None:
            self._layers = layer_nodes(self.gm)
        return self._layers

    def output_quantized(self, layer: str) -> bool:
        """Whether ``layer``'s output has a quantizer — enabled or disabled: a layer whose
        quantizer the user turned off is still reported — or the model is torch.ao quantized
        (every layer is reported, as torch's suite does). Layers fused into a supergroup have
        no output quantizer."""
        if self.kind == TORCH_QUANTIZED:
            return True
        node = self.layers().get(layer)
        return node is not None and output_quantizer_node(node) is not None

    def weight_quantized(self, layer: str) -> bool:
        """Whether ``layer``'s weight has a quantizer (enabled or disabled), or the model is
        torch.ao quantized (every weight is reported, quantized or left float by its qconfig,
        as torch's suite does)."""
        if self.kind == TORCH_QUANTIZED:
            return True
        return param_quantizers(self.gm.get_submodule(layer)).get("weight") is not None


def _torch_ao_classes() -> tuple[tuple[type, ...], type]:
    from torch.ao.nn.intrinsic import _FusedModule
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase

    return (ObserverBase, FakeQuantizeBase), _FusedModule


def fused_head(module: nn.Module) -> nn.Module:
    """The first module (the conv or linear holding the weight) of a torch.ao intrinsic fused
    float module (``nni.ConvReLU2d`` …); ``module`` itself otherwise."""
    _, fused = _torch_ao_classes()
    if isinstance(module, fused) and len(module) and isinstance(module[0], nn.Module):
        return module[0]
    return module


def _torch_ao_prepared(model: Any) -> torch.fx.GraphModule | None:
    """A torch.ao ``prepare_fx`` / ``prepare_qat_fx`` model (observers or fake-quants in its
    graph), or a model holding torch.ao intrinsic fused float modules (``convert_fx`` keeps them
    for layers whose qconfig is None): prepared on a copy with the observers removed (identities
    in inference) and each fused module kept as one layer under its own name, as torch's suite
    compares it. None for any other model."""
    if not isinstance(model, nn.Module) or is_sim(model) or is_prepared(model):
        return None
    observers, fused = _torch_ao_classes()
    if not any(isinstance(m, (*observers, fused)) for m in model.modules()):
        return None
    model = copy.deepcopy(model)
    if isinstance(model, torch.fx.GraphModule):
        for node in list(model.graph.nodes):
            if node.op == "call_module" and isinstance(model.get_submodule(str(node.target)),
                                                       observers) and node.args:
                node.replace_all_uses_with(node.args[0])
                model.graph.erase_node(node)
        model.recompile()
    logger.debug("torch.ao model: observers removed, fused modules kept whole")
    return prepare_model(model, module_classes_to_exclude=[fused])


def prepare_for_comparison(model: Any, name: str) -> PreparedModel:
    """A private prepared copy of ``model`` for comparison (see the module docstring).

    Raises:
        TypeError: ``model`` is neither a module nor a QuantizationSimModel.
        ValueError: a sim's enabled quantizers have no encodings yet.
    """
    torch_ao = _torch_ao_prepared(model)
    if torch_ao is not None:
        return PreparedModel(torch_ao, model_kind(torch_ao), name)
    resolved = resolve_model(model, what=f"model {name!r}")
    _check_calibrated(resolved.gm, name)
    return PreparedModel(resolved.gm, resolved.kind, name)


def _check_calibrated(gm: torch.fx.GraphModule, name: str) -> None:
    missing = [path for path, m in gm.named_modules()
               if isinstance(m, QuantizerBase) and m.enabled and not m.is_initialized]
    if missing:
        raise ValueError(
            f"model {name!r}: {len(missing)} enabled quantizer(s) have no encoding yet, e.g. "
            f"{missing[0]!r}; call sim.compute_encodings(...) before comparing (or disable "
            "those quantizers)")


def _folded(p: PreparedModel) -> bool:
    return p.kind == TORCH_QUANTIZED or _meta.TAG_BN_FOLDED in state_tags(p.gm)


def _has_batch_norm(gm: torch.fx.GraphModule) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules())


def align_batch_norm_folding(a: PreparedModel, b: PreparedModel) -> None:
    """Folds the batch norms of one model's copy when the other model's are folded."""
    for this, other in ((a, b), (b, a)):
        if this.kind != TORCH_QUANTIZED and _folded(other) and not _folded(this) \
                and _has_batch_norm(this.gm):
            result = FoldBatchNormPass()(this.gm)
            logger.info("model %r: folded %d batch norm(s) into the preceding layers, as in "
                        "model %r", this.name, len(result.details["folded"]), other.name)


def weight_of(module: nn.Module) -> Tensor | None:
    """The weight a layer computes with, detached: through its parametrization (a sim's
    fake-quantized weight), dequantized for torch.ao quantized modules (``module.weight()``);
    None when the module has no tensor weight."""
    module = fused_head(module)
    weight = getattr(module, "weight", None)
    if callable(weight) and not isinstance(weight, Tensor):
        try:
            weight = weight()
        except TypeError:  # a method named weight that needs arguments: not a getter
            return None
    if not isinstance(weight, Tensor):
        return None
    with torch.no_grad():
        weight = weight.detach()
        return weight.dequantize() if weight.is_quantized else weight.clone()
