"""QuantizationSimModel: the quantization simulation of a model, built on one FX graph.

``sim = QuantizationSimModel(model, dummy_input)`` prepares a copy of the model (functionals →
modules, reused modules split), folds its batch norms, and inserts quantizers where the quantsim
config says (:class:`~fxquant.passes.insert_quantizers.InsertQuantizersPass`). ``sim.model`` is the
resulting GraphModule: ``print(sim.model.code)`` shows every activation quantizer; parameter
quantizers are parametrizations of their layers (``sim.model.conv1.parametrizations.weight[0]``).
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import inspect
import logging
import os
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from fxquant import _meta
from fxquant._fx_utils import as_args
from fxquant.bn_reestimation import keep_bn_statistics
from fxquant.core.layers import is_layer, iter_layers, param_quantizers
from fxquant.core.onnx_args import OnnxExportApiArgs, as_export_kwargs
from fxquant.distributed import DEFAULT_TIMEOUT
from fxquant.errors import CalibrationError, ConfigError, TraceError
from fxquant.export import export_sim
from fxquant.export.encodings_file import QuantizerArgs, torch_names, write_encodings
from fxquant.model_resolution import graph_module_to_transform
from fxquant.passes.base import Sequential
from fxquant.passes.fold_batchnorm import FoldBatchNormPass, training_batch_norms
from fxquant.passes.insert_quantizers import InsertQuantizersPass
from fxquant.passes.prepare import PrepareModelPass
from fxquant.quantsim.bias import Int32BiasQuantizer, find_input_quantizer
from fxquant.quantsim.calibration import calibrate
from fxquant.quantsim.config import load_config
from fxquant.quantsim.encodings_load import install_encodings
from fxquant.quantsim.encoding import QuantEncoding
from fxquant.quantsim.encoding_analyzer import PercentileEncodingAnalyzer
from fxquant.quantsim.policy import ConfigPolicy, QuantSimSettings
from fxquant.quantsim.quant_scheme import QuantizationDataType, QuantScheme
from fxquant.quantsim.quantizer import QuantizerBase
from fxquant.validation.report import WARNING
from fxquant.validation.validator import graph_report

__all__ = ["QuantizationSimModel", "QuantizerRef"]

logger = logging.getLogger(__name__)


class _NotGiven:
    """Marks an argument the caller did not pass (``None`` is a value the caller may pass)."""

    def __repr__(self) -> str:
        return "<not given>"


_NOT_GIVEN: Any = _NotGiven()


@dataclasses.dataclass(frozen=True)
class QuantizerRef:
    """One quantizer of a sim and what it quantizes.

    Attributes:
        name: the tensor it quantizes under fxquant's naming: the model input name (``"x"``),
            the layer name for an output (``"layer1.0.conv1"``), ``"<layer>.<param>"`` for a
            parameter (``"layer1.0.conv1.weight"``). These are also the tensor and initializer
            names of the exported ONNX model.
        kind: "input", "output" or "param".
        layer: the layer (module path) it belongs to ("" for a model input).
        quantizer: the quantizer module.
        module_path: where the quantizer module lives in ``sim.model``.
    """

    name: str
    kind: str
    layer: str
    quantizer: QuantizerBase
    module_path: str


def _signature(model: nn.Module) -> str:
    try:
        return f"{type(model).__name__}.forward{inspect.signature(model.forward)}"
    except (TypeError, ValueError):
        return f"{type(model).__name__}.forward(...)"


class QuantizationSimModel:
    """Simulates on the FX graph what an integer (or float16) target will compute.

    Args:
        model: the float model (eval mode: its batch norms are folded with their statistics).
        dummy_input: an example input (a tensor, or a tuple of the forward's positional args).
        quant_scheme: calibration scheme, a :class:`QuantScheme` or one of "tf", "min_max",
            "tf_enhanced", "percentile", "mse", or a range-learning scheme name.
        default_output_bw: activation bit width (4–32).
        default_param_bw: parameter bit width (2–32).
        in_place: build the sim on ``model`` itself instead of a copy (its modules are shared).
        config_file: an AIMET quantsim config (path or dict), "default", "per_tensor", or None
            for the built-in default (per-channel symmetric weights, asymmetric activations).
        default_data_type: ``QuantizationDataType.int`` or ``.float`` (16-bit float only).
        fold_batch_norms: fold BNs into their conv/linear before inserting quantizers.
        quantize_bias: simulate int32 bias (scale = input scale × weight scale) as integer
            targets do, for biases the config leaves unquantized (a bias the config quantizes,
            ``params.bias.is_quantized: "True"``, gets a parameter quantizer as in AIMET).
        rounding_mode: AIMET 1.x's argument (keyword only here); only ``"nearest"`` (round half
            to even, as ONNX QuantizeLinear) is supported.

    While building, the graph-only checks of the model validator
    (:func:`fxquant.validation.graph_report`: untraceable parts, training mode, reused modules,
    in-place ops, shared parameters) run on the graph the sim has just traced, and their table is
    logged as a warning when they find errors. They copy, run and export nothing, so they cost one
    walk over the graph; the full validation (``fxquant.validate(model, dummy_input)``: ONNX export,
    activation ranges, BN folding, functionals) is left to the user.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``dummy_input`` does not fit the model's forward (the message shows it).
        ConfigError: bad bit width, scheme, rounding mode or config (the message names the
            valid values), or the model is on the ``meta`` device (the message says how to give it real weights).
        TraceError: the model or a submodule is a TorchScript module (pass the original
            ``nn.Module``).

    Example:
        >>> sim = QuantizationSimModel(model, torch.randn(1, 3, 224, 224), quant_scheme="tf")
        >>> sim.compute_encodings(lambda m: m(calibration_batch))
        >>> logits = sim.model(x)
        >>> sim.export("out", "resnet18", torch.randn(1, 3, 224, 224))
    """

    def __init__(self, model: nn.Module, dummy_input: Any,
                 quant_scheme: QuantScheme | str = QuantScheme.post_training_tf_enhanced,
                 default_output_bw: int = 8, default_param_bw: int = 8, in_place: bool = False,
                 config_file: Any = None,
                 default_data_type: QuantizationDataType | str = QuantizationDataType.int, *,
                 fold_batch_norms: bool = True, quantize_bias: bool | None = None,
                 rounding_mode: str = "nearest") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"QuantizationSimModel expects a torch.nn.Module, "
                            f"got {type(model).__qualname__}")
        if rounding_mode != "nearest":
            raise ConfigError(
                f"rounding_mode={rounding_mode!r} is not supported; valid values: 'nearest' "
                "(round half to even, what ONNX QuantizeLinear and integer targets do; AIMET's "
                "'stochastic' rounding has no target equivalent)")
        self.settings = QuantSimSettings(
            quant_scheme=QuantScheme.parse(quant_scheme), default_output_bw=default_output_bw,
            default_param_bw=default_param_bw,
            default_data_type=QuantizationDataType.parse(default_data_type))
        self.config = load_config(config_file)
        self.fold_batch_norms = fold_batch_norms
        self.quantize_bias = quantize_bias
        _check_model_is_real(model)
        args = as_args(dummy_input)
        self._check_signature(model, args)
        policy = ConfigPolicy(self.config, self.settings)
        policy.validate()  # bit widths and data type, before any graph work
        gm = graph_module_to_transform(model, in_place=in_place)
        report = graph_report(model, gm)  # the cheap, graph-only validation (see the docstring)
        if not report.ok:
            logger.warning("%s\nrun fxquant.validate(model, dummy_input) for the full report",
                           report.table(WARNING))
        kept_bns = training_batch_norms(model) if fold_batch_norms else []
        if kept_bns:  # QAT with batch norms: fold later with fold_all_batch_norms_to_scale(sim)
            logger.info("keeping %d batch norm(s) unfolded (%s): the model is in training mode; "
                        "re-estimate them with reestimate_bn_stats and fold them with "
                        "fold_all_batch_norms_to_scale(sim) after training", len(kept_bns),
                        ", ".join(kept_bns[:5]) + (" ..." if len(kept_bns) > 5 else ""))
            self.fold_batch_norms = fold_batch_norms = False
        passes = [PrepareModelPass()]
        if fold_batch_norms:
            passes.append(FoldBatchNormPass())
        gm = Sequential(*passes)(gm).graph_module
        with keep_bn_statistics(gm):  # the shape pass must not move training-mode BN statistics
            self._propagate_shapes(model, gm, args)
        self._insert = InsertQuantizersPass(policy)(gm)
        self.model: torch.fx.GraphModule = self._insert.graph_module
        if self.config.layers:
            self._apply_layer_overrides()
        # (a bias the config quantizes gets a parameter quantizer, as in AIMET; int32 on request)
        self._bias_quantized = bool(quantize_bias) and (
            self.settings.default_data_type is QuantizationDataType.int)
        if self._bias_quantized:
            self._add_bias_quantizers()
        self._encodings_computed = False

    # -- construction helpers ------------------------------------------------------------------
    @staticmethod
    def _check_signature(model: nn.Module, args: tuple[Any, ...]) -> None:
        try:
            inspect.signature(model.forward).bind(*args)
        except TypeError as exc:
            raise ValueError(
                f"dummy_input does not match the model's forward: {exc}. Expected "
                f"{_signature(model)}; got {len(args)} positional input(s) "
                f"({', '.join(type(a).__name__ for a in args)}). Pass a tuple for several "
                "inputs.") from exc
        except ValueError:  # builtins without a signature: let the forward pass decide
            pass

    @staticmethod
    def _propagate_shapes(model: nn.Module, gm: torch.fx.GraphModule,
                          args: tuple[Any, ...]) -> None:
        prop = _ShapeProp(gm)
        # the model may change its input in place (x.add_(1), relu_(x)): run it on a copy
        args = torch.utils._pytree.tree_map_only(torch.Tensor, torch.Tensor.clone, args)
        try:
            with torch.no_grad():
                prop.propagate(*args)
        except Exception as exc:
            cause = exc.__cause__ or exc
            where = ""
            if prop.current is not None:
                src = _meta.source(prop.current)
                where = (f" at {_meta.module_path(prop.current) or prop.current.name!r}"
                         + (f" ({src})" if src else ""))
            raise ValueError(
                f"the model cannot run on dummy_input{where}: {type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else ''}. Expected "
                f"{_signature(model)} with inputs of the shapes the model accepts; got "
                f"{_describe(args)}.") from exc

    def _apply_layer_overrides(self) -> None:
        """Applies the config's ``layers`` bit widths (see :mod:`fxquant.quantsim.config`): a
        layer's activation quantizers are those a ``_torch.encodings`` file lists under it."""
        by_layer: dict[str, list[tuple[str, QuantizerBase]]] = {}
        keys = torch_names(self)
        for ref in self.quantizers():
            if ref.kind == "param":
                by_layer.setdefault(ref.layer, []).append(("param", ref.quantizer))
            else:
                for layer, _, _ in keys.get(ref.name, [(ref.name, "output", 0)]):
                    by_layer.setdefault(layer, []).append(("activation", ref.quantizer))
        layers = {name for name, _ in iter_layers(self.model)}
        where = f"quantsim config {self.config.source or '(dict)'}: layers"
        for name, override in self.config.layers.items():
            if name not in layers:
                import difflib

                close = difflib.get_close_matches(name, sorted(layers), n=3)
                raise ConfigError(f"{where}.{name}: no layer of that name in the model"
                                  + (f"; did you mean {', '.join(map(repr, close))}?" if close
                                     else f"; layers: {', '.join(sorted(layers)[:8])} ..."))
            for kind, quantizer in by_layer.get(name, []):
                bits = override.activation_bw if kind == "activation" else override.param_bw
                if bits is None:
                    continue
                if not hasattr(quantizer, "bitwidth") or not hasattr(quantizer, "symmetric"):
                    raise ConfigError(f"{where}.{name}: per-layer bit widths need integer "
                                      "quantization (default_data_type=int)")
                if quantizer.is_frozen:   # a fixed range (encoding_constraints) keeps its grid
                    continue
                quantizer.bitwidth = bits

    def _add_bias_quantizers(self) -> None:
        modules = dict(self.model.named_modules())
        for _, node in iter_layers(self.model):
            module = modules[str(node.target)]
            pq = param_quantizers(module)
            if "weight" not in pq or "bias" in pq or getattr(module, "bias", None) is None:
                continue
            input_q = find_input_quantizer(self.model, node)
            if input_q is None:
                logger.info("bias of %s stays float: its input is not quantized", node.target)
                continue
            parametrize.register_parametrization(
                module, "bias", Int32BiasQuantizer(input_q, pq["weight"], f"{node.target}.bias"),
                unsafe=True)

    # -- quantizers ----------------------------------------------------------------------------
    def quantizers(self) -> list[QuantizerRef]:
        """Every quantizer of the sim, in graph order (inputs, then per layer params and output).

        Example:
            >>> [(q.name, q.kind) for q in sim.quantizers()][:3]
            [('x', 'input'), ('conv1.weight', 'param'), ('conv1', 'output')]
        """
        refs: list[QuantizerRef] = []
        modules = dict(self.model.named_modules())
        for node in self.model.graph.nodes:
            role = _meta.get(node, _meta.ROLE)
            if role == _meta.ROLE_QUANTIZER:
                layer = _meta.get(node, _meta.LAYER_NAME)
                kind = _meta.get(node, _meta.QUANTIZES)
                refs.append(QuantizerRef(layer, kind, "" if kind == "input" else layer,
                                         modules[str(node.target)], str(node.target)))
            elif is_layer(node):
                module = modules[str(node.target)]
                for pname, quantizer in param_quantizers(module).items():
                    if isinstance(quantizer, QuantizerBase):
                        refs.append(QuantizerRef(f"{node.target}.{pname}", "param",
                                                 str(node.target), quantizer,
                                                 f"{node.target}.parametrizations.{pname}.0"))
        return refs

    def quantizer(self, name: str) -> QuantizerBase:
        """The quantizer of tensor ``name`` (see :meth:`quantizers` for the names).

        Raises:
            KeyError: no quantizer has that name (the message lists close ones).
        """
        refs = {q.name: q.quantizer for q in self.quantizers()}
        if name not in refs:
            import difflib

            close = difflib.get_close_matches(name, list(refs), n=5)
            raise KeyError(f"no quantizer named {name!r}; close: {close or sorted(refs)[:5]}")
        return refs[name]

    def bias_quantizers(self) -> dict[str, Int32BiasQuantizer]:
        """``{"<layer>.bias": quantizer}`` of the simulated int32 biases (empty when off)."""
        out = {}
        for name, module in self.model.named_modules():
            for pname, quantizer in param_quantizers(module).items():
                if isinstance(quantizer, Int32BiasQuantizer):
                    out[f"{name}.{pname}"] = quantizer
        return out

    def compile(self, **compile_kwargs: Any) -> QuantizationSimModel:
        """Compiles ``sim.model`` in place with ``torch.compile`` (``nn.Module.compile``: the
        module stays the same object, its calls run the compiled code); returns the sim.

        The sim traces as one graph: quantizers, parametrized weights and ``enabled`` flags
        compile without a graph break. Flags are guarded (changing one recompiles; dynamo keeps
        up to ``torch._dynamo.config.recompile_limit`` variants, then runs eagerly), encodings are
        read live (``load_encodings`` and in-place changes take effect without recompiling). The
        fake quantization stays ONNX's arithmetic (a true division, round half to even) fused
        into its neighbours; the float ops are inductor's: with ``options={"layout_optimization":
        False}`` convolutions and GEMMs run eager torch's kernels on the same layouts (outputs
        bit-identical on conv/linear/ReLU/add nets), while reductions such as average pooling and
        transcendental functions differ from eager torch by float32 rounding, which can move a
        value across a quantization step. Use the eager sim as ONNX Runtime's reference and the
        compiled one for speed (evaluation, QAT); sweeps that flip many flags (QuantAnalyzer)
        are better eager.

        Args:
            **compile_kwargs: passed to ``torch.compile`` (``mode``, ``options``, ``backend``).

        Example:
            >>> sim.compile()
            >>> logits = sim.model(x)    # the first call compiles (seconds to a minute on CPU)
        """
        self.model.compile(**compile_kwargs)
        return self

    def set_percentile_value(self, percentile: float) -> None:
        """Sets the percentile of every percentile-calibrated quantizer (e.g. 99.99).

        Raises:
            ConfigError: ``percentile`` outside (50, 100].
        """
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not (
                50 < percentile <= 100):
            raise ConfigError(f"set_percentile_value: percentile must be in (50, 100], "
                              f"got {percentile!r}")
        for ref in self.quantizers():
            analyzer = getattr(ref.quantizer, "encoding_analyzer", None)
            if isinstance(analyzer, PercentileEncodingAnalyzer):
                analyzer.percentile = float(percentile)

    # -- calibration ---------------------------------------------------------------------------
    def compute_encodings(self, forward_pass_callback: Callable[..., Any],
                          forward_pass_callback_args: Any = _NOT_GIVEN, *,
                          process_group: Any = None,
                          timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> None:
        """Calibrates every quantizer, all or nothing.

        Parameter encodings are computed from the weights first; then the callback runs the
        model with weights fake-quantized and activations observed, and activation encodings are
        computed from what was seen. As in AIMET, the callback is called ``cb(sim.model, args)``
        whenever ``forward_pass_callback_args`` is passed (even ``None``) and ``cb(sim.model)``
        when it is not. A progress bar counts the forward passes.

        If anything fails (the callback raises, a quantizer sees no data, Ctrl-C), every quantizer
        of the sim — encodings, enabled and frozen flags, analyzer statistics — is put back as it
        was before the call, so the sim never mixes new and stale encodings.

        Under ``torch.distributed`` (initialized, more than one rank in ``process_group``, default
        the world) each rank runs the callback on its own shard of the calibration data; the
        activation statistics are then reduced across the ranks (``fxquant.distributed``:
        min/max exactly, histograms on a common grid) and every rank computes the same encodings.
        A rank whose callback raised makes every rank raise ``CalibrationError`` naming it; a rank
        that does not reach a collective within ``timeout`` makes the others raise.

        Raises:
            CalibrationError: the callback raised (the original exception is chained as
                ``__cause__`` and named in the message), or the model is on the ``meta`` device.
                Errors of fxquant itself and ``KeyboardInterrupt`` propagate unchanged (after the
                rollback).

        Example:
            >>> def calibrate(model, batches):
            ...     for x in batches:
            ...         model(x)
            >>> sim.compute_encodings(calibrate, batches)
        """
        _check_model_is_real(self.model, when="compute_encodings")
        args = (self.model,) if forward_pass_callback_args is _NOT_GIVEN else (
            self.model, forward_pass_callback_args)
        calibrate(self.model, self.quantizers(), forward_pass_callback, args,
                  process_group=process_group, timeout=timeout)
        self._encodings_computed = True

    def __deepcopy__(self, memo: dict[int, Any]) -> QuantizationSimModel:
        """A fully independent sim: its own model, quantizers and statistics (the immutable
        config and settings are shared).

        Example:
            >>> twin = copy.deepcopy(sim)
            >>> twin.quantizer("conv1").enabled = False    # sim is unchanged
        """
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        shared = {"config", "settings", "_insert"}
        for key, value in vars(self).items():
            if key not in shared:
                setattr(twin, key, copy.deepcopy(value, memo))
        _meta.unshare_node_meta(twin.model)
        twin.config, twin.settings = self.config, self.settings
        if "_insert" in vars(self):
            twin._insert = dataclasses.replace(self._insert, graph_module=twin.model)
        return twin

    # -- persistence and export ----------------------------------------------------------------
    def quantizer_args(self) -> QuantizerArgs:
        """The ``quantizer_args`` block of this sim's encodings files."""
        params = [r.quantizer.encoding for r in self.quantizers()
                  if r.kind == "param" and isinstance(r.quantizer.encoding, QuantEncoding)]
        s = self.settings
        return QuantizerArgs(
            quant_scheme=s.quant_scheme.name, param_bitwidth=int(s.default_param_bw),
            activation_bitwidth=int(s.default_output_bw), dtype=s.default_data_type.name,
            is_symmetric=bool(params) and all(e.symmetric for e in params),
            per_channel_quantization=any(e.axis is not None for e in params))

    def save_encodings(self, path: str | os.PathLike[str], version: str = "1.0.0") -> None:
        """Writes the encodings of every enabled quantizer as an AIMET encodings file.

        Keys are the tensor names of :meth:`quantizers` (the same as the exported ONNX model's).

        Example:
            >>> sim.save_encodings("resnet18.encodings")
        """
        bias = {name: bq.scale() for name, bq in self.bias_quantizers().items()
                if bq.scale() is not None}
        write_encodings(path, self.quantizers(), version=version,
                        quantizer_args=self.quantizer_args(), bias=bias)

    def load_encodings(self, path: str | os.PathLike[str] | dict[str, Any], *,
                       strict: bool = True, freeze: bool = False) -> list[str]:
        """Sets encodings from an AIMET encodings file (1.0.0, 0.6.1 or 2.0.0), e.g. one saved by
        :meth:`save_encodings` or computed elsewhere.

        Args:
            path: the file, or its parsed dict.
            strict: every entry must name a quantizer of this sim (int32 bias entries excepted).
            freeze: freeze the loaded encodings so later ``compute_encodings`` keeps them.

        Returns:
            The names of the quantizers that got an encoding.

        Quantizers without an entry are left as they are (``load_encodings_to_sim`` disables
        them). Everything is validated before anything is installed.

        Raises:
            EncodingsFileError: (a ``ConfigError``) the file is malformed or an encoding does not
                fit its quantizer (the message names the JSON path), or, with ``strict``, an
                entry names no quantizer of this sim (the message lists them).

        Example:
            >>> sim.load_encodings("resnet18.encodings")
        """
        return install_encodings(self, path, strict=strict, partial=True, freeze=freeze)

    def set_and_freeze_param_encodings(self, encoding_path: str | os.PathLike[str]) -> list[str]:
        """Sets the parameter encodings of a file (e.g. the one ``Adaround.apply_adaround``
        writes) and freezes them, so that ``compute_encodings`` keeps them (AIMET's method).

        The file is read and validated as by :meth:`load_encodings` (versions 0.6.1, 1.0.0,
        2.0.0); as in AIMET, every entry must name a quantizer of this sim, quantizers without an
        entry are left as they are, and activation entries are ignored (the activation
        quantizers are left exactly as they were).

        Returns:
            The names of the parameter quantizers that got a frozen encoding.

        Raises:
            EncodingsFileError: (a ``ConfigError``) the file is unreadable or malformed, an
                encoding does not fit its quantizer, or an entry names no quantizer of this sim;
                nothing was installed.

        Example:
            >>> sim = QuantizationSimModel(ada_model, dummy_input, default_param_bw=4)
            >>> sim.set_and_freeze_param_encodings("out/adaround.encodings")[:1]
            ['conv1.weight']
            >>> sim.compute_encodings(calibrate)     # the weights' encodings stay
        """
        refs = self.quantizers()
        activations = [(r.quantizer, r.quantizer.state_snapshot()) for r in refs
                       if r.kind != "param"]
        computed = self._encodings_computed
        loaded = install_encodings(self, encoding_path, strict=True, partial=True, freeze=True)
        for quantizer, snapshot in activations:
            quantizer.restore_snapshot(snapshot)
        self._encodings_computed = computed
        params = {r.name for r in refs if r.kind == "param"}
        return [name for name in loaded if name in params]

    def export(self, path: str, filename_prefix: str, dummy_input: Any,
               onnx_export_args: OnnxExportApiArgs | dict[str, Any] | None = None,
               encoding_version: str = "1.0.0") -> dict[str, str]:
        """Writes ``<prefix>.onnx``, ``<prefix>.encodings``, ``<prefix>_qdq.onnx`` and
        ``<prefix>.pth`` to ``path``; see :func:`fxquant.export.export_sim`.

        ``onnx_export_args`` is a dict of ``torch.onnx.export`` keyword arguments or, as in
        AIMET, an :class:`~fxquant.core.onnx_args.OnnxExportApiArgs`.

        Example:
            >>> sim.export("out", "resnet18", dummy, OnnxExportApiArgs(opset_version=21))
        """
        return export_sim(self, path, filename_prefix, dummy_input,
                          onnx_export_args=as_export_kwargs(onnx_export_args),
                          encoding_version=encoding_version)

    def __repr__(self) -> str:
        refs = self.quantizers()
        enabled = sum(1 for r in refs if r.quantizer.enabled)
        return (f"QuantizationSimModel({self.settings.quant_scheme.name}, "
                f"W{self.settings.default_param_bw}A{self.settings.default_output_bw}, "
                f"{len(refs)} quantizers ({enabled} enabled))")


class _ShapeProp(ShapeProp):
    """ShapeProp that remembers the node it is running, to name it in errors."""

    current: torch.fx.Node | None = None

    def run_node(self, n: torch.fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _check_model_is_real(model: nn.Module, when: str = "QuantizationSimModel") -> None:
    """Refuse models that FX cannot trace (TorchScript) or that hold no data (``meta``)."""
    if when == "QuantizationSimModel":
        for path, module in model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                where = f"submodule {path!r}" if path else "the model"
                raise TraceError(
                    f"{where} is a TorchScript module ({type(module).__name__}); TorchScript "
                    "modules cannot be traced by FX: pass the original nn.Module (before "
                    "torch.jit.script / torch.jit.trace) to QuantizationSimModel",
                    module_path=path, module_class=type(module).__qualname__)
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_meta:
                error = ConfigError if when == "QuantizationSimModel" else CalibrationError
                raise error(
                    f"{when}: {kind} {name!r} is on the 'meta' device (shape only, no values), so "
                    "the model cannot be calibrated: move the model to cpu/cuda with real weights "
                    "first, e.g. model.to_empty(device='cpu') followed by "
                    "model.load_state_dict(state_dict)")


def _describe(args: Sequence[Any]) -> str:
    parts = []
    for a in args:
        parts.append(f"Tensor{tuple(a.shape)}" if isinstance(a, torch.Tensor) else type(a).__name__)
    return "(" + ", ".join(parts) + ")"
