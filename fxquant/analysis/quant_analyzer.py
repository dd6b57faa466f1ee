"""QuantAnalyzer: which layers hurt under quantization, and what to do about it.

AIMET's API, call shapes and files (``SPEC.md`` §2), on one calibrated sim: every sweep
(weight-only, activation-only, each layer on, each layer off, the 16-bit what-ifs) flips
quantizers of that one sim; nothing is rebuilt or recalibrated. The caller's model is never
modified (the sim is built on a private, eval-mode copy). Results are written all at once:
``analyze`` computes everything, then moves the files into ``results_dir`` together, so a
failure leaves the previous results as they were.

Differences from AIMET, on purpose: the caller's model is not folded in place; HTML pages are
self-contained matplotlib images, not bokeh; statistics histograms are one page per quantizer
with every channel on it (AIMET writes one page per channel); per-layer MSE is the plain mean
squared error over all elements (AIMET divides a sum of per-batch means by the sample count);
``analyze`` also writes ``index.html``, ``summary.json`` and ``suggested_config.json`` and
returns an :class:`~fxquant.analysis.results.AnalysisResults`.

Example:
    >>> analyzer = fxquant.QuantAnalyzer(prepare_model(model), dummy_input,
    ...                                  CallbackFunc(calibrate, None),
    ...                                  CallbackFunc(evaluate, None))
    >>> analyzer.enable_per_layer_mse_loss(unlabeled_batches, num_batches=4)
    >>> results = analyzer.analyze(quant_scheme=QuantScheme.post_training_tf_enhanced,
    ...                            results_dir="./quant_analyzer_results/")
    >>> print(results.verdict())
"""
from __future__ import annotations

import datetime
import difflib
import logging
import math
import numbers
import time
from typing import Any, Callable, Collection, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from fxquant.analysis import output
from fxquant.analysis.errors import AnalysisError
from fxquant.analysis.index_page import SUGGESTED_CONFIG, index_html
from fxquant.analysis.mse import mse_of, per_layer_sums
from fxquant.analysis.quantizer_groups import (LayerQuantizers, bitwidths, disabled, enabled_refs,
                                               layer_groups, only_enabled)
from fxquant.analysis.results import (VARIANTS, AnalysisResults, Suggestion, choose_best,
                                      rank_culprits)
from fxquant.core.metrics import PairSums
from fxquant.distributed import DEFAULT_TIMEOUT, agree_on_failure, is_distributed
from fxquant.errors import ConfigError, FxQuantError
from fxquant.model_resolution import FLOAT, resolve_model
from fxquant.quantsim.quant_scheme import QuantScheme
from fxquant.quantsim.quantsim import QuantizationSimModel, QuantizerRef

__all__ = ["QuantAnalyzer"]

logger = logging.getLogger(__name__)


