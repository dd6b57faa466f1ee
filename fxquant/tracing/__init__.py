"""Tracing a model to a ``torch.fx.GraphModule``: :func:`trace`, with automatic leaf fallback and
concrete mode.

The package, module by module: :mod:`~fxquant.tracing.tracer` (``trace()``, the fx tracer, the
fallback loop), :mod:`~fxquant.tracing.concrete` (concrete mode's tracer mixin),
:mod:`~fxquant.tracing.proxy` (its proxy), :mod:`~fxquant.tracing.inputs` (example inputs bound
to ``forward``), :mod:`~fxquant.tracing.data_dependence` (what depends on tensor data),
:mod:`~fxquant.tracing.replay` (values reused across fallback attempts),
:mod:`~fxquant.tracing.records` (:class:`AutoLeaf`, :class:`Specialization`) and
:mod:`~fxquant.tracing.source` (the user's source line).

Example:
    >>> import fxquant, torchvision
    >>> gm = fxquant.tracing.trace(torchvision.models.resnet18())
    >>> fxquant.tracing.auto_leaves(gm)
    ()
"""
from __future__ import annotations

from fxquant.errors import DataDependentError
from fxquant.tracing.records import AutoLeaf, Specialization, auto_leaves, specializations
from fxquant.tracing.tracer import LEAF_MARKER, PH, record_node_meta, trace

__all__ = ["trace", "AutoLeaf", "auto_leaves", "Specialization", "specializations",
           "DataDependentError", "PH", "LEAF_MARKER", "record_node_meta"]
