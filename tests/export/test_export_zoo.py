"""Encodings coverage sweep: every enabled quantizer is in the encodings file, every key is a
tensor of <prefix>.onnx, and the QDQ model loads and runs in ONNX Runtime."""
from __future__ import annotations

import onnx
import pytest
import torch
import torchvision

from fxquant.export.sim_export import tensor_names
from fxquant.export.encodings_reader import read_encodings
from fxquant.quantsim.quantsim import QuantizationSimModel
from tests.export.ort_parity import session

ZOO = {  # name: input size
    "resnet18": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64, "efficientnet_b0": 64,
    "regnet_x_400mf": 64, "convnext_tiny": 64, "vit_b_16": 64, "swin_t": 64, "densenet121": 64,
    "inception_v3": 96, "googlenet": 64, "shufflenet_v2_x0_5": 64, "squeezenet1_0": 64,
    "mnasnet0_5": 64, "maxvit_t": 224,
}


# vit_b_16 peaks at 3.5 GB resident (FXQUANT_MEM_PROBE; the others below 2.2 GB): bigmem, so that
# make test runs it alone after its parallel part
@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.bigmem)
                                  if name == "vit_b_16" else name for name in ZOO])
def test_zoo_export_coverage(tmp_path, name: str) -> None:
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    if name == "vit_b_16":
        kwargs = {"image_size": ZOO[name]}  # 4×4 patches: the same graph as at 224, 12× cheaper
    model = getattr(torchvision.models, name)(**kwargs).eval()
    size = ZOO[name]
    x = torch.randn(1, 3, size, size)
    sim = QuantizationSimModel(model, x, quant_scheme="tf")
    sim.compute_encodings(lambda m: m(x))
    files = sim.export(str(tmp_path), name, x)
    names = tensor_names(onnx.load(files["onnx"], load_external_data=False))
    encs = read_encodings(files["encodings"])
    keys = {*encs["activation"], *encs["param"]}
    enabled = {q.name for q in sim.quantizers() if q.quantizer.enabled}
    assert enabled == keys, f"not in encodings: {sorted(enabled - keys)[:10]}"
    missing = sorted(k for k in keys if k not in names)
    assert not missing, f"keys missing from {name}.onnx: {missing[:10]}"
    qdq = onnx.load(files["qdq_onnx"])
    out = session(qdq).run(None, {qdq.graph.input[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = sim.model(x)
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    assert out.shape == tuple(ref.shape)
