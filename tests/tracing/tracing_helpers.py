"""Small models and helpers shared by the tracing tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The file the models below live in: the "user's source line" of their nodes and failures.
HELPERS_FILE = __file__


def nodes(gm: torch.fx.GraphModule, op: str) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == op]


def module_targets(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in nodes(gm, "call_module")}


def same(a, b) -> bool:
    """Exact equality of nested outputs (tensors compared with torch.equal)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# --- small models ---------------------------------------------------------------------------------
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
    """Data-dependent control flow: plain fx cannot trace it (as a submodule or as the root)."""

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
