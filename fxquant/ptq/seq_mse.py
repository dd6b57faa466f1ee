"""Sequential MSE (AIMET's ``apply_seq_mse``): weight ranges searched layer by layer so that each
conv/linear layer's output error on calibration data is smallest.

For every conv/linear layer of the sim, in graph order, the candidate ranges of each output
channel are the fractions ``k / num_candidates`` (k = 1..num_candidates) of the channel's min-max
weight range; the last candidate is exactly the min-max ("tf") encoding. The layer's output with
each candidate's quantized weights is compared with its output with float weights, per output
channel (all candidates in one grouped conv / matmul), and the best candidate of each channel is
set on the weight quantizer and frozen, so a later ``sim.compute_encodings`` keeps it and
computes the activation encodings with the optimized weights in place.

The layer's input (AIMET's ``inp_symmetry``): ``"symqt"`` (default) the input in the sim, with
the weights of the layers before it quantized (their ranges already chosen) and activation
quantizers off; ``"symfp"`` the float input; ``"asym"`` the sim's input for the quantized output
and the float input for the float output. The loss (``loss_fn``): ``"mse"`` (sum of squared
errors), ``"l1"`` or ``"sqnr"`` (negative SQNR in dB, per batch, summed).

As in AIMET, only weights of at most 4 bits are optimized (others are left to calibration), and
during the search activation quantizers and the weight quantizers of excluded and non-conv/linear
layers are off. Everything but the optimized weight encodings is as before when the call returns;
if it fails, the sim is put back entirely.

Example:
    >>> sim = QuantizationSimModel(model, dummy_input, default_param_bw=4)
    >>> apply_seq_mse(sim, data_loader, num_candidates=20)
    >>> sim.compute_encodings(calibrate, data_loader)    # activations; the weights stay frozen
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
import sys
import warnings
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from fxquant.core.encoding import QuantEncoding, quant_range, scale_zero_point_from_min_max
from fxquant.core.kernels import quantize_dequantize
from fxquant.core.layers import layer_nodes, param_quantizers
from fxquant.errors import ConfigError
from fxquant.ptq._data import (ForwardFn, GraphWalk, capture_layer_io, default_forward,
                               take_batches)
from fxquant.quantsim.calibration import compute_param_encodings
from fxquant.quantsim.quantizer import AffineQuantizer
from fxquant.quantsim.quantizer_base import QuantizerBase
from fxquant.quantsim.quantsim import QuantizationSimModel

__all__ = ["SeqMseParams", "apply_seq_mse"]

logger = logging.getLogger(__name__)

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: AIMET's ``SUPPORTED_PARAM_BW``: wider weights are left to ``compute_encodings``.
_MAX_PARAM_BW = 4
_INP_SYMMETRIES = ("asym", "symfp", "symqt")
_LOSS_FNS = ("mse", "l1", "sqnr")
#: Elements of the largest temporary (candidate weights, or one batch's outputs for all the
#: candidates evaluated together); more candidates are evaluated in chunks.
_CHUNK_ELEMENTS = 1 << 25
_EPS = 1e-10
_CACHE_INDEX = "running_module_names.txt"
_CHECKPOINT_KEYS = ("grouped_modules", "include_static_inputs", "cache_on_cpu")


def _neg_sqnr(pred: Tensor, target: Tensor, eps: float = _EPS, reduction: str = "none") -> Tensor:
    """AIMET's ``neg_sqnr``: minus the SQNR (dB) of ``pred`` against ``target`` along dim 0."""
    noise = (target - pred).square().mean(0, keepdim=True) + eps
    return -10 * torch.log10(target.square().mean(0, keepdim=True) / noise)


