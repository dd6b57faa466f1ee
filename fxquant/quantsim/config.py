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
"""
from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, NoReturn, Sequence

from fxquant.errors import ConfigError
from fxquant.quantsim.op_types import is_known_op_type, known_op_types

__all__ = [
    "BUILTIN_CONFIGS",
    "EncodingConstraints",
    "KernelDtype",
    "OpQuantSettings",
    "OpTypeConfig",
    "ParamOverride",
    "ParamQuantSettings",
    "QuantSimConfig",
    "ResolvedOpSettings",
    "SupportedKernel",
    "load_config",
]

logger = logging.getLogger(__name__)

#: Built-in configs selectable by name in :func:`load_config`; files in ``default_configs/``.
BUILTIN_CONFIGS: Mapping[str, str] = MappingProxyType(
    {"default": "default.json", "per_tensor": "per_tensor.json"}
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# --------------------------------------------------------------------------------------------------
# The parsed config
# --------------------------------------------------------------------------------------------------


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
            >>> s = load_config("default").settings_for_op("Conv")
            >>> s.param("weight").is_quantized, s.param("bias").is_quantized
            (True, False)
        """
        return self.params.get(name, self.default_param)


@dataclass(frozen=True)
class QuantSimConfig:
    """A validated quantsim config. Build it with :func:`load_config`.

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
    source: str = field(default="", compare=False)

    def settings_for_op(self, onnx_op_type: str | None) -> ResolvedOpSettings:
        """Resolve the settings for ops of one ONNX op type.

        Args:
            onnx_op_type: e.g. ``"Conv"`` (see ``op_types.onnx_op_type``); ``None`` or a type the
                config does not mention gets the defaults.

        Returns:
            The resolved settings (defaults < top-level ``params`` < ``op_type``).

        Example:
            >>> cfg = load_config({"defaults": {"ops": {"is_output_quantized": "True"},
            ...                                 "params": {"is_quantized": "True"}},
            ...                    "params": {"bias": {"is_quantized": "False"}},
            ...                    "op_type": {"Gather": {"is_output_quantized": "False"}},
            ...                    "supergroups": [], "model_input": {}, "model_output": {}})
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
            >>> cfg = load_config("default")
            >>> load_config(cfg.to_dict()) == cfg
            True
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


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | QuantSimConfig | None = None,
    *,
    per_channel: bool | None = None,
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
        cfg = _parse(config, _Ctx("quantsim config (dict)", "dict"))
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
    ctx = _Ctx(f"built-in config {name!r}", f"built-in {name!r}")
    return _parse(_decode(text, ctx), ctx)


def _load_file(path: Path) -> QuantSimConfig:
    shown = os.fspath(path)
    ctx = _Ctx(f"config file '{shown}'", shown)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        hint = ""
        if not path.suffix and len(path.parts) == 1:
            close = difflib.get_close_matches(shown, list(BUILTIN_CONFIGS), n=1)
            hint = (f" (did you mean the built-in config {close[0]!r}?" if close else " (")
            hint += (" " if close else "") + f"built-in configs: {_quoted(BUILTIN_CONFIGS)})"
        raise ConfigError(f"config file '{shown}' not found{hint}") from e
    except IsADirectoryError as e:
        raise ConfigError(f"config file '{shown}' is a directory, expected a JSON file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{shown}' is not UTF-8 text: {e.reason}") from e
    except OSError as e:
        raise ConfigError(f"config file '{shown}' could not be read: {e.strerror or e}") from e
    return _parse(_decode(text, ctx), ctx)


