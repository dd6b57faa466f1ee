"""CallbackFunc: AIMET's (func, func_callback_args) holder."""
from __future__ import annotations

import dataclasses

import pytest

from fxquant.core.callbacks import CallbackFunc
from fxquant.errors import ConfigError


def test_call_passes_the_args_even_none() -> None:
    seen = []
    cb = CallbackFunc(lambda model, args: seen.append((model, args)) or len(seen))
    assert cb("m") == 1 and seen == [("m", None)]
    cb = CallbackFunc(lambda model, args: args * 2, func_callback_args=21)
    assert cb(object()) == 42 and cb.args == 21
    with pytest.raises(dataclasses.FrozenInstanceError):
        cb.args = 3


def test_func_must_be_callable() -> None:
    with pytest.raises(ConfigError, match=r"CallbackFunc: func must be callable .* got str"):
        CallbackFunc("forward")
