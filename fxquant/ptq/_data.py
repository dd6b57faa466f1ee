"""What every data-driven PTQ technique needs: batches from a user's data loader, the model run
on them, and a layer's inputs and outputs captured without running the rest of the model.

AIMET's techniques take a ``data_loader`` and a ``num_batches``; a batch is a tensor, or a
tuple/list whose first element is the model input (``(images, labels)``), unless the user gives a
``forward_fn(model, batch)``. The capture stops the forward pass as soon as the layer has run
(the layers after it are not computed), and keeps what it captured on the device it was computed
on unless told otherwise.

Example:
    >>> batches = take_batches(loader, num_batches=4)
    >>> inputs, outputs = capture_layer_io(model, "features.3.conv", batches)
    >>> inputs[0].shape, outputs[0].shape
    (torch.Size([8, 16, 56, 56]), torch.Size([8, 24, 28, 28]))
"""
from __future__ import annotations

import inspect
import itertools
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from fxquant.errors import ConfigError

__all__ = ["ForwardFn", "GraphWalk", "capture_layer_io", "default_forward", "run_batches",
           "take_batches"]

#: ``forward_fn(model, batch)``: runs ``model`` on one batch of the data loader.
ForwardFn = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Runs ``model`` on a batch as AIMET does: a tensor is the input; of a tuple or list, the
    first element is (``(images, labels)``); a dict is passed as keyword arguments.

    Example:
        >>> default_forward(model, (images, labels)) is not None
        True
    """
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    if isinstance(batch, dict):
        return model(**batch)
    raise ConfigError(
        f"cannot run the model on a batch of type {type(batch).__qualname__}: a batch must be a "
        "tensor, a (inputs, labels) tuple/list or a dict of keyword arguments; otherwise pass "
        "forward_fn=lambda model, batch: ... that runs the model on it")


def take_batches(data_loader: Iterable[Any], num_batches: int, *, what: str = "data_loader"
                 ) -> list[Any]:
    """The first ``num_batches`` batches of ``data_loader``, as a list (so they can be run more
    than once, e.g. once through the float model and once through the sim).

    Raises:
        ConfigError: ``num_batches`` is not a positive int, ``data_loader`` is not iterable, or
            it is empty.

    Example:
        >>> len(take_batches(loader, 2))
        2
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ConfigError(f"num_batches must be a positive int, got {num_batches!r}")
    try:
        iterator = iter(data_loader)
    except TypeError:
        raise ConfigError(f"{what} must be iterable (e.g. a torch DataLoader), got "
                          f"{type(data_loader).__qualname__}") from None
    batches = list(itertools.islice(iterator, num_batches))
    if not batches:
        raise ConfigError(f"{what} yielded no batch; give it calibration data")
    return batches


@torch.no_grad()
def run_batches(model: nn.Module, batches: Sequence[Any],
                forward_fn: ForwardFn | None = None) -> list[Any]:
    """``forward_fn(model, batch)`` for every batch, without gradients; returns the outputs.

    Example:
        >>> logits = torch.cat(run_batches(model, batches))
    """
    forward = forward_fn or default_forward
    return [forward(model, batch) for batch in batches]


class _Stop(Exception):
    """Raised by the capture hook once the layer has run: the rest of the forward is skipped."""


