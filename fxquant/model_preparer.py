"""``prepare_model``: trace + :class:`~fxquant.passes.prepare.PrepareModelPass` (AIMET's name)."""
from __future__ import annotations

import copy
import difflib
import logging
from typing import Any, Iterable

import torch.fx
from torch import nn

from fxquant import _meta
from fxquant.passes.base import state_tags
from fxquant.passes.prepare import PrepareModelPass
from fxquant.tracing import trace

__all__ = ["prepare_model"]

logger = logging.getLogger(__name__)


def prepare_model(model: nn.Module, modules_to_exclude: Iterable[nn.Module | str] | None = None,
                  module_classes_to_exclude: Iterable[type[nn.Module]] | None = None,
                  concrete_args: dict[str, Any] | None = None) -> torch.fx.GraphModule:
    """Traces a copy of ``model`` and makes every quantizable op a uniquely named module.

    Functionals (``F.relu``, ``x + y``, ``torch.cat`` …) become modules named after the module
    that called them (``layer1.0.module_add``), functional convs/linears on parameter weights
    become real ``nn.Conv2d``/``nn.Linear``, and a module called at several sites is split.
    The caller's model is not changed; outputs are bit-identical to it. Preparing is
    idempotent: a model this function returned is copied, not re-traced, and comes back with the
    same code and names.

    Args:
        model: the model to prepare.
        modules_to_exclude: submodules (objects or paths) kept opaque: traced as leaves, not
            converted, not split.
        module_classes_to_exclude: module classes kept opaque the same way.
        concrete_args: as in :func:`fxquant.trace`.

    Returns:
        The prepared ``GraphModule``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: an entry of ``modules_to_exclude`` is not a submodule of ``model``.
        TraceError: the model cannot be traced.

    Example:
        >>> prepared = fxquant.prepare_model(torchvision.models.resnet18().eval())
        >>> prepared.layer1[0].module_add
        Add(operator.add)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_model expects a torch.nn.Module, got {type(model).__qualname__}")
    paths = _exclusion_paths(model, modules_to_exclude or ())
    classes = tuple(module_classes_to_exclude or ())
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"module_classes_to_exclude entries must be nn.Module classes, "
                            f"got {cls!r}")
    model_copy = copy.deepcopy(model)
    if (isinstance(model_copy, torch.fx.GraphModule) and _meta.TAG_PREPARED in state_tags(model_copy)
            and not paths and not classes and concrete_args is None):
        # Already prepared: not re-traced, so names, node metadata and source lines are kept
        # (the pass then finds nothing to do). Preparing is idempotent.
        _meta.unshare_node_meta(model_copy)
        gm = model_copy
    else:
        gm = trace(model_copy, leaf_modules=(*paths, *classes), concrete_args=concrete_args)
    return PrepareModelPass(tuple(paths), classes)(gm).graph_module


def _exclusion_paths(model: nn.Module, entries: Iterable[nn.Module | str]) -> list[str]:
    by_id = {id(m): name for name, m in model.named_modules()}
    names = set(by_id.values())
    paths = []
    for entry in entries:
        if isinstance(entry, nn.Module):
            if id(entry) not in by_id or by_id[id(entry)] == "":
                raise ValueError(
                    f"modules_to_exclude: {type(entry).__qualname__} instance is not a submodule "
                    "of the model (pass modules reached from the model, or their paths)")
            paths.append(by_id[id(entry)])
        elif isinstance(entry, str):
            if entry not in names or entry == "":
                close = difflib.get_close_matches(entry, sorted(n for n in names if n), n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(
                    f"modules_to_exclude: {entry!r} is not a submodule path of the model.{hint}")
            paths.append(entry)
        else:
            raise TypeError(f"modules_to_exclude entries must be modules or paths, got {entry!r}")
    return paths
