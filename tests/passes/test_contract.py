"""The shared contract every pass keeps, on real models and on random nets (hypothesis):

* numerics preserved when the pass declares ``preserves_numerics`` (bit-exact for the preparer,
  float32-close for folding);
* a second run reports ``modified=False``;
* the declared tags hold afterwards.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxquant
from fxquant.passes.base import state_tags
from tests.models import ConvTransposeNet, FunctionalNet, SameConvBnReLU6, randomize_batch_norms

PASSES = [fxquant.PrepareModelPass, fxquant.FoldBatchNormPass]


def _check_contract(pass_cls: type[fxquant.Pass], model: nn.Module, *inputs: torch.Tensor,
                    exact: bool) -> None:
    model = model.eval()
    with torch.no_grad():
        expected = model(*inputs)
        gm = fxquant.trace(model)
        result = pass_cls()(gm)
        assert pass_cls.provides <= state_tags(result.graph_module)
        got = result.graph_module(*inputs)
        if pass_cls.preserves_numerics:
            if exact:
                assert torch.equal(got, expected)
            else:
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        second = pass_cls()(result.graph_module)
        assert not second.modified, f"{pass_cls.__name__} changed the graph on a second run"


@pytest.mark.parametrize("pass_cls", PASSES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("make_model, shape", [
    (lambda: torchvision.models.resnet18(), (1, 3, 64, 64)),
    (lambda: torchvision.models.mobilenet_v2(), (1, 3, 64, 64)),
    (FunctionalNet, (2, 3, 16, 16)),
    (ConvTransposeNet, (2, 3, 6, 6)),
    (SameConvBnReLU6, (2, 3, 15, 17)),
], ids=["resnet18", "mobilenet_v2", "functional", "conv_transpose", "same_conv"])
def test_pass_contract_on_real_models(pass_cls: type[fxquant.Pass], make_model, shape) -> None:
    model = randomize_batch_norms(make_model())
    _check_contract(pass_cls, model, torch.randn(*shape),
                    exact=pass_cls is fxquant.PrepareModelPass)


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
        assert not fxquant.PrepareModelPass()(gm).modified
        folded = fxquant.fold_all_batch_norms(gm, dummy_input=x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-5)
        assert not fxquant.FoldBatchNormPass()(gm).modified
    # every BN right after a conv (and not before a residual use of the conv output) is folded
    for spec, (i, _) in zip(blocks, enumerate(blocks)):
        if spec["bn"] == "after":
            assert (f"layers.{i}.op", f"layers.{i}.bn") in folded
