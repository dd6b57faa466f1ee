"""The logger module the numeric suite inserts, and switches over all loggers of a model.

:class:`OutputLogger` has the attributes of ``torch.ao.ns._numeric_suite_fx.OutputLogger``
(``stats`` holds saved activations, ``enabled``, ``save_activations``, ``ref_node_name`` …), but by
default it keeps running sums (:class:`~fxquant.numeric_suite.stats.RunningStats`) instead of
tensors, and compares on the fly with the logger of the other model at the same layer
(:class:`~fxquant.numeric_suite.stats.Comparison`). The numeric suite's torch-shaped functions
create loggers with ``save_activations=True`` (torch's semantics: ``values`` holds every logged
tensor); :func:`fxquant.compare` and ``save_activations=False`` stream (running sums only, memory
proportional to the number of layers however many batches run).

:class:`CallClock` numbers the calls of an instrumented model: every logger tags its value with
the index of the call in progress, so that call ``i`` of model A is compared with call ``i`` of
model B, and the inputs of the two calls are checked to be the same
(:class:`~fxquant.numeric_suite.stats.CallPairing`).
"""
from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from fxquant.numeric_suite.stats import CallPairing, Comparison, RunningStats

__all__ = ["OutputLogger", "CallClock", "CallState", "loggers_set_enabled",
           "loggers_set_save_activations", "loggers_reset"]

logger = logging.getLogger(__name__)


class OutputLogger(nn.Module):
    """Records one value of a model (a layer's output or input) on every forward.

    The module returns its input unchanged. Quantized tensors are dequantized; values that are
    not floating-point tensors are ignored.

    Args:
        ref_node_name: the layer's op node.
        prev_node_name: the node whose value is recorded.
        model_name: the model this logger belongs to.
        ref_name: the layer's name in this model (its canonical name).
        prev_node_target_type: type of what produces the value.
        ref_node_target_type: type of the layer's module.
        results_type: "node_output" or "node_input".
        index_within_arg: position inside a list argument.
        index_of_arg: position among the op's arguments.
        fqn: the layer's module path.
        qconfig_str: description of the quantizer that produced the value ("" if none).
        save_activations: also keep every value (as ``stats``, a list of tensors).

    Attributes:
        stats: saved values (only with ``save_activations``).
        running: running sums of every value seen (always kept).
        layer_names: ``{model name: layer name}`` of this layer in both compared models.
        enabled: when False the logger records nothing.

    Example:
        >>> a_ns, b_ns = fxquant.ns.add_loggers("float", model, "int8", sim)
        >>> fxquant.ns.loggers_set_save_activations(b_ns, True)
    """

    # Logger nodes have no users: this keeps them through graph.eliminate_dead_code().
    _is_impure = True

    def __init__(self, ref_node_name: str, prev_node_name: str, model_name: str, ref_name: str,
                 prev_node_target_type: str, ref_node_target_type: str, results_type: str,
                 index_within_arg: int, index_of_arg: int, fqn: str | None,
                 qconfig_str: str | None = "", *, save_activations: bool = False) -> None:
        super().__init__()
        self.ref_node_name = ref_node_name
        self.prev_node_name = prev_node_name
        self.model_name = model_name
        self.ref_name = ref_name
        self.prev_node_target_type = prev_node_target_type
        self.ref_node_target_type = ref_node_target_type
        self.results_type = results_type
        self.index_within_arg = index_within_arg
        self.index_of_arg = index_of_arg
        self.fqn = fqn
        self.qconfig_str = qconfig_str
        self.enabled = True
        self.save_activations = save_activations
        self.stats: list[Tensor] = []
        self.running = RunningStats()
        self.layer_names: dict[str, str] = {model_name: ref_name}
        self.links: list[tuple[Comparison, int]] = []
        self.clock: CallState | None = None  # the model's call counter (set by the suite)

    def link(self, comparison: Comparison, side: int) -> None:
        """Feeds every recorded value to ``comparison`` as ``side`` (0: reference, 1: other)."""
        self.links.append((comparison, side))

    def forward(self, x: Any) -> Any:
        """Records ``x`` and returns it unchanged."""
        if not self.enabled or not isinstance(x, Tensor):
            return x
        if not (x.is_floating_point() or x.is_quantized):
            return x
        value = x.detach()
        owned = False
        if value.is_quantized:
            value, owned = value.dequantize(), True
        sum_sq = self.running.update(value)
        copy: list[Tensor | None] = [None]

        def keep() -> Tensor:
            # capture by value: a later in-place op (ReLU(inplace=True), +=) would change it
            if copy[0] is None:
                copy[0] = value if owned else value.clone()
            return copy[0]

        if self.save_activations:
            self.stats.append(keep())
        call = None if self.clock is None else self.clock.current
        for comparison, side in self.links:
            comparison.offer(side, value, keep, sum_sq, call)
        return x

    def reset(self) -> None:
        """Forgets saved values, running sums and the comparisons' sums."""
        self.stats.clear()
        self.running.reset()
        for comparison, _ in self.links:
            comparison.reset()

    def extra_repr(self) -> str:
        return (f"model={self.model_name!r}, layer={self.ref_name!r}, type={self.results_type}, "
                f"save_activations={self.save_activations}")


