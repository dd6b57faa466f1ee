"""``fxquant.ns``: short name of :mod:`fxquant.numeric_suite` (as ``torch.ao.ns`` is torch's).

Its names are exactly ``fxquant.numeric_suite.__all__`` (the same objects); the list is declared
there only.

Example:
    >>> import fxquant.ns as ns
    >>> shadow = ns.add_shadow_loggers("float", model, "int8", sim)
"""
from __future__ import annotations

from fxquant import numeric_suite as _numeric_suite

__all__ = list(_numeric_suite.__all__)
globals().update({name: getattr(_numeric_suite, name) for name in __all__})
