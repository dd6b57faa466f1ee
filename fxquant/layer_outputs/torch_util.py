"""``LayerOutputUtil``: every layer's output of a float model or a QuantSim, dumped to disk.

The model is run as a prepared FX graph (every op a module with a canonical name,
``layer1.0.conv1``, ``layer1.0.module_add``). For a :class:`~fxquant.QuantizationSimModel` the value
recorded for a layer is what the quantized target computes: the output of the layer's output
quantizer when it has one (the dequantized value), the op's own output otherwise (inside a
supergroup such as Conv→ReLU, or a data-movement op such as max-pool). Values are captured by
value at the moment the layer returns (an in-place ReLU later cannot change them) and stay on the
model's device until they are written (CUDA: one asynchronous copy per tensor, one
synchronisation per instance, in the writer thread).

Model inputs are recorded too, first, under the input's name (``x``): for a sim the quantized value
when the sim quantizes that input, the raw value otherwise; for a float model the raw value. So
the input's quantization error shows in a float-vs-sim diff, and every dump of one model (float,
sim, the exported ``<prefix>.onnx`` and ``<prefix>_qdq.onnx`` in
:class:`fxquant.onnx.LayerOutputUtil`) has the same names.

Batch norms: a float model is dumped as :class:`~fxquant.QuantizationSimModel` and ``sim.export``
compute it, with its eval-mode batch norms folded into the neighbouring conv/linear
(:class:`~fxquant.FoldBatchNormPass` on a private copy; the caller's model is not changed), so
the float dump's ``conv1`` is the same tensor as the sim's ``conv1`` (the post-BN value) and the
folded BNs are not dumped. A model with a batch norm in training mode keeps all of them, as the
sim does. ``fold_batch_norms=False`` dumps the model as written (compare it with a sim built with
``fold_batch_norms=False`` or with ``export_onnx(model)``). A sim's model is dumped as it is.

Names (``naming_scheme``):

* ``NamingScheme.PYTORCH``: the canonical layer names; tuple outputs ``<layer>#<i>``.
* ``NamingScheme.ONNX``: the tensor names of the ONNX model ``sim.export`` /
  :func:`fxquant.export.export_onnx` writes with the same ``dummy_input`` and
  ``onnx_export_args`` — by construction the canonical names, except where the exporter
  could not give a layer a value (those layers are skipped, with a warning).
* ``NamingScheme.TORCHSCRIPT``: the debug names of ``torch.jit.trace`` outputs (AIMET
  compatibility; numeric, e.g. ``1384``).

Files: see :mod:`fxquant.layer_outputs.dump_writer` (AIMET layout plus ``manifest.json``).
"""
from __future__ import annotations

import contextlib
import enum
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from fxquant import _meta
from fxquant.core.layers import has_quantizers, is_layer, layer_name, output_quantizer_node
from fxquant.core.onnx_args import OnnxExportApiArgs, as_export_kwargs
from fxquant.export import export_onnx
from fxquant.export.qdq import QDQ_OPSET
from fxquant.model_resolution import FLOAT, ResolvedModel, private_copy, resolve_model
from fxquant.passes.fold_batchnorm import FoldBatchNormPass
from fxquant.passes.insert_quantizers import INPUT_QUANTIZERS
from fxquant.passes.remove_quantizers import RemoveQuantizersPass
from fxquant.layer_outputs.dump_writer import DumpWriter, HostInstance, check_dir
from fxquant.layer_outputs.dumping_util import DumpingUtil

__all__ = ["LayerOutputUtil", "NamingScheme"]

logger = logging.getLogger(__name__)


