"""Int32 bias simulation: what integer targets do with a conv/linear bias.

Targets add the bias to the int32 accumulator, so they quantize it to int32 with
``scale = input_scale × weight_scale`` (per output channel) and zero point 0 (SPEC §1). A
simulation that keeps the bias in float drifts from the target by up to half a step of that
scale per output.
"""
from __future__ import annotations

import torch
import torch.fx
from torch import Tensor, nn

from fxquant import _meta
from fxquant.core.encoding import INT32_MAX, INT32_MIN
from fxquant.core.kernels import quantize_dequantize
from fxquant.quantsim.op_types import DATA_MOVEMENT_OP_TYPES, onnx_op_type
from fxquant.quantsim.quantizer import QuantizerBase

__all__ = ["Int32BiasQuantizer", "find_input_quantizer", "INT32_MIN", "INT32_MAX"]


class Int32BiasQuantizer(nn.Module):
    """Fake-quantizes a bias to int32 with scale = input scale × weight scale, zero point 0.

    It holds references (not submodules) to the input's activation quantizer and the layer's
    weight quantizer; until both have encodings the bias passes through unchanged.

    Example:
        >>> bq = Int32BiasQuantizer(input_quantizer, weight_quantizer, "conv1.bias")
        >>> bq(conv.bias)  # on the int32 grid of input_scale * weight_scale
    """

    _fxquant_leaf = True

    def __init__(self, input_quantizer: QuantizerBase, weight_quantizer: QuantizerBase,
                 name: str = "") -> None:
        super().__init__()
        self._sources = (input_quantizer, weight_quantizer)  # a tuple: not registered as children
        self.name = name
        self.enabled = True

    def scale(self) -> Tensor | None:
        """The bias scale (per output channel or scalar), or None while an encoding is missing."""
        input_q, weight_q = self._sources
        if not (input_q.enabled and weight_q.enabled):
            return None
        s_in = getattr(input_q, "scale", None)
        s_w = getattr(weight_q, "scale", None)
        if s_in is None or s_w is None:
            return None
        return (s_in.detach() * s_w.detach()).to(torch.float32)

    def forward(self, bias: Tensor) -> Tensor:
        scale = self.scale() if self.enabled else None
        if scale is None:
            return bias
        return quantize_dequantize(bias, scale, torch.zeros_like(scale), INT32_MIN, INT32_MAX,
                                   axis=0 if scale.dim() == 1 else None)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, int32, scale=input_scale*weight_scale"


def find_input_quantizer(gm: torch.fx.GraphModule, node: torch.fx.Node) -> QuantizerBase | None:
    """The activation quantizer whose encoding ``node``'s first input carries: the quantizer
    node feeding it, looking through data-movement ops (reshape, max-pool …)."""
    current = node.args[0] if node.args else None
    while isinstance(current, torch.fx.Node) and current.op == "call_module":
        module = gm.get_submodule(str(current.target))
        if _meta.get(current, _meta.ROLE) == _meta.ROLE_QUANTIZER:
            return module if isinstance(module, QuantizerBase) else None
        if onnx_op_type(module) not in DATA_MOVEMENT_OP_TYPES or not current.args:
            return None
        current = current.args[0]
    return None
