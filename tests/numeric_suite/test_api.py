"""The torch-shaped API on fxquant sims: results shape, canonical keys, streaming, shadowing of
add/mul/cat, what is left unmatched, and every error path."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import fxquant
import fxquant.ns as ns
from tests.numeric_suite.ns_helpers import (calibrated_sim, mixnet, quantized_layer_names,
                                            weight_quantized_layer_names)

SHAPE = (2, 3, 8, 8)
ENTRY_KEYS = {"type", "values", "prev_node_name", "prev_node_target_type", "ref_node_name",
              "ref_node_target_type", "index_within_arg", "index_of_arg", "fqn", "qconfig_str"}


@pytest.fixture
def pair(device: torch.device) -> tuple[nn.Module, fxquant.QuantizationSimModel]:
    model = mixnet().to(device)
    return model, calibrated_sim(model, SHAPE, device)


def _inputs(device: torch.device, n: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(*SHAPE, generator=gen).to(device) for _ in range(n)]


def _assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-equal on CPU; on CUDA the library may pick another kernel for the same call."""
    if got.device.type == "cpu":
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def _sqnr(results: dict, model: str, kind: str = "node_output") -> dict[str, float]:
    return {layer: float(v[kind][model][0]["sqnr"][0]) for layer, v in results.items()
            if kind in v}


def test_extract_weights_compares_fake_quantized_weights(pair) -> None:
    model, sim = pair
    results = ns.extract_weights("float", model, "int8", sim)
    assert set(results) == weight_quantized_layer_names(sim)
    ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr, "sqnr")
    entry = results["conv2"]["weight"]["int8"][0]
    assert ENTRY_KEYS <= set(entry) and entry["type"] == "weight"
    folded = fxquant.prepare_model(model)
    fxquant.fold_all_batch_norms(folded)
    float_weight = results["conv2"]["weight"]["float"][0]["values"][0]
    torch.testing.assert_close(float_weight, folded.conv2.weight)
    _assert_same(entry["values"][0], sim.model.conv2.weight)  # through the quantizer
    assert all(35 < s < 70 for s in _sqnr(results, "int8", "weight").values())


def test_activation_keys_are_the_sims_quantized_layer_names(pair, device) -> None:
    model, sim = pair
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, save_activations=False)
    with torch.no_grad():
        for x in _inputs(device):
            a_ns(x)
            b_ns(x)
    results = ns.extract_logger_info(a_ns, b_ns, ns.OutputLogger, "float")
    assert set(results) == quantized_layer_names(sim)
    assert {"module_add", "module_mul", "module_cat"} <= set(results)
    assert list(results) == [n for n in fxquant.core.layers.layer_nodes(sim.model)
                             if n in results]  # model A's graph order
    ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr, "sqnr")
    entry = results["module_add"]["node_output"]["int8"][0]
    assert ENTRY_KEYS <= set(entry) and entry["values"] == []  # streaming: no tensors kept
    assert entry["stats"]["count"] == 3 and entry["comparison_stats"]["float"]["count"] == 3
    assert "AffineQuantizer" in entry["qconfig_str"]
    assert all(15 < s < 60 for s in _sqnr(results, "int8").values())


def test_streaming_equals_saved_activations_over_all_batches(pair, device) -> None:
    model, sim = pair
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, save_activations=True)
    with torch.no_grad():
        for x in _inputs(device):
            a_ns(x)
            b_ns(x)
    saved = ns.extract_logger_info(a_ns, b_ns)
    entry_a = saved["module_cat"]["node_output"]["float"][0]
    entry_b = saved["module_cat"]["node_output"]["int8"][0]
    assert len(entry_b["values"]) == 3
    streamed = entry_b["comparison_stats"]["float"]
    x = torch.cat([v.reshape(-1) for v in entry_a["values"]])
    y = torch.cat([v.reshape(-1) for v in entry_b["values"]])
    expected = ns.compute_sqnr(x, y).item()
    assert 10 * math.log10(streamed["signal"] / streamed["noise"]) == pytest.approx(expected,
                                                                                      abs=1e-3)
    ns.extend_logger_results_with_comparison(saved, "float", "int8", ns.compute_sqnr, "sqnr")
    assert len(entry_b["sqnr"]) == 3  # one per batch, as torch does with saved values
    ns.loggers_set_save_activations(b_ns, False)


