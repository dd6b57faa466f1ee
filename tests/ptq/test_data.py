"""fxquant.ptq._data: the batches, the per-layer capture and the graph walk that the data-driven
techniques share. The walk must give every layer exactly what a forward pass stopped at that layer
gives (bit for bit), with every node run once."""
from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch
import torchvision
from torch import nn

from fxquant.errors import ConfigError
from fxquant.ptq import adaround as adaround_module
from fxquant.ptq._data import GraphWalk, capture_layer_io
from fxquant.ptq.adaround import Adaround, AdaroundParameters
from fxquant.quantsim.quantsim import QuantizationSimModel
from tests.models import randomize_batch_norms


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    randomize_batch_norms(model)
    return model


def _walked_then_not(monkeypatch: pytest.MonkeyPatch, module: Any, no_walk: Any) -> Iterator[str]:
    """Yields "walk", then patches ``module._walks`` to return ``no_walk`` (each layer captured
    by a forward pass) and yields "forward passes"."""
    yield "walk"
    monkeypatch.setattr(module, "_walks", lambda *args: no_walk)
    yield "forward passes"


def _resnet_sim() -> QuantizationSimModel:
    sim = QuantizationSimModel(_resnet(), torch.randn(1, 3, 32, 32))
    sim.compute_encodings(lambda m: m(torch.randn(4, 3, 32, 32)))
    return sim


def _conv_linear(sim: QuantizationSimModel) -> list[str]:
    return [r.layer for r in sim.quantizers()
            if r.kind == "param" and isinstance(sim.model.get_submodule(r.layer),
                                                (nn.Conv2d, nn.Linear))]


def test_the_walk_gives_what_a_stopped_forward_pass_gives_with_each_node_run_once() -> None:
    sim = _resnet_sim()
    batches = [torch.randn(3, 3, 32, 32) for _ in range(2)]
    layers = _conv_linear(sim)
    assert len(layers) == 21      # convs of the stem, the blocks and the downsamples; fc
    calls: dict[str, int] = {}
    counting = [True]

    def count(name: str) -> Any:
        def hook(*_: Any) -> None:
            if counting[0]:
                calls[name] = calls.get(name, 0) + 1
        return hook

    handles = [sim.model.get_submodule(n).register_forward_hook(count(n)) for n in layers]
    walk = GraphWalk(sim.model, batches)
    for i, name in enumerate(layers):
        got_in = walk.inputs_of(name)
        if i % 5 == 0:   # as AdaRound does: the layer changed before it runs; the layers after
            with torch.no_grad():        # it must see its new outputs
                sim.model.get_submodule(name).parametrizations.weight.original.mul_(0.5)
        got_out = walk.outputs_of(name)
        counting[0] = False
        want_in, want_out = capture_layer_io(sim.model, name, batches)
        counting[0] = True
        assert all(torch.equal(a, b) for a, b in zip(got_in, want_in)), name
        assert all(torch.equal(a, b) for a, b in zip(got_out, want_out)), name
    for handle in handles:
        handle.remove()
    assert calls == {name: len(batches) for name in layers}     # each layer once per batch


def test_a_changed_layer_feeds_the_layers_after_it() -> None:
    sim = _resnet_sim()
    batches = [torch.randn(2, 3, 32, 32)]
    walk = GraphWalk(sim.model, batches)
    walk.inputs_of("layer1.0.conv1")
    with torch.no_grad():       # as AdaRound does: the layer's weight replaced before it runs
        sim.model.get_submodule("layer1.0.conv1").parametrizations.weight.original.mul_(-1)
    got = walk.inputs_of("layer1.0.conv2")
    want, _ = capture_layer_io(sim.model, "layer1.0.conv2", batches, outputs=False)
    assert torch.equal(got[0], want[0])


def test_values_no_later_node_needs_are_freed() -> None:
    sim = _resnet_sim()
    walk = GraphWalk(sim.model, [torch.randn(2, 3, 32, 32)])
    walk.outputs_of("layer2.0.conv1")
    live = walk._envs[0]
    # what remains: the inputs of nodes still to run (the block's shortcut and its main path)
    assert 0 < len(live) <= 3, sorted(n.name for n in live)
    walk.outputs_of("fc")
    assert len(walk._envs[0]) <= 1


def test_keyword_and_default_arguments_reach_the_graph() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
            return self.fc(x * scale + y)

    gm = torch.fx.symbolic_trace(TwoInputs())
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    walk = GraphWalk(gm, [{"x": x, "y": y}])          # a dict batch: keyword arguments
    assert torch.equal(walk.inputs_of("fc")[0], x * 2.0 + y)


@pytest.mark.parametrize(("case", "match"), [
    ("behind", r"layer 'layer1\.0\.conv1' was passed already: ask for the layers in graph order"),
    ("unknown", r"layer 'nope' is not called in the graph"),
    ("no call", r"forward_fn did not call the model on batch 0"),
    ("bad args", r"batch 0: the model was called with arguments its graph does not take"),
])
def test_walk_errors(case: str, match: str) -> None:
    sim = _resnet_sim()
    batch = torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match=match):
        if case == "no call":
            GraphWalk(sim.model, [batch], forward_fn=lambda model, b: None)
        elif case == "bad args":
            GraphWalk(sim.model, [batch], forward_fn=lambda model, b: model(b, b))
        else:
            walk = GraphWalk(sim.model, [batch])
            walk.outputs_of("layer1.0.conv2")
            walk.inputs_of("layer1.0.conv1" if case == "behind" else "nope")


def test_adaround_through_the_walk_equals_adaround_through_forward_passes(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _resnet()
    data = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    results = []
    for how in _walked_then_not(monkeypatch, adaround_module, None):
        torch.manual_seed(1)
        params = AdaroundParameters(data, 2, default_num_iterations=20)
        prefix = how.replace(" ", "_")
        ada = Adaround.apply_adaround(model, data[0][:1], params, tmp_path, prefix)
        results.append((ada.state_dict(), (tmp_path / f"{prefix}.encodings").read_bytes()))
    (walked, file_a), (passes, file_b) = results
    assert file_a == file_b
    assert all(torch.equal(walked[k], passes[k]) for k in walked)


@pytest.mark.parametrize("inp_symmetry", ["symqt", "asym"])
def test_sequential_mse_through_the_walks_equals_it_through_forward_passes(
        monkeypatch: pytest.MonkeyPatch, inp_symmetry: str) -> None:
    from fxquant.ptq import seq_mse as seq_mse_module
    from fxquant.ptq.seq_mse import SeqMseParams, apply_seq_mse

    model = _resnet()
    data = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    encodings = []
    for _ in _walked_then_not(monkeypatch, seq_mse_module, (None, None)):
        sim = QuantizationSimModel(model, data[0][:1], default_param_bw=4)
        params = SeqMseParams(num_batches=2, num_candidates=8, inp_symmetry=inp_symmetry)
        with pytest.warns(DeprecationWarning):
            apply_seq_mse(model, sim, data, params)
        encodings.append({r.name: r.quantizer.encoding for r in sim.quantizers()
                          if r.kind == "param"})
    walked, passes = encodings
    assert list(walked) == list(passes) and len(walked) == 21
    assert all(torch.equal(walked[k].scale, passes[k].scale) for k in walked)