class NamingScheme(enum.Enum):
    """How dumped tensors are named (AIMET's enum, same members and values).

    Example:
        >>> NamingScheme.parse("onnx")
        <NamingScheme.ONNX: 2>
    """

    PYTORCH = 1
    """Canonical layer names (module paths after the preparer)."""
    ONNX = 2
    """Tensor names of the exported ONNX model (canonical names for fxquant exports)."""
    TORCHSCRIPT = 3
    """Output names of a ``torch.jit.trace`` of the float model (numeric)."""

    @classmethod
    def parse(cls, value: Any) -> NamingScheme:
        """A :class:`NamingScheme` from itself, its value (1–3), its name (any case) or another
        enum with the same member names (AIMET's ``NamingScheme``).

        Raises:
            ValueError: anything else (the message lists the valid values).
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, enum.Enum):
            value = value.name
        if isinstance(value, int) and not isinstance(value, bool):
            for member in cls:
                if member.value == value:
                    return member
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        raise ValueError(f"unknown naming scheme {value!r}; use NamingScheme.PYTORCH, "
                         "NamingScheme.ONNX or NamingScheme.TORCHSCRIPT (or 'pytorch', 'onnx', "
                         "'torchscript')")


class _Site:
    """One recorded value: ``name`` is produced by the ``call_index``-th call of ``module``, or,
    with ``module`` None, it is model input ``input_index`` as given (a raw model input)."""

    __slots__ = ("name", "module", "node", "meta", "input_index")

    def __init__(self, name: str, module: str | None, node: torch.fx.Node, meta: Any,
                 input_index: int | None = None) -> None:
        self.name = name
        self.module = module
        self.node = node
        self.meta = meta
        self.input_index = input_index


def _as_args(input_instance: Any) -> tuple[Any, ...]:
    if isinstance(input_instance, tuple):
        return input_instance
    if isinstance(input_instance, list):
        return tuple(input_instance)
    return (input_instance,)


def _check_dummy(dummy_input: Any, scheme: NamingScheme) -> None:
    if dummy_input is None:
        raise ValueError(f"naming_scheme=NamingScheme.{scheme.name} needs dummy_input (the input "
                         "the model is exported with, e.g. the one given to sim.export); pass "
                         "dummy_input=..., or use NamingScheme.PYTORCH")
    if not isinstance(dummy_input, (torch.Tensor, tuple, list)):
        raise ValueError(f"dummy_input must be a tensor, or a tuple or list of the forward's "
                         f"positional inputs, got {type(dummy_input).__qualname__}")


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _fold_batch_norms(resolved: ResolvedModel
                      ) -> tuple[torch.fx.GraphModule, list[tuple[str, str]]]:
    """The graph module to dump for a float model with ``fold_batch_norms=True``, and the
    ``(layer, bn)`` pairs folded: eval-mode batch norms folded as QuantizationSimModel folds
    them (:class:`FoldBatchNormPass`), on a private copy unless ``resolved.gm`` already is one."""
    gm = resolved.gm
    modules = dict(gm.named_modules())
    bns = [str(n.target) for n in gm.graph.nodes
           if n.op == "call_module" and _is_batch_norm(modules.get(str(n.target), nn.Identity()))]
    if not bns:
        return gm, []
    training = [name for name in bns if modules[name].training]
    if training:  # QuantizationSimModel keeps every BN of such a model (QAT with batch norms)
        logger.info("not folding the %d batch norm(s) of the model: %s in training mode, and "
                    "QuantizationSimModel keeps the batch norms of such a model unfolded; they "
                    "are dumped as layers (with their running statistics)", len(bns),
                    _listing(training))
        return gm, []
    if resolved.source != "module":  # the caller's prepared GraphModule: never change it
        gm = private_copy(gm)
    folded = [(str(layer), str(bn)) for layer, bn in FoldBatchNormPass()(gm).details["folded"]]
    kept = [name for name in bns if name not in {bn for _, bn in folded}]
    if folded:
        logger.info("folded %d batch norm(s) into their layers, as QuantizationSimModel and "
                    "sim.export do (the layer's dumped value is the post-BN one; pass "
                    "fold_batch_norms=False to dump the model unfolded): %s", len(folded),
                    _listing([f"{bn} -> {layer}" for layer, bn in folded]))
    if kept:
        logger.info("%d batch norm(s) have no conv/linear to fold into and are dumped as layers: "
                    "%s", len(kept), _listing(kept))
    return gm, folded


def _listing(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names) - limit} more)"
                                       if len(names) > limit else "")


def _resolve_model(model: Any, fold_batch_norms: bool
                   ) -> tuple[torch.fx.GraphModule, bool, str, list[tuple[str, str]]]:
    """(graph module to run, whether it holds quantizers, a description, BNs folded)."""
    resolved = resolve_model(model, copy=False, what="LayerOutputUtil's model")
    quantized = has_quantizers(resolved.gm)
    if quantized or resolved.kind != FLOAT or not fold_batch_norms:
        return resolved.gm, quantized, resolved.description, []
    gm, folded = _fold_batch_norms(resolved)
    return gm, quantized, resolved.description, folded


def _model_input_quantizer(node: torch.fx.Node) -> bool:
    """Whether ``node`` is a sim's quantizer of a model input (``input_quantizers.<input>``, or
    a layer's input quantizer reading the placeholder directly)."""
    return (node.op == "call_module" and _meta.role(node) == _meta.ROLE_QUANTIZER
            and _meta.get(node, _meta.QUANTIZES) == _meta.QUANTIZES_INPUT
            and bool(node.args) and isinstance(node.args[0], torch.fx.Node)
            and node.args[0].op == "placeholder")