def test_shadowing_covers_add_mul_cat_and_keeps_model_a_outputs(pair, device) -> None:
    model, sim = pair
    shadow = ns.add_shadow_loggers("float", model, "int8", sim)
    folded = fxquant.prepare_model(model)
    fxquant.fold_all_batch_norms(folded)
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim)
    with torch.no_grad():
        for x in _inputs(device):
            _assert_same(shadow(x), folded(x))
            a_ns(x)
            b_ns(x)
    shadowed = ns.extract_shadow_logger_info(shadow, ns.OutputLogger, "float")
    plain = ns.extract_logger_info(a_ns, b_ns)
    for results in (shadowed, plain):
        ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr,
                                                 "sqnr")
    assert set(shadowed) == quantized_layer_names(sim)
    s, u = _sqnr(shadowed, "int8"), _sqnr(plain, "int8")
    assert sum(s.values()) / len(s) >= sum(u.values()) / len(u) - 0.5
    # the first quantized layer has no propagated error: shadowed == unshadowed
    assert s["relu"] == pytest.approx(u["relu"], abs=1e-4)
    assert not shadowed.unmatched


def test_should_log_inputs_indexes_arguments(pair, device) -> None:
    model, sim = pair
    shadow = ns.add_shadow_loggers("float", model, "int8", sim, should_log_inputs=True)
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, should_log_inputs=True)
    x = _inputs(device, 1)[0]
    with torch.no_grad():
        shadow(x)
        a_ns(x)
        b_ns(x)
    for results in (ns.extract_shadow_logger_info(shadow), ns.extract_logger_info(a_ns, b_ns)):
        add = results["module_add"]["node_input"]["int8"]
        cat = results["module_cat"]["node_input"]["int8"]
        assert [(e["index_of_arg"], e["index_within_arg"]) for e in add] == [(0, 0), (1, 0)]
        assert [(e["index_of_arg"], e["index_within_arg"]) for e in cat] == [(0, 0), (0, 1)]
        ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr,
                                                 "sqnr")
        assert all(math.isfinite(float(e["sqnr"][0])) for e in add + cat)


def test_float_model_compared_with_itself_is_exact(device) -> None:
    model = mixnet().to(device)
    shadow = ns.add_shadow_loggers("x", model, "y", copy.deepcopy(model))
    with torch.no_grad():
        shadow(_inputs(device, 1)[0])
    results = ns.extract_shadow_logger_info(shadow)
    ns.extend_logger_results_with_comparison(results, "x", "y", ns.compute_sqnr, "sqnr")
    assert {"conv1", "bn1", "module_add", "module_cat", "fc"} <= set(results)  # every layer
    assert all(math.isinf(v) for v in _sqnr(results, "y").values())


def test_sim_against_sim_with_another_bit_width(device) -> None:
    model = mixnet().to(device)
    sim8 = calibrated_sim(model, SHAPE, device)
    sim4 = calibrated_sim(model, SHAPE, device, default_output_bw=4, default_param_bw=4)
    weights = ns.extract_weights("w8a8", sim8, "w4a4", sim4)
    ns.extend_logger_results_with_comparison(weights, "w8a8", "w4a4", ns.compute_sqnr, "sqnr")
    assert all(10 < v < 40 for v in _sqnr(weights, "w4a4", "weight").values())
    shadow = ns.add_shadow_loggers("w8a8", sim8, "w4a4", sim4)
    with torch.no_grad():
        _assert_same(shadow(_inputs(device, 1)[0]), sim8.model(_inputs(device, 1)[0]))