@dataclasses.dataclass(frozen=True)
class SeqMseParams:
    """Sequential MSE parameters (AIMET's fields and defaults).

    Attributes:
        num_batches: how many batches of the data loader to use; None: all of them.
        num_candidates: candidate ranges per channel (fractions ``k / num_candidates`` of the
            min-max range). Default 20.
        inp_symmetry: the layer input the loss uses: ``"asym"``, ``"symfp"`` or ``"symqt"``
            (default; see the module docstring).
        loss_fn: ``"mse"`` (default), ``"l1"`` or ``"sqnr"``.
        forward_fn: ``forward_fn(model, batch)`` runs the model on one batch; None runs
            ``model(batch)`` (or ``model(batch[0])`` for ``(inputs, labels)``).

    Raises:
        ConfigError: a field has an invalid value (the message names it and the valid values).

    Example:
        >>> params = SeqMseParams(num_batches=4, num_candidates=20, inp_symmetry="symqt")
        >>> params.loss_fn
        'mse'
    """

    num_batches: Optional[int]
    num_candidates: int = 20
    inp_symmetry: str = "symqt"
    loss_fn: str = "mse"
    forward_fn: Optional[ForwardFn] = None

    def __post_init__(self) -> None:
        for field, value, none_ok in (("num_batches", self.num_batches, True),
                                      ("num_candidates", self.num_candidates, False)):
            if value is None and none_ok:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                extra = " or None (every batch of the data loader)" if none_ok else ""
                raise ConfigError(f"SeqMseParams.{field} must be a positive int{extra}, "
                                  f"got {value!r}")
        for field, value, valid in (("inp_symmetry", self.inp_symmetry, _INP_SYMMETRIES),
                                    ("loss_fn", self.loss_fn, _LOSS_FNS)):
            if value not in valid:
                raise ConfigError(f"SeqMseParams.{field}={value!r} is not valid; valid values: "
                                  + ", ".join(map(repr, valid)))
        if self.forward_fn is not None and not callable(self.forward_fn):
            raise ConfigError(f"SeqMseParams.forward_fn must be callable as "
                              f"forward_fn(model, batch) or None, got {self.forward_fn!r}")

    def get_loss_fn(self) -> Callable[..., Tensor]:
        """The loss as AIMET gives it: ``loss(pred, target, reduction="none")``.

        Example:
            >>> SeqMseParams(1).get_loss_fn() is torch.nn.functional.mse_loss
            True
        """
        return {"mse": F.mse_loss, "l1": F.l1_loss, "sqnr": _neg_sqnr}[self.loss_fn]


@overload
def apply_seq_mse(sim: QuantizationSimModel, data_loader: Iterable[Any], num_candidates: int = 20,
                  forward_fn: Optional[ForwardFn] = None,
                  modules_to_exclude: Optional[Sequence[nn.Module | str]] = None,
                  checkpoints_config: Optional[str] = None,
                  cache_dir: Optional[str] = None) -> None: ...


@overload
def apply_seq_mse(model: nn.Module, sim: QuantizationSimModel, data_loader: Iterable[Any],
                  params: SeqMseParams,
                  modules_to_exclude: Optional[Sequence[nn.Module | str]] = None,
                  checkpoints_config: Optional[str] = None,
                  cache_dir: Optional[str] = None) -> None: ...


def apply_seq_mse(*args: Any, **kwargs: Any) -> None:
    """Chooses and freezes the weight encodings of the sim's conv/linear layers, layer by layer,
    minimizing each layer's output loss (see the module docstring).

    Two call shapes, as in AIMET 2.42:

    * ``apply_seq_mse(sim, data_loader, num_candidates=20, forward_fn=None,
      modules_to_exclude=None, checkpoints_config=None, cache_dir=None)``: every batch of
      ``data_loader``, ``inp_symmetry="symqt"``, ``loss_fn="mse"``.
    * ``apply_seq_mse(model, sim, data_loader, params, modules_to_exclude=None,
      checkpoints_config=None, cache_dir=None)``: AIMET's older shape (a ``DeprecationWarning``,
      as in AIMET), with :class:`SeqMseParams`; ``model`` is the float model the sim was built
      from. The float activations are computed by the sim with its quantizers off (the same
      function, with batch norms folded as in the sim), so ``model`` is only checked against the
      sim and used to resolve ``modules_to_exclude``.

    Args:
        sim: the quantization sim (``sim.compute_encodings`` not needed before).
        data_loader: calibration batches (tensors, ``(inputs, labels)`` or keyword dicts); moved
            to the sim's device.
        modules_to_exclude: modules of ``model`` or of ``sim.model``, or layer names, whose
            weights are left to ``compute_encodings`` (their weights stay float during the search).
        checkpoints_config: AIMET's block-split JSON file (keys ``grouped_modules``,
            ``include_static_inputs``, ``cache_on_cpu``). It is validated; fxquant already runs
            the graph only up to each layer, so no split is needed; ``cache_on_cpu`` keeps the
            sampled layer inputs on the CPU.
        cache_dir: a directory where each optimized layer's encoding is saved
            (``running_module_names.txt`` and ``<layer>.pt``); layers found there are loaded and
            frozen instead of searched again (to resume an interrupted run: the files written
            before a failure stay, while the sim itself is rolled back).

    Raises:
        TypeError: ``sim`` is not a QuantizationSimModel, ``model`` not an nn.Module or
            ``params`` not a SeqMseParams.
        ConfigError: the sim was not built from ``model``; ``modules_to_exclude`` names something
            that is not in the model; the data loader has no (or too few) batches; a bad
            ``checkpoints_config`` or cache file.

    Example:
        >>> sim = QuantizationSimModel(model, dummy_input, default_param_bw=4)
        >>> apply_seq_mse(sim, data_loader, num_candidates=20)
        >>> sim.compute_encodings(calibrate, data_loader)
    """
    if "model" in kwargs or (args and isinstance(args[0], nn.Module)):
        warnings.warn("apply_seq_mse(model, sim, data_loader, params, ...) is AIMET's deprecated "
                      "call shape; use apply_seq_mse(sim, data_loader, num_candidates=..., "
                      "forward_fn=...)", DeprecationWarning, stacklevel=2)
        return _apply_with_params(*args, **kwargs)
    return _apply(*args, **kwargs)


