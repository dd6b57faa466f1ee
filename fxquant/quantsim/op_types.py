"""ONNX op type names for torch modules, as the quantsim config file speaks them.

AIMET quantsim config files (``SPEC.md`` §4) address ops by their ONNX op type: ``Conv``, ``Gemm``,
``Relu``, ``Add`` … This module answers "which ONNX op type is this module?" for the quantizer
insertion pass, and lists the op type names a config may mention.

The rule behind every entry: the op type of the ONNX node that produces the module's output in
the exported graph, spelled as the ONNX operator set spells it, except where AIMET's own configs
use another spelling for the same op (``Gemm`` for ``nn.Linear``, as AIMET maps it).

Modules that ``fxquant``'s preparer creates for functionals (``fxquant.nn.Add``, ``Cat`` …) are
looked up by class *name* in :data:`ONNX_OP_TYPE_BY_CLASS_NAME`, which applies only to classes
defined inside the ``fxquant`` package, so a user's own class that happens to be called ``Add``
is not silently treated as one. User modules are mapped with :func:`register_op_type`.

Choices worth knowing:
    * ``nn.SiLU`` maps to ``"Swish"``: ONNX has no ``Silu`` op; ``Swish`` (opset 24, ``alpha=1``)
      is the ONNX name for exactly this function. Older exporters decompose SiLU into
      ``Sigmoid`` → ``Mul``, and AIMET has no SiLU entry at all; mapping SiLU to ``Mul`` would
      make every ``"Mul"`` override in a config apply to SiLU too, which is worse.
    * ``nn.GELU`` maps to ``"Gelu"`` (opset 20, what the dynamo exporter emits), ``nn.LayerNorm``
      to ``"LayerNormalization"`` (opset 17) and ``nn.GroupNorm`` to ``"GroupNormalization"``;
      AIMET's legacy spellings ``GELU`` / ``LayerNorm`` / ``GroupNorm`` are accepted in config files
      (no warning) but are different keys: write the ONNX names.
    * ``nn.AdaptiveAvgPool*`` maps to ``"GlobalAveragePool"`` when every output size is 1 and to
      ``"AveragePool"`` otherwise (likewise ``AdaptiveMaxPool*``).
    * Composite modules (``nn.MultiheadAttention``, ``nn.Transformer*``) have no single op type:
      :func:`onnx_op_type` returns ``None`` for them.
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Mapping

import torch.nn as nn

__all__ = [
    "DATA_MOVEMENT_OP_TYPES",
    "KNOWN_ONNX_OP_TYPES",
    "ONNX_OP_TYPE_BY_CLASS_NAME",
    "PER_CHANNEL_AXIS_BY_OP_TYPE",
    "is_known_op_type",
    "known_op_types",
    "onnx_op_type",
    "register_op_type",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Op type names a config file may mention.
# --------------------------------------------------------------------------------------------------

#: Operators of the default ONNX domain (ai.onnx, up to opset 24).
KNOWN_ONNX_OP_TYPES: frozenset[str] = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow
Cast CastLike Ceil Celu CenterCropPad Clip Col2Im Compress Concat ConcatFromSequence Constant
ConstantOfShape Conv ConvInteger ConvTranspose Cos Cosh CumSum DFT DeformConv DepthToSpace
DequantizeLinear Det Div Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageDecoder InstanceNormalization IsInf IsNaN LRN LSTM
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul
MatMulInteger Max MaxPool MaxRoiPool MaxUnpool Mean MeanVarianceNormalization MelWeightMatrix Min
Mish Mod Mul Multinomial Neg NegativeLogLikelihoodLoss NonMaxSuppression NonZero Not OneHot
Optional OptionalGetElement OptionalHasElement Or PRelu Pad Pow QLinearConv QLinearMatMul
QuantizeLinear RMSNormalization RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare RegexFullMatch Relu Reshape Resize ReverseSequence RoiAlign
RotaryEmbedding Round STFT Scan Scatter ScatterElements ScatterND Selu SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap Shape
Shrink Sigmoid Sign Sin Sinh Size Slice Softmax SoftmaxCrossEntropyLoss Softplus Softsign
SpaceToDepth Split SplitToSequence Sqrt Squeeze StringConcat StringNormalizer StringSplit Sub Sum
Swish Tan Tanh TensorScatter TfIdfVectorizer ThresholdedRelu Tile TopK Transpose Trilu Unique
Unsqueeze Upsample Where Xor
""".split())