def _sites(gm: torch.fx.GraphModule) -> list[_Site]:
    """Where each recorded value comes from, in graph order: first the model inputs (the
    input's quantizer when the sim quantizes it, the input as given otherwise), then per layer
    its output quantizer, or the layer itself."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    quantized_input: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in gm.graph.nodes:
        if _model_input_quantizer(node):
            source = node.args[0]
            own = str(node.target) == f"{INPUT_QUANTIZERS}.{source.name}"
            if own or source not in quantized_input:  # the model input's own quantizer wins
                quantized_input[source] = node
    sites = []
    for index, node in enumerate(placeholders):
        quantizer = quantized_input.get(node)
        if quantizer is not None:
            sites.append(_Site(node.name, str(quantizer.target), node,
                               node.meta.get("tensor_meta")))
        else:
            sites.append(_Site(node.name, None, node, node.meta.get("tensor_meta"), index))
    for node in gm.graph.nodes:
        if node.op == "call_module" and _meta.role(node) == _meta.ROLE_QUANTIZER \
                and _meta.get(node, _meta.QUANTIZES) == _meta.QUANTIZES_INPUT \
                and not _model_input_quantizer(node):
            sites.append(_Site(layer_name(node), str(node.target), node,
                               node.meta.get("tensor_meta")))
        elif is_layer(node):
            quantizer = output_quantizer_node(node)
            source = quantizer if quantizer is not None else node
            sites.append(_Site(layer_name(node), str(source.target), node,
                               node.meta.get("tensor_meta")))
    return sites


def _expected_names(sites: Sequence[_Site]) -> list[str] | None:
    """The names a forward will record, when shape propagation has run on every site."""
    names = []
    for site in sites:
        meta = site.meta
        if isinstance(meta, TensorMetadata):
            names.append(site.name)
        elif isinstance(meta, (list, tuple)) and meta and all(
                isinstance(m, TensorMetadata) for m in meta):
            names.extend(f"{site.name}#{i}" for i in range(len(meta)))
        elif meta is None:
            return None
    return names


def _float_module(gm: torch.fx.GraphModule, quantized: bool) -> torch.fx.GraphModule:
    if not quantized:
        return gm
    return RemoveQuantizersPass()(private_copy(gm)).graph_module


def _onnx_names(gm: torch.fx.GraphModule, quantized: bool, dummy_input: Any,
                onnx_export_args: OnnxExportApiArgs | Mapping[str, Any] | None
                ) -> tuple[dict[str, str], Any]:
    args = as_export_kwargs(onnx_export_args)  # a dict or AIMET's OnnxExportApiArgs
    if quantized:  # what sim.export passes to export_onnx
        args.setdefault("opset_version", QDQ_OPSET)
    exported = export_onnx(gm, dummy_input, onnx_export_args=args)
    names = dict(exported.layer_outputs)
    for graph_input in exported.model.graph.input:
        names.setdefault(graph_input.name, graph_input.name)
    if exported.unmapped_layers:
        logger.warning("%d layer(s) have no tensor in the exported ONNX model and are not dumped "
                       "with ONNX naming: %s", len(exported.unmapped_layers),
                       list(exported.unmapped_layers)[:20])
    return names, exported


def _torchscript_names(gm: torch.fx.GraphModule, dummy_input: Any) -> dict[str, str]:
    args = tuple(a for a in _as_args(dummy_input))
    with torch.no_grad(), warnings.catch_warnings(), _eval_mode(gm):
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(gm, args, check_trace=False)
    graph = traced.graph
    inputs = list(graph.inputs())
    paths: dict[str, str] = {inputs[0].debugName(): ""}
    names: dict[str, str] = {}
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    for placeholder, value in zip(placeholders, inputs[1:]):
        names[placeholder] = value.debugName()
    unpacked: dict[str, list[str]] = {}
    for node in graph.nodes():
        if node.kind() == "prim::TupleUnpack":
            unpacked[node.input().debugName()] = [o.debugName() for o in node.outputs()]
    for node in graph.nodes():
        kind = node.kind()
        if kind == "prim::GetAttr":
            parent = paths.get(node.input().debugName())
            if parent is not None:
                attr = node.s("name")
                paths[node.output().debugName()] = f"{parent}.{attr}" if parent else attr
        elif kind == "prim::CallMethod":
            owner = paths.get(next(iter(node.inputs())).debugName())
            if owner is None or owner == "":
                continue
            out = node.output().debugName()
            names[owner] = out
            for i, item in enumerate(unpacked.get(out, [])):
                names[f"{owner}#{i}"] = item
    return names


@contextlib.contextmanager
def _eval_mode(module: nn.Module):  # type: ignore[no-untyped-def]
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _device_of(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


class _Capture:
    """Forward hooks that copy each site's value by value; CUDA copies go to pinned host memory
    asynchronously (one event per instance)."""

    def __init__(self, gm: torch.fx.GraphModule, sites: Sequence[_Site]) -> None:
        self.gm = gm
        self.by_module: dict[str, list[str]] = {}
        for site in sites:
            if site.module is not None:
                self.by_module.setdefault(site.module, []).append(site.name)
        self.values: list[tuple[str, torch.Tensor]] = []
        self.calls: dict[str, int] = {}
        self.async_devices: set[torch.device] = set()

    def grab(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.device.type == "cpu":
            return tensor.clone()
        if tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            self.async_devices.add(tensor.device)
            return host
        return tensor.to("cpu")  # other accelerators: a synchronous copy

    def _hook(self, path: str) -> Callable[..., None]:
        names = self.by_module[path]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            k = self.calls.get(path, 0)
            self.calls[path] = k + 1
            if k >= len(names):
                return
            name = names[k]
            if isinstance(output, torch.Tensor):
                self.values.append((name, self.grab(output)))
            elif isinstance(output, (tuple, list)):
                for i, item in enumerate(output):
                    if isinstance(item, torch.Tensor):
                        self.values.append((f"{name}#{i}", self.grab(item)))
            else:
                logger.debug("%s returned %s, not a tensor: not dumped", name,
                             type(output).__name__)

        return hook

    def run(self, args: tuple[Any, ...]) -> tuple[list[tuple[str, torch.Tensor]],
                                                   Callable[[], None] | None]:
        """Runs the model once; returns the captured values and the wait for their copies
        (covering every asynchronous copy since ``async_devices`` was last cleared)."""
        self.values = []
        self.calls = {}
        handles = []
        try:
            for path in self.by_module:
                handles.append(self.gm.get_submodule(path).register_forward_hook(self._hook(path)))
            with torch.no_grad(), _eval_mode(self.gm):
                self.gm(*args)
        finally:
            for handle in handles:
                handle.remove()
        return self.values, self.ready()

    def ready(self) -> Callable[[], None] | None:
        if not self.async_devices:
            return None
        events = []
        for device in self.async_devices:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)

        def wait() -> None:
            for event in events:
                event.synchronize()

        return wait


class LayerOutputUtil(DumpingUtil):
    """Captures and saves every layer's output of a float model or a QuantSim.

    Args:
        model: a float ``nn.Module`` (prepared on a copy: its layers get canonical names), a
            prepared ``GraphModule``, or a :class:`~fxquant.QuantizationSimModel` (or its
            ``sim.model``), whose recorded values are the quantized ones.
        dir_path: directory to write to (created when missing; must be empty unless
            ``overwrite``).
        naming_scheme: a :class:`NamingScheme` (or its name): PYTORCH (canonical names), ONNX
            (tensor names of the exported model) or TORCHSCRIPT.
        dummy_input: the input the model is exported with (needed by ONNX and TORCHSCRIPT).
        onnx_export_args: the ``onnx_export_args`` given to ``sim.export`` / ``export_onnx``: a
            dict or AIMET's :class:`~fxquant.OnnxExportApiArgs`.
        fold_batch_norms: for a float model, fold its eval-mode batch norms into their
            conv/linear layers as :class:`~fxquant.QuantizationSimModel` and ``sim.export`` do
            (on a private copy; logged at INFO; the pairs are in :attr:`folded_batch_norms`), so
            that the float dump lines up with the sim's and with ``<prefix>.onnx``, name for
            name. A model with a batch norm in training mode keeps them all, like the sim.
            False dumps the model as written. A sim's model is always dumped as it is.
        overwrite: replace a dump already in ``dir_path``.
        file_format: "raw" (float32, AIMET's format) or "npy" (the tensor's own dtype).
        layout: "NCHW" (as computed) or "NHWC" (3- to 5-D tensors written channels last, as
            many targets dump them).

    Attributes:
        graph_module: the GraphModule that is run (a private copy when batch norms were folded).
        folded_batch_norms: ``[(layer, bn), ...]`` module paths of the batch norms folded
            (also in the manifest's ``producer.batch_norms_folded``).

    Raises:
        ValueError: unknown naming scheme, ONNX/TORCHSCRIPT naming without ``dummy_input``, bad
            ``file_format`` / ``layout``.
        TypeError: ``fold_batch_norms`` is not a bool.
        DumpExistsError: ``dir_path`` is not empty and ``overwrite`` is False.
        DumpWriteError: ``dir_path`` cannot be created or written (the message names the path).

    Example:
        >>> util = LayerOutputUtil(sim, "dumps/sim", NamingScheme.ONNX, dummy_input=x0)
        >>> util.generate_layer_outputs(x)
        >>> util.generate_layer_outputs_batch(images)   # with a progress bar
        32
        >>> fp32 = LayerOutputUtil(model, "dumps/fp32", NamingScheme.ONNX, dummy_input=x0)
        >>> fp32.folded_batch_norms[:1]     # conv1 is dumped post-BN, like the sim's conv1
        [('conv1', 'bn1')]
        >>> fp32.generate_layer_outputs(x)
    """

    def __init__(self, model: nn.Module | Any, dir_path: str | os.PathLike[str],
                 naming_scheme: NamingScheme | str | int = NamingScheme.PYTORCH,
                 dummy_input: torch.Tensor | tuple[Any, ...] | list[Any] | None = None,
                 onnx_export_args: OnnxExportApiArgs | Mapping[str, Any] | None = None, *,
                 fold_batch_norms: bool = True, overwrite: bool = False,
                 file_format: str = "raw", layout: str = "NCHW") -> None:
        self.naming_scheme = NamingScheme.parse(naming_scheme)
        if not isinstance(fold_batch_norms, bool):
            raise TypeError(f"fold_batch_norms must be True or False, got {fold_batch_norms!r} "
                            f"({type(fold_batch_norms).__name__})")
        if self.naming_scheme is not NamingScheme.PYTORCH:
            _check_dummy(dummy_input, self.naming_scheme)
        if dir_path is None or (isinstance(dir_path, str) and not dir_path):
            raise ValueError("dir_path is required: the directory the dump is written to")
        check_dir(dir_path, overwrite)  # fail before the (slow) preparation and export
        self.graph_module, self.quantized, description, self.folded_batch_norms = \
            _resolve_model(model, fold_batch_norms)
        self._sites = _sites(self.graph_module)
        self.onnx_export = None
        if self.naming_scheme is NamingScheme.PYTORCH:
            self.name_map: dict[str, str] | None = None
        elif self.naming_scheme is NamingScheme.ONNX:
            self.name_map, self.onnx_export = _onnx_names(self.graph_module, self.quantized,
                                                          dummy_input, onnx_export_args)
        else:
            self.name_map = _torchscript_names(
                _float_module(self.graph_module, self.quantized), dummy_input)
        self._input_names = [n.name for n in self.graph_module.graph.nodes if n.op == "placeholder"]
        self._input_sites = [site for site in self._sites if site.node.op == "placeholder"]
        expected = _expected_names(self._sites)
        names = [] if expected is None else [r for n in expected if (r := self._rename(n))]
        self._writer = DumpWriter(dir_path, overwrite=overwrite, file_format=file_format,
                                  layout=layout, names=names,
                                  producer={"library": "fxquant", "source": "torch",
                                            "model": description, "quantized": self.quantized,
                                            "naming_scheme": self.naming_scheme.name,
                                            "batch_norms_folded": [
                                                list(p) for p in self.folded_batch_norms]})
        self._capture = _Capture(self.graph_module, self._sites)
        self._skipped: set[str] = set()

    def _rename(self, name: str) -> str | None:
        if self.name_map is None:
            return name
        return self.name_map.get(name)

    def _instance(self, input_instance: Any) -> HostInstance:
        args = _as_args(input_instance)
        device = _device_of(self.graph_module)
        if device is not None:
            args = tuple(a.to(device) if isinstance(a, torch.Tensor) and a.device != device else a
                         for a in args)
        self._capture.async_devices = set()
        inputs = []
        given: dict[int, torch.Tensor] = {}
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                name = self._input_names[i] if i < len(self._input_names) else f"input_{i}"
                given[i] = self._capture.grab(arg)
                inputs.append((name, given[i]))
        values, ready = self._capture.run(args)
        # model inputs first (placeholder order): as given, or their quantizer's output
        captured = dict(values)
        first: list[tuple[str, torch.Tensor]] = []
        for site in self._input_sites:
            value = given.get(site.input_index) if site.module is None else captured.get(site.name)
            if value is not None:
                first.append((site.name, value))
        input_names = {site.name for site in self._input_sites}
        outputs = []
        for name, value in first + [(n, v) for n, v in values if n not in input_names]:
            renamed = self._rename(name)
            if renamed is None:
                if name not in self._skipped:
                    self._skipped.add(name)
                    logger.warning("%s has no %s name: not dumped", name, self.naming_scheme.name)
                continue
            outputs.append((renamed, value))
        return HostInstance(inputs, outputs, ready)

    def generate_layer_outputs(self, input_instance: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Runs one input instance and writes it and every layer's output.

        Args:
            input_instance: the model's input: a tensor, or a tuple/list of positional inputs
                (moved to the model's device when elsewhere).

        Example:
            >>> util.generate_layer_outputs(torch.randn(1, 3, 224, 224))
            >>> sorted(os.listdir("dumps/sim/outputs"))
            ['layer_outputs_0']
        """
        index = self._writer.submit(self._writer.run_instance(self._instance, input_instance),
                                    wait=True)
        logger.info("wrote layer outputs of input instance %d to %s", index, self.dir_path)

    def __del__(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None and writer._executor is not None:
            writer._executor.shutdown(wait=False)
