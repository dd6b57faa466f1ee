"""``fxquant.ns``: short name of :mod:`fxquant.numeric_suite` (as ``torch.ao.ns`` is torch's).

Example:
    >>> import fxquant.ns as ns
    >>> shadow = ns.add_shadow_loggers("float", model, "int8", sim)
"""
from __future__ import annotations

from fxquant.numeric_suite import (METRICS, ComparisonReport, LayerComparison, Metric, NSResults,
                                   OutputLogger, UnmatchedLayer, add_loggers, add_shadow_loggers,
                                   compare, compute_cosine_similarity,
                                   compute_normalized_l2_error, compute_sqnr,
                                   extend_logger_results_with_comparison, extract_logger_info,
                                   extract_shadow_logger_info, extract_weights, loggers_reset,
                                   loggers_set_enabled, loggers_set_save_activations)

__all__ = [
    "ComparisonReport",
    "LayerComparison",
    "METRICS",
    "Metric",
    "NSResults",
    "OutputLogger",
    "UnmatchedLayer",
    "add_loggers",
    "add_shadow_loggers",
    "compare",
    "compute_cosine_similarity",
    "compute_normalized_l2_error",
    "compute_sqnr",
    "extend_logger_results_with_comparison",
    "extract_logger_info",
    "extract_shadow_logger_info",
    "extract_weights",
    "loggers_reset",
    "loggers_set_enabled",
    "loggers_set_save_activations",
]
