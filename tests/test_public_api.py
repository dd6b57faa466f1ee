"""Pins the public API: adding or removing a name is a deliberate change to this list."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import fxquant

PUBLIC = {
    "AutoLeaf", "BatchNormFoldError", "ConfigError", "FoldBatchNormPass", "FxQuantError", "PH",
    "Pass", "PassError", "PassResult", "PrepareModelPass", "Sequential", "TraceError",
    "InsertLoggersPass", "InsertQuantizersPass", "InsertShadowsPass", "RemoveQuantizersPass",
    "auto_leaves", "fold_all_batch_norms", "prepare_model", "trace",
    "QuantizationSimModel", "QuantScheme", "QuantizationDataType", "save_checkpoint",
    "load_checkpoint", "CalibrationError", "CheckpointError", "export_onnx", "ExportError",
    "DataDependentError", "Specialization", "specializations", "OutputExistsError",
    "FileWriteError", "LayerOutputError", "DumpExistsError", "DumpWriteError", "DumpFormatError",
    "ComparisonReport", "compare", "ns", "numeric_suite", "LayerOutputDump", "LayerOutputUtil",
    "NamingScheme", "compare_layer_outputs", "CallbackFunc", "OnnxExportApiArgs",
    "NumericSuiteError", "NoMatchingLayersError", "PairingError", "EncodingsFileError",
    "load_encodings_to_sim", "InputInstanceError", "reestimate_bn_stats",
    "fold_all_batch_norms_to_scale",
    "ModelValidator", "ValidationReport", "validate",
    "QuantAnalyzer", "AnalysisError", "AnalysisResults",
    "EqualizeLayersPass", "equalize_model", "correct_bias", "QuantParams", "apply_seq_mse",
    "SeqMseParams", "Adaround", "AdaroundParameters",
}


def _library_classes() -> list[type]:
    classes = []
    for info in pkgutil.walk_packages(fxquant.__path__, "fxquant."):
        if info.name.startswith("fxquant.cli"):
            continue
        module = importlib.import_module(info.name)
        classes += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                    if obj.__module__ == info.name and not obj.__name__.startswith("_")]
    return classes


def test_all_is_pinned() -> None:
    assert set(fxquant.__all__) == PUBLIC


def test_every_public_name_exists_and_is_documented() -> None:
    for name in fxquant.__all__:
        obj = getattr(fxquant, name)
        if name != "PH" and (callable(obj) or isinstance(obj, type(fxquant))):
            assert obj.__doc__, f"fxquant.{name} has no docstring"


def test_every_pass_and_every_error_class_is_exported_at_the_top_level() -> None:
    classes = _library_classes()
    passes = {c.__name__ for c in classes if issubclass(c, fxquant.Pass) and c is not fxquant.Pass
              and c is not fxquant.Sequential}
    errors = {c.__name__ for c in classes if issubclass(c, fxquant.FxQuantError)}
    assert {"PrepareModelPass", "InsertShadowsPass", "RemoveQuantizersPass"} <= passes
    assert {"ConfigError", "DumpWriteError", "CheckpointError"} <= errors
    assert passes - set(fxquant.__all__) == set(), "passes missing from fxquant.__all__"
    assert errors - set(fxquant.__all__) == set(), "error classes missing from fxquant.__all__"
    for name in passes | errors:
        assert getattr(fxquant, name).__name__ == name
