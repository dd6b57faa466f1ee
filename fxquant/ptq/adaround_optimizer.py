"""AdaRound's per-layer optimization (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization"): learn, for every weight of one layer, whether to round it down or up.

Each weight ``w`` on the grid of scale ``s`` and zero point ``z`` is written as
``floor(w / s) + h(V)`` grid steps, with ``h(V) = clamp(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)``
the rectified sigmoid of a continuous variable ``V`` initialized so that ``h(V)`` is the
fractional part of ``w / s`` (the soft-rounded weight is then the float weight, clamped to the
grid). ``V`` is trained with Adam on::

    ||act(layer(x_q; W_soft)) - act(y_fp)||^2  +  reg_param * sum(1 - |2 h(V) - 1| ** beta)

where ``x_q`` is the layer's input in the quantized model, ``y_fp`` its output in the float model
and ``act`` the activation that follows the layer (if any); ``beta`` is annealed from
``beta_range[0]`` to ``beta_range[1]`` (cosine) after a warm start without the regularizer, which
drives every ``h(V)`` to 0 or 1. The result is hard-rounded: up where ``h(V) >= 0.5`` (``V >= 0``).

The loop runs on the device of the cached activations and never reads a value back to the host
(mini-batch indices come from the device's generator, ``beta`` is computed from the iteration
number), so a GPU is never stalled by a synchronization inside it.

Example:
    >>> hyper = AdaroundHyperParameters(num_iterations=1000)
    >>> result = optimize_rounding(conv, conv.weight, encoding, inputs, targets, hyper,
    ...                            activation=nn.ReLU())
    >>> result.weight.shape == conv.weight.shape, result.num_iterations
    (True, 1000)
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.adam import adam as functional_adam

from fxquant.core.encoding import QuantEncoding
from fxquant.core.kernels import quantize_dequantize
from fxquant.errors import ConfigError

__all__ = ["GAMMA", "ZETA", "SUPPORTED_LAYERS", "AdaroundHyperParameters", "RoundingResult",
           "beta_at", "check_beta_range", "check_number", "layer_forward", "optimize_rounding",
           "reconstruction_loss", "rectified_sigmoid"]

logger = logging.getLogger(__name__)

#: Stretch of the rectified sigmoid (the paper's gamma and zeta, AIMET's ``AdaroundConstants``).
GAMMA: float = -0.1
ZETA: float = 1.1

#: Layer types whose weights AdaRound optimizes (AIMET: Conv2d, ConvTranspose2d, Linear).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear)

_TRANSPOSED = {nn.ConvTranspose1d: F.conv_transpose1d, nn.ConvTranspose2d: F.conv_transpose2d,
               nn.ConvTranspose3d: F.conv_transpose3d}
_METRIC_CHUNK = 1024  # rows of the cache per forward when measuring the reconstruction error


@dataclasses.dataclass(frozen=True)
class AdaroundHyperParameters:
    """How one layer's rounding is optimized.

    Attributes:
        num_iterations: Adam steps per layer.
        reg_param: weight of the rounding regularizer.
        beta_range: ``(start, end)`` of the regularizer's exponent, annealed after the warm start.
        warm_start: fraction of the iterations run without the regularizer.
        batch_size: rows (images, sequences) of the cached activations per step (AIMET: 32).
        learning_rate: Adam's learning rate (AIMET: Adam's default, 1e-3).

    Raises:
        ConfigError: a value is out of range (the message names the field and the valid values).

    Example:
        >>> AdaroundHyperParameters(num_iterations=500).batch_size
        32
    """

    num_iterations: int
    reg_param: float = 0.01
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    batch_size: int = 32
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("num_iterations", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"AdaroundHyperParameters.{name} must be a positive int, "
                                  f"got {value!r}")
        check_number("AdaroundHyperParameters.reg_param", self.reg_param, "a number >= 0",
                     lambda v: v >= 0)
        check_number("AdaroundHyperParameters.learning_rate", self.learning_rate,
                     "a number > 0", lambda v: v > 0)
        check_number("AdaroundHyperParameters.warm_start", self.warm_start,
                     "a number in [0, 1)", lambda v: 0 <= v < 1)
        object.__setattr__(self, "beta_range",
                           check_beta_range("AdaroundHyperParameters.beta_range", self.beta_range))


def check_number(field: str, value: object, valid: str, ok: Callable[[float], bool]) -> float:
    """``value`` as a float when it is a finite number (not a bool) for which ``ok`` holds.

    Raises:
        ConfigError: it is not (the message names ``field`` and says ``valid``).

    Example:
        >>> check_number("warm_start", 0.2, "a number in [0, 1)", lambda v: 0 <= v < 1)
        0.2
    """
    good = (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and ok(value))
    if not good:
        raise ConfigError(f"{field} must be {valid}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_beta_range(field: str, value: object) -> tuple[float, float]:
    """``value`` as a ``(start, end)`` pair of finite positive numbers.

    Raises:
        ConfigError: it is not one (the message names ``field``).

    Example:
        >>> check_beta_range("beta_range", [20, 2])
        (20.0, 2.0)
    """
    pair = tuple(value) if isinstance(value, (tuple, list)) else None
    if (pair is None or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                   or v <= 0 for v in pair)):
        raise ConfigError(f"{field} must be a (start, end) pair of positive numbers, e.g. "
                          f"(20, 2), got {value!r}")
    return float(pair[0]), float(pair[1])


@dataclasses.dataclass(frozen=True, eq=False)
class RoundingResult:
    """The outcome of :func:`optimize_rounding` for one layer.

    Attributes:
        weight: the hard-rounded (fake-quantized) weight, on the grid of the encoding, in the
            weight's dtype and device.
        rounded_up: bool tensor, True where the weight was rounded up (``ceil``), False where
            down (``floor``), before clamping to the grid.
        nearest_mse: reconstruction MSE (after the activation) of round-to-nearest weights.
        adaround_mse: reconstruction MSE of the AdaRounded weights.
        changed_fraction: fraction of the weights rounded differently from round-to-nearest.
        num_iterations: optimization steps taken.

    Example:
        >>> result = optimize_rounding(fc, fc.weight, enc, x, y, hyper)
        >>> f"{result.nearest_mse:.3g} -> {result.adaround_mse:.3g}"
        '0.00401 -> 0.00265'
    """

    weight: Tensor
    rounded_up: Tensor
    nearest_mse: float
    adaround_mse: float
    changed_fraction: float
    num_iterations: int


def rectified_sigmoid(v: Tensor) -> Tensor:
    """``h(V) = clamp(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)``; ``h(0) = 0.5``.

    Example:
        >>> rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0])).tolist()
        [0.0, 0.5, 1.0]
    """
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


class _SoftWeight(torch.autograd.Function):
    """The soft-rounded weight on the grid and the rounding regularizer, as one autograd node.

    Forward: ``h = clamp(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)`` (times ``mask``), the weight
    ``(clamp(base + h, qmin, qmax) - zero_point) * scale`` and, when ``beta`` is given,
    ``sum(1 - |2h - 1| ** beta)``. The backward is the chain rule autograd would apply to those
    ops (clamps pass the gradient inside their closed range, ``|x|`` has slope ``sign(x)``),
    folded in the forward into one factor per output: ``dweight/dV`` and ``dreg/dV`` are
    elementwise, so the backward is ``grad_weight * dweight/dV + grad_reg * dreg/dV``. Every op
    counts: a layer's step is dominated by per-op overhead on small weights, so "inside the clamp"
    is read as "the clamp left it unchanged" (one comparison instead of two and an ``and``) and
    ``sign(c) * |c| ** (beta - 1)`` as ``|c| ** beta / c`` (the forward's power, no second ``pow``;
    0 where ``c = 0``).
    """

    @staticmethod
    def forward(ctx, v: Tensor, base: Tensor, zero_point: Tensor,  # noqa: ANN001 (ctx)
                scale: Tensor, mask: Tensor | None, qmin: int, qmax: int, beta: float | None,
                out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(v)
        s_stretched = s * (ZETA - GAMMA)          # d stretched / dV = s_stretched * (1 - s)
        stretched = s_stretched + GAMMA
        h = stretched.clamp(0.0, 1.0)
        dh = s_stretched * (1.0 - s) * (h == stretched)
        h = h.to(base.dtype)
        if mask is not None:
            h = h * mask
            dh = dh * mask
        q = base + h
        clamped = q.clamp(qmin, qmax)
        weight = ((clamped - zero_point) * scale).to(out_dtype)
        d_weight = dh * (clamped == q) * scale
        if beta is None:
            reg = torch.zeros((), dtype=base.dtype, device=base.device)
            d_reg = None
        else:
            centred = 2.0 * h - 1.0
            power = centred.abs().pow(beta)
            reg = (1.0 - power).sum()
            # d/dh (1 - |c| ** beta) = -2 beta sign(c) |c| ** (beta - 1), c = 2h - 1; 0/0 at c = 0
            d_reg = torch.nan_to_num(power / centred, nan=0.0) * dh
            ctx.reg_factor = -2.0 * beta
        ctx.save_for_backward(d_weight, d_reg)
        ctx.v_dtype = v.dtype
        ctx.set_materialize_grads(False)
        return weight, reg

    @staticmethod
    def backward(ctx, grad_weight: Tensor | None, grad_reg: Tensor | None  # noqa: ANN001
                 ) -> tuple[Tensor | None, ...]:
        d_weight, d_reg = ctx.saved_tensors
        grad = None
        if grad_weight is not None:
            grad = grad_weight.to(d_weight.dtype) * d_weight
        if grad_reg is not None and d_reg is not None:
            weight_of_reg = grad_reg * ctx.reg_factor
            grad = d_reg * weight_of_reg if grad is None else grad.addcmul_(d_reg, weight_of_reg)
        return (None if grad is None else grad.to(ctx.v_dtype), *(None,) * 8)


class _AdamState:
    """Adam (torch's defaults: betas (0.9, 0.999), eps 1e-8) for one tensor, stepped through
    ``torch.optim.adam.adam``, the functional form ``torch.optim.Adam`` calls: the same kernels and
    state, without the optimizer object's per-step bookkeeping.

    Example:
        >>> state = _AdamState(v, fused=True)
        >>> loss(v).backward(); state.step(1e-3)    # as torch.optim.Adam([v], 1e-3).step()
    """

    def __init__(self, param: Tensor, *, fused: bool) -> None:
        self.param = param
        self.fused = fused
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        # as torch.optim.Adam keeps it: on the device for the fused kernel, else on the host
        self.steps = (torch.zeros((), dtype=torch.float32, device=param.device) if fused
                      else torch.tensor(0.0, dtype=torch.get_default_dtype()))

    def step(self, lr: float) -> None:
        """One Adam step on the parameter from its ``.grad``."""
        with torch.no_grad():
            functional_adam([self.param], [self.param.grad], [self.exp_avg], [self.exp_avg_sq],
                            [], [self.steps], foreach=False, fused=self.fused, amsgrad=False,
                            beta1=0.9, beta2=0.999, lr=lr, weight_decay=0.0, eps=1e-8,
                            maximize=False)


def _inverse_rectified_sigmoid(h: Tensor) -> Tensor:
    """``V`` with ``h(V) = h`` for ``h`` in ``[0, 1)``."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


def beta_at(iteration: int, hyper: AdaroundHyperParameters) -> float:
    """The regularizer's exponent at ``iteration`` (after the warm start): cosine annealing from
    ``beta_range[0]`` to ``beta_range[1]`` over the remaining iterations.

    Example:
        >>> hyper = AdaroundHyperParameters(num_iterations=100, warm_start=0.2)
        >>> beta_at(20, hyper), round(beta_at(99, hyper), 2)
        (20.0, 2.01)
    """
    start, end = hyper.beta_range
    warm_end = hyper.warm_start * hyper.num_iterations
    relative = (iteration - warm_end) / (hyper.num_iterations - warm_end)
    return end + 0.5 * (start - end) * (1.0 + math.cos(relative * math.pi))


def reconstruction_loss(output: Tensor, target: Tensor, channel_dim: int = 1) -> Tensor:
    """AIMET's reconstruction loss: the squared error summed over dim 1 (channels, features) and
    averaged over the other dims; ``channel_dim`` says where the channels are in a tensor laid
    out otherwise (``-1``: channels-last).

    Example:
        >>> float(reconstruction_loss(torch.ones(2, 3), torch.zeros(2, 3)))
        3.0
    """
    if output.dim() < 2:
        return F.mse_loss(output, target)
    # the sum over the channels averaged over the rest is the total over (elements / channels):
    # one fused kernel each way instead of sub, pow, sum and mean
    return (F.mse_loss(output, target, reduction="sum")
            * (output.shape[channel_dim] / output.numel()))


def layer_forward(layer: nn.Module, x: Tensor, weight: Tensor,
                  bias: Tensor | None) -> Tensor:
    """``layer``'s forward on ``x`` with ``weight`` and ``bias`` instead of its own.

    Raises:
        ConfigError: ``layer`` is not one of :data:`SUPPORTED_LAYERS`.

    Example:
        >>> torch.equal(layer_forward(conv, x, conv.weight, conv.bias), conv(x))
        True
    """
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    for kind, fn in _TRANSPOSED.items():
        if isinstance(layer, kind):
            return fn(x, weight, bias, layer.stride, layer.padding, layer.output_padding,
                      layer.groups, layer.dilation)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer._conv_forward(x, weight, bias)
    raise ConfigError(f"AdaRound optimizes the weights of {[t.__name__ for t in SUPPORTED_LAYERS]}"
                      f" layers, not of a {type(layer).__name__}")


def _is_pointwise(layer: nn.Module) -> bool:
    """A 1x1 (1, 1x1x1) convolution without padding or groups: a linear map of the channels at
    every (strided) position."""
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or layer.groups != 1:
        return False
    no_padding = layer.padding in ("same", "valid") or not any(layer.padding)
    return no_padding and all(k == 1 for k in layer.kernel_size)


class _StepData:
    """A layer's cached inputs and goals, sampled a mini-batch at a time, and the reconstruction
    loss of the layer (and its activation) on a batch for a given weight.

    A pointwise convolution (:func:`_is_pointwise`) is one matrix product of the channels at every
    position: its inputs and goals are kept channels-last (``(N, *positions, C)``, subsampled by
    the stride) and the layer runs as ``F.linear`` on them (one GEMM each way instead of the
    convolution's kernels, which on the loop's small batches cost about twice as much on CPU).
    The output is the same function of the weight up to float32 summation order; the activation
    is applied to it viewed with the convolution's ``(N, C, *positions)`` shape (a module that
    treats channels differently sees them on dim 1), and the loss is taken channels-last, where
    every elementwise op and its gradient run on dense memory. Other layers run through
    :func:`layer_forward`. Memory: the channels-last copies add one copy of the layer's inputs
    and goals.
    """

    def __init__(self, layer: nn.Module, inputs: Tensor, goal: Tensor, bias: Tensor | None,
                 activation: nn.Module | None) -> None:
        self.layer, self.bias, self.act = layer, bias, activation
        self.pointwise = _is_pointwise(layer)
        if self.pointwise:
            strided = (slice(None), slice(None), *(slice(None, None, s) for s in layer.stride))
            self.inputs = inputs[strided].movedim(1, -1).contiguous()
            self.goal = goal.movedim(1, -1).contiguous()
        else:
            self.inputs, self.goal = inputs, goal

    def loss(self, index: Tensor, weight: Tensor) -> Tensor:
        """:func:`reconstruction_loss` of the layer with ``weight`` on the rows ``index``."""
        x, goal = self.inputs.index_select(0, index), self.goal.index_select(0, index)
        if not self.pointwise:
            out = layer_forward(self.layer, x, weight, self.bias)
            return reconstruction_loss(out if self.act is None else self.act(out), goal)
        out = F.linear(x, weight.reshape(weight.shape[0], -1), self.bias)
        if self.act is not None:
            out = self.act(out.movedim(-1, 1)).movedim(1, -1)
        return reconstruction_loss(out, goal, channel_dim=-1)


def _along_axis(t: Tensor, weight: Tensor, axis: int | None, dtype: torch.dtype) -> Tensor:
    t = t.to(device=weight.device, dtype=dtype)
    if axis is None:
        return t.reshape(())
    shape = [1] * weight.dim()
    shape[axis % weight.dim()] = -1
    return t.reshape(shape)


def _frozen_copy(activation: nn.Module | None) -> nn.Module | None:
    """A copy of the activation that never works in place and trains nothing."""
    if activation is None:
        return None
    act = copy.deepcopy(activation)
    if hasattr(act, "inplace"):
        act.inplace = False
    for p in act.parameters():
        p.requires_grad_(False)
    return act


def optimize_rounding(layer: nn.Module, weight: Tensor, encoding: QuantEncoding, inputs: Tensor,
                      targets: Tensor, hyper: AdaroundHyperParameters, *,
                      bias: Tensor | None = None, activation: nn.Module | None = None,
                      name: str = "") -> RoundingResult:
    """Learns the rounding of ``weight`` on ``encoding``'s grid that best reconstructs
    ``targets`` from ``inputs`` (see the module docstring).

    Args:
        layer: the conv/linear layer (its stride, padding, groups … are used; its own weight is
            not).
        weight: the float weight to round.
        encoding: the weight's encoding (per tensor or per channel); it is kept as it is.
        inputs: the layer's inputs in the quantized model, all batches concatenated along dim 0.
        targets: the layer's outputs in the float model, aligned with ``inputs``.
        hyper: the optimization settings.
        bias: the bias to add (e.g. the layer's, detached); None for none.
        activation: the activation following the layer, applied to both sides of the loss.
        name: the layer's name, for messages.

    Returns:
        A :class:`RoundingResult` whose ``weight`` is exactly on the grid: fake-quantizing it
        with ``encoding`` returns it unchanged.

    Raises:
        ConfigError: unsupported layer, an encoding whose axis does not fit the weight, or
            ``inputs`` and ``targets`` of different lengths, or outputs of another shape than the
            targets (the message names the layer).

    Example:
        >>> result = optimize_rounding(fc, fc.weight, enc, x, fc(x).detach(),
        ...                            AdaroundHyperParameters(num_iterations=200))
        >>> torch.equal(quantize_dequantize(result.weight, enc.scale, enc.zero_point, enc.qmin,
        ...                                 enc.qmax, axis=0), result.weight)
        True
    """
    label = f"layer {name!r}" if name else f"{type(layer).__name__} layer"
    if not isinstance(layer, SUPPORTED_LAYERS):
        raise ConfigError(f"{label}: AdaRound optimizes the weights of "
                          f"{[t.__name__ for t in SUPPORTED_LAYERS]} layers, not of a "
                          f"{type(layer).__name__}")
    if not isinstance(encoding, QuantEncoding):
        raise ConfigError(f"{label}: AdaRound needs an integer encoding of the weight, got "
                          f"{type(encoding).__name__}")
    if encoding.axis is not None and (
            not -weight.dim() <= encoding.axis < weight.dim()
            or weight.shape[encoding.axis] != encoding.scale.numel()):
        raise ConfigError(f"{label}: the encoding has {encoding.scale.numel()} channels along "
                          f"axis {encoding.axis}, the weight has shape {tuple(weight.shape)}")
    if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
        raise ConfigError(f"{label}: {inputs.shape[0]} cached inputs but {targets.shape[0]} "
                          "cached outputs; they must be aligned and not empty")
    device = inputs.device
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(device=device, dtype=dtype)
    scale = _along_axis(encoding.scale, w, encoding.axis, dtype)
    zero_point = _along_axis(encoding.zero_point, w, encoding.axis, dtype)
    qmin, qmax = encoding.qmin, encoding.qmax
    bias = None if bias is None else bias.detach().to(device=device, dtype=inputs.dtype)
    act = _frozen_copy(activation)

    scaled = w / scale
    floor = torch.floor(scaled)
    fraction = scaled - floor
    # a weight exactly on the grid has floor == ceil: it must stay where it is
    movable = (fraction > 0).to(dtype)
    mask = None if bool(movable.all()) else movable    # (one host read, before the loop)
    v = nn.Parameter(_inverse_rectified_sigmoid(fraction).to(torch.float32))
    base = floor + zero_point

    def on_grid(steps: Tensor) -> Tensor:
        # (q - zero point) * scale: the dequantization of the quantizer's kernel, bit for bit
        q = torch.clamp(base + steps, qmin, qmax)
        return ((q - zero_point) * scale).to(inputs.dtype)

    with torch.no_grad():
        goal = act(targets) if act is not None else targets
        probe = layer_forward(layer, inputs[:1], on_grid(torch.zeros_like(floor)), bias)
    if probe.shape[1:] != targets.shape[1:]:
        raise ConfigError(f"{label}: recomputing the layer gives outputs of shape "
                          f"{tuple(probe.shape[1:])} per row, the model gave "
                          f"{tuple(targets.shape[1:])} (a ConvTranspose called with output_size?)"
                          "; exclude the layer with ignore_quant_ops_list")

    # Adam through torch's functional form: the same kernels as ``torch.optim.Adam(fused=True)``
    # (bit for bit, tested), without the optimizer object's per-step bookkeeping, a tenth of a
    # millisecond per step; the fused kernel keeps the step count on the device (no host read)
    adam_state = _AdamState(v, fused=v.device.type in ("cpu", "cuda"))
    data = _StepData(layer, inputs, goal, bias, act)
    rows = inputs.shape[0]
    batch = min(hyper.batch_size, rows)
    warm_end = hyper.num_iterations * hyper.warm_start
    for iteration in range(hyper.num_iterations):
        index = torch.randperm(rows, device=device)[:batch]
        beta = beta_at(iteration, hyper) if iteration >= warm_end else None
        soft, reg = _SoftWeight.apply(v, base, zero_point, scale, mask, qmin, qmax, beta,
                                      inputs.dtype)
        loss = data.loss(index, soft)
        if beta is not None:
            loss = torch.add(loss, reg, alpha=hyper.reg_param)   # one op for loss + c * reg
        v.grad = None
        loss.backward()
        adam_state.step(hyper.learning_rate)

    with torch.no_grad():
        rounded_up = (v.detach() >= 0) & (movable > 0)
        hard = on_grid(rounded_up.to(dtype))
        nearest = quantize_dequantize(w, encoding.scale.to(device),
                                      encoding.zero_point.to(device=device, dtype=dtype),
                                      qmin, qmax, axis=encoding.axis).to(inputs.dtype)
        nearest_mse = _mse(layer, inputs, goal, nearest, bias, act)
        adaround_mse = _mse(layer, inputs, goal, hard, bias, act)
        changed = float((hard != nearest).to(torch.float64).mean())
    logger.debug("%s: reconstruction MSE %.6g with nearest rounding, %.6g with AdaRound "
                 "(%.1f%% of the weights rounded the other way)", label, nearest_mse,
                 adaround_mse, 100 * changed)
    return RoundingResult(weight=hard.to(device=weight.device, dtype=weight.dtype),
                          rounded_up=rounded_up.to(weight.device), nearest_mse=nearest_mse,
                          adaround_mse=adaround_mse, changed_fraction=changed,
                          num_iterations=hyper.num_iterations)


def _mse(layer: nn.Module, inputs: Tensor, goal: Tensor, weight: Tensor, bias: Tensor | None,
         act: nn.Module | None) -> float:
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for x, y in zip(inputs.split(_METRIC_CHUNK), goal.split(_METRIC_CHUNK)):
        out = layer_forward(layer, x, weight, bias)
        if act is not None:
            out = act(out)
        total += (out - y).to(torch.float64).pow(2).sum()
    return float(total) / goal.numel()
