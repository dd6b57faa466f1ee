"""The pass interface: tags, history, errors, the in-place contract, Sequential and a user pass."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
from torch import nn

import fxquant
from fxquant import _meta
from fxquant.passes.base import at_node, errors_at, pass_history, state_tags
from fxquant.passes.fold_batchnorm import FoldBatchNormPass
from fxquant.passes.insert_loggers import InsertLoggersPass
from fxquant.passes.insert_quantizers import InsertQuantizersPass
from fxquant.passes.insert_shadows import InsertShadowsPass
from fxquant.passes.prepare import PrepareModelPass
from fxquant.passes.remove_quantizers import RemoveQuantizersPass
from tests.models import FunctionalNet


class DropDropout(fxquant.Pass):
    """A user pass: removes Dropout modules (exact in eval mode)."""

    requires = frozenset({_meta.TAG_PREPARED})
    provides = frozenset({"no_dropout"})
    preserves_numerics = True
    in_place = True

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

    in_place = True

    def call(self, gm: torch.fx.GraphModule) -> fxquant.PassResult:
        for node in gm.graph.nodes:
            if "add" in node.name:
                raise at_node(node, ValueError("cannot handle this add"))
        return fxquant.PassResult(gm, False)


class CountCalls(fxquant.Pass):
    """An in-place pass that changes nothing and says how often this instance ran."""

    in_place = True

    def __init__(self) -> None:
        self.runs = 0

    def call(self, gm: torch.fx.GraphModule) -> fxquant.PassResult:
        self.runs += 1
        return fxquant.PassResult(gm, False, {"runs": self.runs})


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(x)) + x


def _private_copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    out = copy.deepcopy(gm)
    _meta.unshare_node_meta(out)
    return out


def test_user_pass_runs_in_sequential_with_ours() -> None:
    model = WithDropout().eval()
    x = torch.randn(2, 4)
    pipeline = fxquant.Sequential(fxquant.PrepareModelPass(), DropDropout(),
                                  fxquant.FoldBatchNormPass())
    assert pipeline.requires == frozenset()
    assert pipeline.provides == {_meta.TAG_PREPARED, "no_dropout", _meta.TAG_BN_FOLDED}
    assert pipeline.in_place is True
    gm = fxquant.trace(model)
    result = pipeline(gm)
    assert result.graph_module is gm
    assert result.modified
    assert list(result.details) == ["0:PrepareModelPass", "1:DropDropout", "2:FoldBatchNormPass"]
    assert result.details["1:DropDropout"]["removed"] == ["drop"]
    assert state_tags(gm) == {"prepared", "no_dropout", "bn_folded"}
    assert pass_history(gm) == ("PrepareModelPass()", "DropDropout()", "FoldBatchNormPass()")
    assert "drop" not in gm.code
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    again = pipeline(gm)
    assert not again.modified
    assert again.details["1:DropDropout"]["removed"] == []


def test_sequential_keeps_the_details_of_two_equal_passes() -> None:
    gm = fxquant.trace(FunctionalNet().eval())
    result = fxquant.Sequential(fxquant.PrepareModelPass(), fxquant.PrepareModelPass())(gm)
    first = result.details["0:PrepareModelPass"]
    second = result.details["1:PrepareModelPass"]
    assert len(first["converted"]) >= 8 and first["split"] == [("relu", "relu_1")]
    assert second["converted"] == [] and second["split"] == []
    counter = CountCalls()
    twice = fxquant.Sequential(counter, counter)(gm)
    assert [d["runs"] for d in twice.details.values()] == [1, 2]
    assert pass_history(gm)[-2:] == ("CountCalls()", "CountCalls()")


def test_state_tags_are_the_named_constants() -> None:
    assert fxquant.PrepareModelPass.provides == {_meta.TAG_PREPARED}
    assert fxquant.FoldBatchNormPass.provides == {_meta.TAG_BN_FOLDED}
    assert InsertQuantizersPass.requires == {_meta.TAG_PREPARED}
    assert InsertQuantizersPass.provides == {_meta.TAG_QUANTIZED}
    assert RemoveQuantizersPass.provides == {_meta.TAG_FLOAT}
    assert InsertLoggersPass.provides == {_meta.TAG_LOGGERS}
    assert InsertShadowsPass.requires == {_meta.TAG_PREPARED}
    assert InsertShadowsPass.provides == {_meta.TAG_SHADOWED}
    gm = fxquant.trace(nn.Linear(2, 2))
    assert state_tags(gm) == frozenset() and pass_history(gm) == ()
    assert _meta.TAGS not in _meta.graph_meta(gm)  # reading created nothing


def test_missing_requirement_names_pass_and_history() -> None:
    gm = fxquant.trace(WithDropout().eval())
    with pytest.raises(fxquant.PassError, match=r"DropDropout\(\) requires \['prepared'\].*"
                                                r"passes run so far: none"):
        DropDropout()(gm)


@pytest.fixture
def broken_error() -> fxquant.PassError:
    gm = fxquant.prepare_model(FunctionalNet().eval())
    with pytest.raises(fxquant.PassError) as info:
        fxquant.Sequential(fxquant.FoldBatchNormPass(), Broken())(gm)
    return info.value


def test_pass_error_names_the_pass_and_the_exception(broken_error: fxquant.PassError) -> None:
    with pytest.raises(fxquant.PassError, match=r"^Broken\(\) failed: ValueError: cannot handle "
                                                r"this add\n"):
        raise broken_error
    assert broken_error.pass_name == "Broken()"
    assert isinstance(broken_error.__cause__, ValueError)
    assert str(broken_error.__cause__) == "cannot handle this add"


def test_pass_error_names_the_passes_run_before(broken_error: fxquant.PassError) -> None:
    with pytest.raises(fxquant.PassError, match=r"passes run before it: \['PrepareModelPass\(\)', "
                                                r"'FoldBatchNormPass\(\)'\]"):
        raise broken_error
    assert broken_error.history == ("PrepareModelPass()", "FoldBatchNormPass()")


def test_pass_error_says_while_executing_the_node(broken_error: fxquant.PassError) -> None:
    with pytest.raises(fxquant.PassError, match=r"While executing %module_add : .*"
                                                r"call_module\[target=module_add\]"):
        raise broken_error
    assert broken_error.node is not None and "call_module[target=module_add]" in broken_error.node


def test_pass_error_names_module_path_and_source_line(broken_error: fxquant.PassError) -> None:
    with pytest.raises(fxquant.PassError, match=r"module path: module_add\n  source: .*models\.py:"
                                                r"\d+: y = F\.relu6\(a \+ b\)"):
        raise broken_error
    assert broken_error.module_path == "module_add"
    assert "y = F.relu6(a + b)" in broken_error.source_line


def test_pass_error_carries_the_node_stack_trace(broken_error: fxquant.PassError) -> None:
    with pytest.raises(fxquant.PassError, match=r"(?s)Original traceback \(where the node was "
                                                r"traced\):\n.*models\.py.*in forward.*"
                                                r"F\.relu6\(a \+ b\)"):
        raise broken_error
    assert "in forward" in broken_error.stack_trace


def test_errors_at_attributes_unexpected_errors_to_the_node() -> None:
    class Fails(fxquant.Pass):
        in_place = True

        def call(self, gm):  # type: ignore[override]
            for node in gm.graph.nodes:
                if node.op == "call_module":
                    with errors_at(node):
                        gm.get_submodule(str(node.target)).missing_attribute  # noqa: B018
            return fxquant.PassResult(gm, False)

    gm = fxquant.prepare_model(FunctionalNet().eval())
    with pytest.raises(fxquant.PassError, match=r"(?s)Fails\(\) failed: AttributeError: .*"
                                                r"missing_attribute.*While executing %conv1 .*"
                                                r"module path: conv1") as info:
        Fails()(gm)
    assert isinstance(info.value.__cause__, AttributeError)


def test_errors_at_keeps_the_more_precise_inner_node() -> None:
    gm = fxquant.prepare_model(FunctionalNet().eval())
    outer, inner = list(gm.graph.nodes)[1:3]
    with pytest.raises(KeyError) as info:
        with errors_at(outer):
            with errors_at(inner):
                raise KeyError("x")
    assert info.value.fxquant_node is inner


def test_errors_inside_passes_name_their_node() -> None:
    """Every pass attributes a failure inside its per-node work to the node (here: a policy
    that fails for one layer, a logger factory that fails)."""
    class FailingPolicy:
        supergroups = ()
        quantize_model_output = None

        def op_type(self, module):
            return None

        def is_data_movement(self, module):
            return False

        def input_quantizer(self, name):
            return None

        def output_quantizer(self, layer, module):
            if layer == "conv2":
                raise RuntimeError("no quantizer for conv2")
            return None

        def param_quantizers(self, layer, module):
            return {}

    gm = fxquant.prepare_model(FunctionalNet().eval())
    with pytest.raises(fxquant.PassError, match=r"(?s)InsertQuantizersPass\(\) failed: "
                                                r"RuntimeError: no quantizer for conv2.*"
                                                r"While executing %conv2 .*module path: conv2"):
        InsertQuantizersPass(FailingPolicy())(gm)

    def factory(site):
        raise LookupError(f"no logger for {site.layer}")

    gm = fxquant.prepare_model(FunctionalNet().eval())
    with pytest.raises(fxquant.PassError, match=r"(?s)InsertLoggersPass\(\) failed: LookupError: "
                                                r"no logger for conv1.*While executing %conv1 "):
        InsertLoggersPass(factory)(gm)


def test_fxquant_errors_are_wrapped_with_their_cause() -> None:
    gm = fxquant.prepare_model(FunctionalNet().eval())
    gm.bn1.train()
    with pytest.raises(fxquant.PassError, match=r"FoldBatchNormPass\(\) failed: "
                                                r"BatchNormFoldError: batch norm 'bn1' is in "
                                                r"training mode") as info:
        fxquant.FoldBatchNormPass()(gm)
    assert isinstance(info.value.__cause__, fxquant.BatchNormFoldError)


def test_in_place_pass_must_return_its_input() -> None:
    class Copies(fxquant.Pass):
        in_place = True

        def call(self, gm):  # type: ignore[override]
            return fxquant.PassResult(_private_copy(gm), False)

    with pytest.raises(fxquant.PassError, match=r"Copies\(\) is declared in_place = True but "
                                                r"returned a different graph module.*declare "
                                                r"in_place = False"):
        Copies()(fxquant.trace(nn.Linear(2, 2)))


def test_functional_pass_must_return_a_new_module() -> None:
    class ReturnsInput(fxquant.Pass):
        in_place = False

        def call(self, gm):  # type: ignore[override]
            return fxquant.PassResult(gm, False)

    with pytest.raises(fxquant.PassError, match=r"ReturnsInput\(\) is declared in_place = False "
                                                r"but returned the graph module it was given"):
        ReturnsInput()(fxquant.trace(nn.Linear(2, 2)))


class _Mutates(fxquant.Pass):
    """A functional pass that (wrongly) changes its input in one way, then returns a copy."""

    in_place = False

    def __init__(self, how: str) -> None:
        self.how = how

    def call(self, gm):  # type: ignore[override]
        out = _private_copy(gm)
        first = next(n for n in gm.graph.nodes if n.op == "call_module")
        if self.how == "graph":
            first.name = "renamed"
        elif self.how == "metadata":
            _meta.set(first, _meta.ROLE, "shadow")
        elif self.how == "modules":
            gm.add_submodule("extra", nn.Identity())
        elif self.how == "weights":
            with torch.no_grad():
                gm.get_submodule(str(first.target)).weight.mul_(2.0)
        elif self.how == "state":
            _meta.graph_meta(gm)["tags"] = ["bogus"]
        return fxquant.PassResult(out, True)


@pytest.mark.parametrize("how, component", [
    ("graph", "graph"), ("metadata", "node metadata"), ("modules", "modules"),
    ("weights", r"tensor data \(in-place writes\)"), ("state", "graph-module state"),
])
def test_functional_pass_must_not_change_its_input(how: str, component: str) -> None:
    gm = fxquant.prepare_model(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    with pytest.raises(fxquant.PassError, match=rf"_Mutates\(\) is declared in_place = False but "
                                                rf"changed its input graph module \(.*{component}"):
        _Mutates(how)(gm)


def test_functional_pass_result_has_its_own_state() -> None:
    class Copies(fxquant.Pass):
        provides = frozenset({"copied"})
        in_place = False

        def call(self, gm):  # type: ignore[override]
            return fxquant.PassResult(_private_copy(gm), False)

    gm = fxquant.prepare_model(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    out = Copies()(gm).graph_module
    assert out is not gm
    assert state_tags(out) == {"prepared", "copied"}
    assert pass_history(out) == ("PrepareModelPass()", "Copies()")
    assert state_tags(gm) == {"prepared"} and pass_history(gm) == ("PrepareModelPass()",)
    assert fxquant.Sequential(fxquant.PrepareModelPass(), Copies()).in_place is False


def test_a_pass_must_declare_in_place() -> None:
    class Undeclared(fxquant.Pass):
        def call(self, gm):  # type: ignore[override]
            return fxquant.PassResult(gm, False)

    with pytest.raises(fxquant.PassError, match=r"Undeclared does not declare in_place \(got "
                                                r"None\); pass author: set the class attribute "
                                                r"in_place = True"):
        Undeclared()(fxquant.trace(nn.Linear(2, 2)))


def test_pass_rejects_non_graph_module() -> None:
    with pytest.raises(TypeError, match=r"FoldBatchNormPass\(\) expects a torch.fx.GraphModule.*"
                                        r"fxquant.trace\(model\)"):
        fxquant.FoldBatchNormPass()(nn.Linear(2, 2))


def test_call_must_return_pass_result() -> None:
    class Bad(fxquant.Pass):
        in_place = True

        def call(self, gm):  # type: ignore[override]
            return gm

    with pytest.raises(fxquant.PassError, match=r"Bad\.call must return a PassResult"):
        Bad()(fxquant.trace(nn.Linear(2, 2)))


def test_sequential_rejects_non_passes() -> None:
    with pytest.raises(TypeError, match="Sequential takes Pass instances"):
        fxquant.Sequential(fxquant.PrepareModelPass(), lambda gm: gm)  # type: ignore[arg-type]


def test_pass_result_details_are_read_only() -> None:
    result = fxquant.PassResult(fxquant.trace(nn.Linear(2, 2)), False, {"a": 1})
    with pytest.raises(TypeError, match="does not support item assignment"):
        result.details["a"] = 2  # type: ignore[index]
    assert result.details["a"] == 1


def test_functional_pass_built_from_a_fresh_graph_module_keeps_the_history() -> None:
    class Rebuilds(fxquant.Pass):
        in_place = False

        def call(self, gm):  # type: ignore[override]
            graph = copy.deepcopy(gm.graph)
            for node in graph.nodes:  # private node metadata
                if _meta.META_KEY in node.meta:
                    node.meta[_meta.META_KEY] = dict(node.meta[_meta.META_KEY])
            return fxquant.PassResult(torch.fx.GraphModule(gm, graph), False)

    gm = fxquant.prepare_model(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    out = Rebuilds()(gm).graph_module
    assert pass_history(out) == ("PrepareModelPass()", "Rebuilds()")
    assert state_tags(out) == {"prepared"}


def test_passes_run_inside_a_pass_stay_in_the_history() -> None:
    class PreparesFirst(fxquant.Pass):
        in_place = True

        def call(self, gm):  # type: ignore[override]
            return fxquant.PassResult(gm, PrepareModelPass()(gm).modified)

    gm = fxquant.trace(FunctionalNet().eval())
    assert PreparesFirst()(gm).modified
    assert pass_history(gm) == ("PrepareModelPass()", "PreparesFirst()")
    assert state_tags(gm) == {"prepared"}
