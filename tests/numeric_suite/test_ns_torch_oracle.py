"""Oracle: on a torch.ao-quantized model (prepare_fx/convert_fx, x86), fxquant's numeric suite
reports the same per-layer SQNR as ``torch.ao.ns._numeric_suite_fx`` (within 0.01 dB) for every
layer torch reports. CPU only: torch.ao's quantized kernels run on CPU."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import fxquant.ns as ns

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


class ConvReluConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.relu(self.conv1(x)))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def quantized() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.manual_seed(0)
        model = ConvReluConvLinear().eval()
        x = torch.randn(4, 3, 8, 8)
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
        prepared(x)
        return model, convert_fx(prepared), x


def _torch_ns():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.ns._numeric_suite_fx as tns
        from torch.ao.ns.fx.utils import compute_sqnr
    return tns, compute_sqnr


# torch names functionals by node name, fxquant by canonical module name
_OURS = {"flatten": "module_flatten"}


def _sqnr(results: dict, kind: str) -> dict[str, float]:
    return {k: float(v[kind]["int8"][0]["sqnr"][0]) for k, v in results.items()}


def test_weight_sqnr_matches_torch(quantized) -> None:
    model, quant, _ = quantized
    tns, t_sqnr = _torch_ns()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = tns.extract_weights("fp32", model, "int8", quant)
        tns.extend_logger_results_with_comparison(theirs, "fp32", "int8", t_sqnr, "sqnr")
    ours = ns.extract_weights("fp32", model, "int8", quant)
    ns.extend_logger_results_with_comparison(ours, "fp32", "int8", ns.compute_sqnr, "sqnr")
    t, o = _sqnr(theirs, "weight"), _sqnr(ours, "weight")
    assert set(t) == {"conv1", "conv2", "fc"}
    for layer, value in t.items():
        assert abs(o[_OURS.get(layer, layer)] - value) < 0.01, layer


def test_activation_sqnr_matches_torch(quantized) -> None:
    model, quant, x = quantized
    tns, t_sqnr = _torch_ns()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ta, tb = tns.add_loggers("fp32", copy.deepcopy(model), "int8", copy.deepcopy(quant),
                                 tns.OutputLogger)
        ta(x)
        tb(x)
        theirs = tns.extract_logger_info(ta, tb, tns.OutputLogger, "int8")
        tns.extend_logger_results_with_comparison(theirs, "fp32", "int8", t_sqnr, "sqnr")
    a_ns, b_ns = ns.add_loggers("fp32", model, "int8", quant)
    with torch.no_grad():
        a_ns(x)
        b_ns(x)
    ours = ns.extract_logger_info(a_ns, b_ns, ns.OutputLogger, "int8")
    ns.extend_logger_results_with_comparison(ours, "fp32", "int8", ns.compute_sqnr, "sqnr")
    t, o = _sqnr(theirs, "node_output"), _sqnr(ours, "node_output")
    assert len(t) == 4
    for layer, value in t.items():
        assert abs(o[_OURS.get(layer, layer)] - value) < 0.01, layer
    # keyed by model A's names, the fused ConvReLU2d 'conv1' is compared with A's 'relu'
    by_a = ns.extract_logger_info(a_ns, b_ns, ns.OutputLogger, "fp32")
    assert "relu" in by_a and "conv1" not in by_a
    assert any(u.layer == "conv1" and "fused layer 'conv1'" in u.reason for u in by_a.unmatched)


def test_shadowing_a_torch_quantized_model(quantized) -> None:
    model, quant, x = quantized
    shadow = ns.add_shadow_loggers("fp32", model, "int8", quant)
    with torch.no_grad():
        torch.testing.assert_close(shadow(x), model(x))
    results = ns.extract_shadow_logger_info(shadow, ns.OutputLogger, "int8")
    ns.extend_logger_results_with_comparison(results, "fp32", "int8", ns.compute_sqnr, "sqnr")
    sqnr = _sqnr(results, "node_output")
    assert set(sqnr) == {"conv1", "conv2", "module_flatten", "fc"}
    assert all(math.isfinite(v) and v > 25 for v in sqnr.values())
    with pytest.raises(ValueError, match="pass it as model b"):
        ns.add_shadow_loggers("int8", quant, "fp32", model)