#: Names that are not ONNX operators but appear in AIMET / QNN config files (AIMET's connected-graph
#: spellings and QNN ops). A config naming them loads without a warning.
_AIMET_OP_TYPE_NAMES: frozenset[str] = frozenset(
    ["BatchPermutation", "ChannelShuffle", "CropAndResize", "GELU", "GroupNorm", "LayerNorm"]
)

# User registrations: class -> op type, and extra names a config may mention.
_USER_OP_TYPE_BY_CLASS: dict[type, str] = {}
_USER_OP_TYPE_NAMES: set[str] = set()


def known_op_types() -> frozenset[str]:
    """All op type names a config may mention without a warning.

    Returns:
        The ONNX operators, AIMET's non-ONNX spellings and every name given to
        :func:`register_op_type` so far.

    Example:
        >>> "Conv" in known_op_types()
        True
    """
    return KNOWN_ONNX_OP_TYPES | _AIMET_OP_TYPE_NAMES | frozenset(_USER_OP_TYPE_NAMES)


def is_known_op_type(name: str) -> bool:
    """Whether ``name`` is an op type a config may mention (see :func:`known_op_types`).

    Example:
        >>> is_known_op_type("Relu"), is_known_op_type("ReLU")
        (True, False)
    """
    return (name in KNOWN_ONNX_OP_TYPES or name in _AIMET_OP_TYPE_NAMES
            or name in _USER_OP_TYPE_NAMES)


# --------------------------------------------------------------------------------------------------
# Facts about op types the insertion pass needs.
# --------------------------------------------------------------------------------------------------

#: Op types whose output holds only copies of elements of their (single) data input, so the output
#: can reuse the input's encoding exactly instead of getting a quantizer of its own (no extra
#: noise), and which targets run with equal input and output scales.
#: Deliberately left out:
#:   * ``Concat`` / ``Max`` / ``Min`` / ``Where``: several inputs with different encodings.
#:   * ``AveragePool`` / ``GlobalAveragePool`` / ``ReduceMean`` / ``Resize``: outputs are new values
#:     (means, interpolations); only nearest-neighbour Resize would qualify, and that depends on
#:     the mode, which the op type does not tell.
#:   * ``Relu`` / ``Clip``: outputs are representable, but the range shrinks, and targets requantize
#:     (a fresh encoding gives a finer grid).
#:   * ``Pad``: encoding-preserving only for reflect/edge modes or a zero constant; the pass must
#:     look at the pad value itself.
#:   * ``ReduceMax`` / ``ReduceMin`` / ``GlobalMaxPool``: element copies, but targets give them
#:     their own encoding; only ``MaxPool`` is required to keep its input's scale (ORT's QDQ
#:     MaxPool, QNN).
DATA_MOVEMENT_OP_TYPES: frozenset[str] = frozenset([
    "ChannelShuffle", "DepthToSpace", "Dropout", "Expand", "Flatten", "Gather", "GatherElements",
    "GatherND", "Identity", "MaxPool", "Reshape", "Slice", "SpaceToDepth", "Split", "Squeeze",
    "Tile", "Transpose", "Unsqueeze",
])

#: Axis of the weight that per-channel quantization runs along, per op type (``SPEC.md`` §1):
#: output channels are axis 0 for Conv and Gemm (``nn.Linear`` weights are ``[out, in]``), but
#: axis 1 for ConvTranspose (weights are ``[in, out / groups, ...]``; ONNX Runtime requires 1).
PER_CHANNEL_AXIS_BY_OP_TYPE: Mapping[str, int] = MappingProxyType(
    {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}
)

# --------------------------------------------------------------------------------------------------
# torch module -> op type
# --------------------------------------------------------------------------------------------------


