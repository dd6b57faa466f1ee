"""QuantAnalyzer on real data: a digits CNN with one fragile layer (relu1, see fragile.py)."""
from __future__ import annotations

import copy
import json
import math
import os
import re

import pytest
import torch

import fxquant
from fxquant import CallbackFunc, QuantAnalyzer, QuantScheme
from fxquant.analysis.output import ENTRIES
from tests.analysis.fragile import calibrate, evaluate, fragile_net
from tests.quantsim.digits import digits

DUMMY = torch.zeros(1, 1, 8, 8)


def unlabeled(n: int = 4) -> list[torch.Tensor]:
    x = digits()[0]
    return [x[i:i + 64] for i in range(0, 64 * n, 64)]


def analyzer(model: torch.nn.Module | None = None, **kwargs) -> QuantAnalyzer:
    qa = QuantAnalyzer(model if model is not None else fragile_net(), DUMMY,
                       CallbackFunc(calibrate, 4), CallbackFunc(evaluate, None), **kwargs)
    qa.enable_per_layer_mse_loss(unlabeled(), 4)
    return qa


@pytest.fixture(scope="module")
def per_channel_run(tmp_path_factory):
    """One analysis (min-max, per-channel default config); the caller's model kept to compare."""
    model = fragile_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results_dir = tmp_path_factory.mktemp("qa") / "results"
    results = analyzer(model).analyze(quant_scheme=QuantScheme.post_training_tf,
                                      results_dir=str(results_dir))
    return model, state, results, results_dir


def _layers_with_quantizers(scheme: str = "tf", config=None) -> list[str]:
    sim = fxquant.QuantizationSimModel(fragile_net(), DUMMY, quant_scheme=scheme,
                                       config_file=config)
    from fxquant.analysis.quantizer_groups import layer_groups
    return list(layer_groups(sim))


def test_fragile_layer_ranked_worst_and_the_suggestion_recovers(per_channel_run, tmp_path):
    _, _, r, results_dir = per_channel_run
    assert r.fp32 > 0.95 and r.quantized < 0.3, (r.fp32, r.quantized)
    assert min(r.enabled, key=r.enabled.get) == "relu1"
    recovery = {k: v - r.quantized for k, v in r.disabled.items()}
    assert max(recovery, key=recovery.get) == "relu1"
    assert r.culprits[0] == "relu1"
    assert r.verdict().startswith("activations hurt more")
    assert r.best is not None and r.best.layers == ("relu1",) and r.best.activation_bw == 16

    # the suggested config, applied to a fresh sim, recovers at least half of what was lost
    config = results_dir / "suggested_config.json"
    sim = fxquant.QuantizationSimModel(fragile_net(), DUMMY, quant_scheme="tf",
                                       config_file=str(config))
    sim.compute_encodings(calibrate, 4)
    recovered = evaluate(sim.model)
    assert recovered - r.quantized >= 0.5 * (r.fp32 - r.quantized), (recovered, r)
    assert sim.quantizer("relu1").bitwidth == 16 and sim.quantizer("relu2").bitwidth == 8
    # and the what-if measured on the analyzer's sim is what the fresh sim gives
    assert recovered == pytest.approx(r.best.score, abs=0.01)


def test_callers_model_is_bit_identical(per_channel_run):
    model, state, _, _ = per_channel_run
    fresh = fragile_net()
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not model.training
    assert type(model) is type(fresh) and not isinstance(model, torch.fx.GraphModule)


def test_callers_prepared_model_graph_code_unchanged():
    prepared = fxquant.prepare_model(fragile_net())
    code = prepared.code
    state = copy.deepcopy(prepared.state_dict())
    qa = QuantAnalyzer(prepared, DUMMY, CallbackFunc(calibrate, 2), evaluate)
    sim = qa.create_quantsim_and_encodings("tf", 8, 8)
    qa.check_model_sensitivity_to_quantization(sim)
    assert prepared.code == code
    assert all(torch.equal(v, state[k]) for k, v in prepared.state_dict().items())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in sim.model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())


def _check_pair(value, where):
    assert isinstance(value, list) and len(value) == 2, where
    assert all(isinstance(v, float) and math.isfinite(v) for v in value), where
    assert value[0] <= value[1], where


def _check_scores(path, layers):
    data = json.loads(path.read_text())
    assert list(data) == layers, path
    assert all(isinstance(v, float) for v in data.values()), path
    return data


