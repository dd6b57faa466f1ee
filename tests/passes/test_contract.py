"""The shared contract every pass keeps, checked on every pass, on real models and on random nets:

* numerics preserved when the pass declares ``preserves_numerics`` (bit-exact for the passes
  that only rearrange or observe, float32-close for batch-norm folding);
* a second run reports ``modified=False``;
* the declared tags hold afterwards (``provides`` added, ``requires`` kept);
* the in-place declaration is honoured: an in-place pass returns its input; a functional pass
  returns a new graph module and leaves its input's code, numerics and tags as they were.

A new pass joins by adding a :class:`Case` to ``CASES``; ``test_every_pass_has_a_case`` fails
until it does.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable, Mapping

import pytest
import torch
import torch.fx
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

import fxquant
import fxquant.passes
from fxquant.batch_norm_fold import folded_names
from fxquant.passes.base import pass_history, state_tags
from fxquant.passes.equalize import EqualizeLayersPass
from fxquant.passes.fold_batchnorm import FoldBatchNormPass
from fxquant.passes.insert_loggers import InsertLoggersPass
from fxquant.passes.insert_quantizers import InsertQuantizersPass
from fxquant.passes.insert_shadows import InsertShadowsPass
from fxquant.passes.prepare import PrepareModelPass
from fxquant.passes.remove_quantizers import RemoveQuantizersPass
from tests.models import ConvTransposeNet, FunctionalNet, SameConvBnReLU6, randomize_batch_norms
from tests.passes.test_insert_quantizers import TypePolicy

STEP = 2.0 ** -4  # the rounding quantizers' grid: coarse enough to change every output


class RoundToGrid(nn.Module):
    """A stand-in quantizer (activation or parametrization): rounds to multiples of STEP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x / STEP) * STEP


class RoundingPolicy(TypePolicy):
    """TypePolicy's placement (every input, output and weight; Conv+ReLU and Add+ReLU fused) with
    quantizers that round."""

    def input_quantizer(self, name: str) -> nn.Module | None:
        return RoundToGrid()

    def output_quantizer(self, layer: str, module: nn.Module) -> nn.Module | None:
        return RoundToGrid()

    def param_quantizers(self, layer: str, module: nn.Module) -> Mapping[str, nn.Module]:
        weight = getattr(module, "weight", None)
        return {"weight": RoundToGrid()} if isinstance(weight, nn.Parameter) else {}


