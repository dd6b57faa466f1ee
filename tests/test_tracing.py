"""Tests of fxquant.tracing: plain tracing, node metadata, automatic leaves and concrete mode."""
from __future__ import annotations

import logging
import operator
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fxquant import _meta
from fxquant.errors import TraceError
from fxquant.tracing import (PH, AutoLeaf, DataDependentError, Specialization, auto_leaves,
                             specializations, trace)

THIS_FILE = __file__


def _nodes(gm: torch.fx.GraphModule, op: str) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == op]


def _module_targets(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in _nodes(gm, "call_module")}


def _same(a, b) -> bool:
    """Exact equality of nested outputs (tensors compared with torch.equal)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# --- small models ---------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return F.relu(y) + 1  # functional ops inside a submodule


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Block()

    def forward(self, x):
        return self.block(self.stem(x)).mean((2, 3))


class Untraceable(nn.Module):
    """Data-dependent control flow: plain fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -x


class WithUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.block = Untraceable()

    def forward(self, x):
        return self.block(self.head(x)) * 2


class Post(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)

    def postprocess(self, x):
        if x.max() > 0.5:  # data dependent
            return x.clamp(max=0.5)
        return x


class WithOpaqueMethod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.post = Post()

    def forward(self, x):
        y = self.post(x)
        return self.post.postprocess(y) + 1


class UntraceableRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return x


