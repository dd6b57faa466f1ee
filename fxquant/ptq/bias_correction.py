"""Bias correction (Nagel et al. 2019, "Data-Free Quantization"), with AIMET's call shape.

Quantizing weights (``Q(W) = W + ΔW``) shifts each output channel's mean by ``ΔW·E[x]``, and the
shifts accumulate. :func:`correct_bias` subtracts them from the conv/linear biases of the float
model, in place, so that once quantized each layer's per-channel mean matches FP32:

* **empirical** (default): ``E[FP32 output] − E[quantized output]`` per output channel over
  ``num_bias_correct_samples`` samples. As in AIMET, the quantized network is a
  ``QuantizationSimModel`` with every *output* quantizer disabled (weights and the model input
  quantized, activations float); a layer's quantized output is computed through the sim with the
  earlier layers already corrected (quantized inputs, not float inputs with quantized weights).
* **analytical** (``perform_only_empirical_bias_corr=False``): for a layer fed by a batch norm
  (and ReLU/ReLU6), ``E[x]`` is the mean of ``N(β, γ²)`` (clipped at 0, or 0 and 6) and the
  correction ``−ΔW·E[x]``. Other layers are corrected empirically.

The sim folds batch norms, so corrections are computed for folded layers; where a batch norm
follows the layer in ``model``, the correction goes to that batch norm's β (the same change).

Example:
    >>> params = QuantParams(weight_bw=4, act_bw=8, quant_scheme="tf_enhanced")
    >>> correct_bias(model, params, num_quant_samples=256, data_loader=loader,
    ...              num_bias_correct_samples=256)
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import itertools
import logging
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.fx
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from fxquant.core.layers import iter_layers
from fxquant.errors import ConfigError
from fxquant.ptq._data import capture_layer_io, run_batches
from fxquant.quantsim.quant_scheme import QuantScheme
from fxquant.quantsim.quantsim import QuantizationSimModel
from fxquant.tracing import trace

__all__ = ["ActivationType", "ConvBnInfoType", "QuantParams", "correct_bias",
           "find_all_conv_bn_with_activation"]

logger = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LAYERS = (*_CONV, *_CONV_T, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm


class ActivationType(enum.Enum):
    """The activation after a batch norm (AIMET's ``aimet_common.defs.ActivationType``)."""

    no_activation = 0
    relu = 1
    relu6 = 2


@dataclasses.dataclass
class ConvBnInfoType:
    """The batch norms (and activations) around one conv/linear layer, as AIMET's type.

    Attributes:
        input_bn: the BatchNorm whose output (through ``in_activation_type``) feeds the layer.
        output_bn: the BatchNorm that takes the layer's output.
        in_activation_type / out_activation_type: after ``input_bn`` / ``output_bn``.

    Example:
        >>> find_all_conv_bn_with_activation(model)[model.conv2].input_bn is model.bn1
        True
    """

    input_bn: Any = None
    output_bn: Any = None
    in_activation_type: ActivationType = ActivationType.no_activation
    out_activation_type: ActivationType = ActivationType.no_activation


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """How bias correction quantizes the model (AIMET's ``QuantParams``), validated.

    Args:
        weight_bw: weight bit width (2–32).
        act_bw: activation bit width (4–32); activations are not quantized while the correction
            is measured (as in AIMET), so it only sets the model-input quantizer.
        round_mode: ``"nearest"`` (AIMET's ``"stochastic"`` is refused).
        quant_scheme: a :class:`QuantScheme` or its short name (``"tf"``, ``"tf_enhanced"``...).
        config_file: a quantsim config (path, dict, ``"default"``, ``"per_tensor"``) or None.

    Raises:
        ConfigError: a value is invalid (the message names the field and the valid values).

    Example:
        >>> QuantParams(weight_bw=4, quant_scheme="tf", config_file="per_tensor").weight_bw
        4
    """

    weight_bw: int = 8
    act_bw: int = 8
    round_mode: str = "nearest"
    quant_scheme: QuantScheme | str = QuantScheme.post_training_tf_enhanced
    config_file: Any = None

    def __post_init__(self) -> None:
        for field, low in (("weight_bw", 2), ("act_bw", 4)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 32:
                raise ConfigError(f"QuantParams.{field} must be an int from {low} to 32, got "
                                  f"{value!r}")
        if self.round_mode != "nearest":
            raise ConfigError(
                f"QuantParams.round_mode={self.round_mode!r} is not supported; valid value: "
                "'nearest' (AIMET's 'stochastic' rounding has no integer-target equivalent)")
        try:
            QuantScheme.parse(self.quant_scheme)
        except ConfigError as exc:
            raise ConfigError(f"QuantParams.quant_scheme: {exc}") from None
        if not isinstance(self.config_file, (type(None), str, os.PathLike, Mapping)):
            raise ConfigError(f"QuantParams.config_file must be None, a path, a dict or "
                              f"'default'/'per_tensor', got {type(self.config_file).__qualname__}")


# -- the graph: batch norms, activations, folds -----------------------------------------------
def _graph(model: nn.Module) -> torch.fx.GraphModule:  # read only: tracing shares the modules
    return model if isinstance(model, torch.fx.GraphModule) else trace(model)


def _called_module(gm: torch.fx.GraphModule, node: Any, classes: tuple[type, ...]) -> Any:
    if not isinstance(node, torch.fx.Node) or node.op != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    return module if isinstance(module, classes) else None


def _activation(gm: torch.fx.GraphModule, node: Any) -> ActivationType | None:
    """ReLU or ReLU6 (a module, function or method; hardtanh/clamp to 0–6), else None."""
    if not isinstance(node, torch.fx.Node):
        return None
    relu, relu6 = ActivationType.relu, ActivationType.relu6
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        clip = (getattr(module, "min_val", None), getattr(module, "max_val", None))
        return (relu if isinstance(module, nn.ReLU)
                else relu6 if isinstance(module, nn.Hardtanh) and clip == (0, 6) else None)
    if node.op == "call_method":
        return relu if node.target in ("relu", "relu_") else None
    arg = lambda i, key, default: (node.args[i] if len(node.args) > i  # noqa: E731
                                   else node.kwargs.get(key, default))
    if node.op != "call_function":
        return None
    if node.target in (torch.relu, torch.relu_, nn.functional.relu):
        return relu
    if node.target is nn.functional.relu6 or (node.target is nn.functional.hardtanh and (
            arg(1, "min_val", -1), arg(2, "max_val", 1)) == (0, 6)):
        return relu6
    if node.target in (torch.clamp, torch.clip):
        return {(0, None): relu, (0, 6): relu6}.get((arg(1, "min", None), arg(2, "max", None)))
    return None


def find_all_conv_bn_with_activation(model: nn.Module, input_shape: Any = None, *,
                                     dummy_input: Any = None) -> dict[nn.Module, ConvBnInfoType]:
    """Every conv/linear layer of ``model`` with the batch norm (and ReLU/ReLU6) feeding it and
    the batch norm after it (AIMET's function of the same name).

    As AIMET, only convolutions (Conv, ConvTranspose) are matched with an input batch norm
    (``BN → layer`` or ``BN → ReLU/ReLU6 → layer``); every conv/linear layer is a key. Call it
    before folding the batch norms and pass the dict to :func:`correct_bias` to correct those
    layers analytically: the folded-away modules keep their β and γ.

    Args:
        model: the float model (not changed).
        input_shape / dummy_input: accepted for AIMET code; unused (tracing is symbolic).

    Returns:
        ``{layer module: ConvBnInfoType}`` in graph order.

    Example:
        >>> conv_bn_dict = find_all_conv_bn_with_activation(model, input_shape=(1, 3, 224, 224))
        >>> fold_all_batch_norms(model, dummy_input=torch.randn(1, 3, 224, 224))
        >>> correct_bias(model, params, 256, loader, 256, conv_bn_dict,
        ...              perform_only_empirical_bias_corr=False)
    """
    del input_shape, dummy_input  # AIMET's arguments; symbolic tracing needs no input
    gm = _graph(model)
    out: dict[nn.Module, ConvBnInfoType] = {}
    for node in gm.graph.nodes:
        layer = _called_module(gm, node, _LAYERS)
        if layer is None:
            continue
        info = ConvBnInfoType()
        src = node.args[0] if node.args else None
        act = _activation(gm, src)
        bn = _called_module(gm, src.args[0] if act and src.args else src, (_BN,))
        if bn is not None and isinstance(layer, (*_CONV, *_CONV_T)):  # as AIMET: convs only
            info.input_bn, info.in_activation_type = bn, act or ActivationType.no_activation
        user = next(iter(node.users)) if len(node.users) == 1 else None
        bn = _called_module(gm, user, (_BN,))
        if bn is not None:
            after = next(iter(user.users)) if len(user.users) == 1 else None
            info.output_bn = bn
            info.out_activation_type = _activation(gm, after) or ActivationType.no_activation
        out[layer] = info
    return out


@dataclasses.dataclass
class _Layer:
    """One layer to correct: its sim module, and where the FP32 reference and the write-back go."""

    name: str                    # module path in the model (the sim's layer name)
    sim_path: str                # module path in the sim
    sim_module: nn.Module
    module: nn.Module            # the model's layer
    ref_path: str                # the model's module whose output is the folded layer's output
    folded_bn: nn.Module | None  # the model's BN folded into it backward (layer → BN)
    fed_bn: nn.Module | None     # the model's BN folded into it forward (BN → layer)
    input_bn: Any = None         # from conv_bn_dict
    activation: ActivationType = ActivationType.no_activation


def _folded(gm: torch.fx.GraphModule, node: Any, sim_modules: dict[str, nn.Module],
            uses: dict[int, int]) -> str | None:
    """How the sim folded BN ``node``: "backward" into the layer before it, "forward" into the
    layer after it, or None (not a BN, or kept). The sim tries backward first, which needs the
    layer's output to feed only the BN and the layer's parameters to be used once."""
    if _called_module(gm, node, (_BN,)) is None or str(node.target) in sim_modules:
        return None
    src = node.args[0] if node.args else None
    layer = _called_module(gm, src, _LAYERS)
    if layer is not None and len(src.users) == 1 and all(
            uses.get(id(p), 0) <= 1 for p in layer.parameters(recurse=False)):
        return "backward"
    return "forward" if len(node.users) == 1 else None


def _layers(model: nn.Module, sim: QuantizationSimModel) -> list[_Layer]:
    """The sim's conv/linear layers in graph order that map onto one module of ``model``."""
    gm = _graph(model)
    uses: dict[int, int] = {}
    nodes: dict[str, torch.fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            nodes.setdefault(str(node.target), node)
            module = gm.get_submodule(str(node.target))
            for p in module.parameters(recurse=False):
                uses[id(p)] = uses.get(id(p), 0) + 1
    sim_modules = dict(sim.model.named_modules())
    out = []
    for name, node in iter_layers(sim.model):
        sim_module = sim_modules[str(node.target)]
        if not isinstance(sim_module, _LAYERS):
            continue
        if name not in nodes or not isinstance(gm.get_submodule(name), _LAYERS):
            logger.info("bias correction skips %s: not a conv/linear module of the model "
                        "(a functional or a split call of a reused module)", name)
            continue
        module = gm.get_submodule(name)
        if any(uses.get(id(p), 0) > 1 for p in module.parameters(recurse=False)):
            logger.warning("bias correction skips %s: its parameters are used at several call "
                           "sites, which one bias cannot correct separately", name)
            continue
        node_m, ref_path, folded, fed = nodes[name], name, None, None
        user = next(iter(node_m.users)) if len(node_m.users) == 1 else None
        if _folded(gm, user, sim_modules, uses) == "backward":
            ref_path, folded = str(user.target), gm.get_submodule(str(user.target))
        src = node_m.args[0] if node_m.args else None
        if _folded(gm, src, sim_modules, uses) == "forward":
            fed = gm.get_submodule(str(src.target))
        out.append(_Layer(name, str(node.target), sim_module, module, ref_path, folded, fed))
    return out


# -- data --------------------------------------------------------------------------------------
def _to_device(batch: Any, device: torch.device) -> Any:
    return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), batch)


def _batch_size(batch: Any) -> int:
    x = _model_input(batch)
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ConfigError(f"data_loader yields {type(batch).__qualname__} batches whose input is "
                          "not a batched tensor; yield a tensor or an (inputs, labels) tuple")
    return int(x.shape[0])


def _take_samples(data_loader: Iterable[Any], num_samples: int, device: torch.device
                  ) -> tuple[list[Any], list[int]]:
    """Whole batches from the start of ``data_loader`` until they hold ``num_samples`` samples
    (AIMET rounds up to whole batches), moved to ``device``, and each batch's size."""
    try:
        iterator = iter(data_loader)
    except TypeError:
        raise ConfigError(f"data_loader must be iterable (e.g. a torch DataLoader), got "
                          f"{type(data_loader).__qualname__}") from None
    batches, sizes = [], []
    while sum(sizes) < num_samples:
        batch = next(iterator, None)
        if batch is None:
            break
        sizes.append(_batch_size(batch))
        batches.append(_to_device(batch, device))
    if not batches:
        raise ConfigError("data_loader yielded no batch; bias correction needs data to "
                          "calibrate the quantization sim")
    if sum(sizes) < num_samples:
        logger.info("data_loader holds %d samples, fewer than asked (%d); using those",
                    sum(sizes), num_samples)
    return batches, sizes


def _first(batches: list[Any], sizes: list[int], num_samples: int) -> list[Any]:
    """The first batches holding ``num_samples`` samples (all of them when there are fewer)."""
    seen = list(itertools.accumulate(sizes))
    return batches[:next((i + 1 for i, n in enumerate(seen) if n >= num_samples), len(seen))]


def _model_input(batch: Any) -> Any:
    """The model input of a batch (what the sim is built with)."""
    return batch[0] if isinstance(batch, (tuple, list)) and batch else batch


# -- statistics --------------------------------------------------------------------------------
def _channel_sum(out: torch.Tensor, linear: bool, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Per-output-channel sum of ``out`` (channels: dim 1 of a conv output, the last dim of a
    linear one) and the number of values summed per channel."""
    channel = out.dim() - 1 if linear or out.dim() == 1 else 1
    dims = [d for d in range(out.dim()) if d != channel]
    return out.to(dtype).sum(dim=dims), out.numel() // out.shape[channel]


@torch.no_grad()
def _reference_means(model: nn.Module, layers: Sequence[_Layer], batches: Sequence[Any],
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``E[FP32 output]`` per channel of every layer, from one pass over the batches: a hook on
    each reference module sums its output (the correction is ``E[FP32] − E[quantized]``)."""
    sums: dict[str, list[Any]] = {layer.ref_path: [0, 0] for layer in layers}

    def hook(path: str, linear: bool) -> Any:
        def add(_: nn.Module, __: Any, output: Any) -> None:
            total, count = _channel_sum(output, linear, dtype)
            sums[path][0], sums[path][1] = sums[path][0] + total, sums[path][1] + count
        return add

    handles = [model.get_submodule(layer.ref_path).register_forward_hook(
        hook(layer.ref_path, isinstance(layer.module, nn.Linear))) for layer in layers]
    try:
        run_batches(model, batches)
    finally:
        for handle in handles:
            handle.remove()
    missing = [path for path, (_, count) in sums.items() if count == 0]
    if missing:
        raise ConfigError(f"layer(s) {missing[:5]} did not run on the data_loader's batches; "
                          "bias correction needs every layer it corrects to run")
    return {path: total / count for path, (total, count) in sums.items()}


@torch.no_grad()
def _quantized_mean(sim: QuantizationSimModel, layer: _Layer, batches: Sequence[Any],
                    dtype: torch.dtype) -> torch.Tensor:
    """``E[quantized output]`` per channel of ``layer`` in the sim (the forward stops there)."""
    total, count = 0, 0
    for batch in batches:  # one batch at a time: nothing but the sums is kept
        _, (out,) = capture_layer_io(sim.model, layer.sim_path, [batch], inputs=False)
        part, n = _channel_sum(out, isinstance(layer.module, nn.Linear), dtype)
        total, count = total + part, count + n
    return total / count


def _expected_input(bn: nn.Module, activation: ActivationType,
                    dtype: torch.dtype) -> torch.Tensor:
    """``E[x]`` per channel for ``x = act(y)``, ``y ~ N(β, γ²)``: the BN output's distribution
    (the mean of a normal clipped at 0, or at 0 and 6)."""
    beta = (bn.bias.detach().to(dtype) if bn.bias is not None
            else torch.zeros(bn.num_features, dtype=dtype, device=bn.running_mean.device))
    gamma = bn.weight.detach().to(dtype) if bn.weight is not None else torch.ones_like(beta)
    sigma = gamma.abs().clamp_min(1e-12)  # a negative γ flips the sign, not the spread
    if activation is ActivationType.no_activation:
        return beta
    pdf, cdf = lambda z: torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi), torch.special.ndtr
    a = -beta / sigma
    if activation is ActivationType.relu:
        return beta * (1 - cdf(a)) + sigma * pdf(a)
    b = (6 - beta) / sigma
    return sigma * (pdf(a) - pdf(b)) + beta * (cdf(b) - cdf(a)) + 6 * (1 - cdf(b))


@torch.no_grad()
def _analytical_error(layer: _Layer, dtype: torch.dtype) -> torch.Tensor:
    """``E[quantized output] − E[FP32 output] = ΔW·E[x]`` per output channel."""
    sim_module = layer.sim_module
    original = (sim_module.parametrizations.weight.original  # a float weight: ΔW = 0
                if parametrize.is_parametrized(sim_module, "weight") else sim_module.weight)
    delta_w = (sim_module.weight - original).to(dtype)
    if layer.fed_bn is not None and layer.input_bn is layer.fed_bn:  # folded into the layer
        ex = layer.fed_bn.running_mean.to(device=delta_w.device, dtype=dtype)
    else:
        ex = _expected_input(layer.input_bn, layer.activation, dtype).to(delta_w.device)
    if isinstance(sim_module, nn.Linear):
        return delta_w @ ex
    eps = delta_w.flatten(2).sum(dim=2)  # (out, in/groups) or, transposed, (in, out/groups)
    groups = sim_module.groups
    eps = eps.view(groups, eps.shape[0] // groups, eps.shape[1])
    if isinstance(sim_module, _CONV_T):
        return (eps * ex.view(groups, -1, 1)).sum(dim=1).flatten()
    return torch.bmm(eps, ex.view(groups, -1, 1)).flatten()


# -- arguments ---------------------------------------------------------------------------------
def _ignored(model: nn.Module, layers_to_ignore: Any) -> set[int]:
    """``id()`` of the modules ``layers_to_ignore`` names (modules or module paths)."""
    if layers_to_ignore is None:
        return set()
    if isinstance(layers_to_ignore, (str, nn.Module)) or not isinstance(layers_to_ignore,
                                                                       Iterable):
        raise ConfigError("layers_to_ignore must be a list of modules or module paths, got "
                          f"{type(layers_to_ignore).__qualname__}")
    names = {name: m for name, m in model.named_modules() if name}
    ids = {id(m) for m in names.values()}
    out = set()
    for i, entry in enumerate(layers_to_ignore):
        module = names.get(entry) if isinstance(entry, str) else entry
        if id(module) not in ids:
            close = difflib.get_close_matches(entry, list(names), n=5) if isinstance(
                entry, str) else []
            raise ConfigError(f"layers_to_ignore[{i}] ({entry!r:.60}) is not a module of the "
                              f"model; pass its modules or their paths (close: "
                              f"{close or list(names)[:5]})")
        out.add(id(module))
    return out


def _apply_conv_bn_dict(layers: Sequence[_Layer], conv_bn_dict: Any) -> None:
    if not isinstance(conv_bn_dict, Mapping):
        raise ConfigError("conv_bn_dict must be the dict find_all_conv_bn_with_activation "
                          f"returns, got {type(conv_bn_dict).__qualname__}")
    for layer in layers:
        info = conv_bn_dict.get(layer.module)
        bn = getattr(info, "input_bn", None)
        bn = bn.get_module() if hasattr(bn, "get_module") else bn  # AIMET's graph op too
        if bn is None:
            continue
        if not isinstance(bn, _BN):
            raise ConfigError(f"conv_bn_dict[{layer.name}].input_bn is a "
                              f"{type(bn).__qualname__}, not a BatchNorm module")
        in_channels = getattr(layer.module, "in_features", None) or layer.module.in_channels
        if bn.num_features != in_channels:
            raise ConfigError(
                f"conv_bn_dict[{layer.name}].input_bn has {bn.num_features} features but the "
                f"layer takes {in_channels} input channels; build the dict with "
                "find_all_conv_bn_with_activation on this model")
        act = getattr(info, "in_activation_type", ActivationType.no_activation)
        if getattr(act, "name", act) not in ActivationType.__members__:  # AIMET's enum too
            raise ConfigError(f"conv_bn_dict[{layer.name}].in_activation_type {act!r} is not "
                              f"one of {list(ActivationType.__members__)}")
        layer.input_bn, layer.activation = bn, ActivationType[getattr(act, "name", act)]


# -- the correction ----------------------------------------------------------------------------
def _add_bias(module: nn.Module, delta: torch.Tensor) -> None:
    """``module.bias += delta`` (a zero bias is created first when the module has none; a
    quantized bias of a sim changes its float original)."""
    if parametrize.is_parametrized(module, "bias"):
        bias = module.parametrizations.bias.original
    else:
        if module.bias is None:
            like = module.weight
            module.bias = nn.Parameter(torch.zeros(delta.numel(), dtype=like.dtype,
                                                   device=like.device),
                                       requires_grad=like.requires_grad)
        bias = module.bias
    bias.add_(delta.to(device=bias.device, dtype=bias.dtype))


@torch.no_grad()
def _write_back(layer: _Layer, delta: torch.Tensor) -> None:
    """Adds ``delta`` (a change of the folded layer's output) to the model's biases."""
    bn = layer.folded_bn
    if bn is None:
        _add_bias(layer.module, delta)
    elif bn.bias is not None:  # the folded bias is β + k·(b − μ): β takes the change as is
        bn.bias.add_(delta.to(device=bn.bias.device, dtype=bn.bias.dtype))
    else:  # affine=False: the layer's bias, scaled by k = 1/√(var + eps)
        std = torch.sqrt(bn.running_var.to(delta.dtype) + bn.eps)
        _add_bias(layer.module, delta * std.to(delta.device))


def correct_bias(model: nn.Module, quant_params: QuantParams, num_quant_samples: int,
                 data_loader: Iterable[Any], num_bias_correct_samples: int,
                 conv_bn_dict: Mapping[nn.Module, ConvBnInfoType] | None = None,
                 perform_only_empirical_bias_corr: bool = True,
                 layers_to_ignore: Sequence[nn.Module | str] | None = None) -> None:
    """Corrects the biases of ``model``'s conv/linear layers, in place, so that once quantized
    with ``quant_params`` each layer's per-output-channel mean matches FP32 (AIMET's
    ``bias_correction.correct_bias``; see the module docstring for the method).

    Only biases change: a layer's bias, or the bias (β) of the batch norm that follows it; a
    layer without a bias and without such a batch norm gets one (zeros plus the correction), as
    in AIMET. Layers whose parameters are used at several call sites, functional convolutions
    and ``layers_to_ignore`` are left as they are.

    Args:
        model: the float model (eval mode is used while correcting; its mode is restored).
        quant_params: the quantization to correct for (:class:`QuantParams`).
        num_quant_samples: samples (rounded up to whole batches) to calibrate the sim with.
        data_loader: yields batches: a tensor or an ``(inputs, labels, ...)`` tuple/list.
        num_bias_correct_samples: samples (rounded up to whole batches) the empirical
            correction averages over.
        conv_bn_dict: :func:`find_all_conv_bn_with_activation`'s dict; computed from ``model``
            when None. Only read when ``perform_only_empirical_bias_corr`` is False.
        perform_only_empirical_bias_corr: when False, layers with an input batch norm in
            ``conv_bn_dict`` are corrected analytically, the others empirically.
        layers_to_ignore: modules of ``model`` (or their paths) not to correct.

    Raises:
        ConfigError: an invalid argument (named, with the fix): a bad ``quant_params``, sample
            count, data loader, ``layers_to_ignore`` entry or ``conv_bn_dict`` entry, or a
            model without conv/linear layers.

    Example:
        >>> params = QuantParams(weight_bw=4, act_bw=8, config_file="per_tensor")
        >>> correct_bias(model, params, num_quant_samples=512, data_loader=loader,
        ...              num_bias_correct_samples=512)
        >>> sim = QuantizationSimModel(model, dummy_input, default_param_bw=4,
        ...                            config_file="per_tensor")
    """
    for what, value, kind, fix in (
            ("model", model, nn.Module, "a torch.nn.Module"),
            ("quant_params", quant_params, QuantParams, "fxquant's QuantParams(weight_bw=...)"),
            ("perform_only_empirical_bias_corr", perform_only_empirical_bias_corr, bool,
             "True or False")):
        if not isinstance(value, kind):
            raise ConfigError(f"correct_bias: {what} must be {fix}, got {type(value).__qualname__}")
    for what, value in (("num_quant_samples", num_quant_samples),
                        ("num_bias_correct_samples", num_bias_correct_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"correct_bias: {what} must be a positive int, got {value!r}")
    ignored = _ignored(model, layers_to_ignore)
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = torch.float32 if device.type == "mps" else torch.float64  # for the sums
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # as AIMET: the correction is measured in eval mode (BN statistics folded)
    try:
        batches, sizes = _take_samples(
            data_loader, max(num_quant_samples, num_bias_correct_samples), device)
        quant_batches = _first(batches, sizes, num_quant_samples)
        bc_batches = _first(batches, sizes, num_bias_correct_samples)
        sim = QuantizationSimModel(
            model, _model_input(quant_batches[0]), quant_scheme=quant_params.quant_scheme,
            default_output_bw=quant_params.act_bw, default_param_bw=quant_params.weight_bw,
            config_file=quant_params.config_file, rounding_mode=quant_params.round_mode)
        for ref in sim.quantizers():  # weights (and the model input) quantized, as in AIMET
            if ref.kind == "output":
                ref.quantizer.enabled = False
        sim.compute_encodings(lambda m: run_batches(m, quant_batches))
        layers = _layers(model, sim)
        if not layers:
            raise ConfigError(f"{type(model).__name__} has no conv/linear layer that bias "
                              "correction can correct")
        if not perform_only_empirical_bias_corr:
            _apply_conv_bn_dict(layers, find_all_conv_bn_with_activation(model)
                                if conv_bn_dict is None else conv_bn_dict)
        layers = [layer for layer in layers if id(layer.module) not in ignored]
        measured = [layer for layer in layers
                    if perform_only_empirical_bias_corr or layer.input_bn is None]
        empirical_names = {layer.name for layer in measured}
        reference = _reference_means(model, measured, bc_batches, dtype) if measured else {}
        corrections = []
        for layer in tqdm(layers, desc="bias correction", unit="layer", leave=False,
                          disable=None):
            empirical = layer.name in empirical_names
            delta = (reference[layer.ref_path] - _quantized_mean(sim, layer, bc_batches, dtype)
                     if empirical else -_analytical_error(layer, dtype))
            with torch.no_grad():  # later layers are measured with this one corrected
                _add_bias(layer.sim_module, delta)
            corrections.append((layer, delta))
            logger.info("corrected the bias of %s (%s)", layer.name,
                        "empirical" if empirical else "analytical")
        for layer, delta in corrections:  # the model changes only once every layer is done
            _write_back(layer, delta)
    finally:
        for module, training in modes:
            module.training = training
    logger.info("bias correction done: %d layer(s) corrected", len(corrections))

