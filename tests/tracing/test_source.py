"""The user's source line: formatting, fx stack-trace strings, the live stack, tracebacks."""
from __future__ import annotations

import inspect
import os

import torch
from torch import nn

from fxquant.tracing import source

THIS_FILE = __file__


def test_format_source_shows_the_code_when_the_file_can_be_read():
    line = inspect.currentframe().f_lineno
    assert source.format_source(THIS_FILE, line) == (
        f"{THIS_FILE}:{line}: line = inspect.currentframe().f_lineno")
    assert source.format_source("/no/such/file.py", 3) == "/no/such/file.py:3"


def test_internal_files_are_torch_and_all_of_fxquant():
    assert source.is_internal_file(torch.__file__)
    assert source.is_internal_file(source.__file__)
    assert source.is_internal_file(os.path.join(os.path.dirname(source.__file__), "..", "nn.py"))
    assert not source.is_internal_file(THIS_FILE)


def test_innermost_source_skips_internal_frames_of_an_fx_stack_trace():
    internal = os.path.join(os.path.dirname(torch.__file__), "nn", "modules", "module.py")
    line = inspect.currentframe().f_lineno
    stack = (f'  File "{THIS_FILE}", line {line}, in test\n    something\n'
             f'  File "{internal}", line 10, in _call_impl\n    return forward_call(*args)\n')
    assert source.innermost_source(stack) == (
        f"{THIS_FILE}:{line}: line = inspect.currentframe().f_lineno")
    assert source.innermost_source(None) is None
    assert source.innermost_source(f'  File "{internal}", line 10, in f\n    x\n') is None


def _asks():
    return source.caller_source()   # frame 0: caller_source, 1: _asks, 2: the test below


def test_caller_source_is_the_first_user_frame_outwards():
    expected_line = inspect.currentframe().f_lineno + 1
    where = _asks()
    assert where == f"{THIS_FILE}:{expected_line}: where = _asks()"


def test_innermost_module_frame_names_the_module_that_raised():
    class Failing(nn.Module):
        def forward(self, x):
            raise ValueError("inner failed")

    model = nn.Sequential(nn.Identity(), Failing())
    modules = {id(m): name for name, m in model.named_modules()}
    try:
        model(torch.zeros(1))
    except ValueError as exc:
        path, func, where = source.innermost_module_frame(exc, modules)
    assert (path, func) == ("1", "forward")
    assert where.startswith(THIS_FILE) and where.endswith('raise ValueError("inner failed")')
    assert source.innermost_module_frame(ValueError("no traceback"), modules) is None
