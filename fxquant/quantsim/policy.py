"""ConfigPolicy: what :class:`~fxquant.passes.insert_quantizers.InsertQuantizersPass` quantizes,
read from a quantsim config and QuantSim's defaults (bit widths, scheme, data type)."""
from __future__ import annotations

import dataclasses
from typing import Mapping

from torch import nn

from fxquant.quantsim.config import QuantSimConfig, ResolvedOpSettings
from fxquant.quantsim.encoding import QuantEncoding
from fxquant.quantsim.op_types import (DATA_MOVEMENT_OP_TYPES, PER_CHANNEL_AXIS_BY_OP_TYPE,
                                       onnx_op_type)
from fxquant.quantsim.quant_scheme import QuantizationDataType, QuantScheme
from fxquant.quantsim.quantizer import QuantizerBase, create_quantizer

__all__ = ["ConfigPolicy", "QuantSimSettings"]


@dataclasses.dataclass(frozen=True)
class QuantSimSettings:
    """The QuantSim arguments that shape every quantizer.

    Attributes:
        quant_scheme: calibration scheme of every quantizer.
        default_output_bw: bit width of activation quantizers.
        default_param_bw: bit width of parameter quantizers.
        default_data_type: int (affine) or float (16-bit cast round-trip).
    """

    quant_scheme: QuantScheme = QuantScheme.post_training_tf_enhanced
    default_output_bw: int = 8
    default_param_bw: int = 8
    default_data_type: QuantizationDataType = QuantizationDataType.int

    def __post_init__(self) -> None:
        # Accept the strings QuantizationSimModel accepts ("tf", "int" …), stored as the enums.
        object.__setattr__(self, "quant_scheme", QuantScheme.parse(self.quant_scheme))
        object.__setattr__(self, "default_data_type",
                           QuantizationDataType.parse(self.default_data_type))


