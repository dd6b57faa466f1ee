"""RemoveQuantizersPass: the float graph back from a quantization simulation.

Export needs the float model with the *same* node names and metadata as the sim (so that ONNX
values can be traced back to canonical layer names). The pass undoes
:class:`~fxquant.passes.insert_quantizers.InsertQuantizersPass` on the graph module it is given:

* every activation-quantizer node (``node.meta["fxquant"]["role"] == "quantizer"``) is bypassed and
  erased, and its module deleted (``relu.output_quantizer``, ``input_quantizers.x``; the
  ``input_quantizers`` container goes too once empty);
* every parametrization (weight quantizers, int32 bias quantizers) is removed, keeping the
  original float parameter (``leave_parametrized=False``), so ``state_dict()`` has plain keys
  (``conv1.weight``).

It works in place: pass a private copy of ``sim.model`` to keep the sim intact.

Example:
    >>> from fxquant.model_resolution import private_copy
    >>> float_gm = RemoveQuantizersPass()(private_copy(sim.model)).graph_module
    >>> "conv1.weight" in float_gm.state_dict()
    True
"""
from __future__ import annotations

import logging

import torch
import torch.fx
from torch import nn
from torch.nn.utils import parametrize

from fxquant import _meta
from fxquant.passes.base import Pass, PassResult, at_node

__all__ = ["RemoveQuantizersPass"]

logger = logging.getLogger(__name__)

_INPUT_QUANTIZERS = "input_quantizers"


class RemoveQuantizersPass(Pass):
    """Removes activation-quantizer nodes and parameter quantizers, keeping float parameters.

    It needs no state tag (a graph module without quantizers is returned unmodified) and provides
    ``{"float"}``. Node names and metadata of the remaining nodes are unchanged.

    Example:
        >>> result = RemoveQuantizersPass()(fxquant.model_resolution.private_copy(sim.model))
        >>> result.details["nodes"][:2]
        ['input_quantizers.x', 'relu.output_quantizer']
    """

    requires = frozenset()
    provides = frozenset({_meta.TAG_FLOAT})
    preserves_numerics = False
    in_place = True

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        removed_nodes: list[str] = []
        for node in list(gm.graph.nodes):
            if _meta.get(node, _meta.ROLE) != _meta.ROLE_QUANTIZER:
                continue
            if node.op != "call_module" or not node.args:
                raise at_node(node, ValueError(
                    f"quantizer node {node.format_node()} is not a call_module with an input; only "
                    "nodes inserted by InsertQuantizersPass can be removed"))
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            target = str(node.target)
            if not gm.delete_submodule(target):
                logger.debug("quantizer module %s was already gone", target)
            removed_nodes.append(target)
        container = getattr(gm, _INPUT_QUANTIZERS, None)
        if isinstance(container, nn.Module) and not list(container.children()):
            gm.delete_submodule(_INPUT_QUANTIZERS)
        removed_params: list[str] = []
        for name, module in list(gm.named_modules()):
            if not parametrize.is_parametrized(module):
                continue
            for pname in _strip_parametrizations(module):
                removed_params.append(f"{name}.{pname}" if name else pname)
        modified = bool(removed_nodes or removed_params)
        return PassResult(gm, modified, {"nodes": removed_nodes, "params": removed_params})


def _strip_parametrizations(module: nn.Module) -> list[str]:
    """Restores ``module``'s original parameters and class without touching the class object.

    ``torch.nn.utils.parametrize.remove_parametrizations`` deletes the property from the
    module's ``Parametrized<Class>`` class, which a ``copy.deepcopy`` shares with the original
    module: removing it from a copy would break the sim. Here the module gets back its base class
    and plain parameters, and the shared class is left alone.
    """
    plists = module.parametrizations
    originals: dict[str, torch.Tensor] = {}
    for pname, plist in plists.items():
        if not hasattr(plist, "original"):
            raise ValueError(f"parametrization of {type(module).__name__}.{pname} splits the tensor "
                             "into several originals; RemoveQuantizersPass handles single-tensor "
                             "parametrizations (fxquant quantizers) only")
        originals[pname] = plist.original
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for pname, original in originals.items():
        if isinstance(original, nn.Parameter):
            module.register_parameter(pname, original)
        else:
            module.register_buffer(pname, original)
    return list(originals)
