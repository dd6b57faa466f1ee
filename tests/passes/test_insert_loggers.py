"""InsertLoggersPass: the shared pass contract, where loggers go, and its errors."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxquant
from fxquant import _meta
from fxquant.passes.base import state_tags
from fxquant.core.layers import layer_nodes
from fxquant.passes.insert_loggers import InsertLoggersPass, LogSite, logger_nodes, may_mutate_input
from tests.models import FunctionalNet, randomize_batch_norms
from tests.numeric_suite.ns_helpers import calibrated_sim, mixnet


class Recorder(nn.Module):
    """Returns its input; remembers the last value."""

    def __init__(self, site: LogSite) -> None:
        super().__init__()
        self.site = site
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = x.detach().clone() if isinstance(x, torch.Tensor) else None
        return x


@pytest.mark.parametrize("make_model, shape", [
    (lambda: torchvision.models.resnet18(), (1, 3, 32, 32)),
    (FunctionalNet, (2, 3, 16, 16)),
], ids=["resnet18", "functional"])
def test_contract(make_model, shape, device: torch.device) -> None:
    model = randomize_batch_norms(make_model()).eval().to(device)
    x = torch.randn(*shape, device=device)
    gm = fxquant.prepare_model(model)
    with torch.no_grad():
        expected = gm(x)
        result = InsertLoggersPass(Recorder, log_inputs=True)(gm)
        assert result.modified and InsertLoggersPass.provides <= state_tags(result.graph_module)
        got = result.graph_module(x)
        if device.type == "cpu":
            assert torch.equal(got, expected)  # preserves_numerics, bit for bit
        else:  # the same calls; CUDA may still pick another kernel
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    again = InsertLoggersPass(Recorder, log_inputs=True)(result)
    assert not again.modified
    nodes = logger_nodes(result.graph_module)
    assert len(nodes) == len(result.details["loggers"])
    assert all(_meta.get(n, _meta.ROLE) == _meta.ROLE_LOGGER and _meta.get(n, _meta.LAYER_NAME)
               and _meta.handle(n) is not None for n in nodes)


def test_outputs_are_logged_after_the_output_quantizer() -> None:
    sim = calibrated_sim(mixnet(), (2, 3, 8, 8))
    gm = sim.model
    sites: list[LogSite] = []

    def make(site: LogSite) -> nn.Module:
        sites.append(site)
        return Recorder(site)

    InsertLoggersPass(make, ["relu", "conv1", "module_cat"], log_inputs=True)(gm)
    out = {s.layer: s for s in sites if s.results_type == "node_output"}
    # the value is taken after the output quantizer, but reported as the layer's (torch.ao.ns's
    # prev_node_name / prev_node_target_type: what computed it, never the quantizer)
    assert out["relu"].value_node == "relu" and out["relu"].op_node == "relu"
    assert out["conv1"].value_node == "conv1"  # fused into conv1 -> relu: no quantizer
    assert out["relu"].value_type == "torch.nn.modules.activation.ReLU"
    inputs = {(s.layer, s.index_of_arg, s.index_within_arg): s for s in sites
              if s.results_type == "node_input"}
    # relu's input is conv1's output; cat's second input is conv3's (through its quantizer)
    assert inputs[("relu", 0, 0)].value_type == "torch.nn.modules.conv.Conv2d"
    assert inputs[("module_cat", 0, 1)].value_node == "conv3"
    cat_inputs = [(s.index_of_arg, s.index_within_arg) for s in sites
                  if s.layer == "module_cat" and s.results_type == "node_input"]
    assert cat_inputs == [(0, 0), (0, 1)]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        gm(x)
    recorder = gm.get_submodule("ns_loggers.relu.output_logger")
    assert torch.equal(recorder.last, gm.relu.output_quantizer(recorder.last))  # on the grid


def test_make_logger_may_skip_values_and_loggers_survive_dce() -> None:
    gm = fxquant.prepare_model(mixnet())
    result = InsertLoggersPass(lambda s: Recorder(s) if s.layer.startswith("conv") else None)(gm)
    assert {_meta.get(n, _meta.LAYER_NAME) for n in logger_nodes(gm)} == {"conv1", "conv2",
                                                                         "conv3"}
    gm.graph.eliminate_dead_code()
    assert len(logger_nodes(gm)) == 3
    assert result.details["loggers"] == [f"ns_loggers.conv{i}.output_logger" for i in (1, 2, 3)]


def test_in_place_ops_are_recognised() -> None:
    gm = fxquant.prepare_model(torchvision.models.resnet18().eval())
    nodes = layer_nodes(gm)
    assert may_mutate_input(gm, nodes["relu"])  # nn.ReLU(inplace=True)
    assert not may_mutate_input(gm, nodes["conv1"])


def test_errors_name_the_culprit() -> None:
    gm = fxquant.prepare_model(mixnet())
    with pytest.raises(fxquant.PassError, match="'conv9' \\(did you mean 'conv3'"):
        InsertLoggersPass(Recorder, ["conv9"])(gm)
    with pytest.raises(TypeError, match="make_logger must be callable"):
        InsertLoggersPass("logger")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="write layers=\\['conv1'\\]"):
        InsertLoggersPass(Recorder, "conv1")
    assert repr(InsertLoggersPass(Recorder, ["a"], log_inputs=True)) == \
        "InsertLoggersPass(layers=[1 names], log_inputs=True)"


class _SeesInputs(nn.Module):
    _is_impure = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def forward(self, *inputs):
        self.seen.append(tuple(i.clone() if isinstance(i, torch.Tensor) else i for i in inputs))


class _TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + 1.0) * y


def test_an_input_observer_sees_every_input_before_anything_runs() -> None:
    from fxquant.passes.insert_loggers import add_input_observer

    gm = fxquant.prepare_model(_TwoInputs())
    observer = _SeesInputs()
    node = add_input_observer(gm, "ns_loggers.call_clock", observer)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    assert node in logger_nodes(gm) and _meta.get(node, _meta.LOGS) == "calls"
    assert [n.op for n in gm.graph.nodes][:3] == ["placeholder", "placeholder", "call_module"]
    x, y = torch.zeros(3), torch.full((3,), 2.0)
    out = gm(x.clone(), y)
    assert torch.equal(out, torch.full((3,), 2.0))
    (seen,) = observer.seen
    assert torch.equal(seen[0], x) and torch.equal(seen[1], y)
