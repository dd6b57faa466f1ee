"""Helpers for sim-vs-ONNX Runtime parity: per-layer subgraphs fed the sim's own inputs."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.fx
from onnx import helper
from torch import nn

from fxquant import _meta
from fxquant.export import export_onnx, sim_encodings
from fxquant.export.qdq import build_qdq_model

DISABLE_ALL = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
ENABLE_ALL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


class SmallNet(nn.Module):
    """ConvTranspose, Add, Concat and Linear in one small model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.deconv = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.side = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(11, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn(self.conv(x)))
        b = self.deconv(a) + self.side(x)
        c = torch.cat([b, x], dim=1)
        return self.fc(c.mean((2, 3)))


def session(model: onnx.ModelProto, level: Any = DISABLE_ALL) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def reestimate_batch_norms(model: nn.Module, shape: tuple[int, ...], batches: int = 4,
                           seed: int = 0) -> nn.Module:
    """SPEC §7: train mode, momentum=None (cumulative average), a few seeded batches, eval."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape, generator=gen))
    return model.eval()


def capture(gm: torch.fx.GraphModule, *args: torch.Tensor) -> dict[str, Any]:
    """Every node's output (cloned: in-place ops must not overwrite captures)."""
    env: dict[str, Any] = {}

    class _Capture(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            env[n.name] = torch.utils._pytree.tree_map(
                lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, out)
            return out

    with torch.no_grad():
        _Capture(gm, garbage_collect_values=True).run(*args)
    return env


@dataclasses.dataclass(frozen=True)
class LayerParity:
    layer: str
    elements: int
    equal_fraction: float
    max_lsb: float


@dataclasses.dataclass
class Exported:
    sim: Any
    onnx_export: Any
    qdq: Any


def export_for_parity(sim: Any, dummy: torch.Tensor) -> Exported:
    exported = export_onnx(sim.model, dummy, onnx_export_args={"opset_version": 21})
    encs, bias = sim_encodings(sim)
    qdq = build_qdq_model(exported.model, encs["activation"], encs["param"], bias)
    return Exported(sim, exported, qdq)


def _quantizer_nodes(sim: Any) -> dict[tuple[str, str], torch.fx.Node]:
    out = {}
    for node in sim.model.graph.nodes:
        if _meta.get(node, _meta.ROLE) == _meta.ROLE_QUANTIZER:
            out[(_meta.get(node, _meta.QUANTIZES), _meta.get(node, _meta.LAYER_NAME))] = node
    return out


def _subgraph(model: onnx.ModelProto, target: str, fx_node: str, fx_values: dict[str, str]
              ) -> tuple[onnx.ModelProto, list[str]] | None:
    graph = model.graph
    producer = {v: n for n in graph.node for v in n.output}
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    nodes: list[onnx.NodeProto] = []
    boundary: list[str] = []
    used_inits: set[str] = set()
    seen: set[str] = set()
    stack = [target]
    first = True
    while stack:
        v = stack.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v in inits:
            used_inits.add(v)
            continue
        is_boundary = v in graph_inputs or (not first and (
            v.endswith("/dq") or (v in fx_values and fx_values[v] != fx_node)))
        first = False
        if is_boundary:
            boundary.append(v)
            continue
        node = producer.get(v)
        if node is None:
            return None
        if node not in nodes:
            nodes.append(node)
            stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    g = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info(b, onnx.TensorProto.FLOAT, None) for b in boundary],
        [helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None)],
        [inits[i] for i in sorted(used_inits)])
    sub = helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return sub, boundary


def per_layer_parity(ex: Exported, x: torch.Tensor) -> tuple[list[LayerParity], list[str]]:
    """Each output-quantized layer's QDQ subgraph, fed the sim's captured inputs (DISABLE_ALL)."""
    sim = ex.sim
    env = capture(sim.model, x)
    qnodes = _quantizer_nodes(sim)
    fx_values = dict(ex.onnx_export.fx_values)
    fx_by_target = {str(n.target): n.name for n in ex.onnx_export.graph_module.graph.nodes
                    if n.op == "call_module"}
    results, skipped = [], []
    for (kind, layer), qnode in qnodes.items():
        if kind != "output" or not sim.quantizer(layer).enabled:
            continue
        target = ex.qdq.dequantized[layer]
        built = _subgraph(ex.qdq.model, target, fx_by_target[layer], fx_values)
        if built is None:
            skipped.append(layer)
            continue
        sub, boundary = built
        feeds = {}
        for b in boundary:
            value = None
            if b.endswith("/dq"):
                base = b[:-3]
                key = ("input", base) if ("input", base) in qnodes else ("output", base)
                value = env[qnodes[key].name]
            elif b in env:
                value = env[b]
            elif b in fx_values:
                value = env[fx_values[b]]
                if "#" in b:
                    value = value[int(b.rsplit("#", 1)[1])]
            if not isinstance(value, torch.Tensor):
                break
            feeds[b] = value.numpy()
        else:
            got = session(sub).run(None, feeds)[0]
            want = env[qnode.name].numpy()
            enc = sim.quantizer(layer).encoding
            scale = float(enc.scale) if enc is not None and enc.axis is None else math.nan
            # grid steps apart: compare the integer codes (float64 division is exact enough)
            steps = np.abs(np.rint(got.astype(np.float64) / scale)
                           - np.rint(want.astype(np.float64) / scale))
            results.append(LayerParity(layer, want.size, float(np.mean(got == want)),
                                       float(steps.max()) if want.size else 0.0))
            continue
        skipped.append(layer)
    return results, skipped


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = np.linalg.norm((ref - test).astype(np.float64))
    if noise == 0:
        return math.inf
    return 20 * math.log10(np.linalg.norm(ref.astype(np.float64)) / noise)


def build_sim(model: nn.Module, shape: tuple[int, ...], *, seed: int = 0, batches: int = 2,
              **kwargs: Any) -> Any:
    from fxquant.quantsim.quantsim import QuantizationSimModel

    gen = torch.Generator().manual_seed(seed)
    sim = QuantizationSimModel(model, torch.randn(*shape, generator=gen), quant_scheme="tf", **kwargs)

    def calibrate(m: nn.Module) -> None:
        for _ in range(batches):
            m(torch.randn(*shape, generator=gen))

    sim.compute_encodings(calibrate)
    return sim
