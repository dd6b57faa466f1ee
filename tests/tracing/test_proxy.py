"""The concrete proxy: questions about values answered from the example and recorded,
isinstance and container outputs of leaves behaving as in eager mode."""
from __future__ import annotations

import torch
from torch import nn

from fxquant.tracing import specializations, trace
from tests.tracing.tracing_helpers import nodes, same


def test_tensor_iteration_numbers_and_dict_inputs():
    class ShapeQuestions(nn.Module):
        def forward(self, batch):
            x = batch["x"]
            rows = [row * i for i, row in enumerate(x)]  # iterating a tensor: x[0], x[1], ...
            out = torch.stack(rows) / float(x.size(1))
            for _ in range(int(x.shape[0]) - 1):
                out = out + batch["bias"]
            out = out / torch.tensor(x.shape[1])  # recorded as a node, not specialized
            return {"out": out, "n": len(batch)}

    model = ShapeQuestions()
    gm = trace(model, example_inputs=({"x": torch.rand(3, 4), "bias": torch.rand(4)},))
    other = {"x": torch.rand(3, 4), "bias": torch.rand(4)}
    assert same(gm(other), model(other))
    assert [n for n in nodes(gm, "call_function") if n.target is torch.tensor]
    texts = {s.assumption: s.kind for s in specializations(gm)}
    assert texts["len(batch_1) == 3"] == "shape"
    assert texts["float(batch_1.size(1)) == 4.0"] == "value"
    assert texts["int(batch_1.shape[0]) == 3"] == "value"


def test_concrete_mode_isinstance_and_container_outputs():
    class Pair(nn.Module):  # a leaf returning a tuple of (tensor, None) and a list
        def forward(self, x):
            return x + 1, None, [x, x * 2]

    class User(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            a, b, rest = self.pair(x)
            assert isinstance(a, torch.Tensor) and b is None and isinstance(rest, list)
            return a + sum(rest) if x.dim() == 2 else a

    x = torch.rand(2, 3)
    gm = trace(User(), leaf_modules=["pair"], example_inputs=(x,))
    assert torch.equal(gm(x), User()(x))
    assert any(s.assumption.endswith("is None") for s in specializations(gm))
