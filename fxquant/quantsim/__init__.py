"""QuantSim numeric core: encodings, fake-quant arithmetic, quantizer modules and calibration
analyzers.

The arithmetic is ONNX QuantizeLinear/DequantizeLinear bit for bit (``SPEC.md`` §1). Public names
are re-exported from the submodules by the package's top level.
"""
