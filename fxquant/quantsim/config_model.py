"""The quantsim config data model: what a validated AIMET quantsim config says, frozen.

:func:`fxquant.quantsim.config.load_config` builds a :class:`QuantSimConfig` from AIMET JSON;
:meth:`QuantSimConfig.settings_for_op` resolves what applies to one op type (defaults < ``params``
< ``op_type``) and :meth:`QuantSimConfig.to_dict` writes the config back as AIMET JSON.

The graph-level rules come after those, in AIMET's order, each winning over the ones before it:
``supergroups`` (no quantizer between fused ops), ``model_input``, ``model_output`` (e.g.
``model_output.is_output_quantized: "True"`` quantizes a model output whose op type says
``False``); :class:`~fxquant.passes.insert_quantizers.InsertQuantizersPass` applies them with
:class:`~fxquant.quantsim.policy.ConfigPolicy`.

Example:
    >>> cfg = QuantSimConfig(defaults=OpQuantSettings(is_output_quantized=True),
    ...                      param_defaults=ParamQuantSettings(is_quantized=True))
    >>> cfg.settings_for_op("Conv").is_output_quantized
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = [
    "EncodingConstraints",
    "KernelDtype",
    "LayerOverride",
    "OpQuantSettings",
    "OpTypeConfig",
    "ParamOverride",
    "ParamQuantSettings",
    "QuantSimConfig",
    "ResolvedOpSettings",
    "SupportedKernel",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class OpQuantSettings:
    """Activation settings of ``defaults.ops`` (unset flags are ``False``, as in AIMET).

    Attributes:
        is_output_quantized: op outputs get a quantizer.
        is_input_quantized: op inputs get a quantizer (besides the producer's output quantizer).
        is_symmetric: activation encodings are symmetric.
    """

    is_output_quantized: bool = False
    is_input_quantized: bool = False
    is_symmetric: bool = False


@dataclass(frozen=True)
class ParamQuantSettings:
    """Fully resolved settings of one parameter (``weight``, ``bias`` …).

    Attributes:
        is_quantized: the parameter gets a quantizer.
        is_symmetric: its encoding is symmetric.
    """

    is_quantized: bool = False
    is_symmetric: bool = False


@dataclass(frozen=True)
class ParamOverride:
    """A ``params`` entry (top level or inside an ``op_type``); ``None`` means "not set here"."""

    is_quantized: bool | None = None
    is_symmetric: bool | None = None


@dataclass(frozen=True)
class EncodingConstraints:
    """A fixed activation range (``op_type.<Op>.encoding_constraints``), e.g. Softmax [0, 1].

    Attributes:
        min: lower end of the range; ``min <= 0.0``.
        max: upper end of the range; ``max >= 0.0`` and ``max > min``.
    """

    min: float
    max: float


@dataclass(frozen=True)
class KernelDtype:
    """One side of a ``supported_kernels`` entry.

    Attributes:
        bitwidth: bits per value.
        dtype: ``"int"`` or ``"float"``.
    """

    bitwidth: int
    dtype: str


@dataclass(frozen=True)
class SupportedKernel:
    """A ``supported_kernels`` entry: an activation/param precision pair the target runs.

    Attributes:
        activation: activation precision.
        param: parameter precision (``None`` when the entry names only the activation, which
            AIMET allows at op level).
    """

    activation: KernelDtype
    param: KernelDtype | None = None


@dataclass(frozen=True)
class LayerOverride:
    """A ``layers`` entry (fxquant's extension of AIMET's format): bit widths for one layer.

    Attributes:
        activation_bw: bit width of every activation quantizer listed under the layer in a
            ``_torch.encodings`` file (its output, and its inputs), or None.
        param_bw: bit width of the layer's parameter quantizers, or None.
    """

    activation_bw: int | None = None
    param_bw: int | None = None


@dataclass(frozen=True)
class OpTypeConfig:
    """One ``op_type`` entry; ``None`` fields are not set here and fall back to the defaults.

    Attributes:
        is_output_quantized: override of ``defaults.ops.is_output_quantized``.
        is_input_quantized: override of ``defaults.ops.is_input_quantized``.
        is_symmetric: override of ``defaults.ops.is_symmetric`` (activations).
        per_channel: override of ``defaults.per_channel_quantization``.
        params: per-parameter overrides, e.g. ``{"weight": ParamOverride(is_quantized=False)}``.
        encoding_constraints: fixed output range, or ``None``.
        supported_kernels: op-level kernels (empty: the defaults' apply).
    """

    is_output_quantized: bool | None = None
    is_input_quantized: bool | None = None
    is_symmetric: bool | None = None
    per_channel: bool | None = None
    params: Mapping[str, ParamOverride] = field(default_factory=lambda: _EMPTY, hash=False)
    encoding_constraints: EncodingConstraints | None = None
    supported_kernels: tuple[SupportedKernel, ...] = ()


@dataclass(frozen=True)
class ResolvedOpSettings:
    """Everything the config says about ops of one type, with precedence applied.

    Precedence, lowest first: ``defaults`` < top-level ``params`` (parameters only) < ``op_type``.

    Attributes:
        op_type: the ONNX op type asked about (``None`` for ops without one).
        is_output_quantized: the op's output gets a quantizer (unless it ends inside a
            supergroup, or is a model output and ``model_output`` says otherwise: the pass
            decides those, from the graph).
        is_input_quantized: the op's inputs get quantizers of their own.
        is_symmetric: activation quantizers of this op are symmetric.
        per_channel: weights are quantized per output channel (applies to parameters that have a
            channel axis, see ``op_types.PER_CHANNEL_AXIS_BY_OP_TYPE``).
        encoding_constraints: fixed output range, or ``None``.
        params: settings of every parameter name the config mentions, plus ``weight`` and
            ``bias``; use :meth:`param` for any other name.
        default_param: settings of parameter names the config does not mention.
        supported_kernels: op-level kernels, else the defaults' (may be empty).
        strict_symmetric: symmetric grids drop the most negative value.
        unsigned_symmetric: symmetric encodings of non-negative tensors use the unsigned grid.
    """

    op_type: str | None
    is_output_quantized: bool
    is_input_quantized: bool
    is_symmetric: bool
    per_channel: bool
    encoding_constraints: EncodingConstraints | None
    params: Mapping[str, ParamQuantSettings] = field(hash=False)
    default_param: ParamQuantSettings
    supported_kernels: tuple[SupportedKernel, ...]
    strict_symmetric: bool
    unsigned_symmetric: bool

    def param(self, name: str) -> ParamQuantSettings:
        """Settings of the parameter called ``name`` (``"weight"``, ``"bias"`` …) of this op.

        Example:
            >>> cfg = QuantSimConfig(param_defaults=ParamQuantSettings(is_quantized=True),
            ...                      params={"bias": ParamOverride(is_quantized=False)})
            >>> s = cfg.settings_for_op("Conv")
            >>> s.param("weight").is_quantized, s.param("bias").is_quantized
            (True, False)
        """
        return self.params.get(name, self.default_param)


@dataclass(frozen=True)
class QuantSimConfig:
    """A validated quantsim config. Build it with :func:`fxquant.quantsim.config.load_config`.

    Attributes:
        defaults: ``defaults.ops``.
        param_defaults: ``defaults.params``.
        params: top-level ``params`` overrides, by parameter name.
        op_types: ``op_type`` entries, by ONNX op type name.
        supergroups: op type sequences fused on target (``supergroups[i].op_list``).
        supergroup_pass_list: names of AIMET supergroup graph passes (``supergroup_pass_list``),
            kept for the insertion pass; empty when absent.
        model_input_quantized: ``model_input.is_input_quantized``; ``None`` when unset (model
            inputs are then quantized only where the consuming op's input settings say so).
        model_output_quantized: ``model_output.is_output_quantized``; ``None`` when unset (the
            producing op's settings decide), ``True``/``False`` force the model outputs'
            quantizers on/off.
        per_channel: ``defaults.per_channel_quantization``.
        strict_symmetric: ``defaults.strict_symmetric``.
        unsigned_symmetric: ``defaults.unsigned_symmetric``.
        hw_version: ``defaults.hw_version`` (e.g. ``"V73"``), or ``None``.
        supported_kernels: ``defaults.supported_kernels`` (empty when absent).
        layers: ``layers`` (fxquant's extension, absent in AIMET's format): per-layer bit widths
            by layer name, e.g. ``{"conv2": LayerOverride(activation_bw=16)}``; AIMET rejects
            a config that has it (unknown key), fxquant applies it after placing the quantizers.
        source: where it came from (file path, ``"built-in 'default'"``, ``"dict"``); not
            compared by ``==``.
    """

    defaults: OpQuantSettings = OpQuantSettings()
    param_defaults: ParamQuantSettings = ParamQuantSettings()
    params: Mapping[str, ParamOverride] = field(default_factory=lambda: _EMPTY, hash=False)
    op_types: Mapping[str, OpTypeConfig] = field(default_factory=lambda: _EMPTY, hash=False)
    supergroups: tuple[tuple[str, ...], ...] = ()
    supergroup_pass_list: tuple[str, ...] = ()
    model_input_quantized: bool | None = None
    model_output_quantized: bool | None = None
    per_channel: bool = False
    strict_symmetric: bool = False
    unsigned_symmetric: bool = False
    hw_version: str | None = None
    supported_kernels: tuple[SupportedKernel, ...] = ()
    layers: Mapping[str, LayerOverride] = field(default_factory=lambda: _EMPTY, hash=False)
    source: str = field(default="", compare=False)

    def settings_for_op(self, onnx_op_type: str | None) -> ResolvedOpSettings:
        """Resolve the settings for ops of one ONNX op type.

        Args:
            onnx_op_type: e.g. ``"Conv"`` (see ``op_types.onnx_op_type``); ``None`` or a type the
                config does not mention gets the defaults.

        Returns:
            The resolved settings (defaults < top-level ``params`` < ``op_type``).

        Example:
            >>> cfg = QuantSimConfig(defaults=OpQuantSettings(is_output_quantized=True),
            ...                      param_defaults=ParamQuantSettings(is_quantized=True),
            ...                      params={"bias": ParamOverride(is_quantized=False)},
            ...                      op_types={"Gather": OpTypeConfig(is_output_quantized=False)})
            >>> cfg.settings_for_op("Gather").is_output_quantized
            False
            >>> cfg.settings_for_op("Conv").param("bias").is_quantized
            False
        """
        op = self.op_types.get(onnx_op_type, OpTypeConfig()) if onnx_op_type else OpTypeConfig()

        def pick(*values: bool | None) -> bool:
            return next(v for v in values if v is not None)

        def resolve_param(name: str | None) -> ParamQuantSettings:
            top = self.params.get(name, ParamOverride()) if name is not None else ParamOverride()
            local = op.params.get(name, ParamOverride()) if name is not None else ParamOverride()
            return ParamQuantSettings(
                is_quantized=pick(local.is_quantized, top.is_quantized,
                                  self.param_defaults.is_quantized),
                is_symmetric=pick(local.is_symmetric, top.is_symmetric,
                                  self.param_defaults.is_symmetric),
            )

        names = dict.fromkeys(["weight", "bias", *self.params, *op.params])
        return ResolvedOpSettings(
            op_type=onnx_op_type,
            is_output_quantized=pick(op.is_output_quantized, self.defaults.is_output_quantized),
            is_input_quantized=pick(op.is_input_quantized, self.defaults.is_input_quantized),
            is_symmetric=pick(op.is_symmetric, self.defaults.is_symmetric),
            per_channel=pick(op.per_channel, self.per_channel),
            encoding_constraints=op.encoding_constraints,
            params=MappingProxyType({name: resolve_param(name) for name in names}),
            default_param=resolve_param(None),
            supported_kernels=op.supported_kernels or self.supported_kernels,
            strict_symmetric=self.strict_symmetric,
            unsigned_symmetric=self.unsigned_symmetric,
        )

    def to_dict(self) -> dict[str, Any]:
        """This config as AIMET JSON (flags ``"True"``/``"False"``); ``load_config`` reads it back.

        Example:
            >>> cfg = QuantSimConfig(per_channel=True, supergroups=(("Conv", "Relu"),))
            >>> d = cfg.to_dict()
            >>> d["defaults"]["per_channel_quantization"], d["supergroups"]
            ('True', [{'op_list': ['Conv', 'Relu']}])
        """
        # defaults.ops flags are written only when True: absent means False, and AIMET rejects
        # is_input_quantized there and is_output_quantized "False".
        ops = {key: "True" for key, value in (
            ("is_output_quantized", self.defaults.is_output_quantized),
            ("is_input_quantized", self.defaults.is_input_quantized),
            ("is_symmetric", self.defaults.is_symmetric)) if value}
        defaults: dict[str, Any] = {
            "ops": ops,
            "params": {
                "is_quantized": _flag_str(self.param_defaults.is_quantized),
                "is_symmetric": _flag_str(self.param_defaults.is_symmetric),
            },
            "per_channel_quantization": _flag_str(self.per_channel),
            "strict_symmetric": _flag_str(self.strict_symmetric),
            "unsigned_symmetric": _flag_str(self.unsigned_symmetric),
        }
        if self.hw_version is not None:
            defaults["hw_version"] = self.hw_version
        if self.supported_kernels:
            defaults["supported_kernels"] = [_kernel_dict(k) for k in self.supported_kernels]
        op_type: dict[str, Any] = {}
        for name, op in self.op_types.items():
            entry: dict[str, Any] = {}
            for key, value in (("is_output_quantized", op.is_output_quantized),
                               ("is_input_quantized", op.is_input_quantized),
                               ("is_symmetric", op.is_symmetric),
                               ("per_channel_quantization", op.per_channel)):
                if value is not None:
                    entry[key] = _flag_str(value)
            if op.params:
                entry["params"] = {n: _override_dict(p) for n, p in op.params.items()}
            if op.encoding_constraints is not None:
                entry["encoding_constraints"] = {"min": op.encoding_constraints.min,
                                                 "max": op.encoding_constraints.max}
            if op.supported_kernels:
                entry["supported_kernels"] = [_kernel_dict(k) for k in op.supported_kernels]
            op_type[name] = entry
        result: dict[str, Any] = {
            "defaults": defaults,
            "params": {n: _override_dict(p) for n, p in self.params.items()},
            "op_type": op_type,
            "supergroups": [{"op_list": list(group)} for group in self.supergroups],
            "model_input": ({} if self.model_input_quantized is None
                            else {"is_input_quantized": _flag_str(self.model_input_quantized)}),
            "model_output": ({} if self.model_output_quantized is None
                             else {"is_output_quantized": _flag_str(self.model_output_quantized)}),
        }
        if self.supergroup_pass_list:
            result["supergroup_pass_list"] = list(self.supergroup_pass_list)
        if self.layers:
            result["layers"] = {name: {k: v for k, v in (("activation_bw", o.activation_bw),
                                                         ("param_bw", o.param_bw))
                                       if v is not None}
                                for name, o in self.layers.items()}
        return result


def _flag_str(value: bool) -> str:
    return "True" if value else "False"


def _override_dict(p: ParamOverride) -> dict[str, str]:
    out = {}
    if p.is_quantized is not None:
        out["is_quantized"] = _flag_str(p.is_quantized)
    if p.is_symmetric is not None:
        out["is_symmetric"] = _flag_str(p.is_symmetric)
    return out


def _kernel_dict(k: SupportedKernel) -> dict[str, Any]:
    out: dict[str, Any] = {"activation": {"bitwidth": k.activation.bitwidth,
                                          "dtype": k.activation.dtype}}
    if k.param is not None:
        out["param"] = {"bitwidth": k.param.bitwidth, "dtype": k.param.dtype}
    return out
