"""trace(): plain tracing, node metadata, automatic leaves and methods, errors, the model
left unchanged, and torchvision detection models end to end."""
from __future__ import annotations

import operator
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fxquant import _meta
from fxquant.errors import TraceError
from fxquant.tracing import AutoLeaf, auto_leaves, specializations, trace
from tests.tracing.tracing_helpers import (HELPERS_FILE, Block, Net, RootMethod, Untraceable,
                                            WithOpaqueMethod, WithUntraceable, module_targets,
                                            nodes, same)


# --- plain tracing --------------------------------------------------------------------------------
def test_resnet18_trace_equals_eager():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    gm = trace(model)
    assert auto_leaves(gm) == ()
    assert specializations(gm) == ()
    assert "layer1.0.conv1" in module_targets(gm)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


def test_node_meta_module_path_handle_and_source():
    gm = trace(Net())
    graph_nodes = list(gm.graph.nodes)
    for node in nodes(gm, "call_module"):
        assert _meta.module_path(node) == node.target
    relu = next(n for n in graph_nodes if n.op == "call_function" and n.target is F.relu)
    add = next(n for n in graph_nodes if n.op == "call_function" and n.target is operator.add)
    assert _meta.module_path(relu) == "block"
    assert _meta.module_path(add) == "block"
    mean = next(n for n in graph_nodes if n.op == "call_method" and n.target == "mean")
    assert _meta.module_path(mean) == ""
    handles = [_meta.handle(n) for n in graph_nodes]
    assert all(isinstance(h, int) for h in handles)
    assert len(set(handles)) == len(handles)
    src = _meta.source(relu)
    assert src is not None and src.startswith(HELPERS_FILE + ":")
    assert src.endswith("return F.relu(y) + 1  # functional ops inside a submodule")
    assert _meta.get(relu, _meta.ROLE) == _meta.ROLE_OP


def test_untraceable_submodule_becomes_leaf():
    model = WithUntraceable()
    gm = trace(model)
    (leaf,) = auto_leaves(gm)
    assert isinstance(leaf, AutoLeaf)
    assert leaf.module_path == "block"
    assert leaf.module_class.endswith("tracing_helpers.Untraceable")
    assert leaf.method == "forward"
    assert "control flow" in leaf.error
    assert leaf.source is not None and leaf.source.startswith(HELPERS_FILE)
    assert "block" in module_targets(gm) and "block.fc" not in module_targets(gm)
    for sign in (1, -1):
        x = sign * torch.rand(2, 4)
        assert torch.equal(gm(x), model(x))


def test_untraceable_method_becomes_one_opaque_node():
    model = WithOpaqueMethod()
    gm = trace(model)
    (leaf,) = auto_leaves(gm)
    assert (leaf.module_path, leaf.method) == ("post", "postprocess")
    assert str(leaf).startswith("post.postprocess() (")
    calls = [n for n in nodes(gm, "call_method") if n.target == "postprocess"]
    assert len(calls) == 1
    assert "post.fc" in module_targets(gm)  # post.forward is still traced
    for scale in (0.1, 10.0):
        x = scale * torch.rand(3, 4)
        assert torch.equal(gm(x), model(x))


def test_strict_raises_trace_error_naming_the_culprit():
    pattern = (r"cannot trace module 'block' \(.*tracing_helpers\.Untraceable\)(?s:.*)"
               + re.escape(HELPERS_FILE) + r":\d+: if x\.sum\(\) > 0:(?s:.*)"
               r"hint: pass leaf_modules=\['block'\]")
    with pytest.raises(TraceError, match=pattern) as info:
        trace(WithUntraceable(), strict=True)
    assert info.value.module_path == "block"
    assert info.value.module_class.endswith("Untraceable")
    assert info.value.source_line.startswith(HELPERS_FILE)


def test_untraceable_root_raises_with_hint():
    with pytest.raises(TraceError, match=r"'<root>' \(.*tracing_helpers\.Untraceable\)"
                                         r"(?s:.*)hint:.*concrete_args"):
        trace(Untraceable())
    with pytest.raises(TraceError, match=r"'<root>' \(.*tracing_helpers\.Untraceable\): "
                                         r"DataDependentError"
                                         r"(?s:.*)hint: .*even with example_inputs.*Move that "
                                         r"code into a submodule"):
        trace(Untraceable(), example_inputs=torch.rand(2, 4))


def test_non_module_raises_type_error():
    with pytest.raises(TypeError, match=r"expects a torch\.nn\.Module, got function"):
        trace(lambda x: x + 1)


def test_unknown_leaf_path_suggests_close_match():
    with pytest.raises(ValueError, match=r"leaf_modules: 'blok' is not a submodule path.*"
                                         r"Did you mean 'block'"):
        trace(Net(), leaf_modules=["blok"])