def _classes(*names: str) -> list[type]:
    """The ``torch.nn`` classes with these names that this torch version has."""
    return [getattr(nn, name) for name in names if hasattr(nn, name)]


_BUILTIN_GROUPS: list[tuple[list[type], str | None]] = [
    (_classes("Conv1d", "Conv2d", "Conv3d"), "Conv"),
    (_classes("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"), "ConvTranspose"),
    (_classes("Linear"), "Gemm"),
    (_classes("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"), "BatchNormalization"),
    (_classes("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"), "InstanceNormalization"),
    (_classes("LayerNorm"), "LayerNormalization"),
    (_classes("GroupNorm"), "GroupNormalization"),
    (_classes("RMSNorm"), "RMSNormalization"),
    (_classes("LocalResponseNorm"), "LRN"),
    (_classes("ReLU"), "Relu"),
    (_classes("Hardtanh", "ReLU6"), "Clip"),
    (_classes("LeakyReLU"), "LeakyRelu"),
    (_classes("PReLU"), "PRelu"),
    (_classes("ELU"), "Elu"),
    (_classes("SELU"), "Selu"),
    (_classes("CELU"), "Celu"),
    (_classes("GELU"), "Gelu"),
    (_classes("SiLU"), "Swish"),
    (_classes("Mish"), "Mish"),
    (_classes("Sigmoid"), "Sigmoid"),
    (_classes("Tanh"), "Tanh"),
    (_classes("Hardswish"), "HardSwish"),
    (_classes("Hardsigmoid"), "HardSigmoid"),
    (_classes("Softplus"), "Softplus"),
    (_classes("Softsign"), "Softsign"),
    (_classes("Hardshrink", "Softshrink"), "Shrink"),
    (_classes("Softmax", "Softmax2d"), "Softmax"),
    (_classes("LogSoftmax"), "LogSoftmax"),
    (_classes("MaxPool1d", "MaxPool2d", "MaxPool3d"), "MaxPool"),
    (_classes("AvgPool1d", "AvgPool2d", "AvgPool3d"), "AveragePool"),
    (_classes("LPPool1d", "LPPool2d", "LPPool3d"), "LpPool"),
    (_classes("Flatten"), "Flatten"),
    (_classes("Unflatten"), "Reshape"),
    (_classes("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
              "FeatureAlphaDropout"), "Dropout"),
    (_classes("Identity"), "Identity"),
    (_classes("Embedding"), "Gather"),
    (_classes("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d"), "Resize"),
    (_classes("PixelShuffle"), "DepthToSpace"),
    (_classes("PixelUnshuffle"), "SpaceToDepth"),
    (_classes("ChannelShuffle"), "ChannelShuffle"),
    (_classes("ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d",
              "ConstantPad3d", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
              "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "CircularPad1d",
              "CircularPad2d", "CircularPad3d"), "Pad"),
    (_classes("LSTM"), "LSTM"),
    (_classes("GRU"), "GRU"),
    (_classes("RNN"), "RNN"),
    # Composite modules: many ONNX nodes, no single op type.
    (_classes("MultiheadAttention", "Transformer", "TransformerEncoder", "TransformerDecoder",
              "TransformerEncoderLayer", "TransformerDecoderLayer"), None),
]

_BUILTIN_OP_TYPE_BY_CLASS: Mapping[type, str | None] = MappingProxyType(
    {cls: op_type for classes, op_type in _BUILTIN_GROUPS for cls in classes}
)

_ADAPTIVE_POOLS: Mapping[type, tuple[str, str]] = MappingProxyType({
    **{cls: ("GlobalAveragePool", "AveragePool")
       for cls in _classes("AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d")},
    **{cls: ("GlobalMaxPool", "MaxPool")
       for cls in _classes("AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d")},
})

