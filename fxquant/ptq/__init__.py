"""Post-training quantization techniques: cross-layer equalization, bias correction, AdaRound and
sequential MSE, built on the graph passes and the quantization sim (AIMET's names and call
shapes)."""
from __future__ import annotations

from fxquant.ptq.cross_layer_equalization import equalize_bn_folded_model, equalize_model

__all__ = ["equalize_bn_folded_model", "equalize_model"]