class Recorder(nn.Module):
    """A logger: returns its input, remembers how often it ran."""

    def __init__(self, site: object = None) -> None:
        super().__init__()
        self.site = site
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def _traced(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return fxquant.trace(model)


def _float(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    """Prepared (a private copy), BN-folded, shapes recorded."""
    gm = fxquant.prepare_model(model)
    fxquant.fold_all_batch_norms(gm, dummy_input=x)
    ShapeProp(gm).propagate(x)
    return gm


def _quantized(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    gm = _float(model, x)
    InsertQuantizersPass(RoundingPolicy())(gm)
    return gm


@dataclasses.dataclass(frozen=True)
class Case:
    """How to run one pass in the contract test.

    Attributes:
        pass_cls: the pass.
        make_input: (eval model, example input) → the graph module the pass runs on.
        make_pass: (eval model, example input) → the pass instance (run twice).
        exact: whether preserved numerics are bit-exact (else float32-close).
    """

    pass_cls: type[fxquant.Pass]
    make_input: Callable[[nn.Module, torch.Tensor], torch.fx.GraphModule]
    make_pass: Callable[[nn.Module, torch.Tensor], fxquant.Pass]
    exact: bool = True


def _shadows(model: nn.Module, x: torch.Tensor) -> fxquant.Pass:
    return InsertShadowsPass(_quantized(model, x), Recorder)


CASES = {
    "PrepareModelPass": Case(PrepareModelPass, _traced,
                             lambda m, x: PrepareModelPass()),
    "FoldBatchNormPass": Case(FoldBatchNormPass, _traced,
                              lambda m, x: FoldBatchNormPass(), exact=False),
    "InsertQuantizersPass": Case(InsertQuantizersPass, _float,
                                 lambda m, x: InsertQuantizersPass(RoundingPolicy())),
    "RemoveQuantizersPass": Case(RemoveQuantizersPass, _quantized,
                                 lambda m, x: RemoveQuantizersPass()),
    "InsertLoggersPass": Case(InsertLoggersPass, _float,
                              lambda m, x: InsertLoggersPass(Recorder, log_inputs=True)),
    "InsertShadowsPass": Case(InsertShadowsPass, _float, _shadows),
    "EqualizeLayersPass": Case(EqualizeLayersPass, lambda m, x: fxquant.prepare_model(m),
                               lambda m, x: EqualizeLayersPass(), exact=False),
}

MODELS = [
    pytest.param(lambda: torchvision.models.resnet18(weights=None), (1, 3, 32, 32),
                 id="resnet18"),
    pytest.param(lambda: torchvision.models.mobilenet_v2(weights=None), (1, 3, 32, 32),
                 id="mobilenet_v2"),
    pytest.param(FunctionalNet, (2, 3, 16, 16), id="functional"),
    pytest.param(ConvTransposeNet, (2, 3, 6, 6), id="conv_transpose"),
    pytest.param(SameConvBnReLU6, (2, 3, 15, 17), id="same_conv"),
]


def test_every_pass_has_a_case() -> None:
    """Every Pass subclass defined in a module of fxquant.passes (one pass per file)."""
    passes = set()
    for info in pkgutil.iter_modules(fxquant.passes.__path__):
        module = importlib.import_module(f"fxquant.passes.{info.name}")
        passes |= {name for name, obj in vars(module).items()
                   if isinstance(obj, type) and issubclass(obj, fxquant.Pass)
                   and obj.__module__ == module.__name__
                   and obj not in (fxquant.Pass, fxquant.Sequential)}
    assert passes == set(CASES)
    assert all(isinstance(CASES[name].pass_cls.in_place, bool) for name in passes)


def _check_contract(case: Case, model: nn.Module, x: torch.Tensor) -> None:
    model = model.eval()
    with torch.no_grad():
        gm = case.make_input(model, x)
        expected = gm(x)
        code_before, tags_before, history_before = gm.code, state_tags(gm), pass_history(gm)
        the_pass = case.make_pass(model, x)
        result = the_pass(gm)
        out = result.graph_module
        # in-place declaration honoured
        if case.pass_cls.in_place:
            assert out is gm
        else:
            assert out is not gm
            assert gm.code == code_before
            assert state_tags(gm) == tags_before and pass_history(gm) == history_before
            assert torch.equal(gm(x), expected), "the functional pass changed its input's numerics"
        # declared tags hold
        assert case.pass_cls.provides <= state_tags(out)
        assert (case.pass_cls.requires | tags_before) <= state_tags(out)
        assert pass_history(out) == (*history_before, repr(the_pass))
        # numerics preserved when declared
        got = out(x)
        if case.pass_cls.preserves_numerics:
            if case.exact:
                assert torch.equal(got, expected)
            else:
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        # a second run changes nothing
        second = the_pass(out)
        assert not second.modified, f"{case.pass_cls.__name__} changed the graph on a second run"
        assert torch.equal(second.graph_module(x), got)


@pytest.mark.parametrize("make_model, shape", MODELS)
@pytest.mark.parametrize("name", list(CASES))
def test_pass_contract_on_real_models(name: str, make_model, shape) -> None:
    model = randomize_batch_norms(make_model())
    _check_contract(CASES[name], model, torch.randn(*shape))


def test_quantizer_passes_change_numerics_and_remove_restores_them() -> None:
    """The passes that declare preserves_numerics = False do change them (the declaration is not
    vacuous), and removing the quantizers restores the float numerics bit for bit."""
    model = randomize_batch_norms(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        gm = _float(model, x)
        expected = gm(x)
        quantized = InsertQuantizersPass(RoundingPolicy())(gm).graph_module
        rounded = quantized(x)
        assert not torch.equal(rounded, expected)
        assert torch.equal(rounded, torch.round(rounded / STEP) * STEP)  # the output quantizer
        restored = RemoveQuantizersPass()(quantized).graph_module
        assert torch.equal(restored(x), expected)


class RandomNet(nn.Module):
    """A random stack of conv/linear/BN/activation blocks with optional residual adds and
    functional ops, described by a list of block specs drawn by hypothesis."""

    def __init__(self, blocks: list[dict], channels: int) -> None:
        super().__init__()
        self.blocks = blocks
        self.layers = nn.ModuleList()
        for spec in blocks:
            layer = nn.ModuleDict()
            groups = channels if spec["depthwise"] else 1
            if spec["kind"] == "convT":
                layer["op"] = nn.ConvTranspose2d(channels, channels, 1, bias=spec["bias"])
            else:
                layer["op"] = nn.Conv2d(channels, channels, spec["kernel"],
                                        padding=spec["kernel"] // 2, groups=groups,
                                        bias=spec["bias"])
            if spec["bn"] != "none":
                layer["bn"] = nn.BatchNorm2d(channels)
            layer["act"] = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "none": nn.Identity(),
                            "hardswish": nn.Hardswish()}[spec["act"]]
            self.layers.append(layer)
        self.head = nn.Linear(channels, 3)
        self.head_bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for spec, layer in zip(self.blocks, self.layers):
            y = x
            if spec["bn"] == "before" and "bn" in layer:
                y = layer["bn"](y)
            y = layer["op"](y)
            if spec["bn"] == "after":
                y = layer["bn"](y)
            y = layer["act"](y)
            if spec["functional"]:
                y = torch.sigmoid(y) * y
            x = x + y if spec["residual"] else y
        return self.head_bn(self.head(x.mean((2, 3))))


block = st.fixed_dictionaries({
    "kind": st.sampled_from(["conv", "convT"]),
    "kernel": st.sampled_from([1, 3]),
    "depthwise": st.booleans(),
    "bias": st.booleans(),
    "bn": st.sampled_from(["after", "before", "none"]),
    "act": st.sampled_from(["relu", "relu6", "none", "hardswish"]),
    "functional": st.booleans(),
    "residual": st.booleans(),
})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(block, min_size=1, max_size=5), channels=st.integers(2, 6),
       seed=st.integers(0, 2**16))
def test_prepare_and_fold_preserve_numerics_on_random_nets(blocks, channels, seed) -> None:
    torch.manual_seed(seed)
    model = randomize_batch_norms(RandomNet(blocks, channels), seed=seed).eval()
    x = torch.randn(4, channels, 6, 6)
    with torch.no_grad():
        expected = model(x)
        gm = fxquant.prepare_model(model)
        assert torch.equal(gm(x), expected)
        assert not PrepareModelPass()(gm).modified
        folded = fxquant.fold_all_batch_norms(gm, dummy_input=x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-5)
        assert not FoldBatchNormPass()(gm).modified
    # every BN right after a conv (and not before a residual use of the conv output) is folded
    for i, spec in enumerate(blocks):
        if spec["bn"] == "after":
            assert (f"layers.{i}.op", f"layers.{i}.bn") in folded_names(folded)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(block, min_size=1, max_size=5), channels=st.integers(2, 6),
       seed=st.integers(0, 2**16), spread=st.floats(0.0, 3.0))
def test_equalize_preserves_numerics_on_random_nets(blocks, channels, seed, spread) -> None:
    """Cross-layer scaling (no high-bias absorption, ReLU6 kept) on random stacks whose weights
    span up to 10**spread per channel: float32-close, and a second run changes nothing."""
    torch.manual_seed(seed)
    model = randomize_batch_norms(RandomNet(blocks, channels), seed=seed).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.logspace(-spread, spread, m.out_channels).view(-1, 1, 1, 1))
    x = torch.randn(4, channels, 6, 6)
    with torch.no_grad():
        expected = model(x)
        gm = fxquant.prepare_model(model)
        EqualizeLayersPass()(gm)
        scale = float(expected.abs().max())
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
        assert not EqualizeLayersPass()(gm).modified
