"""Callback holders shared by the features that run user code on a model (AIMET's ``CallbackFunc``).

AIMET's QuantAnalyzer, AdaRound and AutoQuant take a forward pass or an evaluation as
``CallbackFunc(func, func_callback_args)`` and call ``func(model, args)``; fxquant's do the same,
so AIMET code runs with only the import changed.

Example:
    >>> from fxquant.core.callbacks import CallbackFunc
    >>> def forward_pass(model, batches):
    ...     for x in batches:
    ...         model(x)
    >>> cb = CallbackFunc(forward_pass, func_callback_args=[torch.randn(1, 3, 32, 32)])
    >>> cb(model)          # forward_pass(model, [...])
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fxquant.errors import ConfigError

__all__ = ["CallbackFunc"]


@dataclasses.dataclass(frozen=True, init=False)
class CallbackFunc:
    """A callable and the argument it is called with: ``CallbackFunc(func, args)(model)`` runs
    ``func(model, args)``.

    Attributes:
        func: the callable, ``func(model, args)``.
        args: its second argument (any object; ``None`` is passed as ``None``, as in AIMET).

    Raises:
        ConfigError: ``func`` is not callable.

    Example:
        >>> cb = CallbackFunc(lambda model, n: model(torch.randn(n, 8)), 4)
        >>> cb.func, cb.args
        (<function <lambda> at ...>, 4)
    """

    func: Callable[..., Any]
    args: Any

    def __init__(self, func: Callable[..., Any], func_callback_args: Any = None) -> None:
        if not callable(func):
            raise ConfigError(f"CallbackFunc: func must be callable (func(model, args)), got "
                              f"{type(func).__qualname__}")
        object.__setattr__(self, "func", func)
        object.__setattr__(self, "args", func_callback_args)

    def __call__(self, model: Any) -> Any:
        """Run ``func(model, args)`` and return its result."""
        return self.func(model, self.args)