class QuantAnalyzer:
    """Per-layer sensitivity analysis of a model's quantization (AIMET's ``QuantAnalyzer``).

    Args:
        model: the FP32 model (an ``nn.Module`` or a prepared GraphModule); never modified.
        dummy_input: an example input (a tensor or a tuple of the forward's arguments).
        forward_pass_callback: calibration, ``CallbackFunc(func, args)`` (called
            ``func(model, args)``) or a callable called ``cb(model)``.
        eval_callback: evaluation returning a number, higher is better; a ``CallbackFunc`` or a
            callable, as above. It runs in eval mode under ``torch.no_grad()``.
        modules_to_ignore: modules (of ``model``) or their names, left unquantized and out of
            every report (a module with sub-layers ignores all of them).
        process_group: under ``torch.distributed`` (more than one rank), the per-layer sweeps and
            the 16-bit what-ifs are shared among the ranks of this group (default: the world):
            each evaluates its share, every rank gets all scores, and rank 0 alone writes the
            files. Every rank must run the same analysis with the same evaluation data;
            calibration statistics are reduced across the ranks (``compute_encodings``).
        timeout: how long a rank waits for the others in each exchange.

    Raises:
        ConfigError: a callback is not callable.

    Example:
        >>> analyzer = QuantAnalyzer(model, torch.randn(1, 3, 224, 224), calibrate, evaluate)
        >>> results = analyzer.analyze(quant_scheme="tf", results_dir="analysis")
        >>> results.best.describe()
        'layer4.1.conv2 at 16-bit activations'
    """

    def __init__(self, model: nn.Module, dummy_input: Any,
                 forward_pass_callback: Callable[..., Any], eval_callback: Callable[..., Any],
                 modules_to_ignore: Sequence[nn.Module | str] | None = None, *,
                 process_group: Any = None,
                 timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"QuantAnalyzer: model must be a torch.nn.Module, got "
                            f"{type(model).__qualname__}")
        for label, cb in (("forward_pass_callback", forward_pass_callback),
                          ("eval_callback", eval_callback)):
            if not callable(cb):
                raise ConfigError(f"QuantAnalyzer: {label} must be callable (a function or "
                                  f"fxquant.CallbackFunc(func, args)), got {type(cb).__qualname__}")
        self._model = model
        self._dummy_input = dummy_input
        self._forward_pass_callback = forward_pass_callback
        self._eval_callback = eval_callback
        self._modules_to_ignore = list(modules_to_ignore or [])
        self._unlabeled_dataset_iterable: Iterable[Any] | None = None
        self._num_batches: int | None = None
        self._callback_seconds = 0.0
        self._evaluations = 0
        self._ignored: set[str] = set()
        self.num_suggestions = 3
        is_distributed(process_group)            # validates it (ConfigError)
        self._process_group = process_group
        self._timeout = timeout

    # -- configuration -------------------------------------------------------------------------
    def enable_per_layer_mse_loss(self, unlabeled_dataset_iterable: Collection[Any] | Iterable[Any],
                                  num_batches: int) -> None:
        """Turns on the per-layer MSE analysis over ``num_batches`` batches of model inputs.

        Raises:
            ValueError: ``num_batches`` is not a positive integer, or the iterable has a length
                below it.

        Example:
            >>> analyzer.enable_per_layer_mse_loss(unlabeled_loader, num_batches=4)
        """
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"enable_per_layer_mse_loss: num_batches must be a positive integer, "
                             f"got {num_batches!r}")
        length = len(unlabeled_dataset_iterable) if hasattr(
            unlabeled_dataset_iterable, "__len__") else None
        if length is not None and length < num_batches:
            raise ValueError(f"enable_per_layer_mse_loss: can not fetch {num_batches} batches "
                             f"from a dataset of {length} batch(es); pass num_batches <= {length}")
        self._unlabeled_dataset_iterable = unlabeled_dataset_iterable
        self._num_batches = num_batches

    # -- the sim -------------------------------------------------------------------------------
    def create_quantsim_and_encodings(self, quant_scheme: QuantScheme | str,
                                      default_param_bw: int, default_output_bw: int,
                                      config_file: Any = None) -> QuantizationSimModel:
        """Builds the sim on a private eval-mode copy of the model (BNs folded), leaves the
        ignored layers unquantized and calibrates it with ``forward_pass_callback``.

        Raises:
            ConfigError: bad scheme, bit widths or config; ``modules_to_ignore`` names a module
                that is not in the model (with a did-you-mean).
            CalibrationError: the forward pass callback raised.

        Example:
            >>> sim = analyzer.create_quantsim_and_encodings("tf_enhanced", 8, 8)
        """
        resolved = resolve_model(self._model, copy=True)
        if resolved.kind != FLOAT:
            raise ConfigError(f"QuantAnalyzer: model must be the float model, got a "
                              f"{resolved.kind} model ({resolved.description})")
        private = resolved.gm.eval()
        sim = QuantizationSimModel(private, self._dummy_input, quant_scheme=quant_scheme,
                                   default_output_bw=default_output_bw,
                                   default_param_bw=default_param_bw, config_file=config_file,
                                   in_place=True)
        self._ignored = self._resolve_ignored(sim)
        groups = layer_groups(sim)
        for layer in self._ignored:
            for ref in groups.get(layer, LayerQuantizers(layer, "", (), {})).quantizers:
                ref.quantizer.enabled = False
        sim.compute_encodings(self._timed(self._forward_pass_callback),
                              process_group=self._process_group, timeout=self._timeout)
        return sim

    _create_quantsim_and_encodings = create_quantsim_and_encodings  # AIMET's (private) name

    def _resolve_ignored(self, sim: QuantizationSimModel) -> set[str]:
        names_of = {id(m): n for n, m in self._model.named_modules()}
        layers = list(layer_groups(sim))
        all_layers = [n for n, _ in sim.model.named_modules() if n]
        out: set[str] = set()
        for item in self._modules_to_ignore:
            if isinstance(item, str):
                name, shown = item, repr(item)
            elif isinstance(item, nn.Module):
                if id(item) not in names_of:
                    raise ConfigError(
                        f"QuantAnalyzer: modules_to_ignore holds a {type(item).__name__} that is "
                        "not a submodule of the model; pass modules of the model given to "
                        "QuantAnalyzer (or their names)")
                name, shown = names_of[id(item)], f"{type(item).__name__} {names_of[id(item)]!r}"
            else:
                raise ConfigError(f"QuantAnalyzer: modules_to_ignore must hold modules or module "
                                  f"names, got {type(item).__qualname__}")
            matched = [n for n in layers if n == name or n.startswith(name + ".")]
            if not matched and name not in all_layers:
                close = difflib.get_close_matches(name, layers, n=3)
                more = " ..." if len(layers) > 8 else ""
                hint = (f"; did you mean {', '.join(map(repr, close))}?" if close
                        else f"; layers: {', '.join(layers[:8])}{more}")
                raise ConfigError(f"QuantAnalyzer: modules_to_ignore: {shown} is not a layer of "
                                  f"the model{hint}")
            out.update(matched)
        return out

    # -- running the user's code ---------------------------------------------------------------
    def _timed(self, cb: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return cb(*args)
            finally:
                self._callback_seconds += time.perf_counter() - start
        run.__qualname__ = getattr(cb, "__qualname__", type(cb).__qualname__)
        return run

    def _evaluate(self, model: nn.Module, analysis: str, what: str) -> float:
        model.eval()
        try:
            with torch.no_grad():
                score = self._timed(self._eval_callback)(model)
        except FxQuantError:
            raise
        except Exception as exc:
            raise AnalysisError(
                f"{analysis}: eval_callback raised while evaluating {what}: "
                f"{type(exc).__name__}: {exc}. Nothing was written for this analysis") from exc
        self._evaluations += 1
        if isinstance(score, torch.Tensor) and score.numel() == 1:
            score = score.item()
        elif isinstance(score, np.ndarray) and score.size == 1:
            score = score.item()
        if isinstance(score, bool) or not isinstance(score, numbers.Real):
            raise AnalysisError(
                f"{analysis}: eval_callback must return a number (higher is better), it returned "
                f"{type(score).__qualname__} {str(score)[:60]!r} while evaluating {what}")
        if math.isnan(float(score)):
            raise AnalysisError(f"{analysis}: eval_callback returned NaN while evaluating {what}; "
                                "return a finite score (e.g. accuracy)")
        logger.debug("%s: %s -> %s", analysis, what, score)
        return float(score)

    # -- analyses ------------------------------------------------------------------------------
    def check_model_sensitivity_to_quantization(self, sim: QuantizationSimModel
                                                ) -> tuple[float, float, float]:
        """Scores of the FP32 model, weights only quantized and activations only quantized.

        Returns:
            ``(fp32, weight_quantized, activation_quantized)``.

        Raises:
            AnalysisError: the eval callback raised or returned something else than a number.

        Example:
            >>> fp32, w8, a8 = analyzer.check_model_sensitivity_to_quantization(sim)
        """
        scores = self._sensitivity(sim)
        return scores[0], scores[1], scores[2]

    def _sensitivity(self, sim: QuantizationSimModel) -> tuple[float, float, float, float]:
        name = "check_model_sensitivity_to_quantization"
        refs = enabled_refs(sim)
        params = [r for r in refs if r.kind == "param"]
        acts = [r for r in refs if r.kind != "param"]
        with disabled(refs):
            fp32 = self._evaluate(sim.model, name, "the FP32 model (every quantizer off)")
        with disabled(acts):
            w = self._evaluate(sim.model, name, "the model with only weights quantized")
        with disabled(params):
            a = self._evaluate(sim.model, name, "the model with only activations quantized")
        both = self._evaluate(sim.model, name, "the fully quantized model")
        logger.info("FP32 %.4g, W%dA32 %.4g, W32A%d %.4g, both %.4g", fp32,
                    sim.settings.default_param_bw, w, sim.settings.default_output_bw, a, both)
        return fp32, w, a, both

    def _groups(self, sim: QuantizationSimModel) -> dict[str, LayerQuantizers]:
        return layer_groups(sim, ignore=self._ignored)

    def _per_layer(self, sim: QuantizationSimModel, enabling: bool) -> dict[str, float]:
        name = ("perform_per_layer_analysis_by_enabling_quant_wrappers" if enabling
                else "perform_per_layer_analysis_by_disabling_quant_wrappers")
        groups = self._groups(sim)
        pool = enabled_refs(sim)

        def score(layer: str) -> float:
            group = groups[layer]
            block = only_enabled(sim, group.quantizers, pool) if enabling else disabled(
                group.quantizers)
            with block:
                return self._evaluate(
                    sim.model, name, f"layer {layer!r} ({'only it' if enabling else 'all but it'} "
                                     "quantized)")

        return self._sharded(list(groups), score, name, "layers " + ("on" if enabling else "off"),
                             "layer")

    def _sharded(self, keys: list[Any], evaluate: Callable[[Any], float], analysis: str,
                 desc: str, unit: str) -> dict[Any, float]:
        """``{key: evaluate(key)}`` in the order of ``keys``; under ``torch.distributed`` each
        rank evaluates every world-th key and the scores are exchanged (a rank whose evaluation
        raised makes every rank raise, naming it)."""
        if not is_distributed(self._process_group):
            return {key: evaluate(key) for key in tqdm(keys, desc=desc, unit=unit, leave=False,
                                                        disable=None)}
        group = self._process_group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        mine: dict[Any, float] = {}
        error: Exception | None = None
        try:
            for key in tqdm(keys[rank::world], desc=f"{desc} (rank {rank})", unit=unit,
                            leave=False, disable=None):
                mine[key] = evaluate(key)
        except Exception as exc:            # told to the other ranks first, then raised
            error = exc
        failing = agree_on_failure(error is not None, group, self._timeout)
        if error is not None:
            raise error
        if failing:
            raise AnalysisError(f"{analysis}: rank(s) {', '.join(map(str, failing))} failed "
                                f"while evaluating their share (see their errors); nothing was "
                                f"written")
        shares: list[dict[Any, float] | None] = [None] * world
        dist.all_gather_object(shares, mine, group=group)
        scores = {key: value for share in shares for key, value in (share or {}).items()}
        return {key: scores[key] for key in keys}

    def _writes(self) -> bool:
        """Whether this process writes result files: always, except on ranks other than 0
        of a distributed analysis."""
        return not is_distributed(self._process_group) or dist.get_rank(self._process_group) == 0

    def perform_per_layer_analysis_by_enabling_quant_wrappers(
            self, sim: QuantizationSimModel, results_dir: str) -> dict[str, float]:
        """Per layer, the score with only that layer's quantizers on; writes
        ``per_layer_quant_enabled.{json,html}``.

        Example:
            >>> analyzer.perform_per_layer_analysis_by_enabling_quant_wrappers(sim, "results")
            {'conv1': 0.95, ...}
        """
        scores = self._per_layer(sim, enabling=True)
        if self._writes():
            output.write(results_dir, output.sensitivity_files("per_layer_quant_enabled", scores))
        return scores

    def perform_per_layer_analysis_by_disabling_quant_wrappers(
            self, sim: QuantizationSimModel, results_dir: str) -> dict[str, float]:
        """Per layer, the score with every quantizer on but that layer's; writes
        ``per_layer_quant_disabled.{json,html}``.

        Example:
            >>> analyzer.perform_per_layer_analysis_by_disabling_quant_wrappers(sim, "results")
            {'conv1': 0.42, ...}
        """
        scores = self._per_layer(sim, enabling=False)
        if self._writes():
            output.write(results_dir, output.sensitivity_files("per_layer_quant_disabled", scores))
        return scores

    def export_per_layer_encoding_min_max_range(self, sim: QuantizationSimModel,
                                                results_dir: str) -> tuple[dict, dict]:
        """Writes ``min_max_ranges/`` (``weights.json``, ``activations.json`` and their pages).

        Returns:
            ``(weights, activations)`` as in the JSON files.

        Example:
            >>> weights, activations = analyzer.export_per_layer_encoding_min_max_range(sim, "r")
            >>> activations["conv1_output_0"]
            [0.0, 5.73]
        """
        weights, activations = output.min_max_ranges(self._groups(sim))
        if self._writes():
            output.write(results_dir, output.ranges_files(weights, activations))
        return weights, activations

    def export_per_layer_stats_histogram(self, sim: QuantizationSimModel, results_dir: str) -> None:
        """Writes ``activations_pdf/`` and ``weights_pdf/``: the calibration statistics of every
        quantizer that kept a histogram (TF-enhanced, percentile and MSE schemes), with its
        encoding's range, one page per quantizer.

        Example:
            >>> analyzer.export_per_layer_stats_histogram(sim, "results")
        """
        if self._writes():
            output.write(results_dir, output.histogram_files(self._groups(sim)))

    def export_per_layer_mse_loss(self, sim: QuantizationSimModel,
                                  results_dir: str) -> dict[str, float]:
        """Writes ``per_layer_mse_loss.{json,html}``: per layer, the MSE between its FP32 and
        quantized outputs over the data given to :meth:`enable_per_layer_mse_loss`.

        Raises:
            ValueError: :meth:`enable_per_layer_mse_loss` was not called.

        Example:
            >>> analyzer.export_per_layer_mse_loss(sim, "results")["conv1"]
            2.4e-05
        """
        sums = self._mse(sim)
        mse = {layer: mse_of(s) for layer, s in sums.items()}
        if self._writes():
            sqnr = {k: s.sqnr_db for k, s in sums.items()}
            output.write(results_dir, output.mse_files(mse, sqnr))
        return mse

    def _mse(self, sim: QuantizationSimModel) -> dict[str, PairSums]:
        if self._unlabeled_dataset_iterable is None or self._num_batches is None:
            raise ValueError("per-layer MSE needs data: call enable_per_layer_mse_loss("
                             "unlabeled_dataset_iterable, num_batches) first")
        sums = per_layer_sums(sim, self._groups(sim), self._unlabeled_dataset_iterable,
                              self._num_batches)
        bad = [layer for layer, s in sums.items() if not s.finite]
        if bad:
            logger.warning("per-layer MSE: NaN or Inf outputs at %s (FP32 or quantized)",
                           ", ".join(bad[:5]))
        return sums

    def _suggestions(self, sim: QuantizationSimModel, culprits: Sequence[str]) -> list[Suggestion]:
        groups = self._groups(sim)
        name = "suggestions"
        out: list[Suggestion] = []
        worst = [groups[c] for c in culprits if c in groups]
        sets = [[g] for g in worst] + ([worst] if len(worst) > 1 else [])
        tasks = []
        for members in sets:
            for variant, abw, pbw in VARIANTS:
                changes: list[tuple[QuantizerRef, int]] = []
                for g in members:
                    if abw is not None:
                        changes += [(r, abw) for r in g.activations if _int_quantizer(r)]
                    if pbw is not None:
                        changes += [(r, pbw) for r in g.params if _int_quantizer(r)]
                wanted = (abw is None or any(g.activations for g in members)) and (
                    pbw is None or any(g.params for g in members))
                if changes and wanted:
                    tasks.append((tuple(g.layer for g in members), variant, abw, pbw, changes))

        def score(index: int) -> float:
            layers, variant, _, _, changes = tasks[index]
            with bitwidths(changes):
                return self._evaluate(sim.model, name, f"{', '.join(layers)} at {variant}")

        scores = self._sharded(list(range(len(tasks))), score, name, "16-bit what-ifs", "set")
        for index, (layers, variant, abw, pbw, changes) in enumerate(tasks):
            out.append(Suggestion(layers, variant, abw, pbw, scores[index],
                                  len({id(r.quantizer) for r, _ in changes})))
        return out

    # -- everything ------------------------------------------------------------------------------
    def analyze(self, quant_scheme: QuantScheme | str = QuantScheme.post_training_tf_enhanced,
                default_param_bw: int = 8, default_output_bw: int = 8, config_file: Any = None,
                results_dir: str = "./tmp/", *, overwrite: bool = True,
                num_suggestions: int | None = None) -> AnalysisResults:
        """Runs every analysis on one calibrated sim and writes all files at once.

        Files in ``results_dir`` (AIMET's, plus the last three): ``per_layer_quant_enabled`` /
        ``per_layer_quant_disabled`` ``.json``/``.html``; ``min_max_ranges/``;
        ``activations_pdf/`` and ``weights_pdf/`` (histogram schemes); ``per_layer_mse_loss``
        ``.json``/``.html`` (when enabled); ``index.html`` (the summary and what to do),
        ``summary.json`` and ``suggested_config.json`` (when a 16-bit change helps).

        Args:
            quant_scheme, default_param_bw, default_output_bw, config_file: the sim's settings,
                as ``QuantizationSimModel`` takes them.
            results_dir: the folder (created when missing; other files in it are kept).
            overwrite: replace the files of an earlier analysis there (AIMET's behaviour, the
                default; the previous set survives any failure). False: raise instead.
            num_suggestions: how many of the worst layers get 16-bit what-ifs (default 3).

        Returns:
            The :class:`~fxquant.analysis.results.AnalysisResults`.

        Raises:
            AnalysisError: the eval callback raised or returned a non-number (the analysis is
                named; nothing is written).
            FileWriteError: ``results_dir`` cannot be written (checked before anything runs).
            OutputExistsError: an earlier analysis is there and ``overwrite`` is False.
            ConfigError, CalibrationError: as :meth:`create_quantsim_and_encodings`.

        Example:
            >>> results = analyzer.analyze(quant_scheme="tf_enhanced", results_dir="analysis")
        """
        k = self.num_suggestions if num_suggestions is None else num_suggestions
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"analyze: num_suggestions must be a non-negative integer, got {k!r}")
        if self._writes():
            output.check_results_dir(results_dir, overwrite=overwrite)
        start = time.perf_counter()
        self._callback_seconds, self._evaluations = 0.0, 0
        sim = self.create_quantsim_and_encodings(quant_scheme, default_param_bw,
                                                 default_output_bw, config_file)
        fp32, w, a, both = self._sensitivity(sim)
        enabled = self._per_layer(sim, enabling=True)
        disabled_scores = self._per_layer(sim, enabling=False)
        groups = self._groups(sim)
        weights, activations = output.min_max_ranges(groups)
        sums = self._mse(sim) if self._unlabeled_dataset_iterable is not None else None
        mse = None if sums is None else {layer: mse_of(s) for layer, s in sums.items()}
        sqnr = None if sums is None else {layer: s.sqnr_db for layer, s in sums.items()}
        culprits = rank_culprits(both, enabled, disabled_scores)
        suggestions = self._suggestions(sim, culprits[:k])
        s = sim.settings
        results = AnalysisResults(
            fp32=fp32, weight_quantized=w, activation_quantized=a, quantized=both,
            enabled=enabled, disabled=disabled_scores, weight_ranges=weights,
            activation_ranges=activations, mse=mse, sqnr=sqnr, culprits=culprits,
            suggestions=suggestions,
            best=choose_best(suggestions, both, fp32),
            settings={"quant_scheme": s.quant_scheme.name,
                      "default_param_bw": s.default_param_bw,
                      "default_output_bw": s.default_output_bw,
                      "config": sim.config.source or "default",
                      "per_channel_weights": sim.quantizer_args().per_channel_quantization,
                      "ignored_layers": sorted(self._ignored)})
        results.evaluations = self._evaluations
        total = time.perf_counter() - start
        results.timings = {"total": total, "callbacks": self._callback_seconds,
                           "other": total - self._callback_seconds}
        if self._writes():              # the pages are drawn by the one writer only
            self._write_all(results_dir, results, sim, groups, k)
        results.timings["total"] = time.perf_counter() - start
        results.timings["other"] = results.timings["total"] - self._callback_seconds
        logger.info("QuantAnalyzer: %s; results in %s", results.verdict(), results_dir)
        return results

    def _write_all(self, results_dir: str, results: AnalysisResults, sim: QuantizationSimModel,
                   groups: dict[str, LayerQuantizers], k: int) -> None:
        """Every file of ``analyze``, moved into ``results_dir`` at once."""
        fp32, both = results.fp32, results.quantized
        weights, activations = results.weight_ranges, results.activation_ranges
        files = {}
        files.update(output.sensitivity_files("per_layer_quant_enabled", results.enabled,
                                              fp32=fp32, quantized=both))
        files.update(output.sensitivity_files("per_layer_quant_disabled", results.disabled,
                                              fp32=fp32, quantized=both))
        files.update(output.ranges_files(weights, activations))
        files.update(output.histogram_files(groups))
        if results.mse is not None:
            files.update(output.mse_files(results.mse, results.sqnr))
        if results.best is not None:
            config = sim.config.to_dict()
            config["layers"] = {**config.get("layers", {}), **results.best.config_layers()}
            files[SUGGESTED_CONFIG] = output.json_bytes(config)
        details = [output.culprit_detail(groups[c], weights, activations, files)
                   for c in results.culprits[:k] if c in groups]
        files["summary.json"] = output.json_bytes(results.to_dict())
        files["index.html"] = index_html(results, sorted(files), details, k).encode("utf-8")
        output.write(results_dir, files, replace_all=True)


def _int_quantizer(ref: QuantizerRef) -> bool:
    return hasattr(ref.quantizer, "bitwidth") and getattr(
        ref.quantizer, "encoding_analyzer", None) is not None
