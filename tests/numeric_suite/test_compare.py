"""fxquant.compare and NumericSuiteReport: table, worst, JSON, PNG plot, and errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

import fxquant.ns as ns
from tests.numeric_suite.ns_helpers import calibrated_sim, mixnet, quantized_layer_names

SHAPE = (2, 3, 8, 8)


@pytest.fixture
def report(device: torch.device) -> tuple[ns.NumericSuiteReport, object]:
    model = mixnet().to(device)
    sim = calibrated_sim(model, SHAPE, device)
    gen = torch.Generator().manual_seed(3)
    data = [torch.randn(*SHAPE, generator=gen) for _ in range(3)]  # moved to the device
    rep = ns.compare(model, sim, data, metrics=("sqnr", "cosine_similarity"), name_a="float",
                     name_b="int8")
    return rep, sim


def test_report_rows_and_ranking(report) -> None:
    rep, sim = report
    assert rep.num_batches == 3 and rep.metrics == ("sqnr", "cosine_similarity")
    with_act = {r.name for r in rep.layers if r.activation}
    assert with_act == quantized_layer_names(sim) == {r.name for r in rep.layers if r.shadowed}
    assert {r.name for r in rep.layers if r.weight} == {"conv1", "conv2", "conv3", "fc"}
    worst = rep.worst(3)
    values = [r.activation["sqnr"] for r in rep.ranked()]
    assert values == sorted(values) and [r.name for r in worst] == [r.name for r in
                                                                     rep.ranked()[:3]]
    by_weight = rep.worst(1, kind="weight")[0]
    assert by_weight.weight["sqnr"] == min(r.weight["sqnr"] for r in rep.layers if r.weight)
    shadow_mean = sum(r.shadowed["sqnr"] for r in rep.layers if r.shadowed) / len(with_act)
    act_mean = sum(r.activation["sqnr"] for r in rep.layers if r.activation) / len(with_act)
    assert shadow_mean >= act_mean - 0.5
    assert rep["module_cat"].activation["cosine_similarity"] > 0.9
    assert set(rep.results) == {"weight", "activation", "shadowed"}
    assert set(rep.results["activation"]) == quantized_layer_names(sim)


def test_table_lists_every_layer_worst_first(report) -> None:
    rep, _ = report
    text = rep.table()
    lines = text.splitlines()
    assert "worst first by act sqnr" in lines[0]
    assert "act sqnr (dB)" in lines[1] and "shadowed sqnr (dB)" in lines[1]
    worst = rep.worst(1)[0].name
    assert lines[3].split()[1] == worst and len(lines) == 3 + len(rep.layers)
    assert len(rep.table(k=2).splitlines()) == 5
    assert "worst first by weight cosine_similarity" in rep.table("cosine_similarity",
                                                                  "weight")


def test_json_and_plot_are_written_atomically(report, tmp_path) -> None:
    rep, _ = report
    path = rep.to_json(tmp_path / "out" / "report.json")
    data = json.loads(path.read_text())
    assert data["model_b"] == "int8" and len(data["layers"]) == len(rep.layers)
    assert data["layers"][0]["weight"]["sqnr"] == pytest.approx(rep.layers[0].weight["sqnr"])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        rep.to_json(path)
    rep.to_json(path, overwrite=True)
    png = rep.plot(tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        rep.plot(png)
    assert rep.plot(png, metric="sqnr", overwrite=True) == png
    assert not list(tmp_path.glob("**/*.tmp"))


def test_infinite_values_are_written_as_strings(tmp_path) -> None:
    model = mixnet()
    rep = ns.compare(model, model, torch.randn(*SHAPE), shadow=False, weights=False)
    assert all(math.isinf(r.activation["sqnr"]) for r in rep.layers)
    data = json.loads(rep.to_json(tmp_path / "r.json").read_text())
    assert {r["activation"]["sqnr"] for r in data["layers"]} == {"inf"}
    assert rep.results["shadowed"] == {}


def test_batches_in_several_forms() -> None:
    model = mixnet()
    sim = calibrated_sim(model, SHAPE)
    x = torch.randn(*SHAPE)
    assert ns.compare(model, sim, x).num_batches == 1
    assert ns.compare(model, sim, (x,)).num_batches == 1
    assert ns.compare(model, sim, [{"x": x}] * 2).num_batches == 2
    labelled = [(x, torch.zeros(2))] * 4
    rep = ns.compare(model, sim, labelled, input_fn=lambda b: ((b[0],), {}), num_batches=2)
    assert rep.num_batches == 2


def test_compare_errors_name_the_culprit(report) -> None:
    rep, _ = report
    model = mixnet()
    with pytest.raises(ValueError, match="unknown metric 'psnr'"):
        ns.compare(model, model, torch.randn(*SHAPE), metrics=("psnr",))
    with pytest.raises(ValueError, match="not a streaming metric"):
        ns.compare(model, model, torch.randn(*SHAPE), metrics=(lambda a, b: a,))
    with pytest.raises(ValueError, match="metrics is empty"):
        ns.compare(model, model, torch.randn(*SHAPE), metrics=())
    with pytest.raises(ValueError, match="yielded no batches"):
        ns.compare(model, model, [])
    with pytest.raises(ValueError, match="num_batches must be a positive integer"):
        ns.compare(model, model, torch.randn(*SHAPE), num_batches=0)
    with pytest.raises(TypeError, match="data must be a tensor"):
        ns.compare(model, model, 3)
    with pytest.raises(TypeError, match="pass input_fn"):
        ns.compare(model, model, [3])
    with pytest.raises(ValueError, match="metric 'normalized_l2_error' was not computed"):
        rep.worst(1, metric="normalized_l2_error")
    with pytest.raises(ValueError, match="kind must be one of"):
        rep.table(kind="output")
    with pytest.raises(ValueError, match="non-negative integer"):
        rep.worst(-1)
    with pytest.raises(KeyError, match="no layer 'nope'"):
        rep["nope"]
    with pytest.raises(ValueError, match="kind must be one of"):
        rep.layers[0].value("input", "sqnr")
