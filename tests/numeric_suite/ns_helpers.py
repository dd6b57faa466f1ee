"""Small models and calibrated sims shared by the numeric-suite tests."""
from __future__ import annotations

import torch
from torch import nn

import fxquant
from tests.models import randomize_batch_norms


class MixNet(nn.Module):
    """Conv-BN-ReLU (in place), a residual add, a tensor-by-tensor mul, a cat and a linear head:
    every multi-input op the numeric suite must shadow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(a)))
        z = self.conv3(a)
        s = y + a
        p = s * torch.sigmoid(z)
        c = torch.cat([p, z], dim=1)
        return self.fc(c.mean((2, 3)))


def mixnet(seed: int = 0) -> MixNet:
    """A seeded MixNet in eval mode with non-trivial BN statistics."""
    torch.manual_seed(seed)
    return randomize_batch_norms(MixNet(), seed=seed).eval()


def calibrated_sim(model: nn.Module, shape: tuple[int, ...], device: torch.device | str = "cpu",
                   batches: int = 2, seed: int = 0, **kwargs) -> fxquant.QuantizationSimModel:
    """A min-max sim of ``model`` on ``device``, calibrated on seeded random batches."""
    kwargs.setdefault("quant_scheme", "tf")
    sim = fxquant.QuantizationSimModel(model, torch.randn(*shape).to(device), **kwargs)
    sim.model.to(device)
    gen = torch.Generator().manual_seed(seed)
    data = [torch.randn(*shape, generator=gen).to(device) for _ in range(batches)]
    sim.compute_encodings(lambda m: [m(x) for x in data])
    return sim


def reestimate_batch_norms(model: nn.Module, shape: tuple[int, ...], batches: int = 3
                           ) -> nn.Module:
    """Fresh torchvision models keep BN statistics at mean 0 / var 1 (SPEC §7): estimate them on
    seeded data so that deep activations do not vanish."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape, generator=gen))
    return model.eval()


def quantized_layer_names(sim: fxquant.QuantizationSimModel) -> set[str]:
    """Layers whose output is quantized by an enabled output quantizer."""
    return {q.layer for q in sim.quantizers() if q.kind == "output" and q.quantizer.enabled}


def weight_quantized_layer_names(sim: fxquant.QuantizationSimModel) -> set[str]:
    """Layers whose weight is quantized by an enabled quantizer."""
    return {q.layer for q in sim.quantizers()
            if q.kind == "param" and q.name.endswith(".weight") and q.quantizer.enabled}
