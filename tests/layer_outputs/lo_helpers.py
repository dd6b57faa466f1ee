"""Small models and helpers shared by the layer-output tests."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from fxquant.layer_outputs.dump_writer import HostInstance


class TinyNet(nn.Module):
    """Conv+BN+in-place ReLU, a residual add, a tuple-producing chunk, pooling and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.side = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn(self.conv(x)))
        b = self.conv2(a) + self.side(x)
        lo, hi = torch.chunk(b, 2, dim=1)
        c = torch.cat([hi, lo], dim=1)
        return self.fc(torch.flatten(self.pool(c), 1))


class TwoInputNet(nn.Module):
    """Two inputs: conv of one, plus the other."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) + y)


def tiny(seed: int = 0) -> TinyNet:
    """A TinyNet in eval mode with non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def inputs(n: int, shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(n)]


def disable_all() -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return so


def build_sim(model: nn.Module, shape: tuple[int, ...], *, batches: int = 2, seed: int = 0,
              device: torch.device | str = "cpu", **kwargs: Any) -> Any:
    """A calibrated W8A8 min-max sim of ``model`` (moved to ``device``)."""
    from fxquant import QuantizationSimModel

    gen = torch.Generator().manual_seed(seed)
    model = model.to(device)
    sim = QuantizationSimModel(model, torch.randn(*shape, generator=gen).to(device),
                               quant_scheme="tf", **kwargs)

    def calibrate(m: nn.Module) -> None:
        for _ in range(batches):
            m(torch.randn(*shape, generator=gen).to(device))

    sim.compute_encodings(calibrate)
    return sim


def reestimate_batch_norms(model: nn.Module, shape: tuple[int, ...], batches: int = 3,
                           seed: int = 0) -> nn.Module:
    """SPEC §7: train mode, momentum=None, a few seeded batches, back to eval."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape, generator=gen))
    return model.eval()


def sample_instance(k: int = 0) -> HostInstance:
    """One input instance for the dump writer: names that sanitize alike, an integer tensor."""
    rng = np.random.default_rng(k)
    return HostInstance([("x", rng.standard_normal((1, 3, 4, 5)).astype(np.float32))],
                        [("conv.1", rng.standard_normal((1, 2, 4, 5)).astype(np.float32)),
                         ("conv_1", rng.standard_normal((1, 2)).astype(np.float32)),
                         ("idx", np.arange(6, dtype=np.int64).reshape(2, 3))])


def varying_instance(k: int) -> HostInstance:
    """Instance ``k`` of a dump whose input and output shapes change from instance to instance."""
    rng = np.random.default_rng(100 + k)
    h, w = 4 + 2 * k, 5 + k
    return HostInstance([("x", rng.standard_normal((1, 3, h, w)).astype(np.float32))],
                        [("conv.1", rng.standard_normal((1, 2, h, w)).astype(np.float32)),
                         ("fc", rng.standard_normal((1, 3)).astype(np.float32))])


def assert_instances_as_written(root: Any, make: Any = varying_instance) -> list[int]:
    """Every instance the dump at ``root`` lists reads back complete and exactly as ``make(k)``
    wrote it; returns the instances."""
    from fxquant.layer_outputs import LayerOutputDump

    dump = LayerOutputDump(root)
    for k in dump.instances:
        want = make(k)
        for name, value in want.outputs:
            np.testing.assert_array_equal(dump.load(name, k), value)
        loaded = dump.load_inputs(k)
        assert len(loaded) == len(want.inputs)
        for got, (_, value) in zip(loaded, want.inputs):
            np.testing.assert_array_equal(got, value)
    return dump.instances
