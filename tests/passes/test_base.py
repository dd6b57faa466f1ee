"""The pass interface: tags, history, errors, Sequential and a user-written pass."""
from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

import fxquant
from fxquant.passes.base import at_node, pass_history, state_tags
from tests.models import FunctionalNet


class DropDropout(fxquant.Pass):
    """A user pass: removes Dropout modules (exact in eval mode)."""

    requires = frozenset({"prepared"})
    provides = frozenset({"no_dropout"})
    preserves_numerics = True

    def call(self, gm: torch.fx.GraphModule) -> fxquant.PassResult:
        removed = []
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Dropout):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                removed.append(node.target)
        return fxquant.PassResult(gm, bool(removed), {"removed": removed})


class Broken(fxquant.Pass):
    """Fails on the first add node, naming it."""

    def call(self, gm: torch.fx.GraphModule) -> fxquant.PassResult:
        for node in gm.graph.nodes:
            if "add" in node.name:
                raise at_node(node, ValueError("cannot handle this add"))
        return fxquant.PassResult(gm, False)


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(x)) + x


def test_user_pass_runs_in_sequential_with_ours() -> None:
    model = WithDropout().eval()
    x = torch.randn(2, 4)
    pipeline = fxquant.Sequential(fxquant.PrepareModelPass(), DropDropout(),
                                  fxquant.FoldBatchNormPass())
    assert pipeline.requires == frozenset()
    assert pipeline.provides == {"prepared", "no_dropout", "bn_folded"}
    result = pipeline(fxquant.trace(model))
    gm = result.graph_module
    assert result.modified
    assert result.details["DropDropout()"]["removed"] == ["drop"]
    assert state_tags(gm) == {"prepared", "no_dropout", "bn_folded"}
    assert pass_history(gm) == ("PrepareModelPass()", "DropDropout()", "FoldBatchNormPass()")
    assert "drop" not in gm.code
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    again = pipeline(gm)
    assert not again.modified


def test_missing_requirement_names_pass_and_history() -> None:
    gm = fxquant.trace(WithDropout().eval())
    with pytest.raises(fxquant.PassError, match=r"DropDropout\(\) requires \['prepared'\].*"
                                                r"passes run so far: none"):
        DropDropout()(gm)


def test_pass_error_names_pass_history_node_module_and_source() -> None:
    gm = fxquant.prepare_model(FunctionalNet().eval())
    with pytest.raises(fxquant.PassError) as info:
        fxquant.Sequential(fxquant.FoldBatchNormPass(), Broken())(gm)
    message = str(info.value)
    assert "Broken() failed: ValueError: cannot handle this add" in message
    assert "passes run before it: ['PrepareModelPass()', 'FoldBatchNormPass()']" in message
    assert "module path: module_add" in message
    assert "models.py" in message  # the user's source line
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.module_path == "module_add"


def test_pass_rejects_non_graph_module() -> None:
    with pytest.raises(TypeError, match=r"FoldBatchNormPass\(\) expects a torch.fx.GraphModule.*"
                                        r"fxquant.trace\(model\)"):
        fxquant.FoldBatchNormPass()(nn.Linear(2, 2))


def test_call_must_return_pass_result() -> None:
    class Bad(fxquant.Pass):
        def call(self, gm):  # type: ignore[override]
            return gm

    with pytest.raises(fxquant.PassError, match=r"Bad\.call must return a PassResult"):
        Bad()(fxquant.trace(nn.Linear(2, 2)))


def test_sequential_rejects_non_passes() -> None:
    with pytest.raises(TypeError, match="Sequential takes Pass instances"):
        fxquant.Sequential(fxquant.PrepareModelPass(), lambda gm: gm)  # type: ignore[arg-type]


def test_pass_result_details_are_read_only() -> None:
    result = fxquant.PassResult(fxquant.trace(nn.Linear(2, 2)), False, {"a": 1})
    with pytest.raises(TypeError):
        result.details["a"] = 2  # type: ignore[index]
