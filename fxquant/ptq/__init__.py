"""Post-training quantization techniques: cross-layer equalization, bias correction, AdaRound and
sequential MSE, built on the graph passes and the quantization sim (AIMET's names and call
shapes)."""
from __future__ import annotations

from fxquant.ptq.adaround import Adaround, AdaroundParameters
from fxquant.ptq.bias_correction import (ActivationType, ConvBnInfoType, QuantParams, correct_bias,
                                         find_all_conv_bn_with_activation)
from fxquant.ptq.cross_layer_equalization import equalize_bn_folded_model, equalize_model
from fxquant.ptq.seq_mse import SeqMseParams, apply_seq_mse

__all__ = ["ActivationType", "Adaround", "AdaroundParameters", "ConvBnInfoType", "QuantParams", "SeqMseParams", "apply_seq_mse",
           "correct_bias", "equalize_bn_folded_model", "equalize_model",
           "find_all_conv_bn_with_activation"]
