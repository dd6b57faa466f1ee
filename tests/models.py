"""A tiny zoo of models that exercise the passes: functionals, reuse, BN placements."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BN non-trivial statistics and affine parameters (seeded), so folding is tested
    on more than the identity that freshly built BNs (mean 0, var 1) would give."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def _same_pad_amount(size: int, kernel: int, stride: int, dilation: int) -> int:
    return max((-(size // -stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


@torch.fx.wrap
def pad_same(x: torch.Tensor, kernel: list[int], stride: list[int], dilation: list[int]
             ) -> torch.Tensor:
    """TF "same" padding (timm's ``pad_same``, registered with ``torch.fx.wrap`` as timm does)."""
    ih, iw = x.shape[-2:]
    pad_h = _same_pad_amount(ih, kernel[0], stride[0], dilation[0])
    pad_w = _same_pad_amount(iw, kernel[1], stride[1], dilation[1])
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class Conv2dSame(nn.Conv2d):
    """EfficientNet/TF-style "same" padding: pads with F.pad, then calls F.conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class Conv2dSameInline(nn.Conv2d):
    """The same, with the padding computed inline: Python ``max`` on shapes is untraceable, so
    the whole conv becomes an automatic leaf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        pad_h = _same_pad_amount(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_pad_amount(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class SameConvBnReLU6(nn.Module):
    """Conv2dSame → BN → ReLU6, as in EfficientNet ports."""

    def __init__(self, conv_class: type[nn.Conv2d] = Conv2dSame) -> None:
        super().__init__()
        self.conv = conv_class(3, 8, 3, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        return self.head(x.mean((2, 3)))


class FunctionalNet(nn.Module):
    """Functionals of every family the preparer converts, and a reused module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()  # called twice
        self.fc_weight = nn.Parameter(torch.randn(5, 16) * 0.1)
        self.fc_bias = nn.Parameter(torch.randn(5) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(self.conv1(x)))
        b = self.relu(self.bn2(self.conv2(a)))
        y = F.relu6(a + b) * 0.5 - torch.sigmoid(b)
        y = torch.cat([y, F.hardswish(a)], dim=1)
        y = F.interpolate(y, scale_factor=0.5, mode="nearest")
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        y = y.view(y.size(0), -1)
        return F.softmax(F.linear(y, self.fc_weight, self.fc_bias), dim=-1)


class ConvTransposeNet(nn.Module):
    """ConvTranspose (grouped and not) → BN, Linear → BN1d, depthwise conv → BN, BN → conv."""

    def __init__(self) -> None:
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(3)
        self.conv0 = nn.Conv2d(3, 8, 1)  # no padding, groups 1: forward fold
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.up_bn = nn.BatchNorm2d(6)
        self.gup = nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2, bias=False)
        self.gup_bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 6)
        self.fc_bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(self.pre_bn(x))
        x = torch.relu(self.dw_bn(self.dw(x)))
        x = self.up_bn(self.up(x))
        x = self.gup_bn(self.gup(x))
        x = x.mean((2, 3))
        return self.fc_bn(self.fc(x))


class Conv1d3dNet(nn.Module):
    """Conv1d → BN1d and Conv3d → BN3d, ConvTranspose1d → BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 4, 3)
        self.b1 = nn.BatchNorm1d(4)
        self.t1 = nn.ConvTranspose1d(4, 5, 3)
        self.tb1 = nn.BatchNorm1d(5)
        self.c3 = nn.Conv3d(1, 2, 3)
        self.b3 = nn.BatchNorm3d(2)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y = self.tb1(self.t1(self.b1(self.c1(x))))
        z = self.b3(self.c3(v))
        return y.sum() + z.sum()


class ConvBnNet(nn.Module):
    """conv → bn → relu → conv → bn (two BNs, the second fed by the first)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
