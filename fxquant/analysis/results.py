"""What an analysis found, as data: scores, per-layer sweeps, ranges, MSE and the measured
suggestions (:class:`AnalysisResults`), and how the best suggestion is chosen.

Example:
    >>> results = analyzer.analyze(...)
    >>> results.verdict()
    'activations hurt more: W8 alone keeps 0.98, A8 alone 0.1089 (FP32 0.98, both 0.1089)'
    >>> results.best.describe(), results.best.score
    ('relu1 at 16-bit activations', 0.98)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from fxquant.core.report import json_number

__all__ = ["Suggestion", "Technique", "AnalysisResults", "choose_best", "rank_culprits"]

#: Variants measured for the worst layers: (label, activation bits, parameter bits).
VARIANTS: tuple[tuple[str, int | None, int | None], ...] = (
    ("A16", 16, None), ("W16", None, 16), ("W16A16", 16, 16))


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One measured change: some layers at 16-bit activations and/or weights.

    Attributes:
        layers: the layers changed.
        variant: ``"A16"``, ``"W16"`` or ``"W16A16"``.
        activation_bw: the activation bit width applied (None: unchanged).
        param_bw: the parameter bit width applied (None: unchanged).
        score: the eval score measured with the change.
        changed: how many quantizers the change touches (its cost).
    """

    layers: tuple[str, ...]
    variant: str
    activation_bw: int | None
    param_bw: int | None
    score: float
    changed: int

    def describe(self) -> str:
        what = {"A16": "16-bit activations", "W16": "16-bit weights",
                "W16A16": "16-bit weights and activations"}[self.variant]
        return f"{', '.join(self.layers)} at {what}"

    def config_layers(self) -> dict[str, dict[str, int]]:
        """The quantsim config ``layers`` section that applies this change."""
        entry = {k: v for k, v in (("activation_bw", self.activation_bw),
                                   ("param_bw", self.param_bw)) if v is not None}
        return {layer: dict(entry) for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "variant": self.variant,
                "activation_bw": self.activation_bw, "param_bw": self.param_bw,
                "score": json_number(self.score), "quantizers_changed": self.changed}


def rank_culprits(quantized: float, enabled: Mapping[str, float],
                  disabled: Mapping[str, float]) -> list[str]:
    """Layers from worst to least bad: largest recovery when the layer alone stays in float
    (``disabled[layer] - quantized``), then lowest score when it alone is quantized."""
    def key(layer: str) -> tuple[float, float]:
        recovery = disabled.get(layer, quantized) - quantized
        return (-recovery, enabled.get(layer, math.inf))

    return sorted(dict.fromkeys([*disabled, *enabled]), key=key)


def choose_best(candidates: Sequence[Suggestion], quantized: float, fp32: float,
                tolerance: float = 0.01) -> Suggestion | None:
    """The best change: the highest score, and among the changes within ``tolerance`` of the
    quantization loss (``fp32 - quantized``) of it, the one touching fewest quantizers; None when
    no change beats the fully quantized score, or quantization lost nothing (``fp32 <=
    quantized``).

    Example:
        >>> a = Suggestion(("conv1",), "A16", 16, None, 0.95, 1)
        >>> b = Suggestion(("conv1", "fc"), "W16A16", 16, 16, 0.951, 5)
        >>> choose_best([a, b], quantized=0.4, fp32=0.97).variant
        'A16'
    """
    if not fp32 > quantized:          # quantization lost nothing measurable: nothing to fix
        return None
    better = [c for c in candidates if math.isfinite(c.score) and c.score > quantized]
    if not better:
        return None
    top = max(c.score for c in better)
    slack = tolerance * max(abs(fp32 - quantized), 0.0)
    close = [c for c in better if c.score >= top - slack]
    return min(close, key=lambda c: (c.changed, -c.score))


@dataclasses.dataclass(frozen=True)
class Technique:
    """A post-training technique worth trying, from the weight-vs-activation verdict.

    Attributes:
        name: what it is called ("AdaRound").
        call: the fxquant call that applies it.
        why: what it addresses in this analysis.
    """

    name: str
    call: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _weight_techniques(per_channel: bool, pbw: Any) -> list[Technique]:
    out = []
    if not per_channel:
        out.append(Technique(
            "Cross-layer equalization", "fxquant.equalize_model(model, dummy_input=dummy_input)",
            "per-tensor weights lose the channels whose range is small next to the largest; "
            "equalization evens the ranges of consecutive layers out, leaving the float model "
            "unchanged"))
    out += [
        Technique("AdaRound", "fxquant.Adaround.apply_adaround(model, dummy_input, "
                  f"AdaroundParameters(data_loader, num_batches), path, prefix, "
                  f"default_param_bw={pbw})",
                  "chooses each weight's rounding (up or down) to reproduce every layer's float "
                  "output instead of rounding to nearest; the largest gains at 4-8-bit weights"),
        Technique("Sequential MSE", "fxquant.apply_seq_mse(model, sim, data_loader, "
                  "SeqMseParams(num_batches))",
                  "chooses each layer's weight ranges by the error of the layer's output rather "
                  "than by the weights' min-max"),
        Technique("Bias correction", "fxquant.correct_bias(model, QuantParams(weight_bw="
                  f"{pbw}), num_quant_samples, data_loader, num_bias_correct_samples)",
                  "removes the shift of each output channel's mean that weight quantization "
                  "leaves behind")]
    return out


