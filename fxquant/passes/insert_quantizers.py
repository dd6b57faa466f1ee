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
#: Root container of the model-input quantizers (and, under a layer, of its input quantizers).
INPUT_QUANTIZERS = "input_quantizers"

# Op types a following batch norm folds into.
_FOLDS_INTO = frozenset({"Conv", "ConvTranspose", "Gemm"})


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
        """A quantizer for the output of op ``layer``, or None.

        Two optional methods refine it (a policy without them gets the plain behaviour):
        ``model_output_quantizer(layer, module)`` for an op whose output is a model output (where
        AIMET's ``model_output`` settings win over the op's), and
        ``layer_input_quantizer(layer, module, index, is_model_input)`` for op-level input
        quantizers (AIMET's ``op_type.<T>.is_input_quantized``)."""

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
            return PassResult(gm, False, {"inputs": [], "layer_inputs": [], "outputs": [],
                                          "params": []})
        modules = dict(gm.named_modules())
        fused, fused_inputs = self._fused_nodes(gm, modules)
        fused_bns = self._foldable_batch_norms(gm, modules)
        fused |= {node.args[0] for node in fused_bns}
        graph_outputs = graph_output_nodes(gm)
        inputs: list[str] = []
        layer_inputs: list[str] = []
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
                    if node not in fused_bns:  # a BN kept for folding later: params stay float
                        for pname, quantizer in self.policy.param_quantizers(layer, module).items():
                            parametrize.register_parametrization(module, pname, quantizer,
                                                                 unsafe=True)
                            params.append(f"{layer}.{pname}")
                    layer_inputs += self._layer_inputs(gm, node, layer, module, modules,
                                                       fused_inputs.get(node, ()))
                    if not _is_float_tensor(node):
                        continue
                    is_output = node in graph_outputs
                    if node in fused:
                        continue
                    if self.policy.is_data_movement(module) and not (
                            is_output and self.policy.quantize_model_output
                            and not self._carries_encoding(node, modules)):
                        continue
                    quantizer = self._output_quantizer(layer, module, is_output)
                    if quantizer is not None:
                        self._insert_after(gm, node, f"{layer}.{OUTPUT_QUANTIZER}", quantizer,
                                           layer, "output")
                        outputs.append(layer)
        modified = bool(inputs or layer_inputs or outputs or params)
        return PassResult(gm, modified, {"inputs": inputs, "layer_inputs": layer_inputs,
                                         "outputs": outputs, "params": params})

    def _output_quantizer(self, layer: str, module: nn.Module, is_output: bool
                          ) -> nn.Module | None:
        if not is_output:
            return self.policy.output_quantizer(layer, module)
        if self.policy.quantize_model_output is False:
            return None
        make = getattr(self.policy, "model_output_quantizer", self.policy.output_quantizer)
        return make(layer, module)

    def _carries_encoding(self, node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
        """Whether ``node``'s first input is already on a quantization grid: a quantizer node,
        possibly behind data-movement ops (whose outputs reuse their input's encoding)."""
        current = node.args[0] if node.args else None
        while isinstance(current, torch.fx.Node):
            if _meta.get(current, _meta.ROLE) == _meta.ROLE_QUANTIZER:
                return True
            if not (is_layer(current) and self.policy.is_data_movement(
                    modules[str(current.target)])):
                return False
            current = current.args[0] if current.args else None
        return False

    def _layer_inputs(self, gm: torch.fx.GraphModule, node: torch.fx.Node, layer: str,
                      module: nn.Module, modules: dict[str, nn.Module],
                      skip: tuple[torch.fx.Node, ...]) -> list[str]:
        """Input quantizers ``<layer>.input_quantizers.<i>`` for the float tensor inputs of
        ``node`` that the policy quantizes and that are not on a grid already (AIMET's op-level
        ``is_input_quantized``). Returns ``"<layer>:<i>"`` for each one inserted."""
        make = getattr(self.policy, "layer_input_quantizer", None)
        if make is None:
            return []
        done: list[str] = []
        for index, arg in enumerate(node.all_input_nodes):
            if arg in skip or not _is_float_tensor(arg) or arg.op == "get_attr":
                continue
            if _meta.get(arg, _meta.ROLE) == _meta.ROLE_QUANTIZER:
                continue  # already quantized (the producer's output or the model input)
            if is_layer(arg) and self.policy.is_data_movement(modules[str(arg.target)]) \
                    and self._carries_encoding(arg, modules):
                continue  # reuses a quantized tensor's encoding
            tensor = layer_name(arg) if is_layer(arg) else (
                arg.name if arg.op == "placeholder" else None)
            if tensor is None:
                logger.info("input %d of %s (%s) is not a named tensor; not quantized", index,
                            layer, arg.format_node())
                continue
            quantizer = make(layer, module, index, is_model_input=arg.op == "placeholder")
            if quantizer is None:
                continue
            self._insert_before(gm, node, arg, f"{layer}.{INPUT_QUANTIZERS}.{index}", quantizer,
                                tensor)
            done.append(f"{layer}:{index}")
        return done

    @staticmethod
    def _insert_before(gm: torch.fx.GraphModule, node: torch.fx.Node, arg: torch.fx.Node,
                       target: str, quantizer: nn.Module, tensor: str) -> None:
        """A quantizer node between ``arg`` and ``node`` only (``arg``'s other users keep the
        unquantized tensor, as AIMET's per-op input quantizers do)."""
        gm.add_submodule(target, quantizer)
        with gm.graph.inserting_before(node):
            qnode = gm.graph.call_module(target, (arg,))
        node.replace_input_with(arg, qnode)
        _meta.copy_meta(arg, qnode, **{_meta.MODULE_PATH: target, _meta.ROLE: _meta.ROLE_QUANTIZER,
                                       _meta.LAYER_NAME: tensor, _meta.QUANTIZES: "input"})
        _meta.node_meta(qnode).pop(_meta.HANDLE, None)
        _meta.assign_handles(gm.graph, [qnode])
        if "tensor_meta" in arg.meta:
            qnode.meta["tensor_meta"] = arg.meta["tensor_meta"]

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
                     ) -> tuple[set[torch.fx.Node], dict[torch.fx.Node, tuple[torch.fx.Node, ...]]]:
        """Supergroups (AIMET's rule): the ops of a matched chain are fused on target, so every op
        but the last has no output quantizer and every op but the first has no input quantizer
        on the edge from the previous op. As in AIMET, a chain never starts at a depthwise or 3-D
        convolution (AIMET's target does not fuse those: their outputs stay quantized). Returns
        (nodes whose output is fused, {node: inputs whose quantizer is fused away})."""
        fused: set[torch.fx.Node] = set()
        fused_inputs: dict[torch.fx.Node, tuple[torch.fx.Node, ...]] = {}

        def op_type(node: torch.fx.Node) -> str | None:
            if not is_layer(node):
                return None
            return self.policy.op_type(modules[str(node.target)])

        for node in gm.graph.nodes:
            first = op_type(node)
            if first is None or _never_fused(modules[str(node.target)]):
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
                    for prev, member in zip(chain, chain[1:]):
                        fused_inputs[member] = (*fused_inputs.get(member, ()), prev)
        return fused, fused_inputs

    def _foldable_batch_norms(self, gm: torch.fx.GraphModule, modules: dict[str, nn.Module]
                              ) -> set[torch.fx.Node]:
        """Batch norms kept in the graph (a sim of a training-mode model) right after a conv /
        linear layer they fold into later (``fold_all_batch_norms_to_scale``): the pair is one op
        on target, so the layer's output is not quantized and the BN's parameters stay float
        (AIMET disables the quantization of foldable batch norms)."""
        found: set[torch.fx.Node] = set()
        for node in gm.graph.nodes:
            if not (is_layer(node) and node.args and isinstance(node.args[0], torch.fx.Node)):
                continue
            module = modules[str(node.target)]
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            src = node.args[0]
            if (is_layer(src) and len(src.users) == 1 and len(node.args) == 1
                    and self.policy.op_type(modules[str(src.target)]) in _FOLDS_INTO):
                found.add(node)
        return found


def _never_fused(module: nn.Module) -> bool:
    """Whether a supergroup may not start at ``module``: a depthwise convolution (one input
    channel per group) or a 3-D convolution, which AIMET's supergroup matching rejects."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        return True
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        return module.in_channels == module.groups
    return False

