"""ONNX-side tools with AIMET's names (``aimet_onnx``): ``fxquant.onnx.LayerOutputUtil``.

Inside the ``fxquant`` package ``import onnx`` still means the ``onnx`` package (absolute imports).

Example:
    >>> import fxquant.onnx
    >>> util = fxquant.onnx.LayerOutputUtil("out/resnet18_qdq.onnx", "dumps/ort")
    >>> util.generate_layer_outputs(x)
"""
from __future__ import annotations

from fxquant.layer_outputs.ort_util import LayerOutputUtil, dumped_tensors

__all__ = ["LayerOutputUtil", "dumped_tensors"]
