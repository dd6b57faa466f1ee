"""Layer queries: which nodes are layers, what a layer is called, what quantizes it.

The one answer to these questions for every feature package (loggers, shadows, quantsim, export,
layer outputs, the analyzer and the validator). A *layer* is a ``call_module`` node with role
"op" whose canonical name (``node.meta["fxquant"]["layer_name"]``) ``PrepareModelPass`` wrote:
its module path after the preparer, e.g. ``layer1.0.conv1`` or ``layer1.0.module_add``.
Quantizer, logger and shadow nodes carry the name of the layer they belong to.

Example:
    >>> gm = fxquant.prepare_model(torchvision.models.resnet18())
    >>> list(layer_nodes(gm))[:3]
    ['conv1', 'bn1', 'relu']
"""
from __future__ import annotations

from typing import Iterator

import torch.fx
from torch import nn
from torch.nn.utils import parametrize

from fxquant import _meta

__all__ = ["is_layer", "layer_name", "layer_nodes", "iter_layers", "output_quantizer_node",
           "input_quantizer_nodes", "quantizer_nodes", "param_quantizers", "float_param",
           "has_quantizers",
           "type_name", "aimet_layer_names"]


def is_layer(node: torch.fx.Node) -> bool:
    """Whether ``node`` is a layer: a ``call_module`` op node named by the preparer.

    Example:
        >>> is_layer(next(n for n in gm.graph.nodes if n.target == "conv1"))
        True
    """
    return (node.op == "call_module" and _meta.role(node) == _meta.ROLE_OP
            and _meta.layer_name(node) is not None)


def layer_name(node: torch.fx.Node) -> str | None:
    """The canonical name of ``node``'s layer: its own for a layer, its layer's for a quantizer,
    logger or shadow node; None for anything else.

    Example:
        >>> layer_name(sim_conv1_output_quantizer_node)
        'conv1'
    """
    return _meta.layer_name(node)


def iter_layers(gm: torch.fx.GraphModule) -> Iterator[tuple[str, torch.fx.Node]]:
    """``(canonical name, op node)`` of every layer of ``gm`` in graph order."""
    for node in gm.graph.nodes:
        if is_layer(node):
            yield _meta.layer_name(node), node


def layer_nodes(gm: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    """``{canonical layer name: op node}`` of ``gm``, in graph order.

    Example:
        >>> list(layer_nodes(fxquant.prepare_model(resnet18)))[:3]
        ['conv1', 'bn1', 'relu']
    """
    out: dict[str, torch.fx.Node] = {}
    for name, node in iter_layers(gm):
        out.setdefault(name, node)
    return out


def aimet_layer_names(gm: torch.fx.GraphModule) -> dict[str, str]:
    """``{AIMET's layer name: canonical layer name}`` for the layers AIMET's ``prepare_model``
    names differently (modules made from functionals, split calls of reused modules); files keyed
    by AIMET's layer names (``<prefix>_torch.encodings``) are read through it.

    Example:
        >>> aimet_layer_names(fxquant.prepare_model(resnet18))["layer4.0.module_add_6"]
        'layer4.0.module_add'
    """
    out: dict[str, str] = {}
    for name, node in iter_layers(gm):
        aimet = _meta.get(node, _meta.AIMET_NAME)
        if aimet and aimet != name:
            out.setdefault(aimet, name)
    return out


def _is_quantizer(node: torch.fx.Node, quantizes: str | None = None) -> bool:
    return (_meta.role(node) == _meta.ROLE_QUANTIZER
            and (quantizes is None or _meta.get(node, _meta.QUANTIZES) == quantizes))


def quantizer_nodes(gm: torch.fx.GraphModule, quantizes: str | None = None
                    ) -> list[torch.fx.Node]:
    """The activation-quantizer nodes of ``gm`` in graph order; only those quantizing layer
    inputs (``quantizes="input"``) or outputs (``"output"``) when given.

    Example:
        >>> [n.target for n in quantizer_nodes(sim.model, "output")][:1]
        ['conv1.output_quantizer']
    """
    return [n for n in gm.graph.nodes if _is_quantizer(n, quantizes)]


def output_quantizer_node(node: torch.fx.Node) -> torch.fx.Node | None:
    """The output-quantizer node quantizing layer ``node``'s output, or None.

    Example:
        >>> output_quantizer_node(layer_nodes(sim.model)["conv1"]).target
        'conv1.output_quantizer'
    """
    for user in node.users:
        if _is_quantizer(user, _meta.QUANTIZES_OUTPUT) and user.args[:1] == (node,):
            return user
    return None


def input_quantizer_nodes(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The input-quantizer nodes feeding layer ``node`` (in argument order).

    Example:
        >>> [q.target for q in input_quantizer_nodes(layer_nodes(sim.model)["conv1"])]
        ['conv1.input_quantizers.0']
    """
    return [a for a in node.all_input_nodes if _is_quantizer(a, _meta.QUANTIZES_INPUT)]


def param_quantizers(module: nn.Module) -> dict[str, nn.Module]:
    """``{parameter name: quantizer}`` of a layer's module (its parametrizations).

    Example:
        >>> param_quantizers(sim.model.conv1)
        {'weight': QuantizeDequantize(...)}
    """
    if not parametrize.is_parametrized(module):
        return {}
    return {name: plist[0] for name, plist in module.parametrizations.items()}


def float_param(module: nn.Module, name: str) -> torch.Tensor:
    """The float value of parameter ``name`` of a layer whose parameter is quantized: what its
    quantizer (a parametrization) reads; ``module.<name>`` itself is the fake-quantized value.

    Raises:
        KeyError: ``name`` is not a parametrized (quantized) parameter of ``module``.

    Example:
        >>> float_param(sim.model.conv1, "weight").shape
        torch.Size([64, 3, 7, 7])
    """
    if not parametrize.is_parametrized(module, name):
        raise KeyError(f"{type(module).__name__} has no quantized parameter {name!r}; its "
                       f"quantized parameters: {sorted(param_quantizers(module))}")
    return module.parametrizations[name].original


def has_quantizers(gm: torch.fx.GraphModule) -> bool:
    """Whether ``gm`` holds any quantizer: an activation-quantizer node or a parametrized
    (parameter-quantized) module.

    Example:
        >>> has_quantizers(sim.model), has_quantizers(fxquant.prepare_model(model))
        (True, False)
    """
    if any(_is_quantizer(n) for n in gm.graph.nodes):
        return True
    return any(parametrize.is_parametrized(m) for m in gm.modules())


def type_name(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    """A readable type for what ``node`` runs: the module's qualified class name, the function's
    qualified name, or the method name.

    Example:
        >>> type_name(gm, conv_node)
        'torch.nn.modules.conv.Conv2d'
    """
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        cls = type(module)
        if parametrize.is_parametrized(module):  # Parametrized<Class>: name the layer's class
            cls = cls.__bases__[0]
        return f"{cls.__module__}.{cls.__qualname__}"
    if node.op == "call_function":
        module = getattr(node.target, "__module__", None) or ""
        name = getattr(node.target, "__qualname__", None) or getattr(node.target, "__name__", "")
        return f"{module}.{name}" if module else str(name or node.target)
    return str(node.target) if node.op == "call_method" else node.op
