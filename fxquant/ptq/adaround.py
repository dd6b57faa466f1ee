"""AdaRound (Nagel et al. 2020): adaptive rounding of weights, with AIMET's API.

Rounding every weight to the nearest grid point is not what minimizes a layer's output error:
AdaRound learns, layer by layer, whether each weight is rounded down or up so that the layer's
output in the quantized model reproduces its output in the float model (see
:mod:`fxquant.ptq.adaround_optimizer` for the optimization).

``Adaround.apply_adaround`` keeps AIMET's call shape and file: it returns a copy of the model
whose conv/linear weights lie exactly on their quantization grid, and writes the grid (the
parameter encodings) to ``{path}/{filename_prefix}.encodings`` in AIMET's format. A sim built on
the returned model with those encodings frozen computes with the AdaRounded weights bit for bit::

    params = AdaroundParameters(data_loader, num_batches=16)
    ada_model = Adaround.apply_adaround(model, dummy_input, params, path="out",
                                        filename_prefix="adaround", default_param_bw=4)
    sim = QuantizationSimModel(ada_model, dummy_input, default_param_bw=4)
    sim.set_and_freeze_param_encodings("out/adaround.encodings")
    sim.compute_encodings(calibrate)          # activations only: the weights' grids are frozen

How it runs: a :class:`~fxquant.QuantizationSimModel` of the model gives every layer's weight
quantizer (per channel or per tensor as the config says; its encoding computed from the weights
by ``default_quant_scheme``); batch norms are folded as the sim folds them. Activation quantizers
are disabled throughout (as in AIMET). For each conv/linear layer in graph order, its inputs are
taken from the sim with the earlier layers already AdaRounded, and its outputs from a float copy
of the sim's model (quantizers removed, float weights kept apart from the rounded ones). Two
:class:`~fxquant.ptq._data.GraphWalk` s go through the graphs once, node by node, stopping at each
layer (AIMET runs the model from its input up to every layer: quadratic in depth); where the
batches cannot start a walk, each layer is captured by a forward pass stopped after it. Both stay
on the model's device. Then the layer's rounding is optimized on those and its weight replaced by
the hard-rounded one, which the walk's later layers see.

Where it differs from AIMET: the returned weights are hard-rounded (AIMET folds the soft-rounded
``h(V)``, nearly always 0 or 1 after annealing, into the weights); a weight exactly on the grid
never moves (AIMET may round it up by a whole step); batch norms are always folded first (AIMET
uses the model as given); the activations are cached on the model's device (AIMET on disk/CPU);
Conv1d/Conv3d and their transposes are AdaRounded too.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fxquant import _meta
from fxquant.batch_norm_fold import fold_all_batch_norms
from fxquant.core import files
from fxquant.errors import ConfigError, FxQuantError
from fxquant.export.encodings_file import encodings_dict
from fxquant.model_resolution import private_copy
from fxquant.passes.remove_quantizers import RemoveQuantizersPass
from fxquant.ptq._data import (ForwardFn, GraphWalk, capture_layer_io, default_forward,
                               take_batches)
from fxquant.ptq.adaround_optimizer import (SUPPORTED_LAYERS, AdaroundHyperParameters,
                                            RoundingResult, check_beta_range, check_number,
                                            optimize_rounding)
from fxquant.quantsim.calibration import compute_param_encodings
from fxquant.quantsim.quant_scheme import QuantScheme
from fxquant.quantsim.quantizer import BITWIDTH_RANGES, AffineQuantizer
from fxquant.quantsim.quantsim import QuantizationSimModel, QuantizerRef

__all__ = ["Adaround", "AdaroundParameters", "AdaroundSupportedModules"]

logger = logging.getLogger(__name__)

#: The layer types AdaRound optimizes (AIMET's name; a superset of AIMET's Conv2d,
#: ConvTranspose2d and Linear).
AdaroundSupportedModules = SUPPORTED_LAYERS

#: Activations applied to both sides of a layer's reconstruction loss when they directly follow
#: the layer (AIMET's list, less the modules that are not a function of one tensor).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU6, nn.ReLU, nn.PReLU, nn.RReLU, nn.LeakyReLU, nn.Sigmoid, nn.LogSigmoid, nn.Softmin,
    nn.Softmax, nn.LogSoftmax, nn.Tanh, nn.Hardtanh, nn.ELU, nn.Hardshrink, nn.Hardsigmoid,
    nn.Hardswish, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Softshrink,
    nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.GLU, nn.Softmax2d)

_AIMET_ITERATIONS = (15000, 10000)  # default iterations below 8-bit weights, and at 8 bits or more


@dataclasses.dataclass(frozen=True, eq=False)
class AdaroundParameters:
    """AdaRound's settings, with AIMET's names and defaults.

    Attributes:
        data_loader: the calibration data (e.g. a ``torch.utils.data.DataLoader``): a batch is
            a tensor or an ``(inputs, labels)`` tuple/list unless ``forward_fn`` says otherwise.
            Unlabelled data suffices.
        num_batches: how many batches of it to use (AIMET recommends about 2000 samples:
            ``min(len(data_loader), ceil(2000 / batch_size))``).
        default_num_iterations: optimization steps per layer; None: AIMET's default, 15000 when
            a weight is quantized to fewer than 8 bits, else 10000.
        default_reg_param: weight of the rounding regularizer against the reconstruction loss.
        default_beta_range: ``(start, end)`` of the regularizer's annealed exponent.
        default_warm_start: fraction of the iterations run without the regularizer.
        forward_fn: ``forward_fn(model, batch)`` runs the model on one batch; None: the model is
            called on the batch (on its first element for a tuple/list, as keyword arguments for
            a dict).

    AIMET's attribute names ``num_iterations``, ``reg_param``, ``beta_range`` and
    ``warm_start`` read the ``default_*`` fields.

    Raises:
        ConfigError: a field is invalid (the message names it and the valid values), e.g.
            ``num_batches`` larger than ``len(data_loader)``.

    Example:
        >>> params = AdaroundParameters(loader, num_batches=4, default_num_iterations=1000)
        >>> params.num_iterations, params.beta_range
        (1000, (20.0, 2.0))
    """

    data_loader: Iterable[Any]
    num_batches: int
    default_num_iterations: int | None = None
    default_reg_param: float = 0.01
    default_beta_range: tuple[float, float] = (20, 2)
    default_warm_start: float = 0.2
    forward_fn: ForwardFn | None = None

    def __post_init__(self) -> None:
        where = "AdaroundParameters"
        if not isinstance(self.data_loader, Iterable):
            raise ConfigError(f"{where}.data_loader must be iterable (e.g. a torch DataLoader), "
                              f"got {type(self.data_loader).__qualname__}")
        n = self.num_batches
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{where}.num_batches must be a positive int, got {n!r}")
        try:
            available = len(self.data_loader)  # type: ignore[arg-type]
        except TypeError:  # an iterable without a length: checked when the batches are taken
            available = None
        if available is not None and available < n:
            raise ConfigError(f"{where}.num_batches={n} is larger than the data loader, which "
                              f"has {available} batch(es); pass num_batches <= {available}")
        iters = self.default_num_iterations
        if iters is not None and (isinstance(iters, bool) or not isinstance(iters, int)
                                  or iters < 1):
            raise ConfigError(f"{where}.default_num_iterations must be a positive int or None "
                              f"(AIMET's default: 15000 below 8-bit weights, else 10000), got "
                              f"{iters!r}")
        check_number(f"{where}.default_reg_param", self.default_reg_param, "a number >= 0",
                     lambda v: v >= 0)
        check_number(f"{where}.default_warm_start", self.default_warm_start,
                     "a number in [0, 1)", lambda v: 0 <= v < 1)
        object.__setattr__(self, "default_beta_range", check_beta_range(
            f"{where}.default_beta_range", self.default_beta_range))
        if self.forward_fn is not None and not callable(self.forward_fn):
            raise ConfigError(f"{where}.forward_fn must be a callable forward_fn(model, batch) "
                              f"or None, got {type(self.forward_fn).__qualname__}")

    # AIMET's attribute names
    @property
    def num_iterations(self) -> int | None:
        """``default_num_iterations`` (AIMET's attribute name)."""
        return self.default_num_iterations

    @property
    def reg_param(self) -> float:
        """``default_reg_param`` (AIMET's attribute name)."""
        return self.default_reg_param

    @property
    def beta_range(self) -> tuple[float, float]:
        """``default_beta_range`` (AIMET's attribute name)."""
        return self.default_beta_range

    @property
    def warm_start(self) -> float:
        """``default_warm_start`` (AIMET's attribute name)."""
        return self.default_warm_start


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One layer to AdaRound: its name in the sim, its module and weight quantizer."""

    name: str
    module: nn.Module
    quantizer: AffineQuantizer


class Adaround:
    """AdaRound with AIMET's API (``aimet_torch.adaround.Adaround``).

    Example:
        >>> params = AdaroundParameters(loader, num_batches=16)
        >>> ada_model = Adaround.apply_adaround(model, torch.randn(1, 3, 224, 224), params,
        ...                                     path="out", filename_prefix="resnet18")
        >>> sim = QuantizationSimModel(ada_model, torch.randn(1, 3, 224, 224), default_param_bw=4)
        >>> sim.set_and_freeze_param_encodings("out/resnet18.encodings")
    """

    @classmethod
    def apply_adaround(cls, model: nn.Module, dummy_input: Any, params: AdaroundParameters,
                       path: str | os.PathLike[str], filename_prefix: str,
                       default_param_bw: int = 4,
                       param_bw_override_list: Sequence[tuple[nn.Module, int]] | None = None,
                       ignore_quant_ops_list: Sequence[nn.Module] | None = None,
                       default_quant_scheme: QuantScheme | str =
                       QuantScheme.post_training_tf_enhanced,
                       default_config_file: Any = None) -> nn.Module:
        """AdaRounds every conv/linear weight of ``model``; returns the AdaRounded copy and
        writes the weights' encodings to ``{path}/{filename_prefix}.encodings``.

        Args:
            model: the float model, in eval mode (left unchanged).
            dummy_input: an example input (a tuple for several inputs), on the model's device.
            params: the data and optimization settings.
            path: the folder of the encodings file (created if missing).
            filename_prefix: the file's name without ``.encodings``.
            default_param_bw: the weights' bit width.
            param_bw_override_list: ``[(module, bit width), ...]``: other bit widths for these
                layers (modules of ``model``).
            ignore_quant_ops_list: modules of ``model`` (with their submodules) left out: their
                weights are neither quantized during AdaRound nor AdaRounded nor written to the
                file, so a sim built later rounds them to nearest.
            default_quant_scheme: how the weights' encodings are computed (AIMET:
                ``post_training_tf`` or ``post_training_tf_enhanced``).
            default_config_file: the quantsim config (per-channel or per-tensor weights …), as
                for ``QuantizationSimModel``.

        Returns:
            A copy of ``model`` (same class) with its batch norms folded (replaced by
            ``nn.Identity``), as the sim folds them, and AdaRounded conv/linear weights, each
            exactly on its grid. When the copy cannot hold what the sim computed (the model
            reuses a layer, which the sim splits in two), the sim's float ``GraphModule`` is
            returned instead.

        Raises:
            ConfigError: an invalid argument (the message names it and the fix): ``params`` not
                an :class:`AdaroundParameters`, ``path`` an existing file, a bad
                ``filename_prefix``, a module of the lists that is not part of ``model`` or has
                no quantized weight, a bad bit width, fewer batches in the data loader than
                ``num_batches``, a model in training mode; and what ``QuantizationSimModel``
                raises for the model, scheme or config.
            FileWriteError: the encodings file could not be written.

        Example:
            >>> ada_model = Adaround.apply_adaround(model, dummy, params, "out", "adaround",
            ...                                     default_param_bw=4)
            >>> sorted(json.load(open("out/adaround.encodings")))
            ['param_encodings']
        """
        if not isinstance(params, AdaroundParameters):
            raise ConfigError(f"apply_adaround: params must be an AdaroundParameters, got "
                              f"{type(params).__qualname__}; build it with "
                              "AdaroundParameters(data_loader, num_batches)")
        target = _encodings_path(path, filename_prefix)
        if isinstance(model, nn.Module) and model.training:
            raise ConfigError("apply_adaround: the model is in training mode; AdaRound needs the "
                              "float model's eval-mode outputs (batch norms folded with their "
                              "statistics): call model.eval() first")
        batches = take_batches(params.data_loader, params.num_batches,
                               what="AdaroundParameters.data_loader")
        if len(batches) < params.num_batches:
            raise ConfigError(f"AdaroundParameters.num_batches={params.num_batches} is larger "
                              f"than the data loader, which yielded {len(batches)} batch(es); "
                              f"pass num_batches <= {len(batches)}")
        sim = QuantizationSimModel(model, dummy_input, quant_scheme=default_quant_scheme,
                                   default_param_bw=default_param_bw,
                                   config_file=default_config_file)
        names = {id(m): name for name, m in model.named_modules()}
        refs = sim.quantizers()
        _override_bitwidths(refs, names, param_bw_override_list)
        _exclude(refs, names, ignore_quant_ops_list)
        device = _device_of(model)
        sim.model.to(device)
        for ref in refs:   # activation quantizers stay off, as in AIMET
            if ref.kind != "param":
                ref.quantizer.enabled = False
        compute_param_encodings(sim.model, [ref for ref in refs if ref.quantizer.enabled])
        layers = _layers(sim, refs)
        if not layers:
            logger.warning("AdaRound: %s has no conv/linear layer with an integer weight "
                           "quantizer; nothing to optimize (the encodings file will be empty)",
                           type(model).__name__)
        iterations = params.default_num_iterations
        if iterations is None:
            lowest = min((layer.quantizer.bitwidth for layer in layers), default=8)
            iterations = _AIMET_ITERATIONS[0] if lowest < 8 else _AIMET_ITERATIONS[1]
        hyper = AdaroundHyperParameters(num_iterations=iterations,
                                        reg_param=params.default_reg_param,
                                        beta_range=params.default_beta_range,
                                        warm_start=params.default_warm_start)
        forward = _forward_on(device, params.forward_fn)
        float_model = _float_model(sim)   # the targets: kept apart from the weights rounded here
        logger.info("AdaRound: %d layer(s), %d iterations each, %d batch(es)", len(layers),
                    iterations, len(batches))
        walks = _walks(sim, float_model, batches, forward)
        for layer in tqdm(layers, desc="AdaRound", unit="layer", leave=False, disable=None):
            result = _adaround_layer(sim, float_model, layer, batches, forward, hyper, walks)
            logger.info("AdaRound %s: reconstruction MSE %.6g (nearest) -> %.6g (AdaRound), "
                        "%.1f%% of the weights rounded the other way", layer.name,
                        result.nearest_mse, result.adaround_mse, 100 * result.changed_fraction)
        _write_encodings(target, layers)
        logger.info("AdaRound: wrote the encodings of %d weight(s) to %s", len(layers), target)
        return _adarounded_model(model, sim, dummy_input)


# -------------------------------------------------------------------------------------------------
# Arguments
# -------------------------------------------------------------------------------------------------
def _encodings_path(path: Any, filename_prefix: Any) -> str:
    try:
        folder = os.fspath(path)
    except TypeError:
        raise ConfigError(f"apply_adaround: path must be a folder path (str or os.PathLike), got "
                          f"{type(path).__qualname__}") from None
    if isinstance(folder, bytes):
        folder = os.fsdecode(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"apply_adaround: path {folder!r} is a file, not a directory; pass the "
                          f"folder to write {filename_prefix}.encodings into")
    if (not isinstance(filename_prefix, str) or not filename_prefix or "\0" in filename_prefix
            or any(sep and sep in filename_prefix for sep in (os.sep, os.altsep))):
        raise ConfigError(f"apply_adaround: filename_prefix must be a non-empty file name "
                          f"without a folder (the file is {{path}}/{{filename_prefix}}.encodings), "
                          f"got {filename_prefix!r}")
    return os.path.join(folder, f"{filename_prefix}.encodings")


def _name_of(module: Any, names: dict[int, str], where: str) -> str:
    if not isinstance(module, nn.Module):
        raise ConfigError(f"apply_adaround: {where} must be a module of the model, got "
                          f"{type(module).__qualname__}")
    if id(module) not in names:
        raise ConfigError(f"apply_adaround: {where} ({type(module).__name__}) is not a submodule "
                          "of the model given to apply_adaround; pass the model's own modules "
                          "(e.g. model.conv1), not copies")
    return names[id(module)]


def _weight_refs(refs: Sequence[QuantizerRef]) -> dict[str, QuantizerRef]:
    return {ref.layer: ref for ref in refs
            if ref.kind == "param" and ref.name == f"{ref.layer}.weight"}


def _override_bitwidths(refs: Sequence[QuantizerRef], names: dict[int, str],
                        overrides: Sequence[tuple[nn.Module, int]] | None) -> None:
    weights = _weight_refs(refs)
    lo, hi = BITWIDTH_RANGES["param"]
    for i, item in enumerate(overrides or ()):
        where = f"param_bw_override_list[{i}]"
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError(f"apply_adaround: {where} must be a (module, bit width) pair, got "
                              f"{item!r}")
        module, bits = item
        name = _name_of(module, names, f"{where}[0]")
        if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
            raise ConfigError(f"apply_adaround: {where}: bit width {bits!r} for {name!r} is "
                              f"invalid; weights take {lo}-{hi} bits")
        ref = weights.get(name)
        if ref is None or not isinstance(ref.quantizer, AffineQuantizer):
            raise ConfigError(f"apply_adaround: {where}: {name!r} ({type(module).__name__}) has "
                              f"no integer weight quantizer in the sim; list conv/linear layers "
                              f"({', '.join(list(weights)[:5])} ...)")
        ref.quantizer.bitwidth = bits


def _exclude(refs: Sequence[QuantizerRef], names: dict[int, str],
             ignored: Sequence[nn.Module] | None) -> None:
    excluded: set[str] = set()
    for i, module in enumerate(ignored or ()):
        _name_of(module, names, f"ignore_quant_ops_list[{i}]")
        excluded.update(names[id(m)] for m in module.modules() if id(m) in names)
    for ref in refs:
        if ref.kind == "param" and ref.layer in excluded:
            ref.quantizer.enabled = False
    if excluded:
        logger.info("AdaRound: leaving out %s (ignore_quant_ops_list)", sorted(excluded)[:10])


# -------------------------------------------------------------------------------------------------
# The sim
# -------------------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _forward_on(device: torch.device, forward_fn: ForwardFn | None) -> ForwardFn:
    """``forward_fn`` (or the default) on the batch moved to ``device``."""
    forward = forward_fn or default_forward

    def run(model: nn.Module, batch: Any) -> Any:
        moved = torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), batch)
        return forward(model, moved)

    return run


def _layers(sim: QuantizationSimModel, refs: Sequence[QuantizerRef]) -> list[_Layer]:
    """The layers to AdaRound, in graph order: conv/linear with an enabled integer weight
    quantizer that has an encoding."""
    out = []
    for name, ref in _weight_refs(refs).items():
        module = sim.model.get_submodule(name)
        quantizer = ref.quantizer
        if not isinstance(module, SUPPORTED_LAYERS):
            logger.debug("AdaRound: %s (%s) is not a conv/linear layer; left as it is", name,
                         type(module).__name__)
            continue
        if (not isinstance(quantizer, AffineQuantizer) or not quantizer.enabled
                or quantizer.encoding is None):
            logger.debug("AdaRound: the weight of %s is not integer-quantized; left as it is",
                         name)
            continue
        out.append(_Layer(name, module, quantizer))
    return out


def _following_activation(sim: QuantizationSimModel, name: str) -> nn.Module | None:
    """The activation module that consumes the layer's output first (quantizer nodes skipped),
    or None (AIMET's ``get_module_act_func_pair``)."""
    node = next((n for n in sim.model.graph.nodes
                 if n.op == "call_module" and str(n.target) == name), None)
    while node is not None and node.users:
        node = next(iter(node.users))
        if _meta.get(node, _meta.ROLE) != _meta.ROLE_QUANTIZER:
            break
    if node is None or node.op != "call_module":
        return None
    module = sim.model.get_submodule(str(node.target))
    return module if isinstance(module, ACTIVATION_TYPES) else None


def _concat(tensors: list[torch.Tensor], name: str, what: str) -> torch.Tensor:
    try:
        return torch.cat(tensors)
    except RuntimeError as exc:
        shapes = sorted({tuple(t.shape[1:]) for t in tensors})
        raise ConfigError(f"AdaRound: layer {name!r}: its {what} differ in shape across batches "
                          f"({shapes[:3]}); give batches of one input size") from exc


def _float_model(sim: QuantizationSimModel) -> torch.fx.GraphModule:
    """The float model the sim was built from (batch norms folded, no quantizer), with the sim's
    layer names."""
    return RemoveQuantizersPass()(private_copy(sim.model)).graph_module


def _walks(sim: QuantizationSimModel, float_model: torch.fx.GraphModule, batches: list[Any],
           forward: ForwardFn) -> tuple[GraphWalk, GraphWalk] | None:
    """Walks through the sim (the layers' inputs) and the float model (their outputs) that run
    every node once; None where the batches cannot start a walk (``forward_fn`` does not call
    the model with its graph's inputs): then each layer is captured by a forward pass."""
    try:
        return GraphWalk(sim.model, batches, forward), GraphWalk(float_model, batches, forward)
    except ConfigError as exc:
        logger.info("AdaRound: capturing each layer by a forward pass from the model's input "
                    "(%s)", exc)
        return None


def _adaround_layer(sim: QuantizationSimModel, float_model: torch.fx.GraphModule, layer: _Layer,
                    batches: list[Any], forward: ForwardFn, hyper: AdaroundHyperParameters,
                    walks: tuple[GraphWalk, GraphWalk] | None = None) -> RoundingResult:
    logger.info("AdaRound: optimizing the weight rounding of %s", layer.name)
    if walks is not None:      # the layers come in graph order: each walk goes on from the last
        quantized, floating = walks
        targets = floating.outputs_of(layer.name)
        inputs = quantized.inputs_of(layer.name)
    else:
        _, targets = capture_layer_io(float_model, layer.name, batches, forward, inputs=False)
        inputs, _ = capture_layer_io(sim.model, layer.name, batches, forward, outputs=False)
    x = _concat(inputs, layer.name, "inputs")
    y = _concat(targets, layer.name, "outputs")
    del inputs, targets
    original = layer.module.parametrizations.weight.original
    bias = layer.module.bias
    result = optimize_rounding(layer.module, original, layer.quantizer.encoding, x, y, hyper,
                               bias=None if bias is None else bias.detach(),
                               activation=_following_activation(sim, layer.name),
                               name=layer.name)
    with torch.no_grad():
        original.copy_(result.weight)
    return result


# -------------------------------------------------------------------------------------------------
# Results
# -------------------------------------------------------------------------------------------------
def _write_encodings(target: str, layers: Sequence[_Layer]) -> None:
    """AIMET's AdaRound file: ``{"param_encodings": {"<layer>.weight": [0.6.1 entries]}}``,
    keys sorted, indented by 4."""
    encodings = {f"{layer.name}.weight": layer.quantizer.encoding for layer in layers}
    entries = encodings_dict({"param": encodings}, version="0.6.1")["param_encodings"]
    files.write_text(target, json.dumps({"param_encodings": entries}, sort_keys=True, indent=4),
                     overwrite=True)


def _adarounded_model(model: nn.Module, sim: QuantizationSimModel, dummy_input: Any) -> nn.Module:
    """A copy of ``model`` holding the sim's float parameters (AdaRounded weights, folded batch
    norms), or the sim's float graph module when the copy cannot hold them."""
    float_gm = _float_model(sim)
    state = float_gm.state_dict()
    twin = (private_copy(model) if isinstance(model, torch.fx.GraphModule)
            else copy.deepcopy(model))
    try:
        if sim.fold_batch_norms and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                        for m in twin.modules()):
            fold_all_batch_norms(twin, dummy_input=dummy_input)
        twin.load_state_dict(state, strict=True)
    except (RuntimeError, FxQuantError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.info("AdaRound: the AdaRounded weights do not fit a copy of %s (%s); returning "
                    "the sim's float GraphModule instead (same layer names as the sim)",
                    type(model).__name__, first)
        return float_gm
    return twin