def test_users_models_are_not_changed(pair, device) -> None:
    model, sim = pair
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_code = sim.model.code
    before_meta = [dict(n.meta.get("fxquant", {})) for n in sim.model.graph.nodes]
    ns.add_shadow_loggers("float", model, "int8", sim, should_log_inputs=True)
    ns.add_loggers("float", model, "int8", sim)
    ns.extract_weights("float", model, "int8", sim)
    assert all(torch.equal(before_model[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.bn1, nn.BatchNorm2d) and sim.model.code == before_code
    assert [dict(n.meta.get("fxquant", {})) for n in sim.model.graph.nodes] == before_meta
    assert not any(isinstance(m, ns.OutputLogger) for m in sim.model.modules())


def test_loggers_survive_dead_code_elimination(pair) -> None:
    model, sim = pair
    shadow = ns.add_shadow_loggers("float", model, "int8", sim)
    count = sum(isinstance(m, ns.OutputLogger) for m in shadow.modules())
    shadow.graph.eliminate_dead_code()
    shadow.recompile()
    used = {n.target for n in shadow.graph.nodes if n.op == "call_module"}
    assert sum(isinstance(shadow.get_submodule(t), ns.OutputLogger) for t in used) == count


class _Renamed(nn.Module):
    """MixNet's stem with a differently named and a differently typed layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Linear(8, 8)  # same name as MixNet's conv, another type
        self.extra = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.extra(self.conv1(x)).mean((2, 3)))


def test_what_cannot_be_matched_is_listed_with_the_reason() -> None:
    results = ns.extract_weights("mix", mixnet(), "other", _Renamed(), layers="all")
    reasons = {(u.model, u.layer): u.reason for u in results.unmatched}
    assert "has no layer named 'extra'" in reasons[("other", "extra")]
    assert "Conv2d but model 'other' a torch.nn.modules.linear.Linear" in \
        reasons[("mix", "conv2")]
    assert "has no layer named 'fc'" in reasons[("mix", "fc")]
    assert set(results) == {"conv1"}
    with pytest.raises(ValueError, match="layer 'extra' of model 'other' cannot be compared: "
                                         "model 'mix' has no layer named 'extra'"):
        ns.add_loggers("mix", mixnet(), "other", _Renamed(), layers=["extra"])


class _FakeQuantConv(nn.Conv2d):
    """A user's own fake-quant layer: quantizes its weight inside forward (untraceable, so it
    stays one opaque layer under its own name)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(self.weight.detach().abs().max()) / 127
        w = torch.fake_quantize_per_tensor_affine(self.weight, scale, 0, -128, 127)
        return self._conv_forward(x, w, self.bias)


def test_float_vs_a_users_own_fake_quant_model(device) -> None:
    model = mixnet().to(device)
    own = copy.deepcopy(model)
    fq = _FakeQuantConv(8, 8, 3, padding=1, bias=False).to(device)
    fq.load_state_dict(own.conv2.state_dict())
    own.conv2 = fq
    shadow = ns.add_shadow_loggers("float", model, "own", own)
    with torch.no_grad():
        shadow(_inputs(device, 1)[0])
    results = ns.extract_shadow_logger_info(shadow)
    ns.extend_logger_results_with_comparison(results, "float", "own", ns.compute_sqnr, "sqnr")
    sqnr = _sqnr(results, "own")
    assert math.isfinite(sqnr["conv2"]) and sqnr["conv2"] > 30
    assert math.isinf(sqnr["conv1"]) and math.isinf(sqnr["module_add"])  # only conv2 differs


def test_model_name_to_use_and_layer_selection(pair, device) -> None:
    model, sim = pair
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, layers=["module_cat", "conv2"])
    with torch.no_grad():
        a_ns(_inputs(device, 1)[0])
        b_ns(_inputs(device, 1)[0])
    assert set(ns.extract_logger_info(a_ns, b_ns, ns.OutputLogger, "int8")) == {"module_cat",
                                                                                 "conv2"}
    a_all, _ = ns.add_loggers("float", model, "int8", sim, layers="all")
    assert sum(isinstance(m, ns.OutputLogger) for m in a_all.modules()) > len(
        quantized_layer_names(sim))


