"""The pass interface: one way to compose graph transformations.

A pass takes a ``GraphModule`` (or the :class:`PassResult` of the previous pass) and returns a
:class:`PassResult`. ``Pass.__call__`` does the bookkeeping every pass needs, so ``call`` only
transforms:

* checks the state tags the pass ``requires`` (e.g. ``{"prepared"}``) on the graph module;
* runs ``call``; wraps any failure in :class:`fxquant.errors.PassError` naming the pass, the passes
  run before it and, when known, the node, its module path and the user's source line;
* lints and recompiles the graph once, records the pass in the history and adds the tags it
  ``provides``.

Example:
    >>> class DropDropout(Pass):
    ...     requires = frozenset({"prepared"})
    ...     provides = frozenset()
    ...     preserves_numerics = True  # in eval mode
    ...     def call(self, gm):
    ...         removed = []
    ...         for node in list(gm.graph.nodes):
    ...             if node.op == "call_module" and isinstance(
    ...                     gm.get_submodule(node.target), torch.nn.Dropout):
    ...                 node.replace_all_uses_with(node.args[0])
    ...                 gm.graph.erase_node(node)
    ...                 removed.append(node.target)
    ...         return PassResult(gm, bool(removed), {"removed": removed})
    >>> result = Sequential(PrepareModelPass(), DropDropout())(fxquant.trace(model))
"""
from __future__ import annotations

import abc
import dataclasses
import logging
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

import torch.fx

from fxquant import _meta
from fxquant.errors import PassError

__all__ = ["Pass", "PassResult", "Sequential", "state_tags", "pass_history"]

logger = logging.getLogger(__name__)

_GM_META_KEY = "fxquant"
_TAGS = "tags"
_HISTORY = "passes"


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass returns.

    Attributes:
        graph_module: the transformed graph module (the same object when the pass works in place).
        modified: whether the pass changed anything.
        details: pass-specific facts, e.g. ``{"folded": [("conv1", "bn1")]}``.
    """

    graph_module: torch.fx.GraphModule
    modified: bool
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))


def _gm_meta(gm: torch.fx.GraphModule) -> dict[str, Any]:
    if not hasattr(gm, "meta"):
        gm.meta = {}
    return gm.meta.setdefault(_GM_META_KEY, {})


def state_tags(gm: torch.fx.GraphModule) -> frozenset[str]:
    """The state tags established on ``gm`` by the passes run on it (e.g. ``{"prepared"}``)."""
    return frozenset(_gm_meta(gm).get(_TAGS, ()))


def pass_history(gm: torch.fx.GraphModule) -> tuple[str, ...]:
    """``repr`` of every pass run on ``gm``, oldest first."""
    return tuple(_gm_meta(gm).get(_HISTORY, ()))


class Pass(abc.ABC):
    """Base class of every graph pass (ours and users').

    Subclasses set the class attributes and implement :meth:`call`.

    Attributes:
        requires: state tags that must hold before the pass runs.
        provides: state tags the pass establishes.
        preserves_numerics: whether outputs are unchanged by the pass (in eval mode); drives the
            shared before/after contract test.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    preserves_numerics: ClassVar[bool] = True

    def __call__(self, gm_or_result: torch.fx.GraphModule | PassResult, /) -> PassResult:
        gm = gm_or_result.graph_module if isinstance(gm_or_result, PassResult) else gm_or_result
        if not isinstance(gm, torch.fx.GraphModule):
            raise TypeError(
                f"{self!r} expects a torch.fx.GraphModule or a PassResult, got "
                f"{type(gm).__qualname__}; trace the model first: gm = fxquant.trace(model)")
        history = pass_history(gm)
        missing = self.requires - state_tags(gm)
        if missing:
            raise PassError(
                f"{self!r} requires {sorted(missing)} but the graph module has "
                f"{sorted(state_tags(gm))} (passes run so far: {list(history) or 'none'}); "
                f"run the passes that provide them first.", pass_name=repr(self))
        try:
            result = self.call(gm)
            if not isinstance(result, PassResult):
                raise TypeError(f"{type(self).__name__}.call must return a PassResult, "
                                f"got {type(result).__qualname__}")
            out = result.graph_module
            if result.modified:
                out.graph.lint()
                out.recompile()
        except PassError:
            raise
        except Exception as exc:
            raise self._error(exc, history) from exc
        meta = _gm_meta(out)
        meta[_TAGS] = sorted(state_tags(gm) | state_tags(out) | self.provides)
        meta[_HISTORY] = [*history, repr(self)] if out is not gm else [*pass_history(out), repr(self)]
        if result.modified:
            logger.debug("%r modified the graph: %s", self, dict(result.details))
        return result

    @abc.abstractmethod
    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        """Transforms ``gm`` (in place or into a new module) and says what changed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _error(self, exc: BaseException, history: tuple[str, ...]) -> PassError:
        node = getattr(exc, "fxquant_node", None)
        lines = [f"{self!r} failed: {type(exc).__name__}: {exc}",
                 f"  passes run before it: {list(history) or 'none'}"]
        module_path = None
        if isinstance(node, torch.fx.Node):
            lines.append(f"  node: {_meta.describe(node)}")
            module_path = _meta.module_path(node)
        return PassError("\n".join(lines), pass_name=repr(self),
                         node=node.format_node() if isinstance(node, torch.fx.Node) else None,
                         module_path=module_path)


def at_node(node: torch.fx.Node, exc: BaseException) -> BaseException:
    """Attaches ``node`` to ``exc`` so the enclosing :class:`Pass` names it in its PassError.

    Example:
        >>> except ValueError as e:
        ...     raise at_node(node, e)
    """
    exc.fxquant_node = node  # type: ignore[attr-defined]
    return exc


class Sequential(Pass):
    """Runs passes in order; itself a :class:`Pass`.

    Its ``requires`` are those of its first pass not provided earlier in the chain, ``provides``
    the union, ``preserves_numerics`` true only when every member preserves numerics.

    Example:
        >>> result = Sequential(PrepareModelPass(), FoldBatchNormPass())(fxquant.trace(model))
        >>> result.details["FoldBatchNormPass()"]["folded"]
    """

    def __init__(self, *passes: Pass) -> None:
        for p in passes:
            if not isinstance(p, Pass):
                raise TypeError(f"Sequential takes Pass instances, got {p!r}")
        self.passes = tuple(passes)
        provided: set[str] = set()
        required: set[str] = set()
        for p in self.passes:
            required |= set(p.requires) - provided
            provided |= set(p.provides)
        # instance attributes shadow the ClassVars for this composite
        self.requires = frozenset(required)  # type: ignore[misc]
        self.provides = frozenset(provided)  # type: ignore[misc]
        self.preserves_numerics = all(p.preserves_numerics for p in self.passes)  # type: ignore[misc]

    def __call__(self, gm_or_result: torch.fx.GraphModule | PassResult, /) -> PassResult:
        current: torch.fx.GraphModule | PassResult = gm_or_result
        details: dict[str, Any] = {}
        modified = False
        for p in self.passes:
            current = p(current)
            modified = modified or current.modified
            details[repr(p)] = current.details
        gm = current.graph_module if isinstance(current, PassResult) else current
        return PassResult(gm, modified, details)

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        return self(gm)

    def __repr__(self) -> str:
        return f"Sequential({', '.join(repr(p) for p in self.passes)})"
