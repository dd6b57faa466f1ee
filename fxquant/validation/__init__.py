"""The model validator: what in a model will not quantize (or export) well, and how to fix it.

:func:`validate` returns a :class:`ValidationReport` of :class:`Finding` records (check, module
path, node, source line, severity, one-line fix); :meth:`ModelValidator.validate_model` is AIMET's
call shape (True when there is no error finding). ``docs/model_guidelines.md`` explains each rule.

Example:
    >>> report = fxquant.validate(model, torch.randn(1, 3, 224, 224))
    >>> print(report.table())
    >>> fxquant.ModelValidator.validate_model(model, torch.randn(1, 3, 224, 224))
    True
"""
from __future__ import annotations

from fxquant.validation.context import ActivationStats, ValidationContext
from fxquant.validation.report import (ERROR, FIXED, SEVERITIES, WARNING, Finding,
                                       ValidationReport)
from fxquant.validation.validator import (BUILTIN_CHECKS, ModelValidator, graph_report,
                                          validate)

__all__ = ["ActivationStats", "BUILTIN_CHECKS", "ERROR", "FIXED", "Finding", "ModelValidator",
           "SEVERITIES", "ValidationContext", "ValidationReport", "WARNING", "graph_report",
           "validate"]
