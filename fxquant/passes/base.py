"""The pass interface: one way to compose graph transformations, its contract checked each run.

A pass takes a ``GraphModule`` (or the :class:`PassResult` of the previous pass) and returns a
:class:`PassResult`. ``Pass.__call__`` does the bookkeeping every pass needs, so ``call`` only
transforms:

* checks the state tags the pass ``requires`` (named constants of :mod:`fxquant._meta`, e.g.
  ``TAG_PREPARED``) on the graph module;
* runs ``call``; wraps any failure in :class:`fxquant.errors.PassError` naming the pass, the passes
  run before it and, when the failure is at a node (see :func:`errors_at` / :func:`at_node`),
  "While executing <node>" with its module path, the user's source line and the stack trace
  recorded at trace time; the original exception is chained (``from``);
* checks the pass's ``in_place`` declaration, as onnx_ir's pass infrastructure does: an in-place
  pass returns the very graph module it was given; a functional pass (``in_place = False``)
  returns a new one and leaves its input exactly as it was. The input check compares a cheap
  structural fingerprint taken before and after ``call`` (graph, fxquant node metadata, module /
  parameter / buffer identity, tensor version counters — which catch in-place writes into weights
  — and the graph-module state). It is O(nodes + tensors), costs far less than the copy a
  functional pass makes anyway, and always runs; there is no switch to turn it off;
* lints and recompiles the graph once, records the pass in the history and adds the tags it
  ``provides``.

Example:
    >>> class DropDropout(Pass):
    ...     requires = frozenset({_meta.TAG_PREPARED})
    ...     provides = frozenset()
    ...     preserves_numerics = True  # in eval mode
    ...     in_place = True
    ...     def call(self, gm):
    ...         removed = []
    ...         for node in list(gm.graph.nodes):
    ...             if node.op == "call_module" and isinstance(
    ...                     gm.get_submodule(node.target), torch.nn.Dropout):
    ...                 with errors_at(node):
    ...                     node.replace_all_uses_with(node.args[0])
    ...                     gm.graph.erase_node(node)
    ...                 removed.append(node.target)
    ...         return PassResult(gm, bool(removed), {"removed": removed})
    >>> result = Sequential(PrepareModelPass(), DropDropout())(fxquant.trace(model))
    >>> result.details["1:DropDropout"]["removed"]
    ['drop']
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
from types import MappingProxyType
from typing import Any, ClassVar, Iterator, Mapping

import torch.fx

from fxquant import _meta
from fxquant._meta import pass_history, state_tags
from fxquant.errors import PassError

__all__ = ["Pass", "PassResult", "Sequential", "state_tags", "pass_history", "at_node",
           "errors_at"]

logger = logging.getLogger(__name__)

_NODE_ATTR = "fxquant_node"


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass returns.

    Attributes:
        graph_module: the transformed graph module (the same object when the pass works in place).
        modified: whether the pass changed anything.
        details: pass-specific facts, e.g. ``{"folded": [("conv1", "bn1")]}``.

    Example:
        >>> PassResult(gm, False, {"folded": []}).details["folded"]
        []
    """

    graph_module: torch.fx.GraphModule
    modified: bool
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))


def at_node(node: torch.fx.Node, exc: BaseException) -> BaseException:
    """Attaches ``node`` to ``exc`` so the enclosing :class:`Pass` names it in its PassError.

    Example:
        >>> except ValueError as e:
        ...     raise at_node(node, e)
    """
    setattr(exc, _NODE_ATTR, node)
    return exc


@contextlib.contextmanager
def errors_at(node: torch.fx.Node) -> Iterator[None]:
    """Attributes any exception raised inside the block to ``node`` (through :func:`at_node`),
    unless a more precise node was attached already; the exception propagates unchanged.

    Example:
        >>> for node in gm.graph.nodes:
        ...     with errors_at(node):
        ...         rewrite(node)  # a failure becomes a PassError "While executing <node> ..."
    """
    try:
        yield
    except Exception as exc:
        if not isinstance(getattr(exc, _NODE_ATTR, None), torch.fx.Node):
            at_node(node, exc)
        raise


