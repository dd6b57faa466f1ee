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


# -- PyTorch's FX Numeric Suite tutorial (pytorch/tutorials prototype_source/
#    fx_numeric_suite_tutorial.py), with only the import of the suite changed ------------------


class _Features(nn.Module):
    """A small MobileNet-like stack: features.<i> = Conv-BN-ReLU, then a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 8, 8, 16, 16]
        self.features = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1),
                          nn.BatchNorm2d(chans[i + 1]), nn.ReLU()) for i in range(4)])
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def _tutorial_models():
    """The tutorial's quantization of its float model: two layers left float, one MinMax."""
    import torch.quantization
    import torch.quantization.quantize_fx as quantize_fx
    from tests.models import randomize_batch_norms

    torch.manual_seed(0)
    float_model = randomize_batch_norms(_Features(), seed=0).eval()
    qconfig_dict = {
        "": torch.quantization.get_default_qconfig("fbgemm"),
        "module_name": [("features.0", None), ("features.1", None),
                        ("features.3", torch.quantization.default_qconfig)],
    }
    datum = torch.randn(1, 3, 16, 16)
    prepared = quantize_fx.prepare_fx(copy.deepcopy(float_model), qconfig_dict, (datum,))
    prepared(datum)
    return prepared, datum, lambda: quantize_fx.convert_fx(copy.deepcopy(prepared))


def _tutorial(ns_module, prepared, datum, convert) -> tuple[list, list]:
    """The tutorial's calls, in its order and with its arguments."""
    import torch.ao.ns.fx.utils

    quantized = convert()
    wt_compare_dict = ns_module.extract_weights("fp32", prepared, "int8", quantized)
    ns_module.extend_logger_results_with_comparison(
        wt_compare_dict, "fp32", "int8", torch.ao.ns.fx.utils.compute_sqnr, "sqnr")
    wt_to_print = []
    for idx, (layer_name, v) in enumerate(wt_compare_dict.items()):
        wt_to_print.append([idx, layer_name, v["weight"]["int8"][0]["prev_node_target_type"],
                            v["weight"]["int8"][0]["values"][0].shape,
                            v["weight"]["int8"][0]["sqnr"][0]])
    quantized = convert()
    float_ns, quantized_ns = ns_module.add_loggers("fp32", copy.deepcopy(prepared), "int8",
                                                   quantized, ns_module.OutputLogger)
    float_ns(datum)
    quantized_ns(datum)
    act_compare_dict = ns_module.extract_logger_info(float_ns, quantized_ns,
                                                     ns_module.OutputLogger, "int8")
    ns_module.extend_logger_results_with_comparison(
        act_compare_dict, "fp32", "int8", torch.ao.ns.fx.utils.compute_sqnr, "sqnr")
    act_to_print = []
    for idx, (layer_name, v) in enumerate(act_compare_dict.items()):
        act_to_print.append([idx, layer_name, v["node_output"]["int8"][0]["prev_node_target_type"],
                             v["node_output"]["int8"][0]["values"][0].shape,
                             v["node_output"]["int8"][0]["sqnr"][0]])
    return wt_to_print, act_to_print


def test_the_fx_numeric_suite_tutorial_runs_with_only_the_import_changed() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared, datum, convert = _tutorial_models()
        tns, _ = _torch_ns()
        theirs = _tutorial(tns, prepared, datum, convert)
        ours = _tutorial(ns, prepared, datum, convert)
    for t_rows, o_rows, kind in zip(theirs, ours, ("weight", "activation")):
        # torch keys by node name (features_2_0), fxquant by module path (features.2.0); torch
        # has no row for the functional mean, fxquant names it module_mean
        o_by_name = {row[1].replace(".", "_"): row for row in o_rows}
        assert set(o_by_name) - {"module_mean"} == {row[1] for row in t_rows}, kind
        for _, name, type_, shape, sqnr in t_rows:
            _, _, o_type, o_shape, o_sqnr = o_by_name[name]
            assert o_type == type_ and o_shape == shape, (kind, name)
            if math.isinf(float(sqnr)):  # features.0 / features.1 are left float
                assert math.isinf(float(o_sqnr)), (kind, name)
            else:
                assert abs(float(o_sqnr) - float(sqnr)) < 0.01, (kind, name)
                assert 25 < float(sqnr) < 60
    assert {row[1] for row in ours[0]} >= {"features.0.0", "features.1.0"}


def test_the_tutorials_calls_on_an_fxquant_sim() -> None:
    """The tutorial's call sequence with a sim as the quantized model."""
    from tests.models import randomize_batch_norms
    from tests.numeric_suite.ns_helpers import calibrated_sim

    torch.manual_seed(0)
    model = randomize_batch_norms(_Features(), seed=0).eval()
    datum = torch.randn(1, 3, 16, 16)
    sim = calibrated_sim(model, (1, 3, 16, 16))
    sim.model.get_submodule("features.0.2.output_quantizer").enabled = False
    weights = ns.extract_weights("fp32", model, "int8", sim)
    ns.extend_logger_results_with_comparison(weights, "fp32", "int8", ns.compute_sqnr, "sqnr")
    rows = [(name, v["weight"]["int8"][0]["prev_node_target_type"],
             v["weight"]["int8"][0]["values"][0].shape, float(v["weight"]["int8"][0]["sqnr"][0]))
            for name, v in weights.items()]
    assert [r[0] for r in rows] == ["features.0.0", "features.1.0", "features.2.0",
                                    "features.3.0", "classifier"]
    assert rows[0][1] == "torch.nn.modules.conv.Conv2d" and rows[0][2] == (8, 3, 3, 3)
    assert all(35 < r[3] < 70 for r in rows)
    float_ns, sim_ns = ns.add_loggers("fp32", copy.deepcopy(model), "int8", copy.deepcopy(sim),
                                      ns.OutputLogger)
    float_ns(datum)
    sim_ns(datum)
    acts = ns.extract_logger_info(float_ns, sim_ns, ns.OutputLogger, "int8")
    ns.extend_logger_results_with_comparison(acts, "fp32", "int8", ns.compute_sqnr, "sqnr")
    assert "features.0.2" in acts  # its quantizer is disabled: still reported
    for name, v in acts.items():
        entry = v["node_output"]["int8"][0]
        assert "Quantizer" not in entry["prev_node_target_type"]
        assert entry["values"][0].shape == v["node_output"]["fp32"][0]["values"][0].shape
    sqnr = {name: float(v["node_output"]["int8"][0]["sqnr"][0]) for name, v in acts.items()}
    assert all(15 < s < 60 for s in sqnr.values())