def _apply(sim: QuantizationSimModel, data_loader: Iterable[Any], num_candidates: int = 20,
           forward_fn: Optional[ForwardFn] = None,
           modules_to_exclude: Optional[Sequence[nn.Module | str]] = None,
           checkpoints_config: Optional[str] = None, cache_dir: Optional[str] = None) -> None:
    params = SeqMseParams(num_batches=None, num_candidates=num_candidates, forward_fn=forward_fn)
    _run(None, sim, data_loader, params, modules_to_exclude, checkpoints_config, cache_dir)


def _apply_with_params(model: nn.Module, sim: QuantizationSimModel, data_loader: Iterable[Any],
                       params: SeqMseParams,
                       modules_to_exclude: Optional[Sequence[nn.Module | str]] = None,
                       checkpoints_config: Optional[str] = None,
                       cache_dir: Optional[str] = None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_seq_mse: model must be the float torch.nn.Module the sim was "
                        f"built from, got {type(model).__qualname__}")
    if not isinstance(params, SeqMseParams):
        raise TypeError(f"apply_seq_mse: params must be a SeqMseParams, got "
                        f"{type(params).__qualname__}; e.g. SeqMseParams(num_batches=4)")
    _run(model, sim, data_loader, params, modules_to_exclude, checkpoints_config, cache_dir)