def test_api_errors_name_the_culprit(pair) -> None:
    model, sim = pair
    with pytest.raises(ValueError, match="need different names, both are 'a'"):
        ns.add_loggers("a", model, "a", sim)
    with pytest.raises(ValueError, match="name_b must be a non-empty string"):
        ns.extract_weights("a", model, "", sim)
    with pytest.raises(TypeError, match="base_name_to_sets_of_related_ops is a torch.ao.ns "
                                        "option"):
        ns.add_loggers("a", model, "b", sim, ns.OutputLogger, False, {})
    with pytest.raises(TypeError, match="logger_cls must be fxquant.numeric_suite.OutputLogger"):
        ns.add_shadow_loggers("a", model, "b", sim, nn.Identity)
    with pytest.raises(TypeError, match="must be a torch.nn.Module or a"):
        ns.extract_weights("a", model, "b", "sim")
    with pytest.raises(ValueError, match="did you mean 'module_cat'"):
        ns.add_loggers("a", model, "b", sim, layers=["module_cta"])
    with pytest.raises(ValueError, match="write layers=\\['conv1'\\]"):
        ns.add_loggers("a", model, "b", sim, layers="conv1")
    with pytest.raises(ValueError, match="model_name_to_use_for_layer_names='c' is not one"):
        ns.extract_weights("a", model, "b", sim, model_name_to_use_for_layer_names="c")
    uncalibrated = fxquant.QuantizationSimModel(mixnet(), torch.randn(*SHAPE))
    with pytest.raises(ValueError, match="no encoding yet.*compute_encodings"):
        ns.add_loggers("a", model, "b", uncalibrated)
    a_ns, b_ns = ns.add_loggers("a", model, "b", sim, save_activations=False)
    with pytest.raises(ValueError, match="'c' is not one of the compared models"):
        ns.extract_logger_info(a_ns, b_ns, ns.OutputLogger, "c")
    with pytest.raises(ValueError, match="no OutputLogger found"):
        ns.extract_logger_info(model, model)
    with pytest.raises(TypeError, match="torch.ao.ns loggers cannot be read"):
        ns.extract_logger_info(a_ns, b_ns, nn.Identity)
    x = torch.randn(*SHAPE).to(next(model.parameters()).device)
    with torch.no_grad():
        a_ns(x)
        b_ns(x)
    results = ns.extract_logger_info(a_ns, b_ns)
    with pytest.raises(ValueError, match="kept running sums only.*save_activations=True"):
        ns.extend_logger_results_with_comparison(results, "a", "b", lambda x, y: x, "custom")
    with pytest.raises(ValueError, match="has no results of model 'c'"):
        ns.extend_logger_results_with_comparison(results, "a", "c", ns.compute_sqnr, "sqnr")
    results["relu"]["node_output"]["b"][0]["index_of_arg"] = 1
    with pytest.raises(ValueError, match="model 'a' has no node_output at argument \\(1, 0\\)"):
        ns.extend_logger_results_with_comparison(results, "a", "b", ns.compute_sqnr, "sqnr")
    with pytest.raises(TypeError, match="expected models returned by add_loggers"):
        ns.extract_logger_info(a_ns, "b_ns")


# -- torch's semantics in the torch-shaped API (issue 10 item 7) ------------------------------