def _state(gm: torch.fx.GraphModule) -> dict[str, Any] | None:
    """``gm``'s fxquant state dict, or None (reading creates nothing)."""
    return (getattr(gm, "meta", None) or {}).get(_meta.META_KEY)


def _fingerprint(gm: torch.fx.GraphModule) -> dict[str, Any]:
    """What a functional pass must leave unchanged in its input, by component (cheap: no tensor
    data is read; in-place writes show in the tensors' version counters)."""
    nodes = list(gm.graph.nodes)
    tensors = [*gm.named_parameters(remove_duplicate=False),
               *gm.named_buffers(remove_duplicate=False)]
    return {
        "graph": tuple(n.format_node() for n in nodes),
        "node metadata": tuple(repr(sorted(n.meta.get(_meta.META_KEY, {}).items()))
                               for n in nodes),
        "modules": tuple((name, id(m)) for name, m in gm.named_modules(remove_duplicate=False)),
        "parameters and buffers": tuple((name, id(t)) for name, t in tensors),
        "tensor data (in-place writes)": tuple(t._version for _, t in tensors),
        "graph-module state": repr(sorted((_state(gm) or {}).items())),
    }


class Pass(abc.ABC):
    """Base class of every graph pass (ours and users').

    Subclasses set the class attributes and implement :meth:`call`.

    Attributes:
        requires: state tags that must hold before the pass runs.
        provides: state tags the pass establishes.
        preserves_numerics: whether outputs are unchanged by the pass (in eval mode); drives the
            shared before/after contract test.
        in_place: True when ``call`` changes and returns the graph module it is given; False when
            it returns a new graph module and leaves its input unchanged. Every pass declares
            it; ``__call__`` checks it on every run.

    Example:
        >>> class Noop(Pass):
        ...     in_place = True
        ...     def call(self, gm):
        ...         return PassResult(gm, False)
        >>> Noop()(gm).modified
        False
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    preserves_numerics: ClassVar[bool] = True
    in_place: ClassVar[bool]

    def __call__(self, gm_or_result: torch.fx.GraphModule | PassResult, /) -> PassResult:
        gm = gm_or_result.graph_module if isinstance(gm_or_result, PassResult) else gm_or_result
        if not isinstance(gm, torch.fx.GraphModule):
            raise TypeError(
                f"{self!r} expects a torch.fx.GraphModule or a PassResult, got "
                f"{type(gm).__qualname__}; trace the model first: gm = fxquant.trace(model)")
        in_place = self._declared_in_place()
        history = pass_history(gm)
        missing = self.requires - state_tags(gm)
        if missing:
            raise PassError(
                f"{self!r} requires {sorted(missing)} but the graph module has "
                f"{sorted(state_tags(gm))} (passes run so far: {list(history) or 'none'}); "
                f"run the passes that provide them first.", pass_name=repr(self), history=history)
        before = None if in_place else _fingerprint(gm)
        try:
            result = self.call(gm)
            if not isinstance(result, PassResult):
                raise TypeError(f"{type(self).__name__}.call must return a PassResult, "
                                f"got {type(result).__qualname__}")
            out = result.graph_module
            self._check_in_place(gm, out, before, history)
            if result.modified:
                out.graph.lint()
                out.recompile()
        except PassError:
            raise
        except Exception as exc:
            raise self._error(exc, history) from exc
        shared = _state(out)
        if out is not gm and shared is not None and shared is _state(gm):
            out.meta[_meta.META_KEY] = dict(shared)  # a new module never shares state with gm
        own = pass_history(out)  # longer than history when call() ran passes itself
        earlier = own if own[:len(history)] == history else history
        _meta.record_pass(out, [*earlier, repr(self)],
                          state_tags(gm) | state_tags(out) | self.provides)
        if result.modified:
            logger.debug("%r modified the graph: %s", self, dict(result.details))
        return result

    @abc.abstractmethod
    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        """Transforms ``gm`` (in place or into a new module) and says what changed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _declared_in_place(self) -> bool:
        in_place = getattr(self, "in_place", None)
        if not isinstance(in_place, bool):
            raise PassError(
                f"{type(self).__qualname__} does not declare in_place (got {in_place!r}); pass "
                "author: set the class attribute in_place = True if call() changes and returns "
                "the graph module it is given, or in_place = False if it returns a new one and "
                "leaves its input unchanged.", pass_name=repr(self))
        return in_place

    def _check_in_place(self, gm: torch.fx.GraphModule, out: torch.fx.GraphModule,
                        before: dict[str, Any] | None, history: tuple[str, ...]) -> None:
        name = type(self).__qualname__
        if self.in_place and out is not gm:
            raise PassError(
                f"{self!r} is declared in_place = True but returned a different graph module "
                f"than it was given; pass author: return the graph module {name}.call received, "
                "or declare in_place = False (and leave the input unchanged).",
                pass_name=repr(self), history=history)
        if before is None:
            return
        if out is gm:
            raise PassError(
                f"{self!r} is declared in_place = False but returned the graph module it was "
                f"given; pass author: return a new graph module (e.g. torch.fx.GraphModule(gm, "
                "copy.deepcopy(gm.graph))) even when nothing changes, or declare in_place = True.",
                pass_name=repr(self), history=history)
        after = _fingerprint(gm)
        changed = [key for key in before if before[key] != after[key]]
        if changed:
            raise PassError(
                f"{self!r} is declared in_place = False but changed its input graph module "
                f"({', '.join(changed)}); pass author: work on a copy (node metadata included: "
                "copy.deepcopy shares node.meta's inner dicts, see _meta.unshare_node_meta), or "
                "declare in_place = True.", pass_name=repr(self), history=history)

    def _error(self, exc: BaseException, history: tuple[str, ...]) -> PassError:
        node = getattr(exc, _NODE_ATTR, None)
        lines = [f"{self!r} failed: {type(exc).__name__}: {exc}",
                 f"  passes run before it: {list(history) or 'none'}"]
        if not isinstance(node, torch.fx.Node):
            return PassError("\n".join(lines), pass_name=repr(self), history=history)
        module_path = _meta.module_path(node)
        source_line = _meta.source(node)
        stack_trace = node.meta.get("stack_trace")
        lines.append(f"While executing {node.format_node()}")
        if module_path is not None:
            lines.append(f"  module path: {module_path or '<root>'}")
        if source_line:
            lines.append(f"  source: {source_line}")
        if stack_trace:
            lines.append("Original traceback (where the node was traced):")
            lines.extend(f"  {ln}" for ln in stack_trace.rstrip().splitlines())
        return PassError("\n".join(lines), pass_name=repr(self), history=history,
                         node=node.format_node(), module_path=module_path,
                         source_line=source_line, stack_trace=stack_trace)