def test_leaf_modules_by_path_and_class():
    by_path = trace(Net(), leaf_modules=["block"])
    assert "block" in module_targets(by_path) and "block.conv" not in module_targets(by_path)
    model = torchvision.models.resnet18(weights=None).eval()
    by_class = trace(model, leaf_modules=[torchvision.models.resnet.BasicBlock])
    targets = module_targets(by_class)
    assert {"layer1.0", "layer4.1"} <= targets
    assert not any(t.startswith("layer1.0.") for t in targets)
    assert auto_leaves(by_class) == ()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(by_class(x), model(x))


def test_leaf_marker_class_attribute():
    class Marked(Block):
        _fxquant_leaf = True

    model = Net()
    model.block = Marked()
    gm = trace(model)
    assert "block" in module_targets(gm) and "block.conv" not in module_targets(gm)
    assert auto_leaves(gm) == ()


def test_tracing_leaves_the_model_unchanged():
    class WithConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + torch.tensor([1.0, 2.0, 3.0, 4.0])  # fx stores a constant

    model = WithConstant()
    before = dict(vars(model))
    gm = trace(model)
    assert vars(model) == before and not hasattr(model, "_tensor_constant0")
    x = torch.rand(2, 4)
    assert torch.equal(gm(x), model(x))


def test_concrete_mode_restores_buffers_and_attributes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    mean = model[1].running_mean.clone()
    attrs = set(vars(model))
    trace(model, example_inputs=(torch.rand(2, 3, 8, 8),))
    assert torch.equal(model[1].running_mean, mean)
    assert int(model[1].num_batches_tracked) == 0
    assert set(vars(model)) == attrs


def test_root_method_becomes_opaque_and_defaults_are_kept():
    torch.manual_seed(0)
    model = RootMethod().eval()
    x = torch.randn(3, 4)
    gm = trace(model, example_inputs=(x,))
    (leaf,) = auto_leaves(gm)
    assert (leaf.module_path, leaf.method) == ("", "finish")
    assert str(leaf).startswith("<root>.finish() (")
    assert any("targets = None (default)" == s.assumption for s in specializations(gm))
    for y in (x, torch.full((3, 4), 3.0), torch.full((3, 4), -3.0)):
        assert torch.equal(gm(y), model(y))
    assert torch.equal(gm(x, targets=None), model(x))


# --- torchvision detection models -----------------------------------------------------------------
# --- torchvision detection models -----------------------------------------------------------------
# Resized to 320 (not the default 800) so that the default test run stays fast; low score
# thresholds make sure that there are detections to compare.
FAST_DETECTION = {
    "fasterrcnn_resnet50_fpn": (dict(min_size=320, max_size=320, box_score_thresh=0.01),
                                "backbone.body.layer1.0.conv1"),
    "retinanet_resnet50_fpn": (dict(min_size=320, max_size=320, score_thresh=0.01),
                               "backbone.body.layer1.0.conv1"),
    "ssdlite320_mobilenet_v3_large": (dict(score_thresh=0.001), "backbone.features.0.0.0"),
}


def _check_detection_model(name: str, conv: str | None, **kwargs) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                         **kwargs).eval()
    images = [torch.rand(3, 320, 320)]
    with torch.no_grad():
        expected = model(images)
    gm = trace(model, example_inputs=(images,))
    with torch.no_grad():
        got = gm(images)
    assert same(expected, got)
    assert "len(images_1.shape[-2:]) == 2" in [s.assumption for s in specializations(gm)]
    # Data-dependent post-processing stays opaque; the backbone is traced.
    assert not any(leaf.module_path.startswith("backbone") for leaf in auto_leaves(gm))
    if conv is None:
        return
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == conv)
    assert isinstance(gm.get_submodule(node.target), nn.Conv2d)
    assert len(expected[0]["boxes"]) > 0
    other = [torch.rand(3, 320, 320)]  # other data, same shape: still equal to eager
    with torch.no_grad():
        expected, got = model(other), gm(other)
    assert len(expected[0]["boxes"]) > 0
    assert same(expected, got)


@pytest.mark.parametrize("name", sorted(FAST_DETECTION))
def test_detection_model_traces_with_fallback(name):
    kwargs, conv = FAST_DETECTION[name]
    _check_detection_model(name, conv, **kwargs)


DETECTION_MODELS = torchvision.models.list_models(module=torchvision.models.detection)


# These three peak above 3.3 GB resident each (FXQUANT_MEM_PROBE; the others at most 3.2 GB):
# bigmem, run one at a time after make test's parallel part
BIGMEM_DETECTION = {"fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.bigmem)
                                  if name in BIGMEM_DETECTION else name
                                  for name in DETECTION_MODELS])
def test_detection_model_sweep(name):
    """Every torchvision detection model, default configuration (images resized to 800)."""
    _check_detection_model(name, None)
