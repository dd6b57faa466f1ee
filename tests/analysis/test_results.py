"""AnalysisResults.techniques(): the post-training techniques the verdict points to."""
from __future__ import annotations

from fxquant.analysis.results import AnalysisResults


def _results(w: float, a: float, *, per_channel: bool = True,
             scheme: str = "post_training_tf") -> AnalysisResults:
    return AnalysisResults(fp32=0.98, weight_quantized=w, activation_quantized=a,
                           quantized=min(w, a) - 0.05,
                           settings={"quant_scheme": scheme, "default_param_bw": 4,
                                     "default_output_bw": 8, "per_channel_weights": per_channel})


def test_weights_hurt_weight_techniques_only_when_activations_cost_nothing() -> None:
    r = _results(0.60, 0.98)
    assert r.verdict().startswith("weights hurt more")
    names = [t.name for t in r.techniques()]
    assert names == ["AdaRound", "Sequential MSE", "Bias correction"]
    assert "default_param_bw=4" in r.techniques()[0].call
    per_tensor = [t.name for t in _results(0.60, 0.98, per_channel=False).techniques()]
    assert per_tensor[0] == "Cross-layer equalization"


def test_activations_hurt_activation_techniques_first_then_weights() -> None:
    r = _results(0.90, 0.50)
    names = [t.name for t in r.techniques()]
    assert names[:3] == ["Outlier-clipping calibration",
                         "Higher activation precision on the worst layers",
                         "Quantization-aware training with learned ranges"]
    assert names[3:] == ["AdaRound", "Sequential MSE", "Bias correction"]
    clipped = [t.name for t in _results(0.98, 0.50, scheme="post_training_percentile").techniques()]
    assert clipped == ["Higher activation precision on the worst layers",
                       "Quantization-aware training with learned ranges"]


def test_nothing_to_try_when_quantization_costs_little_and_json_has_them() -> None:
    assert _results(0.979, 0.978).techniques() == []
    data = _results(0.60, 0.98).to_dict()
    assert [t["name"] for t in data["techniques"]] == ["AdaRound", "Sequential MSE",
                                                       "Bias correction"]
    assert set(data["techniques"][0]) == {"name", "call", "why"}
