"""Replay of concrete values across the attempts of one concrete-mode trace.

Each automatic fallback (a module made a leaf, a method made opaque) restarts tracing from the
model's input. Everything before the first node that the new attempt creates differently -- the
*divergence point*, usually the call of the module or method just made opaque -- is the same as
in the previous attempt, so its values are handed out again instead of running the model again.
A retry then costs only the part of the model after that point.

Replay is only used when it is provably the same as recomputing:

* node by node, the new attempt must create the same node (same op, target and arguments, with
  arguments that are nodes compared by creation index) and make the same specializations;
* at the divergence point, no value handed out may have been modified by the previous attempt
  *after* that point: in-place writes to tensors are tracked by storage, and calls that could
  modify a Python container or an arbitrary object count as modifying anything;
* the model is in eval mode (no module updates state while it runs);
* values are kept up to a memory budget; past it, the rest is recomputed.

When a check fails, :class:`ReplayInvalid` is raised and the attempt is run again from scratch.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Hashable

import torch
from torch import nn
from torch.fx import Node
from torch.utils import _pytree as pytree

__all__ = ["ReplayInvalid", "AttemptLog", "Replayer", "input_versions", "mutation_of",
           "is_torch_callable"]

#: Bytes of tensor storage one attempt keeps for the next one.
DEFAULT_BUDGET = 2 << 30

_CONSTANT_TYPES = (int, float, bool, str, complex, type(None), type(...), torch.dtype,
                   torch.device, torch.layout, torch.memory_format)


class ReplayInvalid(BaseException):
    """Replaying the previous attempt's values would not equal recomputing them.

    A ``BaseException`` so that model code catching ``Exception`` cannot swallow it.
    """


@dataclasses.dataclass
class AttemptLog:
    """What one attempt computed, in node-creation order, for the next attempt to replay."""

    budget: int = DEFAULT_BUDGET
    entries: list[tuple[Hashable, Any, str | None]] = dataclasses.field(default_factory=list)
    assumptions: list[str] = dataclasses.field(default_factory=list)
    # (creation index, storages written in place -- None: anything may have been modified)
    mutations: list[tuple[int, frozenset[int] | None]] = dataclasses.field(default_factory=list)
    used: int = 0
    full: bool = False
    _storages: set[int] = dataclasses.field(default_factory=set)

    def add(self, key: Hashable, value: Any, taint: str | None) -> None:
        if self.full:
            return
        size = 0
        fresh = []
        for tensor in _tensors(value):
            ptr = _storage(tensor)
            if ptr is None:
                self.full = True
                return
            if ptr not in self._storages:
                fresh.append(ptr)
                size += tensor.untyped_storage().nbytes()
        if self.used + size > self.budget:
            self.full = True
            return
        self._storages.update(fresh)
        self.used += size
        self.entries.append((key, value, taint))


class Replayer:
    """Per attempt: hands out the previous attempt's values while the node sequence matches, and
    logs this attempt's values for the next one."""

    def __init__(self, previous: AttemptLog | None, budget: int = DEFAULT_BUDGET) -> None:
        self.previous = previous
        self.log = AttemptLog(budget)
        self.active = previous is not None
        self.replayed = 0
        self._index = 0
        self._node_index: dict[Node, int] = {}
        self._assumption_index = 0
        self._pending: Hashable = None

    def lookup(self, node: Node) -> tuple[bool, Any, str | None]:
        """(hit, value, taint) for a node just created; on a miss, call :meth:`computed` next."""
        index = self._index
        self._index += 1
        self._node_index[node] = index
        key = (node.op, _constant_key(node.target), self._key(node.args), self._key(node.kwargs))
        if self.active:
            previous = self.previous
            assert previous is not None
            if index < len(previous.entries) and previous.entries[index][0] == key:
                _, value, taint = previous.entries[index]
                self.log.add(key, value, taint)
                self.replayed += 1
                return True, value, taint
            self._diverge(index)
        self._pending = key
        return False, None, None

    def computed(self, value: Any, taint: str | None, mutated: frozenset[int] | None) -> None:
        self.log.add(self._pending, value, taint)
        if mutated is None or mutated:
            self.log.mutations.append((self._index - 1, mutated))

    def assumption(self, text: str) -> None:
        """Checks a specialization made while replaying against the previous attempt's."""
        index = self._assumption_index
        self._assumption_index += 1
        if self.active:
            previous = self.previous
            assert previous is not None
            if index >= len(previous.assumptions) or previous.assumptions[index] != text:
                raise ReplayInvalid(f"specialization {text!r} differs from the previous attempt")
        self.log.assumptions.append(text)

    def _diverge(self, index: int) -> None:
        previous = self.previous
        assert previous is not None
        self.active = False
        self.previous = None
        self.log.mutations.extend(m for m in previous.mutations if m[0] < index)
        prefix = set()
        for _, value, _ in self.log.entries[:index]:
            prefix.update(p for t in _tensors(value) if (p := _storage(t)) is not None)
        for at, storages in previous.mutations:
            if at >= index and (storages is None or storages & prefix):
                raise ReplayInvalid(f"a replayed value was modified at node #{at} of the "
                                    f"previous attempt, after node #{index}")

    def _key(self, arg: Any) -> Hashable:
        if isinstance(arg, Node):
            return ("node", self._node_index.get(arg, -1))
        if isinstance(arg, (list, tuple)):
            return (type(arg).__name__, tuple(self._key(a) for a in arg))
        if isinstance(arg, dict):
            return ("dict", tuple((_constant_key(k), self._key(v)) for k, v in arg.items()))
        if isinstance(arg, slice):
            return ("slice", self._key(arg.start), self._key(arg.stop), self._key(arg.step))
        return _constant_key(arg)


