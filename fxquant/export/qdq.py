"""QDQ ONNX model: the float export plus QuantizeLinear/DequantizeLinear where the sim quantizes.

Given the renamed float model (:func:`fxquant.export.export_onnx`) and the sim's encodings,
:func:`build_qdq_model` produces a model ONNX Runtime runs (CPU, any graph optimization level) and
whose arithmetic equals the sim's bit for bit wherever both compute the same float ops:

* **activations** (model inputs and layer outputs, tensor ``t``): ``t → QuantizeLinear →
  t/q → DequantizeLinear → t/dq``; every consumer of ``t`` reads ``t/dq``. When ``t`` is a graph
  output, the graph output keeps the name ``t`` (it is the DequantizeLinear output) and the float
  value is renamed ``t/float``.
* **weights** (and other quantized parameters, initializer ``w``): the integer values are stored
  (``w/quantized``, computed with :func:`fxquant.core.kernels.quantize`, the sim's own
  arithmetic) and ``DequantizeLinear`` produces ``w`` itself, so ops keep their inputs.
  Per-channel encodings keep their axis (0 for Conv/Gemm weights, 1 for ConvTranspose).
* **int32 biases** (``sim.bias_quantizers()``): ``<layer>.bias/quantized`` int32 + DequantizeLinear
  with scale = input scale × weight scale (float32, as the sim computes it).
* **float16** quantizers: ``Cast`` to float16 and back (activations); float16 initializer + ``Cast``
  (parameters).

Types: grids that fill a native type use it — uint8/int8, uint16/int16 and uint4/int4 (the last two
need opset 21: the model is converted with ``onnx.version_converter`` when its opset is lower).
Narrower grids (strict symmetric, 5–7, 9–15 bits) use the next wider native type with a ``Clip``
to the grid's float range before ``QuantizeLinear`` — exactly the grid's saturation. Activation grids
wider than 16 bits (ORT has no int32 QuantizeLinear) are emulated in float32 with the sim's own ops
(``Div → Round → Add → Clip → Sub → Mul``). Parameters: stored as int8/uint8 up to 8 bits, int16/uint16
up to 16, int32 up to 32 (signed, zero point 0); any other parameter grid is stored already
fake-quantized in float32.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from fxquant.core.encoding import INT32_MAX, INT32_MIN, AnyEncoding, FloatEncoding, QuantEncoding
from fxquant.core.kernels import quantize, quantize_dequantize
from fxquant.export.errors import ExportError

__all__ = ["QdqModel", "build_qdq_model", "QDQ_OPSET"]

logger = logging.getLogger(__name__)

#: Opset needed for 4- and 16-bit QuantizeLinear/DequantizeLinear.
QDQ_OPSET = 21

_NATIVE = {  # (bits, signed) -> (ONNX type, numpy dtype)
    (4, True): (TensorProto.INT4, None), (4, False): (TensorProto.UINT4, None),
    (8, True): (TensorProto.INT8, np.int8), (8, False): (TensorProto.UINT8, np.uint8),
    (16, True): (TensorProto.INT16, np.int16), (16, False): (TensorProto.UINT16, np.uint16),
}


@dataclasses.dataclass(frozen=True)
class QdqModel:
    """A QDQ model and where each quantized tensor's dequantized value is.

    Attributes:
        model: the ``onnx.ModelProto``.
        dequantized: ``{tensor name: name of its dequantized value}`` for every activation
            (``"t/dq"``, or ``t`` for graph outputs) and parameter (the parameter name).
    """

    model: onnx.ModelProto
    dequantized: Mapping[str, str]


def _container(bits: int, signed: bool, minimum: int) -> tuple[int, int] | None:
    """Smallest native (bits, signed) type holding a ``bits`` grid, at least ``minimum`` bits."""
    for size in (4, 8, 16):
        if size >= bits and size >= minimum:
            return size, signed
    return None


def _type_range(size: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (size - 1)), (1 << (size - 1)) - 1) if signed else (0, (1 << size) - 1)


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.front: list[onnx.NodeProto] = []
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.dequantized: dict[str, str] = {}

    def const(self, name: str, array: np.ndarray | torch.Tensor, onnx_type: int | None = None) -> str:
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        if onnx_type is None:
            tensor = numpy_helper.from_array(np.asarray(array), name)
        else:
            values = np.asarray(array).astype(np.int64)
            tensor = helper.make_tensor(name, onnx_type, list(values.shape), values.reshape(-1).tolist())
        self.graph.initializer.append(tensor)
        return name

    # -- activations --------------------------------------------------------------------------
    def activation(self, t: str, enc: AnyEncoding, producers: Mapping[str, onnx.NodeProto],
                   graph_inputs: set[str], graph_outputs: set[str]) -> None:
        if t not in producers and t not in graph_inputs:
            raise ValueError(f"activation encoding {t!r} names no graph input or node output of the "
                             "float model; export the float model with fxquant.export.export_onnx")
        source, result = t, f"{t}/dq"
        if t in graph_outputs:
            source, result = f"{t}/float", t
            self._rename_everywhere(t, source)
        self._redirect_consumers(source, result)
        nodes = self._qdq_nodes(t, source, result, enc)
        self.dequantized[t] = result
        if t in graph_inputs:
            self.front.extend(nodes)
        else:
            self.after.setdefault(source, []).extend(nodes)

    def _qdq_nodes(self, t: str, x: str, y: str, enc: AnyEncoding) -> list[onnx.NodeProto]:
        if isinstance(enc, FloatEncoding):
            return [helper.make_node("Cast", [x], [f"{t}/fp16"], to=TensorProto.FLOAT16,
                                     name=f"{t}/CastToFloat16"),
                    helper.make_node("Cast", [f"{t}/fp16"], [y], to=TensorProto.FLOAT,
                                     name=f"{t}/CastToFloat")]
        axis = {} if enc.axis is None else {"axis": int(enc.axis)}
        scale = self.const(f"{t}/scale", enc.scale.to(torch.float32))
        container = _container(enc.bitwidth, enc.signed, 4)
        if container is None:
            return self._float_emulation(t, x, y, enc, scale)
        onnx_type = _NATIVE[container][0]
        zp = self.const(f"{t}/zero_point", enc.zero_point, onnx_type)
        nodes = []
        q_in = x
        if (enc.qmin, enc.qmax) != _type_range(*container):
            if enc.axis is not None:
                return self._float_emulation(t, x, y, enc, scale)
            lo = (torch.tensor(float(enc.qmin - int(enc.zero_point))) * enc.scale).to(torch.float32)
            hi = (torch.tensor(float(enc.qmax - int(enc.zero_point))) * enc.scale).to(torch.float32)
            nodes.append(helper.make_node(
                "Clip", [x, self.const(f"{t}/clip_min", lo.reshape(())),
                         self.const(f"{t}/clip_max", hi.reshape(()))], [f"{t}/clipped"],
                name=f"{t}/Clip"))
            q_in = f"{t}/clipped"
        nodes.append(helper.make_node("QuantizeLinear", [q_in, scale, zp], [f"{t}/q"],
                                      name=f"{t}/QuantizeLinear", **axis))
        nodes.append(helper.make_node("DequantizeLinear", [f"{t}/q", scale, zp], [y],
                                      name=f"{t}/DequantizeLinear", **axis))
        return nodes

    def _float_emulation(self, t: str, x: str, y: str, enc: QuantEncoding, scale: str
                         ) -> list[onnx.NodeProto]:
        if enc.axis is not None:
            raise ValueError(f"per-channel activation encoding of {t!r} on a non-native grid "
                             f"({enc.bitwidth}-bit) cannot be exported")
        zp = self.const(f"{t}/zero_point_f", enc.zero_point.to(torch.float32))
        lo = self.const(f"{t}/qmin", torch.tensor(float(enc.qmin), dtype=torch.float32))
        hi = self.const(f"{t}/qmax", torch.tensor(float(enc.qmax), dtype=torch.float32))
        names = [f"{t}/{s}" for s in ("div", "round", "shift", "clamped", "centered")]
        return [
            helper.make_node("Div", [x, scale], [names[0]], name=f"{t}/Div"),
            helper.make_node("Round", [names[0]], [names[1]], name=f"{t}/Round"),
            helper.make_node("Add", [names[1], zp], [names[2]], name=f"{t}/AddZeroPoint"),
            helper.make_node("Clip", [names[2], lo, hi], [names[3]], name=f"{t}/Clip"),
            helper.make_node("Sub", [names[3], zp], [names[4]], name=f"{t}/SubZeroPoint"),
            helper.make_node("Mul", [names[4], scale], [y], name=f"{t}/Mul"),
        ]

    def _rename_everywhere(self, old: str, new: str) -> None:
        for node in self.graph.node:
            for k, name in enumerate(node.output):
                if name == old:
                    node.output[k] = new
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new
        if old in self.after:
            self.after[new] = self.after.pop(old)

    def _redirect_consumers(self, source: str, result: str) -> None:
        for node in self.graph.node:
            for k, name in enumerate(node.input):
                if name == source:
                    node.input[k] = result

    # -- parameters ---------------------------------------------------------------------------
    def param(self, name: str, enc: AnyEncoding, initializers: dict[str, TensorProto]) -> None:
        if name not in initializers:
            raise ValueError(f"param encoding {name!r} names no initializer of the float model")
        init = initializers.pop(name)
        self.graph.initializer.remove(init)
        values = torch.from_numpy(numpy_helper.to_array(init).copy())
        self.dequantized[name] = name
        if isinstance(enc, FloatEncoding):
            self.const(f"{name}/fp16", values.to(torch.float16))
            self.front.append(helper.make_node("Cast", [f"{name}/fp16"], [name], to=TensorProto.FLOAT,
                                               name=f"{name}/CastToFloat"))
            return
        if not values.is_floating_point():
            raise ValueError(f"param {name!r} is {values.dtype}, not floating point")
        values = values.to(torch.float32)
        signed = enc.signed
        if enc.bitwidth <= 8:
            container = (8, signed)
        elif enc.bitwidth <= 16:
            container = (16, signed)
        elif signed and not bool(enc.zero_point.any()):
            container = (32, True)
        else:
            container = None
        if container is None:
            fq = quantize_dequantize(values, enc.scale, enc.zero_point, enc.qmin, enc.qmax, axis=enc.axis)
            self.const(name, fq)
            logger.info("param %s (%d-bit %s) is stored fake-quantized in float32", name,
                        enc.bitwidth, "signed" if signed else "unsigned")
            return
        q = quantize(values, enc.scale, enc.zero_point, enc.qmin, enc.qmax, axis=enc.axis)
        onnx_type = TensorProto.INT32 if container[0] == 32 else _NATIVE[container][0]
        np_type = np.int32 if container[0] == 32 else _NATIVE[container][1]
        self.graph.initializer.append(numpy_helper.from_array(q.numpy().astype(np_type),
                                                              f"{name}/quantized"))
        scale = self.const(f"{name}/scale", enc.scale.to(torch.float32))
        zp = self.const(f"{name}/zero_point", enc.zero_point, onnx_type)
        axis = {} if enc.axis is None else {"axis": int(enc.axis)}
        self.front.append(helper.make_node("DequantizeLinear", [f"{name}/quantized", scale, zp], [name],
                                           name=f"{name}/DequantizeLinear", **axis))

    def bias(self, name: str, scale: torch.Tensor, initializers: dict[str, TensorProto]) -> None:
        if name not in initializers:
            raise ValueError(f"bias encoding {name!r} names no initializer of the float model")
        init = initializers.pop(name)
        self.graph.initializer.remove(init)
        values = torch.from_numpy(numpy_helper.to_array(init).copy()).to(torch.float32)
        scale = torch.as_tensor(scale, dtype=torch.float32).detach().cpu()
        axis = 0 if scale.dim() == 1 else None
        q = quantize(values, scale, torch.zeros_like(scale), INT32_MIN, INT32_MAX, axis=axis)
        self.graph.initializer.append(numpy_helper.from_array(q.numpy().astype(np.int32),
                                                              f"{name}/quantized"))
        s = self.const(f"{name}/scale", scale)
        zp = self.const(f"{name}/zero_point", torch.zeros(scale.shape, dtype=torch.int64),
                        TensorProto.INT32)
        kwargs = {} if axis is None else {"axis": 0}
        self.front.append(helper.make_node("DequantizeLinear", [f"{name}/quantized", s, zp], [name],
                                           name=f"{name}/DequantizeLinear", **kwargs))
        self.dequantized[name] = name

    def finish(self) -> None:
        ordered = list(self.front)
        for node in self.graph.node:
            ordered.append(node)
            for out in node.output:
                ordered.extend(self.after.get(out, ()))
        del self.graph.node[:]
        self.graph.node.extend(ordered)


def build_qdq_model(float_model: onnx.ModelProto, activations: Mapping[str, AnyEncoding],
                    params: Mapping[str, AnyEncoding],
                    bias: Mapping[str, torch.Tensor] | None = None) -> QdqModel:
    """Builds the QDQ model from a renamed float model and encodings.

    Args:
        float_model: the float model (``export_onnx(...).model``); not modified.
        activations: ``{tensor name: encoding}`` of activation quantizers (inputs and outputs).
        params: ``{initializer name: encoding}`` of parameter quantizers.
        bias: ``{"<layer>.bias": scale}`` of int32 biases (scale = input scale × weight scale).

    Returns:
        A :class:`QdqModel` (opset raised to 21 when 4- or 16-bit types are used).

    Raises:
        ValueError: an encoding names no tensor of ``float_model``.
        ExportError: ``float_model`` is not a float32 model (QuantizeLinear takes float32 scales);
            the message names the tensors.

    Example:
        >>> qdq = build_qdq_model(float_onnx, {"x": enc_x}, {"conv1.weight": enc_w})
        >>> qdq.dequantized["x"]
        'x/dq'
    """
    _check_float32(float_model)
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    if _needs_opset21(activations, params) and _opset(model) < QDQ_OPSET:
        model = _to_opset(model, QDQ_OPSET)
    builder = _Builder(model)
    graph = model.graph
    producers = {v: n for n in graph.node for v in n.output}
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    for name, enc in params.items():
        builder.param(name, enc, initializers)
    for name, scale in (bias or {}).items():
        builder.bias(name, scale, initializers)
    for name, enc in activations.items():
        builder.activation(name, enc, producers, graph_inputs, graph_outputs)
    builder.finish()
    return QdqModel(model, dict(builder.dequantized))


_OTHER_FLOATS = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
                 TensorProto.DOUBLE: "float64"}


def _check_float32(model: onnx.ModelProto) -> None:
    graph = model.graph
    found = [(i.name, _OTHER_FLOATS[i.type.tensor_type.elem_type]) for i in graph.input
             if i.type.tensor_type.elem_type in _OTHER_FLOATS]
    found += [(t.name, _OTHER_FLOATS[t.data_type]) for t in graph.initializer
              if t.data_type in _OTHER_FLOATS]
    if found:
        shown = ", ".join(f"{name} ({dtype})" for name, dtype in found[:5])
        raise ExportError(
            f"build_qdq_model needs a float32 model, but {len(found)} input(s)/initializer(s) are "
            f"not float32: {shown}{' …' if len(found) > 5 else ''}. Export the float model in "
            "float32 (model.float() and a float32 dummy input; sim.export does this itself)")


def _needs_opset21(activations: Mapping[str, AnyEncoding], params: Mapping[str, AnyEncoding]
                   ) -> bool:
    for enc in activations.values():
        if isinstance(enc, QuantEncoding):
            container = _container(enc.bitwidth, enc.signed, 4)
            if container is not None and container[0] != 8:
                return True
    return any(isinstance(enc, QuantEncoding) and 8 < enc.bitwidth <= 16 for enc in params.values())


def _opset(model: onnx.ModelProto) -> int:
    return next(int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx"))


def _to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises various types
        raise ValueError(
            f"4- and 16-bit QuantizeLinear/DequantizeLinear need opset {opset}, the float model has "
            f"opset {_opset(model)} and could not be converted ({type(exc).__name__}: {exc}); export "
            f"with onnx_export_args={{'opset_version': {opset}}}") from exc