def test_values_are_saved_by_default_as_torch_does(pair, device) -> None:
    model, sim = pair
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim)
    shadow = ns.add_shadow_loggers("float", model, "int8", sim)
    xs = _inputs(device, 2)
    with torch.no_grad():
        for x in xs:
            a_ns(x)
            b_ns(x)
            shadow(x)
    folded = fxquant.prepare_model(model)
    fxquant.fold_all_batch_norms(folded)
    for results in (ns.extract_logger_info(a_ns, b_ns, ns.OutputLogger, "int8"),
                    ns.extract_shadow_logger_info(shadow, ns.OutputLogger, "int8")):
        ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr,
                                                 "sqnr")
        entry = results["conv3"]["node_output"]["int8"][0]
        assert len(entry["values"]) == 2 and len(entry["sqnr"]) == 2  # one per call
        expected = ns.compute_sqnr(folded.conv3(folded.relu(folded.conv1(xs[1]))),
                                   entry["values"][1])
        assert float(entry["sqnr"][1]) == pytest.approx(float(expected), abs=1e-4)
        # the sim's value is on its quantization grid: the output quantizer maps it to itself
        _assert_same(sim.model.conv3.output_quantizer(entry["values"][0]), entry["values"][0])


def test_streaming_is_an_explicit_choice(pair, device) -> None:
    model, sim = pair
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, save_activations=False)
    x = _inputs(device, 1)[0]
    with torch.no_grad():
        a_ns(x)
        b_ns(x)
    results = ns.extract_logger_info(a_ns, b_ns)
    assert all(e["values"] == [] for v in results.values() for m in v["node_output"].values()
               for e in m)
    report = ns.compare(model, sim, [x], name_a="float", name_b="int8")
    assert all(e["values"] == [] for v in report.results["activation"].values()
               for m in v["node_output"].values() for e in m)


def test_prev_node_target_type_is_the_layers_type_as_in_torch(pair, device) -> None:
    model, sim = pair
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, should_log_inputs=True)
    shadow = ns.add_shadow_loggers("float", model, "int8", sim)
    x = _inputs(device, 1)[0]
    with torch.no_grad():
        a_ns(x)
        b_ns(x)
        shadow(x)
    expected = {"relu": "torch.nn.modules.activation.ReLU", "conv3": "torch.nn.modules.conv.Conv2d",
                "fc": "torch.nn.modules.linear.Linear", "module_add": "fxquant.nn.Add"}
    for results in (ns.extract_logger_info(a_ns, b_ns), ns.extract_shadow_logger_info(shadow)):
        for layer, type_ in expected.items():
            for model_name in ("float", "int8"):
                entry = results[layer]["node_output"][model_name][0]
                assert entry["prev_node_target_type"] == type_, (layer, model_name)
                assert entry["prev_node_name"].endswith(layer.replace(".", "_"))
    weights = ns.extract_weights("float", model, "int8", sim)
    assert weights["conv2"]["weight"]["int8"][0]["prev_node_target_type"] == \
        "torch.nn.modules.conv.Conv2d"
    # an input is reported as the layer that produced it (through its quantizer)
    inputs = ns.extract_logger_info(a_ns, b_ns)["module_cat"]["node_input"]["int8"]
    assert [e["prev_node_target_type"] for e in inputs] == ["fxquant.nn.Mul",
                                                            "torch.nn.modules.conv.Conv2d"]
    assert all("Quantizer" not in e["prev_node_target_type"] for v in
               ns.extract_logger_info(a_ns, b_ns).values() for kind in v.values()
               for entries in kind.values() for e in entries)


def test_layers_with_disabled_quantizers_are_still_reported(pair, device) -> None:
    model, sim = pair
    sim = copy.deepcopy(sim)
    sim.model.conv3.output_quantizer.enabled = False
    sim.model.conv2.parametrizations.weight[0].enabled = False
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim)
    x = _inputs(device, 1)[0]
    with torch.no_grad():
        a_ns(x)
        b_ns(x)
    results = ns.extract_logger_info(a_ns, b_ns)
    ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr, "sqnr")
    assert "conv3" in results  # its output is not quantized: only the error of its input
    assert set(results) == quantized_layer_names(sim) | {"conv3"}
    sqnr = _sqnr(results, "int8")
    assert math.isfinite(sqnr["conv3"]) and sqnr["conv3"] > sqnr["module_cat"] - 10
    weights = ns.extract_weights("float", model, "int8", sim)
    ns.extend_logger_results_with_comparison(weights, "float", "int8", ns.compute_sqnr, "sqnr")
    assert "conv2" in weights and math.isinf(_sqnr(weights, "int8", "weight")["conv2"])
    assert math.isfinite(_sqnr(weights, "int8", "weight")["conv1"])