class CallState:
    """The call counter of one instrumented model, shared by its clock and its loggers (a plain
    object, so that it is not a submodule of every logger).

    Attributes:
        count: calls made so far.
        current: index of the call in progress (the last one started), -1 before the first.
    """

    def __init__(self) -> None:
        self.count = 0
        self.current = -1

    def reset(self) -> None:
        """Back to no calls."""
        self.count, self.current = 0, -1


class CallClock(nn.Module):
    """Counts the calls of an instrumented model; runs first in its forward, on all its inputs.

    Args:
        model_name: the model's name.
        side: 0 for model A, 1 for model B (its side in ``pairing``).
        pairing: checks call ``i`` of both models got the same inputs; None for a model that
            is compared with itself in one forward (the shadowed model).

    Attributes:
        state: the :class:`CallState` its loggers read.
        enabled: when False, calls are not counted (as loggers record nothing).

    Example:
        >>> a_ns, b_ns = fxquant.ns.add_loggers("float", model, "int8", sim)
        >>> a_ns(x); a_ns.ns_loggers.call_clock.state.count
        1
    """

    _is_impure = True

    def __init__(self, model_name: str, side: int = 0, pairing: CallPairing | None = None
                 ) -> None:
        super().__init__()
        self.model_name = model_name
        self.side = side
        self.pairing = pairing
        self.enabled = True
        self.state = CallState()
        if pairing is not None:
            pairing.states[side] = self.state

    def forward(self, *inputs: Any) -> None:
        """Starts the next call (checking its inputs against the other model's call)."""
        if not self.enabled:
            return None
        call = self.state.count
        if self.pairing is not None:
            self.pairing.offer(self.side, call, inputs)
        self.state.count, self.state.current = call + 1, call
        return None

    def reset(self) -> None:
        """Forgets the calls (of both models, when paired: their indices restart together)."""
        self.state.reset()
        if self.pairing is not None:
            self.pairing.reset()

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, calls={self.state.count}"


def _clocks(model: nn.Module) -> list[CallClock]:
    return [m for m in model.modules() if isinstance(m, CallClock)]


def _loggers(model: nn.Module) -> list[OutputLogger]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a model instrumented by add_loggers/add_shadow_loggers, got "
                        f"{type(model).__qualname__}")
    return [m for m in model.modules() if isinstance(m, OutputLogger)]


def loggers_set_enabled(model: nn.Module, enabled: bool) -> None:
    """Turns every logger of ``model`` on or off (off: forward passes record nothing).

    Example:
        >>> loggers_set_enabled(a_ns, False)  # e.g. while calibrating
    """
    for module in _loggers(model):
        module.enabled = bool(enabled)
    for clock in _clocks(model):
        clock.enabled = bool(enabled)


def loggers_set_save_activations(model: nn.Module, save_activations: bool) -> None:
    """Makes every logger of ``model`` keep (True) or stop keeping (False) the tensors it sees;
    running sums are kept either way.

    Example:
        >>> loggers_set_save_activations(b_ns, True)
    """
    for module in _loggers(model):
        module.save_activations = bool(save_activations)


def loggers_reset(model: nn.Module) -> None:
    """Clears what every logger of ``model`` recorded (and the comparisons they feed).

    Example:
        >>> loggers_reset(shadow_model)
    """
    for module in _loggers(model):
        module.reset()
    for clock in _clocks(model):
        clock.reset()