def _run(model: nn.Module | None, sim: QuantizationSimModel, data_loader: Iterable[Any],
         params: SeqMseParams, modules_to_exclude: Any, checkpoints_config: Optional[str],
         cache_dir: Optional[str]) -> None:
    if not isinstance(sim, QuantizationSimModel):
        raise TypeError(f"apply_seq_mse: sim must be a fxquant.QuantizationSimModel, got "
                        f"{type(sim).__qualname__}; call apply_seq_mse(sim, data_loader, ...) or "
                        f"apply_seq_mse(model, sim, data_loader, params, ...)")
    gm = sim.model
    modules = dict(gm.named_modules())
    layers = {}                                  # module path -> module, graph order, no repeats
    for node in layer_nodes(gm).values():
        layers.setdefault(str(node.target), modules[str(node.target)])
    supported = {name: m for name, m in layers.items()
                 if isinstance(m, _SUPPORTED) and "weight" in param_quantizers(m)}
    if model is not None:
        _check_built_from(model, supported)
    excluded = _excluded_layers(modules_to_exclude, model, gm, layers)
    storage = _checkpoint_storage(checkpoints_config, model if model is not None else gm)
    targets = _targets(supported, excluded)
    if not targets:
        logger.warning("apply_seq_mse: no layer to optimize (conv/linear layers with an enabled, "
                       "non-frozen integer weight quantizer of at most %d bits)", _MAX_PARAM_BW)
        return
    batches = take_batches(data_loader, params.num_batches or sys.maxsize)
    if params.num_batches is not None and len(batches) < params.num_batches:
        raise ConfigError(f"apply_seq_mse: SeqMseParams.num_batches={params.num_batches} but "
                          f"data_loader yielded only {len(batches)} batch(es); lower num_batches")
    device = next(iter(gm.parameters()), torch.empty(0)).device
    forward = _on_device(params.forward_fn or default_forward, device)
    quantizers = [m for m in gm.modules() if isinstance(m, QuantizerBase)]
    snapshots = [(q, q.state_snapshot()) for q in quantizers]
    fp_state = {q: False for q in quantizers}
    qt_state = dict(fp_state)
    for ref in sim.quantizers():
        if ref.kind == "param" and ref.layer in supported and ref.layer not in excluded:
            qt_state[ref.quantizer] = ref.quantizer.enabled
    done: set[QuantizerBase] = set()
    try:
        with _eval_mode(gm), torch.no_grad():
            # the param quantizers used in the quantized passes need an encoding (the snapshots
            # put the previous state back afterwards)
            compute_param_encodings(gm, [ref for ref in sim.quantizers()
                                         if qt_state.get(ref.quantizer)], only_missing=True)
            todo = _load_cache(cache_dir, targets, supported, done)
            # two walks through the graph (quantized, float) run every node once for all the
            # layers; with the inputs cached on the CPU, each layer's are captured by a forward
            # pass instead (a walk keeps its live activations on the device)
            qt_walk, fp_walk = (_walks(gm, batches, forward, params.inp_symmetry)
                                if storage is None else (None, None))
            for layer in tqdm(todo, desc="Sequential MSE", unit="layer", disable=None):
                module, quantizer = supported[layer], targets[layer]
                xs = xqs = None
                if params.inp_symmetry != "symfp":
                    xqs = _capture(gm, layer, batches, forward, qt_state, storage, qt_walk)
                if params.inp_symmetry != "symqt":
                    xs = _capture(gm, layer, batches, forward, fp_state, storage, fp_walk)
                weight = module.parametrizations.weight.original.detach()
                encoding = _search(layer, module, quantizer, weight, xs or xqs, xqs or xs, params)
                quantizer.set_encoding(encoding)
                quantizer.freeze_encoding()
                done.add(quantizer)
                if cache_dir:
                    _save_cache(cache_dir, layer, encoding)
    except BaseException:
        for q, snapshot in snapshots:
            q.restore_snapshot(snapshot)
        raise
    for q, snapshot in snapshots:
        if q in done:
            q.enabled = snapshot.plain.get("enabled", True)
        else:
            q.restore_snapshot(snapshot)
    logger.info("apply_seq_mse: froze the weight encodings of %d layer(s)", len(done))


def _check_built_from(model: nn.Module, supported: dict[str, nn.Module]) -> None:
    """ConfigError unless the sim's conv/linear layers are ``model``'s (by path, type, shape)."""
    fp_modules = dict(model.named_modules())
    matched, wrong = 0, []
    for name, module in supported.items():
        fp = fp_modules.get(name)
        if fp is None:      # a module the preparer made (a split reused module): nothing to check
            continue
        shape = tuple(module.parametrizations.weight.original.shape)
        fp_weight = getattr(fp, "weight", None)
        if (not isinstance(module, type(fp)) or not isinstance(fp_weight, Tensor)
                or tuple(fp_weight.shape) != shape):
            wrong.append(f"{name!r} is a {type(fp).__name__} with weight "
                         f"{tuple(getattr(fp_weight, 'shape', ()))} in model but a "
                         f"{type(module).__name__} with weight {shape} in the sim")
        else:
            matched += 1
    if wrong or (supported and not matched):
        detail = "; ".join(wrong[:3]) or ("none of the sim's conv/linear layers "
                                          f"({', '.join(list(supported)[:3])} ...) is in model")
        raise ConfigError(f"apply_seq_mse: sim was not built from model: {detail}. Pass the float "
                          "model given to QuantizationSimModel(model, ...), or call "
                          "apply_seq_mse(sim, data_loader, ...), which needs no model")