def _first_tensor(value: Any, layer: str, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise ConfigError(f"layer {layer!r}: its {what} is a {type(value).__qualname__}, not a "
                      "tensor; only layers with one tensor input and output can be captured")


@torch.no_grad()
def capture_layer_io(model: nn.Module, layer: str, batches: Sequence[Any],
                     forward_fn: ForwardFn | None = None, *, inputs: bool = True,
                     outputs: bool = True, storage: torch.device | str | None = None
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The input and output of submodule ``layer`` of ``model`` for every batch.

    The forward pass is stopped once the layer has run, so the layers after it cost nothing.

    Args:
        model: the model (a float model, a prepared graph module or ``sim.model``).
        layer: the module path of the layer (``"features.3.conv"``).
        batches: the batches (see :func:`take_batches`).
        forward_fn: ``forward_fn(model, batch)``; :func:`default_forward` when None.
        inputs / outputs: which to keep (the other list is empty).
        storage: where to keep the captured tensors (e.g. ``"cpu"`` to spare GPU memory); their
            own device when None.

    Returns:
        ``(inputs, outputs)``: one tensor per batch each (a layer's first positional input).

    Raises:
        ConfigError: ``layer`` names no submodule (the message lists close names), or the layer
            did not run on a batch.

    Example:
        >>> xs, ys = capture_layer_io(model, "conv1", batches)
    """
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        import difflib

        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(layer, names, n=5)
        raise ConfigError(f"no layer {layer!r} in the model; close: {close or names[:5]}"
                          ) from None
    forward = forward_fn or default_forward
    got_in: list[torch.Tensor] = []
    got_out: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        return tensor.to(storage) if storage is not None else tensor

    def hook(_: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if inputs:
            got_in.append(keep(_first_tensor(args, layer, "input")))
        if outputs:
            got_out.append(keep(_first_tensor(output, layer, "output")))
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        for i, batch in enumerate(batches):
            try:
                forward(model, batch)
            except _Stop:
                continue
            raise ConfigError(f"layer {layer!r} did not run on batch {i}; capture only layers "
                              "the forward pass calls")
    finally:
        handle.remove()
    return got_in, got_out


class GraphWalk:
    """Runs a graph module over fixed batches node by node and stops at the layers asked for, in
    graph order: every node runs once for all layers together, where :func:`capture_layer_io`
    runs the model from its start for every layer (quadratic in depth).

    A node runs with its module as it is when the walk passes it: a layer changed after its
    inputs were read (AdaRound rounds its weight) gives the later layers its new outputs, as a
    fresh forward pass would. What no later node needs is freed as the walk goes; nothing is
    recorded for autograd.

    Args:
        gm: the graph module (``sim.model`` or a float copy of it).
        batches: the batches; ``forward_fn(gm, batch)`` must call ``gm`` (its call's arguments
            are what the walk starts from, one per batch).
        forward_fn: as for :func:`capture_layer_io`.

    Raises:
        ConfigError: ``forward_fn`` did not call ``gm``, or called it with arguments its graph
            does not take.

    Example:
        >>> walk = GraphWalk(sim.model, batches)
        >>> xs = walk.inputs_of("features.0")        # one tensor per batch
        >>> ys = walk.outputs_of("features.3")       # features.0 .. features.3 run once each
    """

    def __init__(self, gm: torch.fx.GraphModule, batches: Sequence[Any],
                 forward_fn: ForwardFn | None = None) -> None:
        self._nodes = list(gm.graph.nodes)
        position = {node: i for i, node in enumerate(self._nodes)}
        # the last node that reads each node's value: after it has run, the value is dropped
        self._last_use = {node: max((position[u] for u in node.users), default=position[node])
                          for node in self._nodes}
        self._pos = 0
        forward = forward_fn or default_forward
        signature = inspect.signature(gm.forward)
        placeholders = [n for n in self._nodes if n.op == "placeholder"]
        self._interpreter = torch.fx.Interpreter(gm, garbage_collect_values=False)
        self._envs: list[dict[torch.fx.Node, Any]] = []
        for i, batch in enumerate(batches):
            call: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

            def grab(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                call.append((args, kwargs))
                raise _Stop

            handle = gm.register_forward_pre_hook(grab, with_kwargs=True)
            try:
                forward(gm, batch)
            except _Stop:
                pass
            finally:
                handle.remove()
            if not call:
                raise ConfigError(f"forward_fn did not call the model on batch {i}; it must run "
                                  "forward_fn(model, batch) -> model(...)")
            args, kwargs = call[0]
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise ConfigError(f"batch {i}: the model was called with arguments its graph "
                                  f"does not take ({exc})") from None
            bound.apply_defaults()
            names = [str(node.target).lstrip("*") for node in placeholders]
            if any(name not in bound.arguments for name in names):
                raise ConfigError(f"the graph's inputs {names} are not the arguments of its "
                                  f"forward{signature} (a graph with a custom codegen)")
            self._envs.append({node: bound.arguments[name]
                               for node, name in zip(placeholders, names)})

    def inputs_of(self, layer: str) -> list[torch.Tensor]:
        """The first input of the call of submodule ``layer``, for every batch; the walk stops
        just before that call."""
        node = self._walk_to(layer)
        out = []
        for env in self._envs:
            self._interpreter.env = env
            args, _ = self._interpreter.fetch_args_kwargs_from_env(node)
            out.append(_first_tensor(args, layer, "input"))
        return out

    def outputs_of(self, layer: str) -> list[torch.Tensor]:
        """The output of the call of submodule ``layer``, for every batch; the walk stops just
        after that call."""
        self._walk_to(layer)
        return [_first_tensor(value, layer, "output") for value in self._step()]

    def _walk_to(self, layer: str) -> torch.fx.Node:
        for i in range(self._pos, len(self._nodes)):
            node = self._nodes[i]
            if node.op == "call_module" and str(node.target) == layer:
                break
        else:
            before = any(n.op == "call_module" and str(n.target) == layer
                         for n in self._nodes[:self._pos])
            raise ConfigError(f"layer {layer!r} " + (
                "was passed already: ask for the layers in graph order" if before
                else "is not called in the graph"))
        while self._pos < i:
            self._step()
        return node

    def _step(self) -> list[Any]:
        """Runs the next node on every batch; returns its values (read before they are freed:
        a value nothing reads is dropped at once)."""
        node = self._nodes[self._pos]
        values = []
        if node.op not in ("placeholder", "output"):
            with torch.no_grad():
                for env in self._envs:
                    self._interpreter.env = env
                    env[node] = self._interpreter.run_node(node)
                    values.append(env[node])
        for arg in [node, *node.all_input_nodes]:
            if self._last_use[arg] <= self._pos:
                for env in self._envs:
                    env.pop(arg, None)
        self._pos += 1
        return values