class Sequential(Pass):
    """Runs passes in order; itself a :class:`Pass`.

    Its ``requires`` are those of its passes not provided earlier in the chain, ``provides`` the
    union, ``preserves_numerics`` true only when every member preserves numerics, ``in_place``
    true only when every member works in place. (With a functional member the result is a new
    graph module; the input is still changed by any in-place pass that runs before it.)
    ``details`` maps ``"<position>:<pass class>"`` to each pass's details, so two equal passes
    never collide.

    Example:
        >>> result = Sequential(PrepareModelPass(), FoldBatchNormPass())(fxquant.trace(model))
        >>> result.details["1:FoldBatchNormPass"]["folded"][:1]
        [('conv1', 'bn1')]
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
        self.preserves_numerics = all(  # type: ignore[misc]
            p.preserves_numerics for p in self.passes)
        self.in_place = all(  # type: ignore[misc]
            getattr(p, "in_place", None) is True for p in self.passes)

    def __call__(self, gm_or_result: torch.fx.GraphModule | PassResult, /) -> PassResult:
        current: torch.fx.GraphModule | PassResult = gm_or_result
        details: dict[str, Any] = {}
        modified = False
        for i, p in enumerate(self.passes):
            current = p(current)
            modified = modified or current.modified
            details[f"{i}:{type(p).__name__}"] = current.details
        gm = current.graph_module if isinstance(current, PassResult) else current
        return PassResult(gm, modified, details)

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        return self(gm)

    def __repr__(self) -> str:
        return f"Sequential({', '.join(repr(p) for p in self.passes)})"
