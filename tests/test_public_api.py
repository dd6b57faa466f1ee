"""Pins the public API: adding or removing a name is a deliberate change to this list."""
from __future__ import annotations

import fxquant

PUBLIC = {
    "AutoLeaf", "BatchNormFoldError", "ConfigError", "FoldBatchNormPass", "FxQuantError", "PH",
    "Pass", "PassError", "PassResult", "PrepareModelPass", "Sequential", "TraceError",
    "auto_leaves", "fold_all_batch_norms", "prepare_model", "trace",
    "QuantizationSimModel", "QuantScheme", "QuantizationDataType", "save_checkpoint",
    "load_checkpoint", "CalibrationError", "export_onnx",
    "DataDependentError", "Specialization", "specializations",
    "ComparisonReport", "compare", "ns", "numeric_suite", "LayerOutputDump", "LayerOutputUtil", "NamingScheme", "compare_layer_outputs",
}


def test_all_is_pinned() -> None:
    assert set(fxquant.__all__) == PUBLIC


def test_every_public_name_exists_and_is_documented() -> None:
    for name in fxquant.__all__:
        obj = getattr(fxquant, name)
        if name != "PH" and (callable(obj) or isinstance(obj, type(fxquant))):
            assert obj.__doc__, f"fxquant.{name} has no docstring"