#: Op types of the modules ``fxquant``'s preparer creates for functionals and tensor methods, keyed
#: by class name. Applies only to classes defined in the ``fxquant`` package (see the module doc).
ONNX_OP_TYPE_BY_CLASS_NAME: dict[str, str] = {
    # arithmetic
    "Add": "Add", "Sub": "Sub", "Mul": "Mul", "Div": "Div", "Pow": "Pow", "Neg": "Neg",
    "Abs": "Abs", "Exp": "Exp", "Log": "Log", "Sqrt": "Sqrt", "Reciprocal": "Reciprocal",
    "Erf": "Erf", "Sin": "Sin", "Cos": "Cos", "Floor": "Floor", "Ceil": "Ceil", "Round": "Round",
    "Maximum": "Max", "Minimum": "Min", "Where": "Where", "CumSum": "CumSum",
    # matrix products
    "MatMul": "MatMul", "BMM": "MatMul", "Bmm": "MatMul", "Einsum": "Einsum",
    "Conv": "Conv", "ConvTranspose": "ConvTranspose", "Linear": "Gemm",
    # joins and splits
    "Cat": "Concat", "Concat": "Concat", "Stack": "Concat", "Split": "Split", "Chunk": "Split",
    # layout / data movement
    "Reshape": "Reshape", "View": "Reshape", "Flatten": "Flatten", "Permute": "Transpose",
    "Transpose": "Transpose", "Squeeze": "Squeeze", "Unsqueeze": "Unsqueeze", "GetItem": "Slice",
    "Slice": "Slice", "Narrow": "Slice", "Gather": "Gather", "IndexSelect": "Gather",
    "Expand": "Expand", "Repeat": "Tile", "Tile": "Tile", "Pad": "Pad", "Contiguous": "Identity",
    "Clone": "Identity", "Identity": "Identity", "PixelShuffle": "DepthToSpace",
    "PixelUnshuffle": "SpaceToDepth", "Cast": "Cast",
    # resampling and pooling ("Pool" is refined by the function it wraps, see _FUNCTION_NAMES)
    "Interpolate": "Resize", "MaxPool": "MaxPool", "AvgPool": "AveragePool", "Pool": "AveragePool",
    # reductions
    "Mean": "ReduceMean", "Sum": "ReduceSum", "AMax": "ReduceMax", "AMin": "ReduceMin",
    # activations
    "Relu": "Relu", "ReLU": "Relu", "Relu6": "Clip", "Clamp": "Clip", "Clip": "Clip",
    "Hardtanh": "Clip", "LeakyRelu": "LeakyRelu", "Gelu": "Gelu", "GELU": "Gelu",
    "Silu": "Swish", "SiLU": "Swish", "Sigmoid": "Sigmoid", "Tanh": "Tanh",
    "Hardswish": "HardSwish", "Hardsigmoid": "HardSigmoid", "Softmax": "Softmax",
    "LogSoftmax": "LogSoftmax", "Softplus": "Softplus", "Elu": "Elu", "Mish": "Mish",
    # normalization
    "BatchNorm": "BatchNormalization", "LayerNorm": "LayerNormalization",
    "GroupNorm": "GroupNormalization", "InstanceNorm": "InstanceNormalization",
    "Normalize": "LayerNormalization",
}

# fxquant.nn modules that stand for several functions ("Pool" for every pooling functional,
# "Normalize" for layer_norm / group_norm / normalize, "Sqrt" for sqrt and rsqrt) are refined by the
# name of the function or tensor method they wrap (their ``fn`` / ``method`` attribute).
# Adaptive average pooling maps to AveragePool: the output size is a call argument, unknown here.
_FUNCTION_NAMES: Mapping[str, str] = MappingProxyType({
    "max_pool1d": "MaxPool", "max_pool2d": "MaxPool", "max_pool3d": "MaxPool",
    "adaptive_max_pool1d": "MaxPool", "adaptive_max_pool2d": "MaxPool",
    "adaptive_max_pool3d": "MaxPool",
    "avg_pool1d": "AveragePool", "avg_pool2d": "AveragePool", "avg_pool3d": "AveragePool",
    "adaptive_avg_pool1d": "AveragePool", "adaptive_avg_pool2d": "AveragePool",
    "adaptive_avg_pool3d": "AveragePool",
    "layer_norm": "LayerNormalization", "group_norm": "GroupNormalization",
    "normalize": "LpNormalization", "rsqrt": "Reciprocal",
})


