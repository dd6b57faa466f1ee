"""fxquant's numeric suite: where does a quantized model depart from its float original?

The call shapes of PyTorch's FX Numeric Suite (``torch.ao.ns._numeric_suite_fx``), for fxquant
sims and any pair of FX-traceable models that share structure (float vs sim, sim vs sim, float
vs a torch.ao-quantized or a user's own fake-quant model). Also importable as ``fxquant.ns``.

* :func:`extract_weights` — weights of matched layers;
* :func:`add_loggers` / :func:`extract_logger_info` — each layer's output in both models
  (unshadowed: includes error propagated from earlier layers);
* :func:`add_shadow_loggers` / :func:`extract_shadow_logger_info` — model B's layer fed model
  A's values beside model A's (shadowed: the layer's own error), add/mul/cat included;
* :func:`extend_logger_results_with_comparison` with :func:`compute_sqnr`,
  :func:`compute_normalized_l2_error`, :func:`compute_cosine_similarity`;
* :func:`compare` — all of it in one call, as a :class:`NumericSuiteReport` (table, JSON, plot;
  a :class:`fxquant.ComparisonReport`, like the layer-dump diff's report).

As torch's, the loggers of :func:`add_loggers` / :func:`add_shadow_loggers` keep every logged
tensor (``values``) by default; ``save_activations=False`` — and :func:`compare`, always — stream
instead (running sums, no tensors kept), so comparing over thousands of batches needs memory
proportional to the number of layers. The two models' calls are paired by index: call ``i`` of
model A is compared with call ``i`` of model B, and calls that do not pair up (different inputs,
a skipped call, a forward that stopped half-way) raise :class:`PairingError`.

Example:
    >>> import fxquant
    >>> report = fxquant.ns.compare(model, sim, batches, metrics=("sqnr",))
    >>> print(report.table(k=5))
"""
from __future__ import annotations

from fxquant.numeric_suite._matching import UnmatchedLayer
from fxquant.numeric_suite.api import (add_loggers, add_shadow_loggers, extract_logger_info,
                                       extract_shadow_logger_info, extract_weights)
from fxquant.numeric_suite.compare import compare
from fxquant.numeric_suite.errors import NoMatchingLayersError, NumericSuiteError, PairingError
from fxquant.numeric_suite.loggers import (OutputLogger, loggers_reset, loggers_set_enabled,
                                           loggers_set_save_activations)
from fxquant.numeric_suite.metrics import (METRICS, Metric, compute_cosine_similarity,
                                           compute_normalized_l2_error, compute_sqnr)
from fxquant.numeric_suite.report import NumericSuiteLayerComparison, NumericSuiteReport
from fxquant.numeric_suite.results import NSResults, extend_logger_results_with_comparison

__all__ = [
    "METRICS",
    "Metric",
    "NSResults",
    "NoMatchingLayersError",
    "NumericSuiteError",
    "NumericSuiteLayerComparison",
    "NumericSuiteReport",
    "OutputLogger",
    "PairingError",
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