def _decode(text: str, ctx: _Ctx) -> Any:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                logger.warning("%s: key %r appears twice in one JSON object; the last one is used",
                               ctx.where, key)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{ctx.where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

_FLAG_VALUES = ("True", "False")
_FLAG_ALLOWED = "expected one of 'True', 'False' (JSON true/false also accepted)"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_TOP_KEYS = ("defaults", "params", "op_type", "supergroups", "model_input", "model_output",
             "supergroup_pass_list")
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
_KERNEL_DTYPE_KEYS = ("bitwidth", "dtype")
_DTYPES = ("int", "float")
_INT_BITWIDTHS = range(2, 33)
_FLOAT_BITWIDTHS = (8, 16, 32)


@dataclass(frozen=True)
class _Ctx:
    """Where the config came from: ``where`` prefixes messages, ``source`` is stored."""

    where: str
    source: str

    def fail(self, path: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.where}: {path}: {message}")


def _join(path: str, key: str) -> str:
    """JSON path of ``key`` inside the object at ``path`` (``""`` is the root)."""
    part = key if _IDENT.match(key) else json.dumps(key)
    if not path:
        return part if _IDENT.match(key) else f"[{part}]"
    return f"{path}.{part}" if _IDENT.match(key) else f"{path}[{part}]"


def _show(value: Any) -> str:
    """A short rendering of a JSON value for messages."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _suggest(word: str, candidates: Iterable[str]) -> str | None:
    candidates = list(candidates)
    folded = {c.lower(): c for c in candidates}
    if word.lower() in folded:
        return folded[word.lower()]
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _got(value: Any) -> str:
    """``"got <type> <value>"`` for messages."""
    return "got null" if value is None else f"got {_json_type(value)} {_show(value)}"


def _object(value: Any, path: str, ctx: _Ctx) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        ctx.fail(path or "<root>", f"expected a JSON object, {_got(value)}")
    for key in value:
        if not isinstance(key, str):
            ctx.fail(path or "<root>", f"keys must be strings, got {_show(key)}")
    return value


def _check_keys(obj: Mapping[str, Any], path: str, known: Sequence[str],
                required: Sequence[str], ctx: _Ctx) -> None:
    for key in obj:
        if key not in known:
            guess = _suggest(key, known)
            hint = f"did you mean {guess!r}? " if guess else ""
            ctx.fail(_join(path, key), f"unknown key {key!r}; {hint}known keys: {_quoted(known)}")
    for key in required:
        if key not in obj:
            ctx.fail(path or "<root>",
                     f"missing required key {key!r}; required keys: {_quoted(required)}")


def _flag(obj: Mapping[str, Any], key: str, path: str, ctx: _Ctx) -> bool | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool):
        return value
    if value in _FLAG_VALUES:
        return value == "True"
    hint = ""
    if isinstance(value, str):
        guess = _suggest(value.strip(), _FLAG_VALUES)
        if guess is not None and guess.lower() == value.strip().lower():
            hint = f" (did you mean {guess!r}?)"
    ctx.fail(_join(path, key), f"invalid value {_show(value)}{hint}; {_FLAG_ALLOWED}")


def _string_list(value: Any, path: str, ctx: _Ctx, *, min_items: int = 0,
                 what: str = "strings") -> tuple[str, ...]:
    if not isinstance(value, list):
        ctx.fail(path, f"expected a JSON array of {what}, {_got(value)}")
    if len(value) < min_items:
        ctx.fail(path, f"expected at least {min_items} items, got {len(value)}: {_show(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            ctx.fail(f"{path}[{i}]",
                     f"invalid value {_show(item)}; expected a non-empty string ({what})")
    return tuple(value)


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


def _warn_unknown_op(name: str, path: str, ctx: _Ctx) -> None:
    if is_known_op_type(name):
        return
    guess = _TORCH_STYLE_OP_NAMES.get(name.lower()) or _suggest(name, known_op_types())
    hint = f"; did you mean {guess!r}?" if guess else ""
    logger.warning(
        "%s: %s: %r is not an ONNX op type%s (kept: it matches no op unless a module is "
        "registered with register_op_type under that name)", ctx.where, path, name, hint)


def _parse_param_override(value: Any, path: str, ctx: _Ctx) -> ParamOverride:
    obj = _object(value, path, ctx)
    _check_keys(obj, path, _PARAM_KEYS, (), ctx)
    return ParamOverride(is_quantized=_flag(obj, "is_quantized", path, ctx),
                         is_symmetric=_flag(obj, "is_symmetric", path, ctx))


def _parse_params(value: Any, path: str, ctx: _Ctx) -> Mapping[str, ParamOverride]:
    obj = _object(value, path, ctx)
    return MappingProxyType(
        {name: _parse_param_override(entry, _join(path, name), ctx) for name, entry in obj.items()}
    )


def _parse_number(obj: Mapping[str, Any], key: str, path: str, ctx: _Ctx) -> float:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        ctx.fail(_join(path, key), f"invalid value {_show(value)}; expected a finite number")
    return float(value)


def _parse_constraints(value: Any, path: str, ctx: _Ctx) -> EncodingConstraints:
    obj = _object(value, path, ctx)
    _check_keys(obj, path, _CONSTRAINT_KEYS, _CONSTRAINT_KEYS, ctx)
    lo = _parse_number(obj, "min", path, ctx)
    hi = _parse_number(obj, "max", path, ctx)
    if not lo < hi:
        ctx.fail(path, f"invalid range min={_show(obj['min'])}, max={_show(obj['max'])}; "
                       "expected min < max")
    why = "(the range must contain 0, which must be exactly representable)"
    if lo > 0.0:
        ctx.fail(_join(path, "min"),
                 f"invalid value {_show(obj['min'])}; expected a number <= 0.0 {why}")
    if hi < 0.0:
        ctx.fail(_join(path, "max"),
                 f"invalid value {_show(obj['max'])}; expected a number >= 0.0 {why}")
    return EncodingConstraints(min=lo, max=hi)


def _parse_kernel_dtype(value: Any, path: str, ctx: _Ctx) -> KernelDtype:
    obj = _object(value, path, ctx)
    _check_keys(obj, path, _KERNEL_DTYPE_KEYS, _KERNEL_DTYPE_KEYS, ctx)
    dtype = obj["dtype"]
    if dtype not in _DTYPES:
        ctx.fail(_join(path, "dtype"),
                 f"invalid value {_show(dtype)}; expected one of {_quoted(_DTYPES)}")
    bits = obj["bitwidth"]
    if isinstance(bits, float) and bits.is_integer():
        bits = int(bits)
    allowed = _INT_BITWIDTHS if dtype == "int" else _FLOAT_BITWIDTHS
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        expected = ("an integer from 2 to 32" if dtype == "int"
                    else f"one of {', '.join(str(b) for b in _FLOAT_BITWIDTHS)}")
        ctx.fail(_join(path, "bitwidth"),
                 f"invalid value {_show(obj['bitwidth'])} for dtype {dtype!r}; expected {expected}")
    return KernelDtype(bitwidth=bits, dtype=dtype)


def _parse_kernels(value: Any, path: str, ctx: _Ctx, *, param_required: bool
                   ) -> tuple[SupportedKernel, ...]:
    if not isinstance(value, list) or not value:
        ctx.fail(path, f"invalid value {_show(value)}; expected a non-empty JSON array of "
                       "{'activation': {'bitwidth', 'dtype'}, 'param': {'bitwidth', 'dtype'}}")
    kernels = []
    for i, item in enumerate(value):
        item_path = f"{path}[{i}]"
        obj = _object(item, item_path, ctx)
        required = _KERNEL_KEYS if param_required else ("activation",)
        _check_keys(obj, item_path, _KERNEL_KEYS, required, ctx)
        kernels.append(SupportedKernel(
            activation=_parse_kernel_dtype(obj["activation"], _join(item_path, "activation"), ctx),
            param=(_parse_kernel_dtype(obj["param"], _join(item_path, "param"), ctx)
                   if "param" in obj else None),
        ))
    return tuple(kernels)


def _parse_op_type(value: Any, path: str, ctx: _Ctx) -> OpTypeConfig:
    obj = _object(value, path, ctx)
    _check_keys(obj, path, _OP_TYPE_KEYS, (), ctx)
    return OpTypeConfig(
        is_output_quantized=_flag(obj, "is_output_quantized", path, ctx),
        is_input_quantized=_flag(obj, "is_input_quantized", path, ctx),
        is_symmetric=_flag(obj, "is_symmetric", path, ctx),
        per_channel=_flag(obj, "per_channel_quantization", path, ctx),
        params=(_parse_params(obj["params"], _join(path, "params"), ctx)
                if "params" in obj else _EMPTY),
        encoding_constraints=(
            _parse_constraints(obj["encoding_constraints"], _join(path, "encoding_constraints"),
                               ctx)
            if "encoding_constraints" in obj else None),
        supported_kernels=(
            _parse_kernels(obj["supported_kernels"], _join(path, "supported_kernels"), ctx,
                           param_required=False)
            if "supported_kernels" in obj else ()),
    )


def _parse_supergroups(value: Any, path: str, ctx: _Ctx) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        ctx.fail(path, f"expected a JSON array of {{'op_list': [...]}} objects, {_got(value)}")
    groups = []
    for i, item in enumerate(value):
        item_path = f"{path}[{i}]"
        obj = _object(item, item_path, ctx)
        _check_keys(obj, item_path, _SUPERGROUP_KEYS, _SUPERGROUP_KEYS, ctx)
        op_list_path = _join(item_path, "op_list")
        ops = _string_list(obj["op_list"], op_list_path, ctx, min_items=2,
                           what="ONNX op type names")
        for j, name in enumerate(ops):
            _warn_unknown_op(name, f"{op_list_path}[{j}]", ctx)
        groups.append(ops)
    return tuple(groups)


def _parse(raw: Any, ctx: _Ctx) -> QuantSimConfig:
    root = _object(raw, "", ctx)
    _check_keys(root, "", _TOP_KEYS, _TOP_REQUIRED, ctx)

    defaults = _object(root["defaults"], "defaults", ctx)
    _check_keys(defaults, "defaults", _DEFAULTS_KEYS, _DEFAULTS_REQUIRED, ctx)
    ops = _object(defaults["ops"], "defaults.ops", ctx)
    _check_keys(ops, "defaults.ops", _OPS_KEYS, (), ctx)
    default_params = _parse_param_override(defaults["params"], "defaults.params", ctx)
    hw_version = defaults.get("hw_version")
    if hw_version is not None and not isinstance(hw_version, str):
        ctx.fail("defaults.hw_version", f"invalid value {_show(hw_version)}; expected a string "
                                        "such as 'V73'")

    op_type_obj = _object(root["op_type"], "op_type", ctx)
    op_types = {}
    for name, entry in op_type_obj.items():
        entry_path = _join("op_type", name)
        _warn_unknown_op(name, entry_path, ctx)
        op_types[name] = _parse_op_type(entry, entry_path, ctx)

    model_input = _object(root["model_input"], "model_input", ctx)
    _check_keys(model_input, "model_input", ("is_input_quantized",), (), ctx)
    model_output = _object(root["model_output"], "model_output", ctx)
    _check_keys(model_output, "model_output", ("is_output_quantized",), (), ctx)

    def flag(obj: Mapping[str, Any], key: str, path: str) -> bool:
        value = _flag(obj, key, path, ctx)
        return bool(value)

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
        params=_parse_params(root["params"], "params", ctx),
        op_types=MappingProxyType(op_types),
        supergroups=_parse_supergroups(root["supergroups"], "supergroups", ctx),
        supergroup_pass_list=(
            _string_list(root["supergroup_pass_list"], "supergroup_pass_list", ctx,
                         what="supergroup pass names")
            if "supergroup_pass_list" in root else ()),
        model_input_quantized=_flag(model_input, "is_input_quantized", "model_input", ctx),
        model_output_quantized=_flag(model_output, "is_output_quantized", "model_output", ctx),
        per_channel=flag(defaults, "per_channel_quantization", "defaults"),
        strict_symmetric=flag(defaults, "strict_symmetric", "defaults"),
        unsigned_symmetric=flag(defaults, "unsigned_symmetric", "defaults"),
        hw_version=hw_version,
        supported_kernels=(
            _parse_kernels(defaults["supported_kernels"], "defaults.supported_kernels", ctx,
                           param_required=True)
            if "supported_kernels" in defaults else ()),
        source=ctx.source,
    )
