"""Helpers for the tutorial checks: find a printed line and its numbers."""
from __future__ import annotations

import re

NUMBER = r"(-?[\d.]+(?:e[+-]?\d+)?)"


def find(pattern: str, out: str) -> tuple[str, ...]:
    """The groups of the first match of ``pattern`` in ``out``; fails naming the pattern.

    Example:
        >>> find(r"accuracy (\\d+)%", "accuracy 97%")
        ('97',)
    """
    match = re.search(pattern, out)
    assert match, f"the tutorial did not print a line matching {pattern!r}; it printed:\n{out}"
    return match.groups()