def _activation_techniques(scheme: Any, abw: Any) -> list[Technique]:
    out = []
    if scheme not in ("post_training_percentile", "post_training_tf_enhanced",
                      "post_training_mse"):
        out.append(Technique(
            "Outlier-clipping calibration", "QuantizationSimModel(..., quant_scheme="
            "'tf_enhanced') or quant_scheme='percentile' with sim.set_percentile_value(99.99)",
            "min-max ranges spend the grid on rare outliers; these schemes clip them"))
    out += [
        Technique("Higher activation precision on the worst layers",
                  "the suggested config above (layers at 16-bit activations)",
                  f"A{abw} costs more than the weights; the measured 16-bit changes above say "
                  "which layers need it"),
        Technique("Quantization-aware training with learned ranges",
                  "QuantizationSimModel(..., quant_scheme=QuantScheme."
                  "training_range_learning_with_tf_init), then train sim.model",
                  "trains the float weights and the activation ranges together against the "
                  "quantization noise")]
    return out


@dataclasses.dataclass
class AnalysisResults:
    """Everything one :meth:`fxquant.QuantAnalyzer.analyze` measured (also in ``summary.json``).

    Attributes:
        fp32: eval score with every quantizer off.
        weight_quantized: only parameter quantizers on (AIMET's W<bw>A32).
        activation_quantized: only activation quantizers on (W32A<bw>).
        quantized: every quantizer on.
        enabled: per layer, the score with only that layer's quantizers on.
        disabled: per layer, the score with every quantizer on but that layer's.
        weight_ranges, activation_ranges: the ``min_max_ranges`` JSON contents.
        mse: per-layer MSE, or None when not enabled.
        sqnr: per-layer SQNR (dB) of the quantized output against FP32, from the same pass as
            ``mse`` (None when not enabled).
        culprits: layers from worst to least bad (:func:`rank_culprits`).
        suggestions: every measured change (:class:`Suggestion`).
        best: the suggested change (:func:`choose_best`) or None.
        settings: scheme and bit widths of the sim.
        timings: seconds: ``total``, ``callbacks`` (inside the user's callbacks) and ``other``.
        evaluations: how many times the eval callback ran.
    """

    fp32: float
    weight_quantized: float
    activation_quantized: float
    quantized: float
    enabled: dict[str, float] = dataclasses.field(default_factory=dict)
    disabled: dict[str, float] = dataclasses.field(default_factory=dict)
    weight_ranges: dict[str, Any] = dataclasses.field(default_factory=dict)
    activation_ranges: dict[str, Any] = dataclasses.field(default_factory=dict)
    mse: dict[str, float] | None = None
    sqnr: dict[str, float] | None = None
    culprits: list[str] = dataclasses.field(default_factory=list)
    suggestions: list[Suggestion] = dataclasses.field(default_factory=list)
    best: Suggestion | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    evaluations: int = 0

    def verdict(self) -> str:
        """One line: do weights or activations hurt more?"""
        w, a = self.weight_quantized, self.activation_quantized
        pbw = self.settings.get("default_param_bw", "")
        abw = self.settings.get("default_output_bw", "")
        scores = (f"W{pbw} alone keeps {w:.4g}, A{abw} alone {a:.4g} (FP32 {self.fp32:.4g}, "
                  f"both {self.quantized:.4g})")
        slack = 0.01 * max(abs(self.fp32), 1e-12)
        if abs(w - a) <= slack:
            if self.fp32 - min(w, a) <= slack:
                return f"quantization costs little: {scores}"
            return f"weights and activations hurt about equally: {scores}"
        return f"{'weights' if w < a else 'activations'} hurt more: {scores}"

    def techniques(self) -> list[Technique]:
        """Post-training techniques to try, in order, from :meth:`verdict`: for weights,
        cross-layer equalization (per-tensor weights only), AdaRound, sequential MSE and bias
        correction; for activations, an outlier-clipping calibration scheme, 16-bit activations
        on the worst layers and QAT with learned ranges; both lists when both hurt about
        equally (the one that hurts more first); none when quantization costs little.

        Example:
            >>> [t.name for t in results.techniques()][:2]
            ['AdaRound', 'Sequential MSE']
        """
        w, a = self.weight_quantized, self.activation_quantized
        slack = 0.01 * max(abs(self.fp32), 1e-12)
        if self.fp32 - min(w, a) <= slack:
            return []
        s = self.settings
        weights = _weight_techniques(bool(s.get("per_channel_weights", True)),
                                     s.get("default_param_bw", 8))
        acts = _activation_techniques(s.get("quant_scheme"), s.get("default_output_bw", 8))
        if abs(w - a) <= slack:
            return weights + acts
        if w < a:
            return weights if self.fp32 - a <= slack else weights + acts
        return acts if self.fp32 - w <= slack else acts + weights

    def to_dict(self) -> dict[str, Any]:
        def numbers(d: Mapping[str, float] | None) -> dict[str, Any] | None:
            return None if d is None else {k: json_number(v) for k, v in d.items()}

        return {
            "settings": dict(self.settings),
            "scores": {"fp32": json_number(self.fp32),
                       "weight_quantized": json_number(self.weight_quantized),
                       "activation_quantized": json_number(self.activation_quantized),
                       "quantized": json_number(self.quantized)},
            "verdict": self.verdict(),
            "techniques": [t.to_dict() for t in self.techniques()],
            "culprits": list(self.culprits),
            "per_layer_quant_enabled": numbers(self.enabled),
            "per_layer_quant_disabled": numbers(self.disabled),
            "per_layer_mse_loss": numbers(self.mse),
            "per_layer_sqnr_db": numbers(self.sqnr),
            "suggestions": [s.to_dict() for s in self.suggestions],
            "best_suggestion": None if self.best is None else self.best.to_dict(),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "evaluations": self.evaluations,
        }
