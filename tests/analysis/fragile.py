"""A digits CNN with one fragile layer: ``relu1``'s output carries an extra channel of constant
OUTLIER that is sliced away right after, so the FP32 model computes exactly what the trained
DigitsNet computes, but relu1's 8-bit activation quantizer must cover [0, OUTLIER] and loses every
real activation (values of a few units)."""
from __future__ import annotations

import torch
from torch import nn

from tests.quantsim.digits import DigitsNet, digits, trained_net

OUTLIER = 2000.0


class FragileDigitsNet(nn.Module):
    def __init__(self, net: DigitsNet) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 17, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(17)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[:16] = net.conv1.weight
            self.conv1.bias[:16] = net.conv1.bias
            self.conv1.bias[16] = OUTLIER
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(self.bn1, name)[:16] = getattr(net.bn1, name)
            self.bn1.weight[16], self.bn1.bias[16] = 1.0, 0.0
            self.bn1.running_mean[16], self.bn1.running_var[16] = 0.0, 1.0
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2, self.conv3, self.fc = net.conv2, net.bn2, net.conv3, net.fc
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))[:, :16]
        x = self.relu2(self.bn2(self.conv2(x)) + x)
        x = self.relu3(self.conv3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def fragile_net() -> FragileDigitsNet:
    return FragileDigitsNet(trained_net()).eval()


def calibrate(model: nn.Module, batches: int | None = 4) -> None:
    """Calibration on the first 512 training images (AIMET's ``cb(model, args)`` shape)."""
    x = digits()[0]
    for i in range(0, 128 * (batches or 4), 128):
        model(x[i:i + 128])


def evaluate(model: nn.Module, _: object = None) -> float:
    """Top-1 accuracy (0–1) on the test split."""
    _, _, x, y = digits()
    return (model(x).argmax(1) == y).float().mean().item()