def test_flow_with_a_deep_copied_sim(pair, device) -> None:
    """torch's docstring deep-copies the models it instruments: copy.deepcopy(sim) works and
    gives the same numbers as the sim itself."""
    model, sim = pair
    x = _inputs(device, 1)[0]
    numbers = []
    for b in (sim, copy.deepcopy(sim)):
        a_ns, b_ns = ns.add_loggers("float", copy.deepcopy(model), "int8", b, ns.OutputLogger)
        with torch.no_grad():
            a_ns(x)
            b_ns(x)
        results = ns.extract_logger_info(a_ns, b_ns, ns.OutputLogger, "int8")
        ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr,
                                                 "sqnr")
        numbers.append(_sqnr(results, "int8"))
    assert numbers[0] == numbers[1] and all(15 < v < 60 for v in numbers[0].values())
    shadow = ns.add_shadow_loggers("float", copy.deepcopy(model), "int8", copy.deepcopy(sim))
    copied = copy.deepcopy(shadow)  # the instrumented models deep-copy too
    with torch.no_grad():
        copied(x)
    results = ns.extract_shadow_logger_info(copied)
    assert results["relu"]["node_output"]["int8"][0]["values"]
    assert not ns.extract_shadow_logger_info(shadow)["relu"]["node_output"]["int8"][0]["values"]


# -- one model's results never stand alone (issue 10 item 7) ----------------------------------


class _Block(nn.Module):
    """An EfficientNet-style block: one activation module called twice (the preparer splits
    it into ``act`` and ``act_1``), squeeze-excitation and a residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.dw = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.act = nn.SiLU()
        self.se = nn.Conv2d(2 * c, 2 * c, 1)
        self.project = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.expand(x)))
        y = self.act(self.bn2(self.dw(y)))
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        return x + self.project(y)


class _TinyEfficientNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(_Block(8), _Block(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _tiny_efficientnet() -> nn.Module:
    from tests.models import randomize_batch_norms

    torch.manual_seed(0)
    return randomize_batch_norms(_TinyEfficientNet(), seed=0).eval()


def _both_models_everywhere(results: dict, names: tuple[str, str]) -> None:
    for layer, by_type in results.items():
        for kind, by_model in by_type.items():
            assert set(by_model) == set(names), (layer, kind)


def test_a_module_called_twice_per_block_is_compared_in_both_models(device) -> None:
    model = _tiny_efficientnet().to(device)
    sim = calibrated_sim(model, SHAPE, device)
    shadow = ns.add_shadow_loggers("float", model, "int8", sim)
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim)
    x = _inputs(device, 1)[0]
    with torch.no_grad():
        shadow(x)
        a_ns(x)
        b_ns(x)
    for results in (ns.extract_shadow_logger_info(shadow), ns.extract_logger_info(a_ns, b_ns)):
        assert {"blocks.0.act", "blocks.0.act_1", "blocks.1.act_1"} <= set(results)
        _both_models_everywhere(results, ("float", "int8"))
        ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr,
                                                 "sqnr")  # torch's call: no ValueError
        assert all(math.isfinite(v) and v > 10 for v in _sqnr(results, "int8").values())
        assert not results.unmatched


class _Detour(nn.Module):
    """MixNet's stem with an extra op that model A does not have before conv2."""

    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.extra = nn.Hardtanh() if extra else None
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        if self.extra is not None:
            y = self.extra(y)
        return self.fc(self.conv2(y).mean((2, 3)))


