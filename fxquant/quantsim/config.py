"""AIMET-compatible quantsim configuration files (``SPEC.md`` §4).

A quantsim config decides where quantizers go and how they behave: which op outputs and inputs
are quantized, symmetric or not, per-channel weights, fixed encodings (``encoding_constraints``),
and supergroups (ops fused on target, so only the last op's output is quantized). The format is
AIMET's JSON, so AIMET config files load unchanged::

    {"defaults": {"ops": {"is_output_quantized": "True"},
                  "params": {"is_quantized": "True", "is_symmetric": "True"},
                  "per_channel_quantization": "True"},
     "params": {"bias": {"is_quantized": "False"}},
     "op_type": {"Softmax": {"encoding_constraints": {"min": 0.0, "max": 1.0}}},
     "supergroups": [{"op_list": ["Conv", "Relu"]}],
     "model_input": {"is_input_quantized": "True"}, "model_output": {}}

:func:`load_config` validates it into a frozen :class:`QuantSimConfig`;
:meth:`QuantSimConfig.settings_for_op` resolves what applies to one op type (defaults < ``params``
< ``op_type``). Every error is a :class:`~fxquant.errors.ConfigError` that names the file, the JSON
path (``op_type.Softmax.encoding_constraints.min``), the bad value and the allowed values.

Choices that differ from AIMET, on purpose:
    * Flags may be JSON booleans as well as the strings ``"True"`` / ``"False"``.
    * Settings AIMET rejects as "not supported yet" (``defaults.ops.is_input_quantized``,
      ``"is_output_quantized": "False"`` in ``defaults.ops`` or ``model_output``,
      ``"is_input_quantized": "False"`` for an op type or ``model_input``) are accepted and mean
      what they say.
    * Op type names that are not ONNX operators (``"Relu6"``, ``"conv"``) only log a warning, with a
      suggestion: AIMET tolerates op types a model does not contain, and shared target configs
      name ops that many models lack, so an unknown name cannot be told from an absent op.
    * Unknown *keys* are errors (as in AIMET's schema), with a did-you-mean.
    * ``encoding_constraints`` must satisfy ``min < max`` and contain 0.0 (0 must be exactly
      representable, ``SPEC.md`` §1).
    * A duplicated key inside one JSON object logs a warning (JSON keeps the last one).
    * An optional top-level ``layers`` object (fxquant's extension) sets bit widths per layer:
      ``{"layers": {"conv2": {"activation_bw": 16}, "fc": {"param_bw": 16}}}``, keyed by the
      layer names of ``sim.quantizers()``. QuantAnalyzer's ``suggested_config.json`` uses it;
      AIMET rejects it as an unknown key.
"""
from __future__ import annotations

import difflib
import logging
import math
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from fxquant.core.jsonpath import JsonValidator, got, index, join, loads, quoted, show, suggest
from fxquant.errors import ConfigError
from fxquant.quantsim import config_model
from fxquant.quantsim.config_model import (EncodingConstraints, KernelDtype, LayerOverride,
                                           OpQuantSettings,
                                           OpTypeConfig, ParamOverride, ParamQuantSettings,
                                           QuantSimConfig, ResolvedOpSettings, SupportedKernel)
from fxquant.quantsim.op_types import is_known_op_type, known_op_types

# The data model's names are re-exported: ``fxquant.quantsim.config`` is where users import them.
__all__ = [*config_model.__all__, "BUILTIN_CONFIGS", "load_config"]

logger = logging.getLogger(__name__)