def mutation_of(node: Node, args: Any, versions: list[tuple[torch.Tensor, int]],
                input_values: list[Any]) -> frozenset[int] | None:
    """The storages ``node``'s evaluation wrote in place, or None when it may have modified a
    Python object replay cannot check.

    Args:
        node: the node just evaluated.
        args: its evaluated positional arguments.
        versions: its input tensors with their version counters from before it ran.
        input_values: the values of its input nodes.
    """
    on_tensor = bool(args) and isinstance(args[0], torch.Tensor)
    if node.op == "call_function" and getattr(node.target, "__name__", "") in ("setitem",
                                                                              "delitem"):
        if not on_tensor:  # e.g. a list or dict item set
            return None
    user_code = node.op == "call_module" or (node.op == "call_method" and not on_tensor) or (
        node.op == "call_function" and not is_torch_callable(node.target))
    if user_code and not all(_is_inert(value) for value in input_values):
        return None  # it may modify what it is given
    written = set()
    for tensor, version in versions:
        if _version(tensor) != version:
            ptr = _storage(tensor)
            if ptr is None:
                return None
            written.add(ptr)
    return frozenset(written)


def input_versions(args: Any, kwargs: Any) -> list[tuple[torch.Tensor, int]] | None:
    """The tensors among ``args`` / ``kwargs`` with their version counters (None: unknowable)."""
    out = []
    for tensor in _tensors((args, kwargs)):
        version = _version(tensor)
        if version is None:
            return None
        out.append((tensor, version))
    return out


def _is_inert(value: Any) -> bool:
    """Whether user code given ``value`` cannot modify anything replay does not see."""
    if isinstance(value, (torch.Tensor, nn.Module, *_CONSTANT_TYPES)):
        return True
    if isinstance(value, types.MethodType):
        return isinstance(value.__self__, nn.Module)
    if isinstance(value, tuple):
        return all(_is_inert(v) for v in value)
    return False


def is_torch_callable(target: Any) -> bool:
    """Whether ``target`` is a torch op or a Python builtin (it modifies no Python object it is
    given), as opposed to user code."""
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return True
    module = getattr(target, "__module__", None) or ""
    return module.split(".")[0] in ("torch", "_operator", "operator", "builtins", "math")


def _tensors(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def _storage(tensor: torch.Tensor) -> int | None:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors have no version counter
        return None


def _constant_key(value: Any) -> Hashable:
    if isinstance(value, _CONSTANT_TYPES):
        return (type(value).__name__, value)
    return ("id", id(value))
