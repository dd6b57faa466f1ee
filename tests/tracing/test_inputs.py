"""Example inputs bound to forward's parameters: errors naming the fix."""
from __future__ import annotations

import pytest
import torch

from fxquant.errors import TraceError
from fxquant.tracing import PH, trace
from tests.tracing.tracing_helpers import ListModel


def test_example_inputs_errors():
    with pytest.raises(TypeError, match=r"example_inputs do not fit ListModel\.forward"):
        trace(ListModel(), example_inputs=(torch.rand(3, 4, 4), True, 3))
    with pytest.raises(ValueError, match=r"'images' is given in both example_inputs and "
                                         r"concrete_args"):
        trace(ListModel(), example_inputs=([torch.rand(3, 4, 4)],),
              concrete_args={"images": [PH]})
    with pytest.raises(TraceError, match=r"cannot trace module 'conv' \(torch\.nn\.modules\.conv"
                                         r"\.Conv2d\): RuntimeError(?s:.*)check that "
                                         r"example_inputs are inputs the model accepts"):
        trace(ListModel(), example_inputs=([torch.rand(5, 4, 4)],))  # 5 channels, conv takes 3
