"""Exported names: every encoding key is a tensor of <prefix>.onnx; layers keep canonical names."""
from __future__ import annotations

import onnx
import pytest
import torch
import torchvision

from fxquant.export import export_onnx
from fxquant.export.sim_export import tensor_names
from fxquant.export.encodings_file import read_encodings
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
