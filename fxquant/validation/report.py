"""What the model validator found: :class:`Finding` records and the :class:`ValidationReport`.

A finding is one problem at one place: the check that found it, its severity (:data:`ERROR`,
:data:`WARNING` or :data:`FIXED`, "fixed-by-preparer"), the module path, the graph node, the
user's source line, one line saying what is wrong and one line saying how to fix it.

Example:
    >>> report = fxquant.validate(model, torch.randn(1, 3, 32, 32))
    >>> report.ok, len(report.errors)
    (True, 0)
    >>> print(report.table())
    >>> text = report.to_json()                 # or report.to_json("out/validation.json")
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Iterator, Sequence

from fxquant.core import files
from fxquant.core.report import json_ready

__all__ = ["ERROR", "WARNING", "FIXED", "SEVERITIES", "Finding", "ValidationReport"]

#: The model will not quantize (or export) correctly as it is: ``validate_model`` returns False.
ERROR = "error"
#: Quantization will work but lose accuracy or coverage here; the fix says what to change.
WARNING = "warning"
#: A problem ``fxquant.prepare_model`` (and so ``QuantizationSimModel``) fixes by itself.
FIXED = "fixed-by-preparer"
#: Every severity, most severe first.
SEVERITIES = (ERROR, WARNING, FIXED)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem the validator found.

    Attributes:
        check: name of the check that found it (e.g. ``"reused_module"``).
        severity: :data:`ERROR`, :data:`WARNING` or :data:`FIXED`.
        message: what is wrong, one line.
        fix: what to do about it, one line.
        module_path: dotted path of the module concerned ("" for the root).
        node: the graph node concerned, or None.
        source: the user's source line, ``"file:line: code"``, when known.

    Example:
        >>> Finding("training_mode", WARNING, "module '' is in training mode",
        ...         "call model.eval() before calibration").severity
        'warning'
    """

    check: str
    severity: str
    message: str
    fix: str
    module_path: str = ""
    node: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Finding({self.check!r}): severity must be one of {SEVERITIES}, "
                             f"got {self.severity!r}")
        if not self.fix:
            raise ValueError(f"Finding({self.check!r}): every finding needs a one-line fix")

    def to_dict(self) -> dict[str, Any]:
        """The finding as a JSON-ready dict."""
        return json_ready(self)

    def __str__(self) -> str:
        where = self.module_path or "<root>"
        node = f" (node {self.node})" if self.node else ""
        at = f" at {self.source}" if self.source else ""
        return f"[{self.severity}] {self.check}: {where}{node}: {self.message}{at}. Fix: {self.fix}"


class ValidationReport:
    """The findings of one validation, in check order.

    Args:
        findings: the findings.
        model: a short description of the validated model (its class name).
        trace_mode: how the model was traced for the checks: ``"symbolic"``, ``"concrete"``
            (with the input as ``example_inputs``) or ``"failed"``.
        checks: names of the checks that ran.

    Example:
        >>> report = fxquant.validate(model, x)
        >>> [f.module_path for f in report.errors]
        []
    """

    def __init__(self, findings: Sequence[Finding], *, model: str = "", trace_mode: str = "",
                 checks: Sequence[str] = ()) -> None:
        self.findings = tuple(findings)
        self.model = model
        self.trace_mode = trace_mode
        self.checks = tuple(checks)

    def __len__(self) -> int:
        return len(self.findings)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def __repr__(self) -> str:
        counts = ", ".join(f"{len(self.with_severity(s))} {s}" for s in SEVERITIES)
        return f"ValidationReport({self.model or 'model'}: {counts})"

    def with_severity(self, severity: str) -> tuple[Finding, ...]:
        """The findings of one severity.

        Example:
            >>> report.with_severity(fxquant.validation.FIXED)[:1]
        """
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        return tuple(f for f in self.findings if f.severity == severity)

    def by_check(self, check: str) -> tuple[Finding, ...]:
        """The findings of one check (``report.by_check("reused_module")``)."""
        return tuple(f for f in self.findings if f.check == check)

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The error findings (``validate_model`` is False exactly when there are some)."""
        return self.with_severity(ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """The warning findings."""
        return self.with_severity(WARNING)

    @property
    def fixed(self) -> tuple[Finding, ...]:
        """The problems the preparer fixes by itself."""
        return self.with_severity(FIXED)

    @property
    def ok(self) -> bool:
        """True when there is no error finding."""
        return not self.errors

    def summary(self) -> str:
        """One line: the model, how it was traced, and the count per severity."""
        counts = ", ".join(f"{len(self.with_severity(s))} {s}" for s in SEVERITIES)
        mode = f" (traced {self.trace_mode})" if self.trace_mode else ""
        return f"model validation of {self.model or 'the model'}{mode}: {counts}"

    def table(self, min_severity: str = FIXED) -> str:
        """The findings as a text table, most severe first, then in check order.

        Args:
            min_severity: leave out findings less severe than this (``"warning"`` hides what
                the preparer fixes).

        Example:
            >>> print(report.table("warning"))
        """
        if min_severity not in SEVERITIES:
            raise ValueError(f"min_severity must be one of {SEVERITIES}, got {min_severity!r}")
        shown = SEVERITIES[:SEVERITIES.index(min_severity) + 1]
        rows = sorted((f for f in self.findings if f.severity in shown),
                      key=lambda f: SEVERITIES.index(f.severity))
        header = ("severity", "check", "module", "node", "problem / fix")
        body = [(f.severity, f.check, f.module_path or "<root>", f.node or "-",
                 f"{f.message}" + (f" [{f.source}]" if f.source else "") + f" -> {f.fix}")
                for f in rows]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
        lines = [self.summary()]
        if body:
            lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[4])
            for row in body:
                lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict: model, trace mode, checks, counts and findings."""
        return {"model": self.model, "trace_mode": self.trace_mode, "ok": self.ok,
                "checks": list(self.checks),
                "counts": {s: len(self.with_severity(s)) for s in SEVERITIES},
                "findings": [f.to_dict() for f in self.findings]}

    def to_json(self, path: str | os.PathLike[str] | None = None, *, overwrite: bool = False,
                indent: int | None = 2) -> str | pathlib.Path:
        """The report as JSON text, or written to ``path`` (atomically) when given.

        Args:
            path: where to write, or None to return the text.
            overwrite: replace an existing file (otherwise an existing file is an
                :class:`~fxquant.errors.OutputExistsError`).
            indent: JSON indentation.

        Returns:
            The JSON text, or the path written.

        Example:
            >>> json.loads(report.to_json())["counts"]["error"]
            0
        """
        if path is None:
            return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        return files.write_json(path, self.to_dict(), overwrite=overwrite, indent=indent)