#: Built-in configs selectable by name in :func:`load_config`; files in ``default_configs/``.
BUILTIN_CONFIGS: Mapping[str, str] = MappingProxyType(
    {"default": "default.json", "per_tensor": "per_tensor.json"}
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | QuantSimConfig | None = None,
    *,
    per_channel: bool | None = None,
    source: str | None = None,
) -> QuantSimConfig:
    """Load and validate a quantsim config.

    Args:
        config: ``None`` for the built-in default; ``"default"`` or ``"per_tensor"`` for a built-in
            config; a path (``str`` or ``os.PathLike``) of an AIMET JSON file; an already-loaded
            dict; or a :class:`QuantSimConfig` (returned as is, apart from ``per_channel``). A
            string equal to a built-in name selects the built-in; to load a file with that name,
            pass a ``Path`` or ``"./default"``.
        per_channel: when not ``None``, forces per-channel (``True``) or per-tensor (``False``)
            weight quantization for every op, overriding ``defaults.per_channel_quantization``
            and the ``op_type`` entries alike.
        source: for a dict, what it is in error messages (default ``"quantsim config (dict)"``),
            e.g. ``"checkpoint 'sim.ckpt': config"`` for a config embedded in a file.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: the file is missing or not valid JSON, or the config is invalid; the message
            names the file, the JSON path, the bad value and the allowed values.
        TypeError: ``config`` is of another type.

    Example:
        >>> load_config().per_channel
        True
        >>> load_config("default", per_channel=False).settings_for_op("Conv").per_channel
        False
        >>> load_config({"defaults": {"ops": {}, "params": {}}, "params": {}, "op_type": {},
        ...              "supergroups": [{"op_list": ["Conv", "Relu"]}],
        ...              "model_input": {}, "model_output": {}}).supergroups
        (('Conv', 'Relu'),)
    """
    if per_channel is not None and not isinstance(per_channel, bool):
        raise TypeError(
            f"load_config: per_channel must be True, False or None, got {per_channel!r}")
    if config is None:
        config = "default"
    if isinstance(config, QuantSimConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = _parse(config, JsonValidator(source or "quantsim config (dict)"), "dict")
    elif isinstance(config, str) and config in BUILTIN_CONFIGS:
        cfg = _load_builtin(config)
    elif isinstance(config, (str, os.PathLike)):
        cfg = _load_file(Path(config))
    else:
        raise TypeError(
            "load_config: expected None, a built-in name ("
            + ", ".join(repr(n) for n in BUILTIN_CONFIGS)
            + f"), a file path, a dict or a QuantSimConfig; got {type(config).__name__}"
        )
    if per_channel is not None:
        cfg = replace(
            cfg,
            per_channel=per_channel,
            op_types=MappingProxyType(
                {name: replace(op, per_channel=None) for name, op in cfg.op_types.items()}
            ),
        )
    return cfg


def _load_builtin(name: str) -> QuantSimConfig:
    folder = resources.files("fxquant.quantsim").joinpath("default_configs")
    resource = folder.joinpath(BUILTIN_CONFIGS[name])
    text = resource.read_text(encoding="utf-8")
    v = JsonValidator(f"built-in config {name!r}")
    return _parse(_decode(text, v), v, f"built-in {name!r}")


def _load_file(path: Path) -> QuantSimConfig:
    shown = os.fspath(path)
    v = JsonValidator(f"config file '{shown}'")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        hint = ""
        if not path.suffix and len(path.parts) == 1:
            close = difflib.get_close_matches(shown, list(BUILTIN_CONFIGS), n=1)
            hint = (f" (did you mean the built-in config {close[0]!r}?" if close else " (")
            hint += (" " if close else "") + f"built-in configs: {quoted(BUILTIN_CONFIGS)})"
        raise ConfigError(f"config file '{shown}' not found{hint}") from e
    except IsADirectoryError as e:
        raise ConfigError(f"config file '{shown}' is a directory, expected a JSON file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{shown}' is not UTF-8 text: {e.reason}") from e
    except OSError as e:
        raise ConfigError(f"config file '{shown}' could not be read: {e.strerror or e}") from e
    return _parse(_decode(text, v), v, shown)


def _decode(text: str, v: JsonValidator) -> Any:
    return loads(text, v.where, error_cls=ConfigError, log=logger)


# --------------------------------------------------------------------------------------------------
# Validation (the AIMET schema; the generic checks are fxquant.core.jsonpath's)
# --------------------------------------------------------------------------------------------------

_TOP_KEYS = ("defaults", "params", "op_type", "supergroups", "model_input", "model_output",
             "supergroup_pass_list", "layers")
_TOP_REQUIRED = ("defaults", "params", "op_type", "supergroups", "model_input", "model_output")
_DEFAULTS_KEYS = ("ops", "params", "per_channel_quantization", "strict_symmetric",
                  "unsigned_symmetric", "supported_kernels", "hw_version")
_DEFAULTS_REQUIRED = ("ops", "params")
_OPS_KEYS = ("is_output_quantized", "is_input_quantized", "is_symmetric")
_PARAM_KEYS = ("is_quantized", "is_symmetric")
_OP_TYPE_KEYS = ("is_output_quantized", "is_input_quantized", "is_symmetric",
                 "per_channel_quantization", "params", "encoding_constraints", "supported_kernels")
_CONSTRAINT_KEYS = ("min", "max")
_SUPERGROUP_KEYS = ("op_list",)
_KERNEL_KEYS = ("activation", "param")
_LAYER_KEYS = ("activation_bw", "param_bw")
_KERNEL_DTYPE_KEYS = ("bitwidth", "dtype")
_DTYPES = ("int", "float")
_INT_BITWIDTHS = range(2, 33)
_FLOAT_BITWIDTHS = (8, 16, 32)

# torch-style names people write for ONNX op types, for suggestions.
_TORCH_STYLE_OP_NAMES: Mapping[str, str] = MappingProxyType({
    "relu": "Relu", "relu6": "Clip", "hardtanh": "Clip", "linear": "Gemm", "conv1d": "Conv",
    "conv2d": "Conv", "conv3d": "Conv", "convtranspose2d": "ConvTranspose",
    "batchnorm": "BatchNormalization", "batchnorm1d": "BatchNormalization",
    "batchnorm2d": "BatchNormalization", "silu": "Swish", "hardswish": "HardSwish",
    "hardsigmoid": "HardSigmoid", "leakyrelu": "LeakyRelu", "prelu": "PRelu",
    "maxpool2d": "MaxPool", "avgpool2d": "AveragePool", "adaptiveavgpool2d": "GlobalAveragePool",
    "cat": "Concat", "matmul": "MatMul", "bmm": "MatMul", "embedding": "Gather",
    "upsample": "Resize", "interpolate": "Resize", "permute": "Transpose", "view": "Reshape",
    "mean": "ReduceMean",
})


def _warn_unknown_op(name: str, path: str, v: JsonValidator) -> None:
    if is_known_op_type(name):
        return
    guess = _TORCH_STYLE_OP_NAMES.get(name.lower()) or suggest(name, known_op_types())
    hint = f"; did you mean {guess!r}?" if guess else ""
    logger.warning(
        "%s: %s: %r is not an ONNX op type%s (kept: it matches no op unless a module is "
        "registered with register_op_type under that name)", v.where, path, name, hint)


def _parse_param_override(value: Any, path: str, v: JsonValidator) -> ParamOverride:
    obj = v.object(value, path)
    v.check_keys(obj, path, _PARAM_KEYS)
    return ParamOverride(is_quantized=v.flag(obj, "is_quantized", path),
                         is_symmetric=v.flag(obj, "is_symmetric", path))


def _parse_params(value: Any, path: str, v: JsonValidator) -> Mapping[str, ParamOverride]:
    obj = v.object(value, path)
    return MappingProxyType(
        {name: _parse_param_override(entry, join(path, name), v) for name, entry in obj.items()}
    )


def _parse_constraints(value: Any, path: str, v: JsonValidator) -> EncodingConstraints:
    obj = v.object(value, path)
    v.check_keys(obj, path, _CONSTRAINT_KEYS, _CONSTRAINT_KEYS)
    lo = float(v.number(obj["min"], join(path, "min")))
    hi = float(v.number(obj["max"], join(path, "max")))
    if not lo < hi:
        v.fail(path, f"invalid range min={show(obj['min'])}, max={show(obj['max'])}; "
                     "expected min < max")
    why = "(the range must contain 0, which must be exactly representable)"
    if lo > 0.0:
        v.fail(join(path, "min"),
               f"invalid value {show(obj['min'])}; expected a number <= 0.0 {why}")
    if hi < 0.0:
        v.fail(join(path, "max"),
               f"invalid value {show(obj['max'])}; expected a number >= 0.0 {why}")
    return EncodingConstraints(min=lo, max=hi)


def _parse_kernel_dtype(value: Any, path: str, v: JsonValidator) -> KernelDtype:
    obj = v.object(value, path)
    v.check_keys(obj, path, _KERNEL_DTYPE_KEYS, _KERNEL_DTYPE_KEYS)
    dtype = v.one_of(obj["dtype"], join(path, "dtype"), _DTYPES)
    bits = obj["bitwidth"]
    if isinstance(bits, float) and math.isfinite(bits) and bits.is_integer():
        bits = int(bits)
    allowed = _INT_BITWIDTHS if dtype == "int" else _FLOAT_BITWIDTHS
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        expected = ("an integer from 2 to 32" if dtype == "int"
                    else f"one of {', '.join(str(b) for b in _FLOAT_BITWIDTHS)}")
        v.fail(join(path, "bitwidth"),
               f"invalid value {show(obj['bitwidth'])} for dtype {dtype!r}; expected {expected}")
    return KernelDtype(bitwidth=bits, dtype=dtype)


def _parse_kernels(value: Any, path: str, v: JsonValidator, *, param_required: bool
                   ) -> tuple[SupportedKernel, ...]:
    if not isinstance(value, list) or not value:
        v.fail(path, f"invalid value {show(value)}; expected a non-empty JSON array of "
                     "{'activation': {'bitwidth', 'dtype'}, 'param': {'bitwidth', 'dtype'}}")
    kernels = []
    for i, item in enumerate(value):
        item_path = index(path, i)
        obj = v.object(item, item_path)
        required = _KERNEL_KEYS if param_required else ("activation",)
        v.check_keys(obj, item_path, _KERNEL_KEYS, required)
        kernels.append(SupportedKernel(
            activation=_parse_kernel_dtype(obj["activation"], join(item_path, "activation"), v),
            param=(_parse_kernel_dtype(obj["param"], join(item_path, "param"), v)
                   if "param" in obj else None),
        ))
    return tuple(kernels)


def _parse_op_type(value: Any, path: str, v: JsonValidator) -> OpTypeConfig:
    obj = v.object(value, path)
    v.check_keys(obj, path, _OP_TYPE_KEYS)
    return OpTypeConfig(
        is_output_quantized=v.flag(obj, "is_output_quantized", path),
        is_input_quantized=v.flag(obj, "is_input_quantized", path),
        is_symmetric=v.flag(obj, "is_symmetric", path),
        per_channel=v.flag(obj, "per_channel_quantization", path),
        params=(_parse_params(obj["params"], join(path, "params"), v)
                if "params" in obj else _EMPTY),
        encoding_constraints=(
            _parse_constraints(obj["encoding_constraints"], join(path, "encoding_constraints"), v)
            if "encoding_constraints" in obj else None),
        supported_kernels=(
            _parse_kernels(obj["supported_kernels"], join(path, "supported_kernels"), v,
                           param_required=False)
            if "supported_kernels" in obj else ()),
    )


def _parse_supergroups(value: Any, path: str, v: JsonValidator) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        v.fail(path, f"expected a JSON array of {{'op_list': [...]}} objects, {got(value)}")
    groups = []
    for i, item in enumerate(value):
        item_path = index(path, i)
        obj = v.object(item, item_path)
        v.check_keys(obj, item_path, _SUPERGROUP_KEYS, _SUPERGROUP_KEYS)
        op_list_path = join(item_path, "op_list")
        ops = v.string_list(obj["op_list"], op_list_path, min_items=2, what="ONNX op type names")
        for j, name in enumerate(ops):
            _warn_unknown_op(name, index(op_list_path, j), v)
        groups.append(ops)
    return tuple(groups)


def _parse_layers(value: Any, v: JsonValidator) -> Mapping[str, LayerOverride]:
    obj = v.object(value, "layers")
    out = {}
    for name, entry in obj.items():
        path = join("layers", name)
        fields = v.object(entry, path)
        v.check_keys(fields, path, _LAYER_KEYS)
        if not fields:
            v.fail(path, "empty entry; expected 'activation_bw' and/or 'param_bw'")
        out[name] = LayerOverride(
            activation_bw=(v.int_in_range(fields["activation_bw"], join(path, "activation_bw"),
                                          4, 32, what="an activation bit width")
                           if "activation_bw" in fields else None),
            param_bw=(v.int_in_range(fields["param_bw"], join(path, "param_bw"), 2, 32,
                                     what="a parameter bit width")
                      if "param_bw" in fields else None))
    return MappingProxyType(out)


def _parse(raw: Any, v: JsonValidator, source: str) -> QuantSimConfig:
    root = v.object(raw, "")
    v.check_keys(root, "", _TOP_KEYS, _TOP_REQUIRED)

    defaults = v.object(root["defaults"], "defaults")
    v.check_keys(defaults, "defaults", _DEFAULTS_KEYS, _DEFAULTS_REQUIRED)
    ops = v.object(defaults["ops"], "defaults.ops")
    v.check_keys(ops, "defaults.ops", _OPS_KEYS)
    default_params = _parse_param_override(defaults["params"], "defaults.params", v)
    hw_version = defaults.get("hw_version")
    if hw_version is not None and not isinstance(hw_version, str):
        v.fail("defaults.hw_version", f"invalid value {show(hw_version)}; expected a string "
                                      "such as 'V73'")

    op_type_obj = v.object(root["op_type"], "op_type")
    op_types = {}
    for name, entry in op_type_obj.items():
        entry_path = join("op_type", name)
        _warn_unknown_op(name, entry_path, v)
        op_types[name] = _parse_op_type(entry, entry_path, v)

    model_input = v.object(root["model_input"], "model_input")
    v.check_keys(model_input, "model_input", ("is_input_quantized",))
    model_output = v.object(root["model_output"], "model_output")
    v.check_keys(model_output, "model_output", ("is_output_quantized",))

    def flag(obj: Mapping[str, Any], key: str, path: str) -> bool:
        return bool(v.flag(obj, key, path))

    return QuantSimConfig(
        defaults=OpQuantSettings(
            is_output_quantized=flag(ops, "is_output_quantized", "defaults.ops"),
            is_input_quantized=flag(ops, "is_input_quantized", "defaults.ops"),
            is_symmetric=flag(ops, "is_symmetric", "defaults.ops"),
        ),
        param_defaults=ParamQuantSettings(
            is_quantized=bool(default_params.is_quantized),
            is_symmetric=bool(default_params.is_symmetric),
        ),
        params=_parse_params(root["params"], "params", v),
        op_types=MappingProxyType(op_types),
        supergroups=_parse_supergroups(root["supergroups"], "supergroups", v),
        supergroup_pass_list=(
            v.string_list(root["supergroup_pass_list"], "supergroup_pass_list",
                          what="supergroup pass names")
            if "supergroup_pass_list" in root else ()),
        model_input_quantized=v.flag(model_input, "is_input_quantized", "model_input"),
        model_output_quantized=v.flag(model_output, "is_output_quantized", "model_output"),
        per_channel=flag(defaults, "per_channel_quantization", "defaults"),
        strict_symmetric=flag(defaults, "strict_symmetric", "defaults"),
        unsigned_symmetric=flag(defaults, "unsigned_symmetric", "defaults"),
        hw_version=hw_version,
        supported_kernels=(
            _parse_kernels(defaults["supported_kernels"], "defaults.supported_kernels", v,
                           param_required=True)
            if "supported_kernels" in defaults else ()),
        layers=_parse_layers(root["layers"], v) if "layers" in root else _EMPTY,
        source=source,
    )