def test_every_file_with_aimets_shapes_per_channel(per_channel_run):
    _, _, r, d = per_channel_run
    layers = _layers_with_quantizers()
    assert _check_scores(d / "per_layer_quant_enabled.json", layers) == r.enabled
    assert _check_scores(d / "per_layer_quant_disabled.json", layers) == r.disabled
    mse = _check_scores(d / "per_layer_mse_loss.json", layers)
    assert all(v >= 0 for v in mse.values())
    assert mse["relu1"] > 1000 * mse["conv1"]       # where the error starts (it then propagates)
    for name in ("per_layer_quant_enabled.html", "per_layer_quant_disabled.html",
                 "per_layer_mse_loss.html", "index.html", "summary.json",
                 "suggested_config.json", "min_max_ranges/activations.html"):
        assert (d / name).stat().st_size > 0, name
    acts = json.loads((d / "min_max_ranges/activations.json").read_text())
    assert set(acts) == {"conv1_input_0", "relu1_output_0", "conv2_output_0", "relu2_output_0",
                         "relu3_output_0", "module_pool_output_0", "fc_output_0"}
    for key, value in acts.items():
        assert re.fullmatch(r".+_(input|output)_\d+", key)
        _check_pair(value, key)
    assert acts["relu1_output_0"][1] == pytest.approx(2000.0, rel=1e-3)
    weights = json.loads((d / "min_max_ranges/weights.json").read_text())
    assert set(weights) == {"conv1_weight", "conv2_weight", "conv3_weight", "fc_weight"}
    channels = {"conv1_weight": 17, "conv2_weight": 16, "conv3_weight": 32, "fc_weight": 10}
    for name, entry in weights.items():
        assert isinstance(entry, dict)
        assert list(entry) == [f"{name}_{i}" for i in range(channels[name])]
        for key, value in entry.items():
            _check_pair(value, key)
        assert (d / f"min_max_ranges/{name}.html").exists()
    assert not (d / "min_max_ranges/weights.html").exists()   # no per-tensor weight
    # min-max keeps no histograms: no pdf folders
    assert not (d / "activations_pdf").exists() and not (d / "weights_pdf").exists()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["best_suggestion"]["layers"] == ["relu1"]
    sqnr = summary["per_layer_sqnr_db"]
    assert list(sqnr) == layers and sqnr["relu2"] < 10 < sqnr["conv1"], sqnr
    assert "SQNR dB" in (d / "per_layer_mse_loss.html").read_text()
    assert summary["scores"]["quantized"] == r.quantized
    # activations hurt more (the planted relu1 outlier): activation techniques first, named on
    # the index page with their calls
    assert summary["techniques"][0]["name"] == "Outlier-clipping calibration"
    index = (d / "index.html").read_text()
    assert "Techniques to try" in index and "Outlier-clipping calibration" in index


def test_per_tensor_tf_enhanced_with_ignored_module(tmp_path):
    model = fragile_net()
    qa = analyzer(model, modules_to_ignore=[model.conv2])
    r = qa.analyze(quant_scheme="tf_enhanced", config_file="per_tensor", results_dir=tmp_path)
    layers = [n for n in _layers_with_quantizers("tf_enhanced", "per_tensor") if n != "conv2"]
    assert list(r.enabled) == layers and "conv2" not in r.disabled
    assert _check_scores(tmp_path / "per_layer_quant_enabled.json", layers) == r.enabled
    weights = json.loads((tmp_path / "min_max_ranges/weights.json").read_text())
    assert set(weights) == {"conv1_weight", "conv3_weight", "fc_weight"}
    for key, value in weights.items():
        _check_pair(value, key)
    assert (tmp_path / "min_max_ranges/weights.html").exists()
    acts = json.loads((tmp_path / "min_max_ranges/activations.json").read_text())
    assert "conv2_output_0" not in acts and "relu1_output_0" in acts
    pdfs = sorted(p.name for p in (tmp_path / "activations_pdf").iterdir())
    assert pdfs == sorted(f"{k[:k.rindex('_')]}_q{k[k.rindex('_') + 1:]}_0.html" for k in acts)
    assert sorted(p.name for p in (tmp_path / "weights_pdf").iterdir()) == ["conv1", "conv3", "fc"]
    assert [p.name for p in (tmp_path / "weights_pdf/conv3").iterdir()] == ["conv3_weight.html"]
    assert "conv2" not in json.loads((tmp_path / "per_layer_mse_loss.json").read_text())
    assert r.settings["ignored_layers"] == ["conv2"]


def test_histogram_page_shows_every_channel(tmp_path):
    qa = analyzer()
    sim = qa.create_quantsim_and_encodings("tf_enhanced", 8, 8)
    qa.export_per_layer_stats_histogram(sim, tmp_path)
    page = (tmp_path / "weights_pdf/conv3/conv3_weight.html").read_text()
    assert page.count("<tr>") == 1 + 32        # header + one row per channel
    assert "data:image/png;base64," in page and "http" not in page


