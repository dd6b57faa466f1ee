"""QuantAnalyzer: per-layer sensitivity of a model's quantization, with AIMET's API and files, one
index page that says what to do, and a suggested quantsim config.

Modules: :mod:`~fxquant.analysis.quant_analyzer` (the API),
:mod:`~fxquant.analysis.quantizer_groups` (quantizers per layer and the switches the sweeps
flip), :mod:`~fxquant.analysis.mse` (streamed per-layer MSE and SQNR),
:mod:`~fxquant.analysis.results` (what was found, the suggestion rule),
:mod:`~fxquant.analysis.pages` / :mod:`~fxquant.analysis.index_page` (HTML) and
:mod:`~fxquant.analysis.output` (file contents and the all-at-once writer).

Example:
    >>> from fxquant.analysis import QuantAnalyzer
    >>> QuantAnalyzer(model, dummy, calibrate, evaluate).analyze(results_dir="analysis")
"""
from __future__ import annotations

from fxquant.analysis.errors import AnalysisError
from fxquant.analysis.quant_analyzer import QuantAnalyzer
from fxquant.analysis.results import AnalysisResults, Suggestion

__all__ = ["QuantAnalyzer", "AnalysisError", "AnalysisResults", "Suggestion"]
