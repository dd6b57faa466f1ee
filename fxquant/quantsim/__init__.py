"""Quantization simulation: the sim, its quantizers, encodings, calibration and checkpoints.

AIMET users find here what ``aimet_torch.quantsim`` (and ``aimet_torch.v2.quantsim``) gives them:
:class:`QuantizationSimModel`, :class:`QuantScheme`, :func:`save_checkpoint` and
:func:`load_checkpoint`, plus fxquant's quantizer modules, encodings and encoding analyzers. The
arithmetic is ONNX QuantizeLinear/DequantizeLinear bit for bit (``SPEC.md`` §1); the kernels and
encoding records live in :mod:`fxquant.core` because export uses them too.

Example:
    >>> import torch, torchvision
    >>> from fxquant.quantsim import QuantizationSimModel, QuantScheme, save_checkpoint
    >>> model = torchvision.models.resnet18().eval()
    >>> sim = QuantizationSimModel(model, torch.randn(1, 3, 224, 224),
    ...                            quant_scheme=QuantScheme.post_training_tf_enhanced)
    >>> sim.compute_encodings(lambda m: m(torch.randn(1, 3, 224, 224)))
    >>> save_checkpoint(sim, "resnet18_sim.pth")
"""
from __future__ import annotations

from fxquant.core.callbacks import CallbackFunc
from fxquant.core.encoding import FloatEncoding, QuantEncoding
from fxquant.core.onnx_args import OnnxExportApiArgs
from fxquant.errors import CalibrationError
from fxquant.quantsim.bias import Int32BiasQuantizer
from fxquant.quantsim.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fxquant.quantsim.checkpoint import EncodingsFileError, load_encodings_to_sim
from fxquant.quantsim.config import QuantSimConfig, load_config
from fxquant.quantsim.encoding_analyzer import (EncodingAnalyzer, MinMaxEncodingAnalyzer,
                                                MseEncodingAnalyzer, PercentileEncodingAnalyzer,
                                                TfEnhancedEncodingAnalyzer, get_encoding_analyzer)
from fxquant.quantsim.policy import ConfigPolicy, QuantSimSettings
from fxquant.quantsim.quant_scheme import QuantizationDataType, QuantScheme
from fxquant.quantsim.quantizer import (AffineQuantizer, FloatQuantizer, QuantizerBase,
                                        create_quantizer)
from fxquant.quantsim.quantsim import QuantizationSimModel, QuantizerRef

__all__ = [
    "AffineQuantizer",
    "CalibrationError",
    "CallbackFunc",
    "CheckpointError",
    "ConfigPolicy",
    "EncodingAnalyzer",
    "EncodingsFileError",
    "FloatEncoding",
    "FloatQuantizer",
    "Int32BiasQuantizer",
    "MinMaxEncodingAnalyzer",
    "MseEncodingAnalyzer",
    "OnnxExportApiArgs",
    "PercentileEncodingAnalyzer",
    "QuantEncoding",
    "QuantScheme",
    "QuantSimConfig",
    "QuantSimSettings",
    "QuantizationDataType",
    "QuantizationSimModel",
    "QuantizerBase",
    "QuantizerRef",
    "TfEnhancedEncodingAnalyzer",
    "create_quantizer",
    "get_encoding_analyzer",
    "load_checkpoint",
    "load_config",
    "load_encodings_to_sim",
    "save_checkpoint",
]