def test_individual_analyses_write_their_files(tmp_path):
    qa = analyzer()
    sim = qa.create_quantsim_and_encodings(QuantScheme.post_training_tf, 8, 8)
    fp32, w, a = qa.check_model_sensitivity_to_quantization(sim)
    assert fp32 > 0.95 and a < 0.3 and w > 0.9
    enabled = qa.perform_per_layer_analysis_by_enabling_quant_wrappers(sim, tmp_path)
    assert json.loads((tmp_path / "per_layer_quant_enabled.json").read_text()) == enabled
    weights, acts = qa.export_per_layer_encoding_min_max_range(sim, tmp_path)
    assert json.loads((tmp_path / "min_max_ranges/weights.json").read_text()) == weights
    mse = qa.export_per_layer_mse_loss(sim, tmp_path)
    assert mse["relu1"] > 1000 * mse["conv1"]
    assert sorted(os.listdir(tmp_path)) == ["min_max_ranges", "per_layer_mse_loss.html",
                                           "per_layer_mse_loss.json",
                                           "per_layer_quant_enabled.html",
                                           "per_layer_quant_enabled.json"]


def test_plain_callables_and_rerun_replaces_previous_analysis(tmp_path):
    calls = []

    def calib(model):
        calls.append("calib")
        calibrate(model, 2)

    qa = QuantAnalyzer(fragile_net(), DUMMY, calib, evaluate)
    (tmp_path / "mine.txt").write_text("keep me")
    first = qa.analyze(quant_scheme="tf_enhanced", results_dir=tmp_path, num_suggestions=1)
    assert (tmp_path / "activations_pdf").exists() and calls == ["calib"]
    assert len(first.suggestions) == 1                 # relu1 has no parameters: A16 only
    second = qa.analyze(quant_scheme="tf", results_dir=tmp_path, num_suggestions=0)
    assert not (tmp_path / "activations_pdf").exists()   # stale entries of the first are gone
    assert second.suggestions == [] and second.best is None
    assert not (tmp_path / "suggested_config.json").exists()
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
    with pytest.raises(fxquant.OutputExistsError,
                       match="holds an earlier analysis.*overwrite=True"):
        qa.analyze(quant_scheme="tf", results_dir=tmp_path, overwrite=False)


# -- error paths --------------------------------------------------------------------------------
def test_eval_callback_raising_names_the_analysis_and_writes_nothing(tmp_path):
    state = {"n": 0}

    def flaky(model, _):
        state["n"] += 1
        if state["n"] > 6:
            raise RuntimeError("out of data")
        return evaluate(model)

    qa = QuantAnalyzer(fragile_net(), DUMMY, CallbackFunc(calibrate, 2), CallbackFunc(flaky))
    (tmp_path / "index.html").write_text("previous")
    with pytest.raises(fxquant.AnalysisError, match=r"perform_per_layer_analysis_by_enabling_quant_"
                       r"wrappers: eval_callback raised while evaluating layer '\w+'.*"
                       r"RuntimeError: out of data") as info:
        qa.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert os.listdir(tmp_path) == ["index.html"]
    assert (tmp_path / "index.html").read_text() == "previous"


@pytest.mark.parametrize("value, shown", [("0.9", "str '0.9'"), (None, "NoneType"),
                                          (torch.ones(3), "Tensor"), (True, "bool")])
