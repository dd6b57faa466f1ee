"""Export: float ONNX with canonical tensor names, AIMET encodings, QDQ ONNX.

Example:
    >>> from fxquant.export import export_sim
    >>> files = export_sim(sim, "out", "resnet18", torch.randn(1, 3, 224, 224))
    >>> files["qdq_onnx"]
    'out/resnet18_qdq.onnx'
"""
from __future__ import annotations

from fxquant.export.errors import ExportError
from fxquant.export.onnx_export import OnnxExport, export_onnx
from fxquant.export.qdq import QdqModel, build_qdq_model
from fxquant.export.sim_export import export_sim, sim_encodings

__all__ = ["ExportError", "OnnxExport", "QdqModel", "build_qdq_model", "export_onnx", "export_sim",
           "sim_encodings"]
