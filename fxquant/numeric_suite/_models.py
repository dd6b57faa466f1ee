"""Turning what users pass (a float model, a sim, a prepared GraphModule, a torch.ao-quantized
model) into a private, prepared GraphModule whose layers carry canonical names.

The caller's model is never changed: a sim's ``model`` and prepared graph modules are deep-copied
(with private node metadata), anything else goes through :func:`fxquant.prepare_model`, which
traces a copy. When one model has its batch norms folded (a sim does by default; torch.ao's
convert always does) the other model's copy is folded too, so weights and outputs are compared
like for like.
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
from fxquant.model_preparer import prepare_model
from fxquant.passes.base import state_tags
from fxquant.passes.fold_batchnorm import FoldBatchNormPass
from fxquant.passes.insert_loggers import layer_nodes, output_quantizer_node
from fxquant.passes.insert_quantizers import param_quantizers
from fxquant.quantsim.quantizer import QuantizerBase
from fxquant.quantsim.quantsim import QuantizationSimModel

__all__ = ["PreparedModel", "prepare_for_comparison", "align_batch_norm_folding", "weight_of",
           "is_torch_quantized_module", "SIM", "TORCH_QUANTIZED", "FLOAT"]

logger = logging.getLogger(__name__)

SIM = "sim"
TORCH_QUANTIZED = "torch_quantized"
FLOAT = "float"

_TORCH_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                             "torch.nn.quantized", "torch.nn.intrinsic.quantized")


def is_torch_quantized_module(module: nn.Module) -> bool:
    """Whether ``module`` is one of torch.ao's quantized modules (``nnq.Conv2d``,
    ``nniq.ConvReLU2d``, dynamic ``nnqd.Linear`` …), which take and return quantized tensors."""
    return type(module).__module__.startswith(_TORCH_QUANTIZED_PACKAGES)


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
        """Whether ``layer``'s output is quantized (an enabled output quantizer, or a torch.ao
        quantized model, where every layer is reported as torch's suite does)."""
        if self.kind == TORCH_QUANTIZED:
            return True
        node = self.layers().get(layer)
        quantizer = None if node is None else output_quantizer_node(node)
        if quantizer is None:
            return False
        return bool(getattr(self.gm.get_submodule(str(quantizer.target)), "enabled", True))

    def weight_quantized(self, layer: str) -> bool:
        """Whether ``layer``'s weight is quantized (an enabled weight quantizer, or a torch.ao
        quantized module)."""
        module = self.gm.get_submodule(layer)
        if self.kind == TORCH_QUANTIZED:
            return is_torch_quantized_module(module)
        quantizer = param_quantizers(module).get("weight")
        return quantizer is not None and bool(getattr(quantizer, "enabled", True))


def prepare_for_comparison(model: Any, name: str) -> PreparedModel:
    """A private prepared copy of ``model`` (see the module docstring).

    Raises:
        TypeError: ``model`` is neither a module nor a QuantizationSimModel.
        ValueError: a sim's enabled quantizers have no encodings yet.
    """
    if isinstance(model, QuantizationSimModel):
        gm = _private_copy(model.model)
    elif isinstance(model, torch.fx.GraphModule) and "prepared" in state_tags(model):
        gm = _private_copy(model)
    elif isinstance(model, nn.Module):
        gm = prepare_model(model)
    else:
        raise TypeError(f"model {name!r} must be a torch.nn.Module or a "
                        f"fxquant.QuantizationSimModel, got {type(model).__qualname__}")
    _check_calibrated(gm, name)
    if any(_meta.get(n, _meta.ROLE) == _meta.ROLE_QUANTIZER for n in gm.graph.nodes):
        kind = SIM
    elif any(is_torch_quantized_module(m) for m in gm.modules()):
        kind = TORCH_QUANTIZED
    else:
        kind = FLOAT
    return PreparedModel(gm, kind, name)


def _private_copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    out = copy.deepcopy(gm)
    for node in out.graph.nodes:  # deepcopy shares node.meta's inner dicts with the original
        if _meta.META_KEY in node.meta:
            node.meta[_meta.META_KEY] = dict(node.meta[_meta.META_KEY])
    meta = getattr(out, "meta", None)
    if isinstance(meta, dict) and _meta.META_KEY in meta:
        meta[_meta.META_KEY] = {k: (list(v) if isinstance(v, list) else v)
                                for k, v in meta[_meta.META_KEY].items()}
    return out


def _check_calibrated(gm: torch.fx.GraphModule, name: str) -> None:
    missing = [path for path, m in gm.named_modules()
               if isinstance(m, QuantizerBase) and m.enabled and not m.is_initialized]
    if missing:
        raise ValueError(
            f"model {name!r}: {len(missing)} enabled quantizer(s) have no encoding yet, e.g. "
            f"{missing[0]!r}; call sim.compute_encodings(...) before comparing (or disable "
            "those quantizers)")


def _folded(p: PreparedModel) -> bool:
    return p.kind == TORCH_QUANTIZED or "bn_folded" in state_tags(p.gm)


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