def test_eval_callback_returning_a_non_number(tmp_path, value, shown):
    qa = QuantAnalyzer(fragile_net(), DUMMY, CallbackFunc(calibrate, 2), lambda m: value)
    with pytest.raises(fxquant.AnalysisError, match=f"check_model_sensitivity_to_quantization: "
                       f"eval_callback must return a number.*returned {re.escape(shown)}"):
        qa.analyze(quant_scheme="tf", results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_eval_callback_returning_nan(tmp_path):
    qa = QuantAnalyzer(fragile_net(), DUMMY, CallbackFunc(calibrate, 2), lambda m: float("nan"))
    with pytest.raises(fxquant.AnalysisError, match="returned NaN while evaluating the FP32"):
        qa.analyze(quant_scheme="tf", results_dir=tmp_path)


def test_eval_callback_scalar_tensor_and_numpy_are_numbers(tmp_path):
    import numpy as np

    for cb in (lambda m: torch.tensor(0.5), lambda m: np.float32(0.5), lambda m: 1):
        qa = QuantAnalyzer(fragile_net(), DUMMY, CallbackFunc(calibrate, 1), cb)
        sim = qa.create_quantsim_and_encodings("tf", 8, 8)
        assert qa.check_model_sensitivity_to_quantization(sim)[0] in (0.5, 1.0)


def test_results_dir_unwritable_fails_before_calibrating(tmp_path):
    calls = []
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    qa = QuantAnalyzer(fragile_net(), DUMMY, lambda m: calls.append(1), evaluate)
    with pytest.raises(fxquant.FileWriteError, match="a_file"):
        qa.analyze(results_dir=blocker / "results")
    if os.geteuid() != 0:          # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(fxquant.FileWriteError, match="not writable"):
                qa.analyze(results_dir=locked / "results")
        finally:
            locked.chmod(0o700)
    assert calls == []


def test_results_dir_write_failure_leaves_previous_results(tmp_path, monkeypatch):
    from fxquant.analysis import output

    qa = QuantAnalyzer(fragile_net(), DUMMY, CallbackFunc(calibrate, 1), evaluate)
    qa.analyze(quant_scheme="tf", results_dir=tmp_path, num_suggestions=0)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output, "replace_entries", broken)
    with pytest.raises(OSError, match="No space left"):
        qa.analyze(quant_scheme="tf", results_dir=tmp_path, num_suggestions=0)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_modules_to_ignore_unknown_name_says_did_you_mean():
    qa = QuantAnalyzer(fragile_net(), DUMMY, CallbackFunc(calibrate, 1), evaluate,
                       modules_to_ignore=["relu_1"])
    with pytest.raises(fxquant.ConfigError, match=r"modules_to_ignore: 'relu_1' is not a layer.*"
                                                  r"did you mean 'relu1'"):
        qa.create_quantsim_and_encodings("tf", 8, 8)


def test_modules_to_ignore_foreign_module_and_bad_type():
    qa = QuantAnalyzer(fragile_net(), DUMMY, calibrate, evaluate,
                       modules_to_ignore=[torch.nn.ReLU()])
    with pytest.raises(fxquant.ConfigError, match="ReLU that is not a submodule of the model"):
        qa.create_quantsim_and_encodings("tf", 8, 8)
    qa = QuantAnalyzer(fragile_net(), DUMMY, calibrate, evaluate, modules_to_ignore=[3])
    with pytest.raises(fxquant.ConfigError, match="must hold modules or module names, got int"):
        qa.create_quantsim_and_encodings("tf", 8, 8)


def test_bad_callbacks_and_arguments():
    with pytest.raises(fxquant.ConfigError, match="eval_callback must be callable"):
        QuantAnalyzer(fragile_net(), DUMMY, calibrate, 0.8)
    with pytest.raises(fxquant.ConfigError, match="forward_pass_callback must be callable"):
        QuantAnalyzer(fragile_net(), DUMMY, None, evaluate)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        QuantAnalyzer("resnet18", DUMMY, calibrate, evaluate)
    qa = QuantAnalyzer(fragile_net(), DUMMY, calibrate, evaluate)
    with pytest.raises(ValueError, match="can not fetch 5 batches from a dataset of 4"):
        qa.enable_per_layer_mse_loss(unlabeled(4), 5)
    with pytest.raises(ValueError, match="num_batches must be a positive integer"):
        qa.enable_per_layer_mse_loss(unlabeled(4), 0)
    with pytest.raises(ValueError, match="num_suggestions must be a non-negative integer"):
        qa.analyze(num_suggestions=-1)
    sim = qa.create_quantsim_and_encodings("tf", 8, 8)
    with pytest.raises(ValueError, match="call enable_per_layer_mse_loss"):
        qa.export_per_layer_mse_loss(sim, "unused")


def test_calibration_failure_is_a_calibration_error():
    def broken(model):
        raise KeyError("labels")

    qa = QuantAnalyzer(fragile_net(), DUMMY, broken, evaluate)
    with pytest.raises(fxquant.CalibrationError, match="forward_pass_callback.*KeyError"):
        qa.create_quantsim_and_encodings("tf", 8, 8)


def test_mse_with_generator_shorter_than_num_batches(caplog):
    qa = QuantAnalyzer(fragile_net(), DUMMY, CallbackFunc(calibrate, 1), evaluate)
    qa.enable_per_layer_mse_loss((x for x in unlabeled(2)), 4)
    sim = qa.create_quantsim_and_encodings("tf", 8, 8)
    with caplog.at_level("WARNING"):
        sums = qa._mse(sim)
    assert "had 2 batch(es), fewer than num_batches=4" in caplog.text
    assert sums["relu1"].noise > 0 and sums["relu1"].numel == 2 * 64 * 17 * 8 * 8
    assert sums["relu2"].sqnr_db < 10 < sums["conv1"].sqnr_db
    qa.enable_per_layer_mse_loss((x for x in []), 1)
    with pytest.raises(ValueError, match="yielded no batch"):
        qa._mse(sim)


def test_entries_constant_lists_index_last():
    assert ENTRIES[-1] == "index.html"
