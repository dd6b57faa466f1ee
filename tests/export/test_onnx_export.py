"""Exported names: every encoding key is a tensor of <prefix>.onnx; layers keep canonical names."""
from __future__ import annotations

import onnx
import pytest
import torch
import torchvision

from fxquant.export import export_onnx
from fxquant.export.sim_export import tensor_names
from fxquant.export.encodings_reader import read_encodings
from fxquant.quantsim.quantsim import QuantizationSimModel


def _sim(model: torch.nn.Module, x: torch.Tensor) -> QuantizationSimModel:
    sim = QuantizationSimModel(model, x, quant_scheme="tf")
    sim.compute_encodings(lambda m: m(x))
    return sim


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_encoding_keys_are_onnx_tensors(tmp_path, name: str) -> None:
    x = torch.randn(1, 3, 64, 64)
    sim = _sim(getattr(torchvision.models, name)().eval(), x)
    files = sim.export(str(tmp_path), name, x)
    model = onnx.load(files["onnx"])
    names = tensor_names(model)
    encs = read_encodings(files["encodings"])
    keys = [*encs["activation"], *encs["param"]]
    assert keys and all(k in names for k in keys)
    enabled = {q.name for q in sim.quantizers() if q.quantizer.enabled}
    assert enabled == set(keys)
    produced = {v for n in model.graph.node for v in n.output}
    if name == "resnet18":
        assert {"layer1.0.module_add", "layer1.0.relu_1", "layer4.1.conv2"} <= produced
        assert [o.name for o in model.graph.output] == ["fc"]
        assert "conv1.weight" in {t.name for t in model.graph.initializer}
    assert [i.name for i in model.graph.input] == ["x"]


def test_layer_outputs_mapping_and_collisions() -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.add = torch.nn.Identity()   # a layer called like an exporter value ("add")
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x: torch.Tensor):
            y = self.conv(x) + x.mean(1, keepdim=True)
            a, b = torch.chunk(self.drop(y), 2, dim=1)
            return self.add(a), b.relu()

    result = export_onnx(Net().eval(), torch.randn(1, 3, 8, 8))
    produced = {v for n in result.model.graph.node for v in n.output}
    assert result.layer_outputs["conv"] == "conv"
    assert "conv" in produced and "drop" in produced      # Dropout → Identity node named "drop"
    assert len(produced) == len([v for n in result.model.graph.node for v in n.output])
    onnx.checker.check_model(result.model)
    assert not result.unmapped_layers or set(result.unmapped_layers) <= {"add"}


def test_export_onnx_rejects_legacy_args() -> None:
    with pytest.raises(ValueError, match="dynamo"):
        export_onnx(torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32),
                    onnx_export_args={"dynamo": False})


class _Gate(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: fxquant.trace makes this module a leaf
            return x * 2
        return x


class _GatedNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.block = torch.nn.Sequential(torch.nn.ReLU(), _Gate())
        self.head = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.conv(x)))


def test_export_names_the_auto_leaf_that_blocks_it(tmp_path) -> None:
    """Issue 11 item 12: torch's TorchExportError and graph dump; now one ExportError naming the leaf."""
    import fxquant
    from fxquant.export import ExportError

    x = torch.randn(1, 3, 8, 8)
    sim = _sim(_GatedNet().eval(), x)
    assert [leaf.module_path for leaf in fxquant.auto_leaves(sim.model)] == ["block.1"]
    message = (r"^cannot export to ONNX: block\.1 \(.*_Gate\) is a part fxquant\.trace made opaque "
               r"\(TraceError: .*control flow at .*test_onnx_export\.py:\d+: "
               r"if x\.sum\(\) > 0:.*?\) "
               r"and torch\.export cannot export it either \(GuardOnDataDependentSymNode: Could "
               r"not guard on data-dependent expression [^\n]*\)\. Make its forward\(\) traceable "
               r"\(e\.g\. torch\.where or torch\.cond instead of Python `if` on tensor values, no "
               r"data-dependent shapes\), or replace that module before building the sim\.$")
    with pytest.raises(ExportError, match=message) as info:
        sim.export(str(tmp_path / "out"), "m", x)
    assert type(info.value.__cause__).__name__ == "TorchExportError"
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match=r"block\.1 \(.*_Gate\) is a part fxquant\.trace"):
        export_onnx(_GatedNet().eval(), x)


def test_export_failure_with_leaves_torch_does_not_place(monkeypatch) -> None:
    """torch's error names no module call: every leaf is listed as the likely cause."""
    from fxquant.export import ExportError

    def failing(*args, **kwargs):
        raise RuntimeError("\x1b[96mstep 1/3\x1b[0m failed\nlong graph dump …")

    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(ExportError, match=r"^cannot export to ONNX: torch\.export failed "
                                          r"\(RuntimeError: step 1/3 failed\) on a model with 1 "
                                          r"part\(s\) fxquant\.trace made opaque: "
                                          r"block\.1 \(.*_Gate\)\. These are the likely "
                                          "cause") as info:
        export_onnx(_GatedNet().eval(), torch.randn(1, 3, 8, 8))
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="step 1/3"):  # no leaves: torch's error as it is
        export_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval(), torch.randn(1, 3, 8, 8))


def test_model_over_the_protobuf_limit_is_refused_before_exporting(monkeypatch) -> None:
    from fxquant.export import onnx_export
    from fxquant.export.errors import ExportError

    model = torch.nn.Sequential(torch.nn.Linear(64, 64)).eval()   # 16.6 kB of weights
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 10_000)
    called = []
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: called.append(1))
    with pytest.raises(ExportError, match=r"holds 0\.00 GiB of weights, over the 2 GiB limit of one "
                                          r"ONNX .*external_data=True"):
        export_onnx(model, torch.randn(1, 64))
    assert called == []