class ListModel(nn.Module):
    """Takes a list of images and branches on their shapes: fails plain fx tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, images, flip=False):
        outs = []
        for img in images:
            h, w = img.shape[-2:]
            y = self.conv(img[None])
            if h > w:
                y = y.transpose(-1, -2)
            outs.append(y.flatten(1)[:, : min(h, w)].sum(1))
        out = torch.cat(outs)
        return out.flip(0) if flip else out


class Gate(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x):
        if self.mode == "bool":
            positive = (x > 0).sum() > 3  # a tensor: bool() of it is data-dependent
        elif self.mode == "item":
            positive = x.sum().item() > 0
        else:  # nonzero count
            positive = len(x.nonzero()) > 3
        return x * 2 if positive else x - 1


class Gated(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.gate = Gate(mode)

    def forward(self, x):
        return self.gate(self.fc(x)) + x.shape[-1]


class RootMethod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, targets=None):
        y = self.fc(x)
        if targets is not None:
            y = y - targets
        return self.finish(y)

    def finish(self, y):
        keep = y[y > 0]  # data-dependent shape
        if keep.numel() > 2:
            return keep.sum()
        return y.sum()


class ShapeMutatingGate(nn.Module):
    def forward(self, x):
        x.unsqueeze_(0)  # changes its input's shape in place, then branches on data
        if x.sum() > 0:
            return x * 2
        return x


class ShapeMutating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.gate = ShapeMutatingGate()

    def forward(self, x):
        z = self.gate(self.fc(x))
        return z.flatten(len(z.shape) - 2)


# --- plain tracing --------------------------------------------------------------------------------
def test_resnet18_trace_equals_eager():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    gm = trace(model)
    assert auto_leaves(gm) == ()
    assert specializations(gm) == ()
    assert "layer1.0.conv1" in _module_targets(gm)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


def test_node_meta_module_path_handle_and_source():
    gm = trace(Net())
    nodes = list(gm.graph.nodes)
    for node in _nodes(gm, "call_module"):
        assert _meta.module_path(node) == node.target
    relu = next(n for n in nodes if n.op == "call_function" and n.target is F.relu)
    add = next(n for n in nodes if n.op == "call_function" and n.target is operator.add)
    assert _meta.module_path(relu) == "block"
    assert _meta.module_path(add) == "block"
    mean = next(n for n in nodes if n.op == "call_method" and n.target == "mean")
    assert _meta.module_path(mean) == ""
    handles = [_meta.handle(n) for n in nodes]
    assert all(isinstance(h, int) for h in handles)
    assert len(set(handles)) == len(handles)
    src = _meta.source(relu)
    assert src is not None and src.startswith(THIS_FILE + ":")
    assert src.endswith("return F.relu(y) + 1  # functional ops inside a submodule")
    assert _meta.get(relu, _meta.ROLE) == _meta.ROLE_OP


def test_untraceable_submodule_becomes_leaf():
    model = WithUntraceable()
    gm = trace(model)
    (leaf,) = auto_leaves(gm)
    assert isinstance(leaf, AutoLeaf)
    assert leaf.module_path == "block"
    assert leaf.module_class.endswith("test_tracing.Untraceable")
    assert leaf.method == "forward"
    assert "control flow" in leaf.error
    assert leaf.source is not None and leaf.source.startswith(THIS_FILE)
    assert "block" in _module_targets(gm) and "block.fc" not in _module_targets(gm)
    for sign in (1, -1):
        x = sign * torch.rand(2, 4)
        assert torch.equal(gm(x), model(x))


def test_untraceable_method_becomes_one_opaque_node():
    model = WithOpaqueMethod()
    gm = trace(model)
    (leaf,) = auto_leaves(gm)
    assert (leaf.module_path, leaf.method) == ("post", "postprocess")
    assert str(leaf).startswith("post.postprocess() (")
    calls = [n for n in _nodes(gm, "call_method") if n.target == "postprocess"]
    assert len(calls) == 1
    assert "post.fc" in _module_targets(gm)  # post.forward is still traced
    for scale in (0.1, 10.0):
        x = scale * torch.rand(3, 4)
        assert torch.equal(gm(x), model(x))


def test_strict_raises_trace_error_naming_the_culprit():
    pattern = (r"cannot trace module 'block' \(.*test_tracing\.Untraceable\)(?s:.*)"
               + re.escape(THIS_FILE) + r":\d+: if x\.sum\(\) > 0:(?s:.*)"
               r"hint: pass leaf_modules=\['block'\]")
    with pytest.raises(TraceError, match=pattern) as info:
        trace(WithUntraceable(), strict=True)
    assert info.value.module_path == "block"
    assert info.value.module_class.endswith("Untraceable")
    assert info.value.source_line.startswith(THIS_FILE)


def test_untraceable_root_raises_with_hint():
    with pytest.raises(TraceError, match=r"'<root>' \(.*test_tracing\.UntraceableRoot\)"
                                         r"(?s:.*)hint:.*concrete_args"):
        trace(UntraceableRoot())
    with pytest.raises(TraceError, match=r"'<root>' \(.*UntraceableRoot\): DataDependentError"
                                         r"(?s:.*)hint: .*even with example_inputs.*Move that "
                                         r"code into a submodule"):
        trace(UntraceableRoot(), example_inputs=torch.rand(2, 4))


def test_non_module_raises_type_error():
    with pytest.raises(TypeError, match=r"expects a torch\.nn\.Module, got function"):
        trace(lambda x: x + 1)


def test_unknown_leaf_path_suggests_close_match():
    with pytest.raises(ValueError, match=r"leaf_modules: 'blok' is not a submodule path.*"
                                         r"Did you mean 'block'"):
        trace(Net(), leaf_modules=["blok"])


def test_leaf_modules_by_path_and_class():
    by_path = trace(Net(), leaf_modules=["block"])
    assert "block" in _module_targets(by_path) and "block.conv" not in _module_targets(by_path)
    model = torchvision.models.resnet18(weights=None).eval()
    by_class = trace(model, leaf_modules=[torchvision.models.resnet.BasicBlock])
    targets = _module_targets(by_class)
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
    assert "block" in _module_targets(gm) and "block.conv" not in _module_targets(gm)
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


# --- concrete mode --------------------------------------------------------------------------------
def test_list_input_model_traces_in_concrete_mode(caplog):
    torch.manual_seed(0)
    model = ListModel()
    with pytest.raises(TraceError):
        trace(model)  # plain fx: a list input cannot be iterated
    example = [torch.rand(3, 10, 8), torch.rand(3, 6, 9)]
    with caplog.at_level(logging.INFO, logger="fxquant.tracing"):
        gm = trace(model, example_inputs=(example,))
    assert auto_leaves(gm) == ()
    placeholders = [n.name for n in _nodes(gm, "placeholder")]
    assert placeholders[:2] == ["images_1", "images_2"]  # one graph input per tensor
    # Same structure and shapes, other data: the graph answers like the model.
    other = [torch.rand(3, 10, 8), torch.rand(3, 6, 9)]
    assert torch.equal(gm(other), model(other))
    assert torch.equal(gm(example), model(example))  # the caller's inputs were not modified
    specs = specializations(gm)
    assert all(isinstance(s, Specialization) for s in specs)
    texts = [s.assumption for s in specs]
    assert "len(images_1.shape[-2:]) == 2" in texts
    assert "flip = False (default)" in texts
    compare = next(s for s in specs if s.assumption.endswith("is True") and ">" in s.assumption)
    assert compare.kind == "value"
    assert compare.module_path == ""
    assert compare.source.startswith(THIS_FILE) and compare.source.endswith("if h > w:")
    assert "specialized len(images_1.shape[-2:]) == 2" in caplog.text


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
    assert _same(gm(other), model(other))
    assert [n for n in _nodes(gm, "call_function") if n.target is torch.tensor]
    texts = {s.assumption: s.kind for s in specializations(gm)}
    assert texts["len(batch_1) == 3"] == "shape"
    assert texts["float(batch_1.size(1)) == 4.0"] == "value"
    assert texts["int(batch_1.shape[0]) == 3"] == "value"


def test_specialization_records_submodule_path():
    class Inner(nn.Module):
        def forward(self, x):
            n, c = x.shape
            return x.reshape(n * c) if n > 1 else x

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x)

    x = torch.rand(2, 3)
    gm = trace(Outer(), example_inputs=x)  # a single tensor is the one positional argument
    assert torch.equal(gm(x), Outer()(x))
    spec = next(s for s in specializations(gm) if s.assumption == "len(x.shape) == 2")
    assert (spec.module_path, spec.kind) == ("inner", "shape")
    assert spec.source.endswith("n, c = x.shape")
    # Nodes only made to answer the question are pruned from the graph.
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.gt]


@pytest.mark.parametrize("mode", ["bool", "item", "nonzero"])
def test_data_dependent_branch_becomes_leaf(mode):
    torch.manual_seed(0)
    model = Gated(mode).eval()
    x = torch.randn(2, 8)
    gm = trace(model, example_inputs=(x,))
    (leaf,) = auto_leaves(gm)
    assert (leaf.module_path, leaf.method) == ("gate", "forward")
    assert "DataDependentError" in leaf.error and "depends on tensor data" in leaf.error
    assert "gate" in _module_targets(gm) and "fc" in _module_targets(gm)
    # Not specialized: inputs taking the other branch still match the model.
    for y in (x, torch.full((2, 8), 5.0), torch.full((2, 8), -5.0)):
        assert torch.equal(gm(y), model(y))


def test_data_dependent_branch_strict_raises():
    with pytest.raises(TraceError, match=r"cannot trace module 'gate' .*DataDependentError: "
                                         r"bool\(\) of .* depends on tensor data") as info:
        trace(Gated("bool"), example_inputs=(torch.randn(2, 8),), strict=True)
    assert isinstance(info.value.__cause__, DataDependentError)
    assert info.value.source_line.endswith("return x * 2 if positive else x - 1")


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


def test_concrete_mode_restores_buffers_and_attributes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    mean = model[1].running_mean.clone()
    attrs = set(vars(model))
    trace(model, example_inputs=(torch.rand(2, 3, 8, 8),))
    assert torch.equal(model[1].running_mean, mean)
    assert int(model[1].num_batches_tracked) == 0
    assert set(vars(model)) == attrs


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


def test_fallback_retries_replay_values(caplog):
    torch.manual_seed(0)
    model = Gated("bool").eval()
    x = torch.randn(2, 8)
    with caplog.at_level(logging.DEBUG, logger="fxquant.tracing"):
        gm = trace(model, example_inputs=(x,))
    # The retry reuses the values of the first attempt up to the gate (input, fc, ...).
    counts = re.findall(r"attempt (failed|succeeded); it replayed (\d+) node", caplog.text)
    assert [outcome for outcome, _ in counts] == ["failed", "succeeded"]
    assert int(counts[0][1]) == 0 and int(counts[1][1]) >= 2
    assert "not replaying" not in caplog.text
    assert torch.equal(gm(x), model(x))


def test_replay_refuses_values_modified_after_the_divergence(caplog):
    torch.manual_seed(0)
    model = ShapeMutating().eval()
    x = torch.randn(2, 8)
    with caplog.at_level(logging.DEBUG, logger="fxquant.tracing"):
        gm = trace(model, example_inputs=(x,))
    assert "not replaying" in caplog.text
    assert [leaf.module_path for leaf in auto_leaves(gm)] == ["gate"]
    with torch.no_grad():
        expected = model(x.clone())
        assert expected.shape == (1, 16)
        assert torch.equal(gm(x.clone()), expected)


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
    assert _same(expected, got)
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
    assert _same(expected, got)


@pytest.mark.parametrize("name", sorted(FAST_DETECTION))
def test_detection_model_traces_with_fallback(name):
    kwargs, conv = FAST_DETECTION[name]
    _check_detection_model(name, conv, **kwargs)


DETECTION_MODELS = torchvision.models.list_models(module=torchvision.models.detection)


@pytest.mark.slow
@pytest.mark.parametrize("name", DETECTION_MODELS)
def test_detection_model_sweep(name):
    """Every torchvision detection model, default configuration (images resized to 800)."""
    _check_detection_model(name, None)
