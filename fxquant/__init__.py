"""fxquant: PyTorch FX graph transformations for quantization simulation.

Example:
    >>> import fxquant, torchvision
    >>> model = torchvision.models.resnet18().eval()
    >>> prepared = fxquant.prepare_model(model)
    >>> folded = fxquant.fold_all_batch_norms(prepared)
"""
from __future__ import annotations

from fxquant.batch_norm_fold import fold_all_batch_norms
from fxquant.errors import (CalibrationError, ConfigError, DataDependentError, FxQuantError,
                            PassError, TraceError)
from fxquant.export import export_onnx
from fxquant.layer_outputs import (LayerOutputDump, LayerOutputUtil, NamingScheme,
                                   compare_layer_outputs)
from fxquant import numeric_suite
from fxquant import ns
from fxquant.model_preparer import prepare_model
from fxquant.numeric_suite import ComparisonReport, compare
from fxquant.passes import (FoldBatchNormPass, Pass, PassResult, PrepareModelPass, Sequential)
from fxquant.passes.fold_batchnorm import BatchNormFoldError
from fxquant.quantsim.checkpoint import load_checkpoint, save_checkpoint
from fxquant.quantsim.quant_scheme import QuantizationDataType, QuantScheme
from fxquant.quantsim.quantsim import QuantizationSimModel
from fxquant.tracing import PH, AutoLeaf, Specialization, auto_leaves, specializations, trace

__version__ = "0.1.0"

__all__ = [
    "AutoLeaf",
    "BatchNormFoldError",
    "CalibrationError",
    "ComparisonReport",
    "ConfigError",
    "DataDependentError",
    "FoldBatchNormPass",
    "FxQuantError",
    "LayerOutputDump",
    "LayerOutputUtil",
    "NamingScheme",
    "PH",
    "Pass",
    "PassError",
    "PassResult",
    "PrepareModelPass",
    "QuantScheme",
    "QuantizationDataType",
    "QuantizationSimModel",
    "Sequential",
    "Specialization",
    "TraceError",
    "auto_leaves",
    "compare",
    "compare_layer_outputs",
    "export_onnx",
    "fold_all_batch_norms",
    "load_checkpoint",
    "ns",
    "numeric_suite",
    "prepare_model",
    "save_checkpoint",
    "specializations",
    "trace",
]
