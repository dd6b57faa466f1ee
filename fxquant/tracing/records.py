"""What a trace reports about itself: the parts it made opaque (:class:`AutoLeaf`) and what
concrete mode assumed about the example inputs (:class:`Specialization`), both kept on the traced
GraphModule (:func:`auto_leaves`, :func:`specializations`).

Example:
    >>> gm = fxquant.trace(model, example_inputs=(torch.rand(1, 3, 32, 32),))
    >>> [str(leaf) for leaf in auto_leaves(gm)], len(specializations(gm))
    ([], 0)
"""
from __future__ import annotations

import dataclasses

import torch.fx

from fxquant import _meta

__all__ = ["AutoLeaf", "Specialization", "auto_leaves", "specializations"]


@dataclasses.dataclass(frozen=True)
class _Located:
    """Base of the trace records: ``source``, the user's source line (``"file:line: code"``) the
    record is about, when known (keyword-only, after the record's own fields)."""

    source: str | None = dataclasses.field(default=None, kw_only=True)

    def _at(self) -> str:
        return f" at {self.source}" if self.source else ""


@dataclasses.dataclass(frozen=True)
class Specialization(_Located):
    """One assumption a concrete-mode trace made about the example inputs.

    Attributes:
        node: name of the graph node whose value was used (it may be gone from the final graph
            when nothing else uses it).
        module_path: dotted path of the module whose code asked ("" for the root).
        assumption: what was assumed, e.g. ``"len(images_1.shape[-2:]) == 2"``.
        kind: ``"shape"`` (a tensor's shape or a number derived from it), ``"structure"``
            (length / keys of a Python container, a value being None), ``"value"`` (another
            non-tensor Python value) or ``"input"`` (a non-tensor input fixed to its example or
            default value).
        source: the user's source line that asked, as ``"file:line: code"``, when known.
    """

    node: str
    module_path: str
    assumption: str
    kind: str

    def __str__(self) -> str:
        return (f"{self.assumption} [{self.kind}] in {self.module_path or '<root>'} "
                f"(node {self.node}){self._at()}")


@dataclasses.dataclass(frozen=True)
class AutoLeaf(_Located):
    """A piece of the model that tracing made opaque because its code could not be traced.

    Attributes:
        module_path: dotted path of the module ("" for the root).
        module_class: qualified class name of the module.
        method: "forward" when the whole module became a leaf, else the name of the method that
            became one opaque ``call_method`` node.
        error: the trace error, one line.
        source: the user's source line that failed ("file:line: code"), when known.
    """

    module_path: str
    module_class: str
    method: str
    error: str

    def __str__(self) -> str:
        path = self.module_path or "<root>"
        what = path if self.method == "forward" else f"{path}.{self.method}()"
        return f"{what} ({self.module_class}): {self.error}{self._at()}"


def auto_leaves(gm: torch.fx.GraphModule) -> tuple[AutoLeaf, ...]:
    """What :func:`trace` made opaque in ``gm`` (empty when everything was traced).

    Example:
        >>> gm = fxquant.trace(model)
        >>> for leaf in fxquant.auto_leaves(gm):
        ...     print(leaf)
    """
    return tuple(_meta.graph_get(gm, _meta.AUTO_LEAVES, ()))


def specializations(gm: torch.fx.GraphModule) -> tuple[Specialization, ...]:
    """The assumptions a concrete-mode :func:`trace` made about its example inputs.

    Empty for a plain trace (no ``example_inputs``). The graph of ``gm`` is valid only for inputs
    that satisfy all of them (same structure; same shapes where a shape was specialized).

    Example:
        >>> gm = fxquant.trace(detector, example_inputs=([torch.rand(3, 320, 320)],))
        >>> for spec in fxquant.specializations(gm):
        ...     print(spec)  # e.g. "len(images_1.shape[-2:]) == 2 [shape] in <root> ..."
    """
    return tuple(_meta.graph_get(gm, _meta.SPECIALIZATIONS, ()))
