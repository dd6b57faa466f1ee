"""InsertQuantizersPass: quantizer nodes where a quantized target quantizes.

The pass does the graph mechanics; *what* to quantize comes from a :class:`QuantizationPolicy`
(fxquant's QuantSim builds one from an AIMET quantsim config, so this module knows nothing of
config files or quantizer classes):

* every model input (floating-point tensor) may get an input quantizer, a ``call_module`` node
  ``input_quantizers.<input>`` right after its placeholder;
* every op module's floating-point output gets an output quantizer, a ``call_module`` node
  ``<layer>.output_quantizer`` right after it — except inside a supergroup (ops fused on target:
  only the last op of ``Conv → Relu`` is quantized) and for data-movement ops (reshape, max-pool …),
  whose outputs reuse their input's encoding;
* parameters (``weight`` …) get quantizers registered as parametrizations of the op module, so
  the module quantizes its own weight on every forward (QAT sees it) and its class is unchanged.

Quantizer nodes carry ``role="quantizer"``, the ``layer_name`` they quantize and
``quantizes="output"|"input"`` in ``node.meta["fxquant"]``.
"""
from __future__ import annotations

import logging
from typing import Mapping, Protocol, runtime_checkable

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata
from torch.nn.utils import parametrize

from fxquant import _meta
from fxquant._fx_utils import graph_output_nodes
from fxquant.core.layers import is_layer, layer_name, quantizer_nodes
from fxquant.passes.base import Pass, PassResult, errors_at

__all__ = ["InsertQuantizersPass", "QuantizationPolicy", "OUTPUT_QUANTIZER", "INPUT_QUANTIZERS"]

logger = logging.getLogger(__name__)

#: Attribute name of an op module's output quantizer.
OUTPUT_QUANTIZER = "output_quantizer"
#: Root container of the model-input quantizers.
INPUT_QUANTIZERS = "input_quantizers"


@runtime_checkable
class QuantizationPolicy(Protocol):
    """What to quantize; QuantSim implements it from a quantsim config."""

    supergroups: tuple[tuple[str, ...], ...]
    quantize_model_output: bool | None

    def op_type(self, module: nn.Module) -> str | None:
        """The ONNX op type of ``module`` (e.g. "Conv"), or None."""

    def is_data_movement(self, module: nn.Module) -> bool:
        """Whether ``module``'s output reuses its input's encoding."""

    def input_quantizer(self, name: str) -> nn.Module | None:
        """A quantizer for model input ``name``, or None."""

    def output_quantizer(self, layer: str, module: nn.Module) -> nn.Module | None:
        """A quantizer for the output of op ``layer``, or None."""

    def param_quantizers(self, layer: str, module: nn.Module) -> Mapping[str, nn.Module]:
        """Quantizers for ``module``'s parameters, keyed by parameter name."""


def _is_float_tensor(node: torch.fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return node.op in ("placeholder", "call_module")  # no shape information: assume tensors
    return isinstance(meta, TensorMetadata) and meta.dtype.is_floating_point


class InsertQuantizersPass(Pass):
    """Inserts input, output and parameter quantizers as a :class:`QuantizationPolicy` says.

    Run it on a prepared graph module; run ``torch.fx.passes.shape_prop.ShapeProp`` first so
    that non-tensor and integer outputs are recognised (without it every module output is taken
    to be a float tensor).

    Example:
        >>> gm = fxquant.prepare_model(model)
        >>> ShapeProp(gm).propagate(dummy_input)
        >>> result = InsertQuantizersPass(policy)(gm)
        >>> result.details["outputs"][:2]
        ['conv1', 'maxpool']
    """

    requires = frozenset({_meta.TAG_PREPARED})
    provides = frozenset({_meta.TAG_QUANTIZED})
    preserves_numerics = False
    in_place = True

    def __init__(self, policy: QuantizationPolicy) -> None:
        self.policy = policy

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        if quantizer_nodes(gm):
            return PassResult(gm, False, {"inputs": [], "outputs": [], "params": []})
        modules = dict(gm.named_modules())
        fused = self._fused_nodes(gm, modules)
        graph_outputs = graph_output_nodes(gm)
        inputs: list[str] = []
        outputs: list[str] = []
        params: list[str] = []
        for node in list(gm.graph.nodes):
            with errors_at(node):
                if node.op == "placeholder" and _is_float_tensor(node):
                    quantizer = self.policy.input_quantizer(node.name)
                    if quantizer is not None:
                        self._insert_after(gm, node, f"{INPUT_QUANTIZERS}.{node.name}", quantizer,
                                           node.name, "input")
                        inputs.append(node.name)
                elif is_layer(node):
                    layer = layer_name(node)
                    module = modules[str(node.target)]
                    for pname, quantizer in self.policy.param_quantizers(layer, module).items():
                        parametrize.register_parametrization(module, pname, quantizer, unsafe=True)
                        params.append(f"{layer}.{pname}")
                    if (node in fused or not _is_float_tensor(node)
                            or self.policy.is_data_movement(module)):
                        continue
                    if node in graph_outputs and self.policy.quantize_model_output is False:
                        continue
                    quantizer = self.policy.output_quantizer(layer, module)
                    if quantizer is not None:
                        self._insert_after(gm, node, f"{layer}.{OUTPUT_QUANTIZER}", quantizer,
                                           layer, "output")
                        outputs.append(layer)
        modified = bool(inputs or outputs or params)
        return PassResult(gm, modified, {"inputs": inputs, "outputs": outputs, "params": params})

    @staticmethod
    def _insert_after(gm: torch.fx.GraphModule, node: torch.fx.Node, target: str,
                      quantizer: nn.Module, layer: str, quantizes: str) -> None:
        gm.add_submodule(target, quantizer)
        with gm.graph.inserting_after(node):
            qnode = gm.graph.call_module(target, (node,))
        node.replace_all_uses_with(qnode, delete_user_cb=lambda user: user is not qnode)
        _meta.copy_meta(node, qnode, **{_meta.MODULE_PATH: target, _meta.ROLE: _meta.ROLE_QUANTIZER,
                                        _meta.LAYER_NAME: layer, _meta.QUANTIZES: quantizes})
        _meta.node_meta(qnode).pop(_meta.HANDLE, None)
        _meta.assign_handles(gm.graph, [qnode])
        if "tensor_meta" in node.meta:
            qnode.meta["tensor_meta"] = node.meta["tensor_meta"]

    def _fused_nodes(self, gm: torch.fx.GraphModule, modules: dict[str, nn.Module]
                     ) -> set[torch.fx.Node]:
        """Nodes inside a supergroup but not its last op: their outputs are not quantized."""
        fused: set[torch.fx.Node] = set()

        def op_type(node: torch.fx.Node) -> str | None:
            if not is_layer(node):
                return None
            return self.policy.op_type(modules[str(node.target)])

        for node in gm.graph.nodes:
            first = op_type(node)
            if first is None:
                continue
            for group in self.policy.supergroups:
                if len(group) < 2 or group[0] != first:
                    continue
                chain = [node]
                for want in group[1:]:
                    last = chain[-1]
                    if len(last.users) != 1:
                        break
                    user = next(iter(last.users))
                    if op_type(user) != want or user.args[:1] != (last,):
                        break
                    chain.append(user)
                if len(chain) == len(group):
                    fused.update(chain[:-1])
        return fused