def _excluded_layers(items: Any, model: nn.Module | None, gm: nn.Module,
                     layers: dict[str, nn.Module]) -> set[str]:
    """The sim layer paths named by ``modules_to_exclude`` (modules of either model, or names)."""
    if items is None:
        return set()
    if isinstance(items, (nn.Module, str)) or not isinstance(items, Iterable):
        raise ConfigError(f"modules_to_exclude must be a list of modules or layer names, got "
                          f"{type(items).__qualname__}; wrap a single module in a list")
    in_sim = {id(m): name for name, m in gm.named_modules()}
    in_model = {id(m): name for name, m in model.named_modules()} if model is not None else {}
    out = set()
    for item in items:
        if isinstance(item, str):
            if item not in layers:
                close = difflib.get_close_matches(item, list(layers), n=3)
                raise ConfigError(f"modules_to_exclude: no layer {item!r} in the sim; close: "
                                  f"{close or list(layers)[:3]}")
            name = item
        elif isinstance(item, nn.Module):
            name = in_sim.get(id(item), in_model.get(id(item)))
            if name is None:
                where = "model nor of sim.model" if model is not None else "sim.model"
                raise ConfigError(
                    f"modules_to_exclude: {type(item).__name__} {_short(item)} is neither a "
                    f"submodule of {where}; pass submodules of the float model the sim was "
                    "built from (or of sim.model), or layer names")
            if name not in layers:
                logger.warning("modules_to_exclude: %r (%s) is not a layer of the sim (e.g. a "
                               "batch norm folded into its conv); ignored", name,
                               type(item).__name__)
        else:
            raise ConfigError(f"modules_to_exclude: expected modules or layer names, got "
                              f"{type(item).__qualname__} {item!r}")
        out.add(name)
    return out


def _short(module: nn.Module) -> str:
    text = repr(module).splitlines()[0]
    return text if len(text) <= 60 else text[:57] + "..."