def test_unshadowable_layers_are_listed_not_left_with_one_models_results(
        device, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    plain = _Detour(False).eval().to(device)
    detour = _Detour(True).eval().to(device)
    detour.load_state_dict(plain.state_dict())
    sim = calibrated_sim(detour, SHAPE, device)
    with caplog.at_level("WARNING"):
        shadow = ns.add_shadow_loggers("float", plain, "int8", sim)
    assert any("cannot shadow" in r.message and "conv2" in r.message for r in caplog.records)
    with torch.no_grad():
        shadow(_inputs(device, 1)[0])
    results = ns.extract_shadow_logger_info(shadow)
    assert "conv2" not in results and "fc" in results
    _both_models_everywhere(results, ("float", "int8"))
    ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr, "sqnr")
    reasons = {u.layer: u.reason for u in results.unmatched}
    assert "not shadowed" in reasons["conv2"] and "no counterpart in model a" in reasons["conv2"]


def test_results_of_one_model_only_are_moved_to_unmatched(
        pair, device, caplog: pytest.LogCaptureFixture) -> None:
    model, sim = pair
    a1, b1 = ns.add_loggers("float", model, "int8", sim, layers=["conv3", "fc"])
    a2, b2 = ns.add_loggers("float", model, "int8", sim, layers=["conv3", "module_cat"])
    x = _inputs(device, 1)[0]
    with torch.no_grad():
        for m in (a1, b1, a2, b2):
            m(x)
    with caplog.at_level("WARNING"):
        results = ns.extract_logger_info(a1, b2)  # loggers of two different instrumentations
    assert set(results) == {"conv3"}
    _both_models_everywhere(results, ("float", "int8"))
    lone = {u.layer: u for u in results.unmatched}
    assert "logged by model(s) ['float'] only" in lone["fc"].reason
    assert "logged by model(s) ['int8'] only" in lone["module_cat"].reason
    assert any("results of one model only" in r.message for r in caplog.records)
    ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr, "sqnr")
    assert 15 < _sqnr(results, "int8")["conv3"] < 60


# -- add_loggers on models that share nothing (issue 11 item 15) -----------------------------


class _Unrelated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 6)
        self.gate = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.embed(x.flatten(1)[:, :12]))


def test_models_sharing_no_layer_are_refused_at_add_loggers_time() -> None:
    from fxquant.numeric_suite.errors import NoMatchingLayersError

    with pytest.raises(NoMatchingLayersError,
                       match=r"no layer of model 'mix' matches a layer of model 'other'.*"
                             r"'mix' has \[conv1 \(Conv2d\).*'other' has \[.*embed \(Linear\).*"
                             r"same module names"):
        ns.add_loggers("mix", mixnet(), "other", _Unrelated())
    for fn in (ns.add_shadow_loggers, ns.extract_weights):
        with pytest.raises(NoMatchingLayersError, match="no layer of model 'mix' matches"):
            fn("mix", mixnet(), "other", _Unrelated())
    with pytest.raises(ValueError, match="no layer of model"):  # still a ValueError, as torch
        ns.add_loggers("mix", mixnet(), "other", _Unrelated())


def test_no_layer_selected_is_refused_with_the_fix(pair) -> None:
    from fxquant.numeric_suite.errors import NoMatchingLayersError

    model, sim = pair
    with pytest.raises(NoMatchingLayersError, match="no layer of model 'a' and model 'b' is "
                                                    "selected.*pass layers='all'"):
        ns.add_loggers("a", model, "b", sim, layers=[])
    with pytest.raises(NoMatchingLayersError, match="is selected"):
        ns.add_shadow_loggers("a", model, "b", sim, layers=[])


# -- pairing the two models' calls by index (issue 11 item 6) ---------------------------------


