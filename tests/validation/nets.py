"""One small model per validator check; ``# line:<tag>`` marks the source line a finding must name."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def line_of(tag: str) -> int:
    """The line number of this file carrying ``# line:<tag>``."""
    with open(__file__, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# line:{tag}"):
                return number
    raise LookupError(tag)


class DataDependentRoot(nn.Module):
    """A Python ``if`` on tensor values in the root's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # line:if
            return y
        return -y


class _Loop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(x.shape[0]):  # line:loop
            x = x + 1
        return x


class UntraceableChild(nn.Module):
    """A submodule whose loop count is a shape: auto-leaf, and concrete mode traces it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.loop = _Loop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.loop(self.conv(x))


class _Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # line:gate
            return x
        return x * 0.5


class DataDependentChild(nn.Module):
    """A submodule with a data-dependent ``if``: opaque even in concrete mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = _Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(x))


class ReusedRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        return self.relu(self.conv2(x))  # line:reuse


class Unconvertible(nn.Module):
    """``torch.atan`` has no module the preparer can make; ``torch.sigmoid`` has one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.conv(x))  # line:sigmoid
        return torch.atan(x)  # line:atan


class InPlaceReused(nn.Module):
    """``relu_`` overwrites the conv output that the add reads afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = y.relu_()  # line:inplace
        return z + y


class InPlaceInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mul_(2.0)  # line:input
        return self.conv(x)


class SharedWeight(nn.Module):
    """One parameter used by a conv module and by a functional conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return F.conv2d(y, self.conv.weight * 1.0)  # line:shared


class TiedLinear(nn.Module):
    """An embedding-style tie: the same parameter read through get_attr twice."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        return F.linear(y, self.weight)  # line:tied


class ExportFails(nn.Module):
    """``torch.linalg.eigh`` has no ONNX function in the dynamo exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        return torch.linalg.eigh(y @ y.transpose(-1, -2))[0]  # line:eigh


class Masked(nn.Module):
    """Boolean-mask indexing: the output length depends on the values."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y[y > 0]  # line:mask


class ConvBnReadTwice(nn.Module):
    """The conv output is read by the BN and by an add: the BN cannot be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y  # line:bn_users


class ConvBnDynamicWeight(nn.Module):
    """A functional conv on a computed weight, then a BN: the preparer cannot convert it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight * 2.0)  # line:fconv
        return self.bn(y)  # line:bn_fconv


class HugeActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        with torch.no_grad():
            self.fc.weight.mul_(1e6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)  # line:huge


class Outlier(nn.Module):
    """A 1x1 conv without bias: one input pixel 10^4 times the rest makes a few outliers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # line:outlier


class Clean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))