def register_op_type(cls: type[nn.Module], onnx_name: str) -> type[nn.Module]:
    """Map a module class (and its subclasses) to an ONNX op type name.

    Registrations win over the built-in mapping, and the name becomes one a config file may
    mention without a warning.

    Args:
        cls: an ``nn.Module`` subclass.
        onnx_name: the op type name config files use for it, e.g. ``"Conv"`` or a custom name.

    Returns:
        ``cls``, unchanged.

    Raises:
        TypeError: ``cls`` is not an ``nn.Module`` subclass.
        ValueError: ``onnx_name`` is not a non-empty string.

    Example:
        >>> class SameConv(nn.Conv2d): ...
        >>> register_op_type(SameConv, "Conv") is SameConv
        True
        >>> onnx_op_type(SameConv(1, 1, 1))
        'Conv'
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_op_type: expected an nn.Module subclass, got {cls!r}")
    if not isinstance(onnx_name, str) or not onnx_name.strip():
        raise ValueError(
            "register_op_type: onnx_name must be a non-empty string such as 'Conv', "
            f"got {onnx_name!r}"
        )
    previous = _USER_OP_TYPE_BY_CLASS.get(cls)
    if previous is not None and previous != onnx_name:
        logger.warning("register_op_type: %s was mapped to %r; now mapped to %r",
                       cls.__qualname__, previous, onnx_name)
    _USER_OP_TYPE_BY_CLASS[cls] = onnx_name
    _USER_OP_TYPE_NAMES.add(onnx_name)
    return cls


def _is_fxquant_class(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module == "fxquant" or module.startswith("fxquant.")


def _adaptive_pool_op_type(module: nn.Module, names: tuple[str, str]) -> str:
    global_name, local_name = names
    size = module.output_size
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return global_name if all(s == 1 for s in sizes) else local_name


def onnx_op_type(module: nn.Module) -> str | None:
    """The ONNX op type a quantsim config uses for ``module``, or ``None`` if it has none.

    Lookup walks the class's MRO (so subclasses of ``nn.Conv2d`` are ``"Conv"``); at each class it
    tries, in order, :func:`register_op_type` registrations, the built-in ``torch.nn`` mapping, and
    for classes defined in ``fxquant`` the :data:`ONNX_OP_TYPE_BY_CLASS_NAME` registry.

    Args:
        module: a module instance (some op types depend on its attributes, e.g. adaptive pools).

    Returns:
        The op type name, or ``None`` for composite or unknown modules (the insertion pass then
        applies the config's defaults).

    Example:
        >>> onnx_op_type(nn.Conv2d(3, 8, 3)), onnx_op_type(nn.ReLU6()), onnx_op_type(nn.GELU())
        ('Conv', 'Clip', 'Gelu')
        >>> onnx_op_type(nn.AdaptiveAvgPool2d(1)), onnx_op_type(nn.AdaptiveAvgPool2d((7, 7)))
        ('GlobalAveragePool', 'AveragePool')
        >>> onnx_op_type(nn.MultiheadAttention(8, 2)) is None
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"onnx_op_type: expected an nn.Module instance, got {type(module).__name__}")
    for cls in type(module).__mro__:
        if cls is nn.Module:
            break
        if cls in _USER_OP_TYPE_BY_CLASS:
            return _USER_OP_TYPE_BY_CLASS[cls]
        if cls in _ADAPTIVE_POOLS:
            return _adaptive_pool_op_type(module, _ADAPTIVE_POOLS[cls])
        if cls in _BUILTIN_OP_TYPE_BY_CLASS:
            return _BUILTIN_OP_TYPE_BY_CLASS[cls]
        if _is_fxquant_class(cls) and cls.__name__ in ONNX_OP_TYPE_BY_CLASS_NAME:
            refined = _FUNCTION_NAMES.get(_wrapped_function_name(module) or "")
            return refined or ONNX_OP_TYPE_BY_CLASS_NAME[cls.__name__]
    return None


def _wrapped_function_name(module: nn.Module) -> str | None:
    """Name of the function or tensor method an ``fxquant.nn`` functional module calls."""
    method = getattr(module, "method", None)
    if isinstance(method, str):
        return method
    fn = getattr(module, "fn", None)
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else None