def _checkpoint_storage(path: Optional[str], root: nn.Module) -> Optional[str]:
    """Validates AIMET's checkpoints config; "cpu" when it asks to cache on the CPU."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"checkpoints_config {str(path)!r} cannot be read as JSON: {exc}"
                          ) from exc
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise ConfigError(f"checkpoints_config {str(path)!r}: missing key(s) {missing}; AIMET's "
                          f"checkpoints config has {', '.join(_CHECKPOINT_KEYS)}")
    groups = config["grouped_modules"]
    names = [n for g in (groups.values() if isinstance(groups, dict) else [groups]) for n in g]
    known = {name for name, _ in root.named_modules()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"checkpoints_config {str(path)!r}: grouped_modules names "
                          f"{unknown[:3]}, which are not modules of the model")
    logger.info("checkpoints_config: fxquant runs the graph only up to each layer, so the model "
                "is not split into blocks; cache_on_cpu=%s", bool(config["cache_on_cpu"]))
    return "cpu" if config["cache_on_cpu"] else None


def _targets(supported: dict[str, nn.Module], excluded: set[str]) -> dict[str, AffineQuantizer]:
    """``{layer: weight quantizer}`` of the layers to optimize; logs why others are skipped."""
    out, wide = {}, []
    for name, module in supported.items():
        q = param_quantizers(module)["weight"]
        if name in excluded:
            logger.info("%s: excluded (modules_to_exclude)", name)
        elif not isinstance(q, AffineQuantizer) or not q.enabled or q.axis not in (None, 0):
            logger.info("%s: its weight quantizer is not an enabled integer quantizer (per tensor "
                        "or per output channel); skipped", name)
        elif q.bitwidth > _MAX_PARAM_BW:
            wide.append(name)
        elif q.is_frozen:
            logger.info("%s: its weight encoding is frozen; kept", name)
        else:
            out[name] = q
    if wide:
        logger.warning("apply_seq_mse: %d layer(s) have weights of more than %d bits and are left "
                       "to compute_encodings, as in AIMET: %s", len(wide), _MAX_PARAM_BW,
                       ", ".join(wide[:5]) + (" ..." if len(wide) > 5 else ""))
    return out


def _on_device(forward: ForwardFn, device: torch.device) -> ForwardFn:
    def run(model: nn.Module, batch: Any) -> Any:
        moved = torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), batch)
        return forward(model, moved)
    return run


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def _walks(gm: torch.fx.GraphModule, batches: Sequence[Any], forward: ForwardFn,
           inp_symmetry: str) -> tuple[GraphWalk | None, GraphWalk | None]:
    """A walk for the quantized passes and one for the float passes (each only where
    ``inp_symmetry`` uses them), or none where the batches cannot start one (``forward_fn``
    does not call the model with its graph's inputs)."""
    try:
        return (GraphWalk(gm, batches, forward) if inp_symmetry != "symfp" else None,
                GraphWalk(gm, batches, forward) if inp_symmetry != "symqt" else None)
    except ConfigError as exc:
        logger.info("apply_seq_mse: capturing each layer by a forward pass from the model's "
                    "input (%s)", exc)
        return None, None


def _capture(gm: nn.Module, layer: str, batches: Sequence[Any], forward: ForwardFn,
             state: dict[QuantizerBase, bool], storage: Optional[str],
             walk: GraphWalk | None = None) -> list[Tensor]:
    """The layer's input for every batch, with the quantizers enabled as ``state`` says: from
    ``walk`` (which always runs under the same ``state``) or by a forward pass."""
    for q, enabled in state.items():
        q.enabled = enabled
    with parametrize.cached():
        if walk is not None:
            return walk.inputs_of(layer)
        return capture_layer_io(gm, layer, batches, forward, outputs=False, storage=storage)[0]


def _grid(q: AffineQuantizer, weight: Tensor) -> tuple[int, int, bool]:
    signed = q.signed
    if signed is None:    # as AffineQuantizer decides it from the data
        signed = q.symmetric and not (q.unsigned_symmetric and bool((weight >= 0).all()))
    qmin, qmax = quant_range(q.bitwidth, signed, q.symmetric, q.strict_symmetric)
    return qmin, qmax, signed


def _search(layer: str, module: nn.Module, q: AffineQuantizer, weight: Tensor,
            xs: list[Tensor], xqs: list[Tensor], params: SeqMseParams) -> QuantEncoding:
    """The best candidate encoding of each channel (of the tensor, when per tensor)."""
    num = params.num_candidates
    qmin, qmax, signed = _grid(q, weight)
    channels = weight.shape[0] if q.axis is not None else 1
    w2 = weight.reshape(channels, -1)
    fractions = torch.arange(1, num + 1, dtype=torch.float64, device=weight.device)[:, None] / num
    scale, zero_point = scale_zero_point_from_min_max(
        w2.amin(1) * fractions, w2.amax(1) * fractions, qmin, qmax, symmetric=q.symmetric,
        signed=signed)                                                  # [num, channels]
    sample = xqs[0][:1].to(weight.device)          # output size per input element
    ratio = _op(module, sample, weight).numel() / max(sample.numel(), 1)
    per_candidate = max(weight.numel(), int(ratio * max(x.numel() for x in xqs)) + 1)
    step = max(1, min(num, _CHUNK_ELEMENTS // per_candidate))
    losses = torch.cat([
        _candidate_losses(module, weight, _deltas(weight, scale[i:i + step],
                                                  zero_point[i:i + step], qmin, qmax),
                          xs, xqs, params.loss_fn, xs is xqs)
        for i in range(0, num, step)])                                  # [num, out channels]
    if q.axis is None:
        losses = losses.sum(1, keepdim=True)
    best = (num - 1) - losses.flip(0).argmin(0)      # ties: the wider range
    if logger.isEnabledFor(logging.INFO):
        chosen = losses.gather(0, best[None]).sum()
        logger.info("%s: %s loss %.6g with the chosen weight ranges, %.6g with min-max ranges "
                    "(on average %.0f%% of min-max)", layer, params.loss_fn, float(chosen),
                    float(losses[-1].sum()), 100 * float((best + 1).double().mean()) / num)
    return QuantEncoding(scale=scale.gather(0, best[None])[0],
                         zero_point=zero_point.gather(0, best[None])[0], bitwidth=q.bitwidth,
                         signed=signed, symmetric=q.symmetric, strict=q.strict_symmetric,
                         axis=q.axis)


def _deltas(weight: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """``[k, *weight.shape]``: each candidate's quantized weight minus the float weight (the
    quantizer's own arithmetic, on the weight repeated k times)."""
    k, channels = scale.shape
    stacked = weight.reshape(1, channels, -1).expand(k, channels, -1).reshape(k * channels, -1)
    wq = quantize_dequantize(stacked, scale.reshape(-1), zero_point.reshape(-1), qmin, qmax,
                             axis=0)
    return wq.reshape(k, *weight.shape) - weight


def _op(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The layer without its bias (which cancels in every error) with another weight."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    return module._conv_forward(x, weight, None)


def _as5d(out: Tensor, module: nn.Module, k: int) -> Tensor:
    """A layer output of k candidates' channels as ``[rows, groups, k, channels/group, rest]``."""
    if isinstance(module, nn.Linear):
        return out.reshape(-1, 1, k, out.shape[-1] // k, 1)
    groups = module.groups
    return out.reshape(out.shape[0], groups, k, out.shape[1] // (k * groups), -1)


def _candidate_losses(module: nn.Module, weight: Tensor, deltas: Tensor, xs: list[Tensor],
                      xqs: list[Tensor], loss_fn: str, same_input: bool) -> Tensor:
    """``[k, out channels]`` float64 loss of each candidate (``deltas``) summed over batches.

    The error of a candidate is ``op(xq, Wq) - op(x, W) = op(xq, Wq - W) + (op(xq, W) - op(x,
    W))``; the candidates are stacked along the output channels (group by group, so grouped and
    depthwise convs keep their channels) and run as one conv / matmul."""
    k, out_channels = deltas.shape[:2]
    groups = getattr(module, "groups", 1)
    stacked = deltas.reshape(k, groups, out_channels // groups, *deltas.shape[2:])
    stacked = stacked.transpose(0, 1).reshape(k * out_channels, *deltas.shape[2:])
    total = torch.zeros(k, out_channels, dtype=torch.float64, device=weight.device)
    for x, xq in zip(xs, xqs):
        x, xq = x.to(weight.device), xq.to(weight.device)
        err = _as5d(_op(module, xq, stacked), module, k)
        y = _as5d(_op(module, x, weight), module, 1) if (loss_fn == "sqnr" or not same_input) \
            else None
        if not same_input:
            err = err + (_as5d(_op(module, xq, weight), module, 1) - y)
        if loss_fn == "mse":
            loss = err.square().sum((0, 4))
        elif loss_fn == "l1":
            loss = err.abs().sum((0, 4))
        else:
            noise = err.square().mean((0, 4)) + _EPS
            loss = -10 * torch.log10((y.square().mean((0, 4)) + _EPS) / noise)
        total += loss.transpose(0, 1).reshape(k, out_channels).double()
    return total


def _cache_path(cache_dir: str, layer: str) -> str:
    return os.path.join(cache_dir, f"{layer}.pt")


def _load_cache(cache_dir: Optional[str], targets: dict[str, AffineQuantizer],
                supported: dict[str, nn.Module], done: set[QuantizerBase]) -> list[str]:
    """Loads and freezes the cached layers' encodings; returns the layers left to search."""
    index = os.path.join(cache_dir, _CACHE_INDEX) if cache_dir else None
    if index is None or not os.path.exists(index):
        return list(targets)
    with open(index, encoding="utf-8") as f:
        cached = [line.strip() for line in f if line.strip()]
    for layer in dict.fromkeys(cached):
        path = _cache_path(cache_dir, layer)
        if layer not in targets or not os.path.exists(path):
            logger.info("cache_dir: %s is not optimized in this run or has no file; ignored", layer)
            continue
        q = targets[layer]
        channels = supported[layer].parametrizations.weight.original.shape[0]
        try:
            encoding = QuantEncoding(**torch.load(path, map_location="cpu", weights_only=True))
            if q.axis is not None and encoding.scale.numel() != channels:
                raise ConfigError(f"{encoding.scale.numel()} scales for {channels} channels")
            q.set_encoding(encoding)
        except Exception as exc:
            raise ConfigError(f"cache_dir {cache_dir!r}: {path} does not hold an encoding for "
                              f"layer {layer!r} ({type(exc).__name__}: {exc}); delete it to "
                              "search the layer again") from exc
        q.freeze_encoding()
        done.add(q)
        logger.info("cache_dir: loaded the encoding of %s from %s", layer, path)
    return [layer for layer in targets if targets[layer] not in done]


def _save_cache(cache_dir: str, layer: str, encoding: QuantEncoding) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    state = {f.name: getattr(encoding, f.name) for f in dataclasses.fields(encoding)}
    state["scale"], state["zero_point"] = encoding.scale.cpu(), encoding.zero_point.cpu()
    torch.save(state, _cache_path(cache_dir, layer))
    with open(os.path.join(cache_dir, _CACHE_INDEX), "a", encoding="utf-8") as f:
        f.write(layer + "\n")
