"""Layer-output dumps: every layer's output of a model, on disk, and their comparison.

The debugging loop: run the same input through the QuantSim and through the target runtime, dump
every layer's output on both sides, and find the first layer where they part.

Example:
    >>> from fxquant.layer_outputs import LayerOutputUtil, NamingScheme, compare_layer_outputs
    >>> import fxquant.onnx
    >>> files = sim.export("out", "r18", x0)
    >>> util = LayerOutputUtil(sim, "dumps/sim", NamingScheme.ONNX, dummy_input=x0)
    >>> util.generate_layer_outputs(x)
    >>> fxquant.onnx.LayerOutputUtil(files["qdq_onnx"], "dumps/ort").generate_layer_outputs(x)
    >>> report = compare_layer_outputs("dumps/sim", "dumps/ort", encodings=files["encodings"])
    >>> report.first_divergence
"""
from __future__ import annotations

from fxquant.layer_outputs.dump_format import sanitize_names
from fxquant.layer_outputs.compare import compare_layer_outputs
from fxquant.layer_outputs.dump_reader import LayerOutputDump, TensorInfo
from fxquant.layer_outputs.errors import (DumpExistsError, DumpFormatError, DumpWriteError,
                                          InputInstanceError, LayerOutputError)
from fxquant.layer_outputs.report import DumpComparisonReport, DumpLayerComparison
from fxquant.layer_outputs.torch_util import LayerOutputUtil, NamingScheme

__all__ = ["DumpComparisonReport", "DumpExistsError", "DumpFormatError", "DumpLayerComparison",
           "DumpWriteError", "InputInstanceError", "LayerOutputDump", "LayerOutputError",
           "LayerOutputUtil", "NamingScheme", "TensorInfo", "compare_layer_outputs",
           "sanitize_names"]