def _conv_sqnr(results: dict) -> float:
    ns.extend_logger_results_with_comparison(results, "float", "int8", ns.compute_sqnr, "sqnr")
    return float(results["conv3"]["node_output"]["int8"][0]["sqnr"][0])


def test_a_skipped_call_of_model_b_raises_instead_of_shifting_every_pair(pair, device) -> None:
    from fxquant.numeric_suite.errors import PairingError

    model, sim = pair
    xs = _inputs(device, 4)
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, save_activations=False)
    # raised at once on the CPU (before any logger of the call runs), at extraction elsewhere
    with pytest.raises(PairingError, match="call 1 of model 'float' and call 1 of model 'int8' "
                                           "got different inputs.*same order"):
        with torch.no_grad():
            for i, x in enumerate(xs):
                a_ns(x)
                if i != 1:  # model B skips batch 1
                    b_ns(x)
        ns.extract_logger_info(a_ns, b_ns)


def test_calls_pair_by_index_in_any_order(pair, device) -> None:
    model, sim = pair
    xs = _inputs(device, 3)
    numbers = []
    for order in ("alternate", "a_first", "b_first"):
        a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, save_activations=False)
        with torch.no_grad():
            if order == "alternate":
                for x in xs:
                    a_ns(x)
                    b_ns(x)
            else:
                first, second = (a_ns, b_ns) if order == "a_first" else (b_ns, a_ns)
                for m in (first, second):
                    for x in xs:
                        m(x)
        numbers.append(_conv_sqnr(ns.extract_logger_info(a_ns, b_ns)))
    assert numbers[0] == pytest.approx(numbers[1], abs=1e-9) == pytest.approx(numbers[2],
                                                                              abs=1e-9)
    assert 15 < numbers[0] < 60


def test_a_forward_that_stops_half_way_is_caught_at_the_next_pair(pair, device) -> None:
    from fxquant.numeric_suite.errors import PairingError

    model, sim = pair
    xs = _inputs(device, 3)
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim, save_activations=False)
    calls = [0]

    def fail_once(module, args):
        calls[0] += 1
        if calls[0] == 2:  # model B's call 1
            raise RuntimeError("injected failure")

    handle = b_ns.get_submodule("module_cat").register_forward_pre_hook(fail_once)
    with torch.no_grad():
        a_ns(xs[0])
        b_ns(xs[0])
        a_ns(xs[1])
        with pytest.raises(RuntimeError, match="injected"):
            b_ns(xs[1])  # stops before module_cat: its loggers miss call 1
        a_ns(xs[2])
        with pytest.raises(PairingError, match="layer 'module_cat': model 'float' logged call 1 "
                                               "here, but model 'int8''s call 1 never reached"):
            b_ns(xs[2])
    handle.remove()
    ns.loggers_reset(a_ns)
    ns.loggers_reset(b_ns)
    with torch.no_grad():  # after a reset of both, pairs start again from call 0
        a_ns(xs[0])
        b_ns(xs[0])
    assert 15 < _conv_sqnr(ns.extract_logger_info(a_ns, b_ns)) < 60


def test_unequal_call_counts_are_refused_at_extraction(pair, device) -> None:
    from fxquant.numeric_suite.errors import PairingError

    model, sim = pair
    xs = _inputs(device, 2)
    a_ns, b_ns = ns.add_loggers("float", model, "int8", sim)
    with torch.no_grad():
        a_ns(xs[0])
        b_ns(xs[0])
        a_ns(xs[1])
    with pytest.raises(PairingError, match="model 'float' ran 2 time\\(s\\) but model 'int8' 1 "
                                           "time\\(s\\).*run 'int8' on the remaining 1"):
        ns.extract_logger_info(a_ns, b_ns)
    with torch.no_grad():
        b_ns(xs[1])
    results = ns.extract_logger_info(a_ns, b_ns)
    assert len(results["conv3"]["node_output"]["int8"][0]["values"]) == 2
