"""fxquant: PyTorch FX graph transformations for quantization simulation.

Example:
    >>> import fxquant, torchvision
    >>> model = torchvision.models.resnet18().eval()
    >>> prepared = fxquant.prepare_model(model)
    >>> folded = fxquant.fold_all_batch_norms(prepared)
"""
from __future__ import annotations

from fxquant.analysis import AnalysisError, AnalysisResults, QuantAnalyzer
from fxquant.batch_norm_fold import fold_all_batch_norms, fold_all_batch_norms_to_scale
from fxquant.bn_reestimation import reestimate_bn_stats
from fxquant.core.callbacks import CallbackFunc
from fxquant.core.onnx_args import OnnxExportApiArgs
from fxquant.errors import (CalibrationError, ConfigError, DataDependentError, FileWriteError,
                            FxQuantError, OutputExistsError, PassError, TraceError)
from fxquant.export import export_onnx
from fxquant.export.errors import ExportError
from fxquant.layer_outputs import (LayerOutputDump, LayerOutputUtil, NamingScheme,
                                   compare_layer_outputs)
from fxquant.layer_outputs.errors import (DumpExistsError, DumpFormatError, DumpWriteError,
                                          InputInstanceError, LayerOutputError)
from fxquant import onnx  # fxquant.onnx; elsewhere `import onnx` is the onnx package
from fxquant import numeric_suite
from fxquant import ns
from fxquant.model_preparer import prepare_model
from fxquant.core.report import ComparisonReport
from fxquant.numeric_suite import compare
from fxquant.numeric_suite.errors import NoMatchingLayersError, NumericSuiteError, PairingError
from fxquant.passes import (EqualizeLayersPass, FoldBatchNormPass, InsertLoggersPass, InsertQuantizersPass,
                            InsertShadowsPass, Pass, PassResult, PrepareModelPass,
                            RemoveQuantizersPass, Sequential)
from fxquant.passes.fold_batchnorm import BatchNormFoldError
from fxquant.ptq import (Adaround, AdaroundParameters, QuantParams, SeqMseParams, apply_seq_mse,
                         correct_bias, equalize_model)
from fxquant.quantsim.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fxquant.quantsim.checkpoint import EncodingsFileError, load_encodings_to_sim
from fxquant.quantsim.quant_scheme import QuantizationDataType, QuantScheme
from fxquant.quantsim.quantsim import QuantizationSimModel
from fxquant.tracing import PH, AutoLeaf, Specialization, auto_leaves, specializations, trace
from fxquant.validation import ModelValidator, ValidationReport, validate

__version__ = "0.1.0"

__all__ = [
    "Adaround",
    "AdaroundParameters",
    "AnalysisError",
    "AnalysisResults",
    "AutoLeaf",
    "BatchNormFoldError",
    "CalibrationError",
    "CallbackFunc",
    "CheckpointError",
    "ComparisonReport",
    "ConfigError",
    "DataDependentError",
    "DumpExistsError",
    "DumpFormatError",
    "DumpWriteError",
    "EncodingsFileError",
    "EqualizeLayersPass",
    "ExportError",
    "FileWriteError",
    "FoldBatchNormPass",
    "FxQuantError",
    "NoMatchingLayersError",
    "NumericSuiteError",
    "PairingError",
    "InputInstanceError",
    "InsertLoggersPass",
    "InsertQuantizersPass",
    "InsertShadowsPass",
    "LayerOutputDump",
    "LayerOutputError",
    "LayerOutputUtil",
    "ModelValidator",
    "NamingScheme",
    "OnnxExportApiArgs",
    "OutputExistsError",
    "PH",
    "Pass",
    "PassError",
    "PassResult",
    "PrepareModelPass",
    "QuantAnalyzer",
    "QuantParams",
    "QuantScheme",
    "QuantizationDataType",
    "QuantizationSimModel",
    "RemoveQuantizersPass",
    "SeqMseParams",
    "Sequential",
    "Specialization",
    "TraceError",
    "ValidationReport",
    "apply_seq_mse",
    "auto_leaves",
    "compare",
    "compare_layer_outputs",
    "correct_bias",
    "equalize_model",
    "export_onnx",
    "fold_all_batch_norms",
    "fold_all_batch_norms_to_scale",
    "load_checkpoint",
    "load_encodings_to_sim",
    "ns",
    "numeric_suite",
    "prepare_model",
    "reestimate_bn_stats",
    "save_checkpoint",
    "specializations",
    "trace",
    "validate",
]
