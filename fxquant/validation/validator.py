"""``fxquant.validate`` and AIMET's ``ModelValidator.validate_model``.

Checks, in report order (each a function ``check(ctx) -> Iterable[Finding]``):

* graph-only (:mod:`~fxquant.validation.graph_checks`): ``untraceable``, ``training_mode``,
  ``reused_module``, ``in_place``, ``shared_parameter``;
* on the prepared graph, one run of it and a real export
  (:mod:`~fxquant.validation.prepared_checks`): ``functional_op``, ``batch_norm_fold``,
  ``data_dependent_shape``, ``activation_range``, ``onnx_export``;
* then the checks registered with :meth:`ModelValidator.add_check`.

A check that raises becomes an error finding naming it (the validation itself never raises on a
model; it raises only on bad arguments).

Example:
    >>> report = fxquant.validate(torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64))
    >>> report.ok
    True
    >>> fxquant.ModelValidator.validate_model(model, torch.randn(1, 3, 64, 64))
    True
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch.fx
from torch import nn

from fxquant._fx_utils import as_args
from fxquant.validation.context import ValidationContext, build_context, graph_context
from fxquant.validation.graph_checks import GRAPH_CHECKS
from fxquant.validation.prepared_checks import PREPARED_CHECKS
from fxquant.validation.report import ERROR, Finding, ValidationReport

__all__ = ["ModelValidator", "validate", "graph_report", "Check", "BUILTIN_CHECKS"]

logger = logging.getLogger(__name__)

Check = Callable[[ValidationContext], Iterable[Finding]]

#: Names of the built-in checks, in report order.
BUILTIN_CHECKS = tuple(c.__name__ for c in (*GRAPH_CHECKS, *PREPARED_CHECKS))


def _check_name(fn: Check) -> str:
    return getattr(fn, "check_name", None) or getattr(fn, "__name__", None) or repr(fn)


def _run(checks: Sequence[Check], ctx: ValidationContext) -> list[Finding]:
    findings: list[Finding] = []
    for check in checks:
        name = _check_name(check)
        try:
            produced = list(check(ctx) or ())
            bad = [f for f in produced if not isinstance(f, Finding)]
            if bad:
                raise TypeError(f"it returned {type(bad[0]).__qualname__} items; a check must "
                                "return fxquant.validation.Finding objects")
        except Exception as exc:  # one broken check must not hide the others' findings
            logger.warning("validation check %s raised %s: %s", name, type(exc).__name__, exc)
            findings.append(Finding(
                name, ERROR, f"the check raised {type(exc).__name__}: {exc}",
                "fix the check (or remove it with ModelValidator.remove_check) and validate again"))
            continue
        findings.extend(produced)
    return findings


class ModelValidator:
    """AIMET's model validator: ``ModelValidator.validate_model(model, model_input)``.

    Checks registered with :meth:`add_check` run after the built-in ones, in every
    :func:`validate` and :meth:`validate_model` call.

    Example:
        >>> def no_sigmoid(ctx):
        ...     for name, m in ctx.model.named_modules():
        ...         if isinstance(m, nn.Sigmoid):
        ...             yield Finding("no_sigmoid", WARNING, "sigmoid", "use hardsigmoid", name)
        >>> ModelValidator.add_check(no_sigmoid)
        >>> ModelValidator.validate_model(model, torch.randn(1, 3, 32, 32))
        True
    """

    _user_checks: ClassVar[list[Check]] = []

    @classmethod
    def add_check(cls, fn: Check) -> Check:
        """Registers ``fn(ctx) -> Iterable[Finding]`` as a check of every later validation
        (usable as a decorator); ``ctx`` is a :class:`ValidationContext`.

        Raises:
            TypeError: ``fn`` is not callable.
            ValueError: a check of that name is registered already, or it is a built-in name.

        Example:
            >>> @ModelValidator.add_check
            ... def my_check(ctx):
            ...     return []
        """
        if not callable(fn):
            raise TypeError(f"ModelValidator.add_check expects a function check(ctx) -> "
                            f"Iterable[Finding], got {type(fn).__qualname__}")
        name = _check_name(fn)
        if name in BUILTIN_CHECKS or name in {_check_name(c) for c in cls._user_checks}:
            raise ValueError(f"ModelValidator.add_check: a check named {name!r} exists already; "
                             "give the function another name (or remove_check the old one first)")
        cls._user_checks.append(fn)
        return fn

    @classmethod
    def remove_check(cls, fn_or_name: Check | str) -> None:
        """Unregisters a check added with :meth:`add_check` (the function or its name).

        Raises:
            KeyError: no such check is registered (the message lists the registered ones).

        Example:
            >>> ModelValidator.remove_check("my_check")
        """
        name = fn_or_name if isinstance(fn_or_name, str) else _check_name(fn_or_name)
        for check in cls._user_checks:
            if _check_name(check) == name:
                cls._user_checks.remove(check)
                return
        raise KeyError(f"no check {name!r} was added; added checks: "
                       f"{[_check_name(c) for c in cls._user_checks]}")

    @classmethod
    def checks(cls) -> tuple[str, ...]:
        """Names of the checks a validation runs, built-in first.

        Example:
            >>> ModelValidator.checks()[:2]
            ('untraceable', 'training_mode')
        """
        return BUILTIN_CHECKS + tuple(_check_name(c) for c in cls._user_checks)

    @staticmethod
    def validate_model(model: nn.Module, model_input: Any, **kwargs: Any) -> bool:
        """Validates ``model`` on ``model_input``; False exactly when there are error findings.

        The report (:func:`validate`) is logged: the summary at info level, each error and
        warning at warning level.

        Args:
            model: the model.
            model_input: an example input (a tensor, or a tuple of the forward's arguments).
            **kwargs: passed to :func:`validate` (``skip``).

        Example:
            >>> ModelValidator.validate_model(torchvision.models.resnet18().eval(),
            ...                               torch.randn(1, 3, 64, 64))
            True
        """
        report = validate(model, model_input, **kwargs)
        logger.info("%s", report.summary())
        for finding in (*report.errors, *report.warnings):
            logger.warning("%s", finding)
        return report.ok


def validate(model: nn.Module, model_input: Any, *, skip: Iterable[str] = ()) -> ValidationReport:
    """Finds what in ``model`` will not quantize (or export) well, and how to fix it.

    Runs the built-in checks (see the module docstring) and the ones added with
    :meth:`ModelValidator.add_check` on a private copy of the model: the model is traced (in
    concrete mode with ``model_input`` when symbolic tracing fails), prepared, run once on
    ``model_input`` and exported to ONNX. The caller's model is not changed.

    Args:
        model: the model (an ``nn.Module``; a prepared GraphModule works too).
        model_input: an example input (a tensor, or a tuple of the forward's positional args).
        skip: names of checks not to run (e.g. ``("onnx_export",)`` to skip the export).

    Returns:
        The :class:`ValidationReport` (``report.table()``, ``report.to_json()``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``skip`` names an unknown check.

    Example:
        >>> report = fxquant.validate(model, torch.randn(1, 3, 224, 224))
        >>> print(report.table())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fxquant.validate expects a torch.nn.Module, got "
                        f"{type(model).__qualname__}")
    skip = frozenset(skip)
    unknown = sorted(skip - set(ModelValidator.checks()))
    if unknown:
        raise ValueError(f"validate: skip names unknown check(s) {unknown}; valid: "
                         f"{list(ModelValidator.checks())}")
    checks = [c for c in (*GRAPH_CHECKS, *PREPARED_CHECKS, *ModelValidator._user_checks)
              if _check_name(c) not in skip]
    run = bool({"activation_range", "data_dependent_shape", "onnx_export"} - skip)
    ctx = build_context(model, as_args(model_input), run=run)
    findings = _run(checks, ctx)
    if ctx.run_error is not None and run:
        findings.append(Finding("run", ERROR, f"the model does not run on the input: "
                                f"{ctx.run_error}", "pass an input the model accepts "
                                "(call model(*model_input) to check)"))
    return ValidationReport(findings, model=type(model).__name__, trace_mode=ctx.trace_mode,
                            checks=[_check_name(c) for c in checks])


def graph_report(model: nn.Module, traced: torch.fx.GraphModule) -> ValidationReport:
    """The graph-only checks on a graph that is traced already (no copy, no run, no export).

    This is what ``QuantizationSimModel`` runs on the graph it has just traced; it is cheap (one
    walk over the graph) and so misses what needs a run or an export (ONNX export, activation
    ranges, data-dependent shapes) and what needs the prepared graph (functionals, BN folding).

    Example:
        >>> graph_report(model, fxquant.trace(model)).ok
        True
    """
    ctx = graph_context(model, traced)
    return ValidationReport(_run(GRAPH_CHECKS, ctx), model=type(model).__name__,
                            trace_mode=ctx.trace_mode,
                            checks=[_check_name(c) for c in GRAPH_CHECKS])