class ConfigPolicy:
    """Implements ``QuantizationPolicy`` from a :class:`QuantSimConfig`.

    Example:
        >>> policy = ConfigPolicy(load_config(None), QuantSimSettings())
        >>> policy.op_type(torch.nn.Conv2d(3, 8, 3))
        'Conv'
    """

    def __init__(self, config: QuantSimConfig, settings: QuantSimSettings) -> None:
        self.config = config
        self.settings = settings
        self.supergroups = tuple(tuple(g) for g in config.supergroups)
        self.quantize_model_output = config.model_output_quantized

    def validate(self) -> None:
        """Raises ConfigError (naming the valid values) for a bad bit width or data type."""
        s = self.settings
        create_quantizer(s.default_output_bw, data_type=s.default_data_type, kind="activation",
                         name="default_output_bw")
        create_quantizer(s.default_param_bw, data_type=s.default_data_type, kind="param",
                         name="default_param_bw")

    def op_type(self, module: nn.Module) -> str | None:
        return onnx_op_type(module)

    def is_data_movement(self, module: nn.Module) -> bool:
        return self.op_type(module) in DATA_MOVEMENT_OP_TYPES

    def _activation(self, name: str, op: ResolvedOpSettings) -> QuantizerBase:
        s = self.settings
        quantizer = create_quantizer(
            s.default_output_bw, data_type=s.default_data_type, symmetric=op.is_symmetric,
            strict_symmetric=op.strict_symmetric, unsigned_symmetric=op.unsigned_symmetric,
            quant_scheme=s.quant_scheme, kind="activation", name=name)
        constraints = op.encoding_constraints
        if constraints is not None and s.default_data_type is QuantizationDataType.int:
            quantizer.set_encoding(QuantEncoding.from_min_max(
                constraints.min, constraints.max, s.default_output_bw, op.is_symmetric,
                strict=op.strict_symmetric))
            quantizer.freeze_encoding()
        return quantizer

    def input_quantizer(self, name: str) -> nn.Module | None:
        """A quantizer for model input ``name``: ``model_input.is_input_quantized`` decides; when
        unset, ``defaults.ops.is_input_quantized`` (op-type settings act on the consuming op, see
        :meth:`layer_input_quantizer`)."""
        defaults = self.config.settings_for_op(None)
        wanted = self.config.model_input_quantized
        if wanted is False or (wanted is None and not defaults.is_input_quantized):
            return None
        return self._activation(name, defaults)

    def layer_input_quantizer(self, layer: str, module: nn.Module, index: int,
                              is_model_input: bool = False) -> nn.Module | None:
        """A quantizer for input ``index`` of op ``layer`` (AIMET's op-level input quantizer).

        ``op_type.<T>.is_input_quantized`` (else ``defaults.ops.is_input_quantized``) decides;
        for an input that is a model input, ``model_input.is_input_quantized`` wins when set
        (AIMET applies ``model_input`` after ``op_type``): the model input's own quantizer
        (:meth:`input_quantizer`) then quantizes it, or nothing does.

        Example:
            >>> p = ConfigPolicy(load_config({..., "op_type": {"Add": {"is_input_quantized":
            ...     "True"}}}), QuantSimSettings())
            >>> p.layer_input_quantizer("add", fxquant.nn.Add(), 0) is not None
            True
        """
        if is_model_input and self.config.model_input_quantized is not None:
            return None  # model_input decides; the model input's own quantizer does it
        op = self.config.settings_for_op(self.op_type(module))
        if not op.is_input_quantized:
            return None
        return self._activation(f"{layer}.input_{index}", op)

    def output_quantizer(self, layer: str, module: nn.Module) -> nn.Module | None:
        """A quantizer for the output of op ``layer`` as its settings say (defaults < op_type),
        or None."""
        op = self.config.settings_for_op(self.op_type(module))
        return self._activation(f"{layer}.output", op) if op.is_output_quantized else None

    def model_output_quantizer(self, layer: str, module: nn.Module) -> nn.Module | None:
        """Like :meth:`output_quantizer`, for an op whose output is a model output:
        ``model_output.is_output_quantized`` wins when set (AIMET applies it last, after
        ``op_type`` and supergroups).

        Example:
            >>> cfg = {..., "op_type": {"Gemm": {"is_output_quantized": "False"}},
            ...        "model_output": {"is_output_quantized": "True"}}
            >>> ConfigPolicy(load_config(cfg), QuantSimSettings()).model_output_quantizer(
            ...     "fc", nn.Linear(2, 2)) is not None
            True
        """
        wanted = self.config.model_output_quantized
        if wanted is None:
            return self.output_quantizer(layer, module)
        op = self.config.settings_for_op(self.op_type(module))
        return self._activation(f"{layer}.output", op) if wanted else None

    def param_quantizers(self, layer: str, module: nn.Module) -> Mapping[str, nn.Module]:
        op_type = self.op_type(module)
        op = self.config.settings_for_op(op_type)
        s = self.settings
        result: dict[str, nn.Module] = {}
        for pname, param in module.named_parameters(recurse=False):
            if param is None or not param.is_floating_point():
                continue
            ps = op.param(pname)
            if not ps.is_quantized:
                continue
            axis = None
            if op.per_channel and pname == "weight" and param.dim() > 1:
                axis = PER_CHANNEL_AXIS_BY_OP_TYPE.get(op_type or "")
            elif op.per_channel and pname == "bias" and param.dim() == 1 and (
                    op_type or "") in PER_CHANNEL_AXIS_BY_OP_TYPE:
                axis = 0  # AIMET: a quantized bias is per output channel when weights are
            result[pname] = create_quantizer(
                s.default_param_bw, data_type=s.default_data_type, symmetric=ps.is_symmetric,
                strict_symmetric=op.strict_symmetric, unsigned_symmetric=False, axis=axis,
                quant_scheme=s.quant_scheme, kind="param", name=f"{layer}.{pname}")
        return result
