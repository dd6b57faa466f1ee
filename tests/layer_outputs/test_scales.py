"""fxquant/layer_outputs/scales.py: activation quantization steps from a sim, an encodings file
or dict of every version fxquant writes, or ``{name: scale}``; and its error paths."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fxquant.errors import ConfigError
from fxquant.export.encodings_file import encodings_dict, write_encodings
from fxquant.layer_outputs.scales import scales_from_encodings
from fxquant.quantsim.quantsim import QuantizationSimModel


def tiny_sim(calibrate: bool = True, **kwargs: Any) -> QuantizationSimModel:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].bias.fill_(1.0)  # a ReLU output with a real range
    sim = QuantizationSimModel(model, torch.randn(2, 4), quant_scheme="tf", **kwargs)
    if calibrate:
        sim.compute_encodings(lambda m: m(torch.randn(16, 4)))
    return sim


@pytest.fixture(scope="module")
def sim() -> QuantizationSimModel:
    return tiny_sim()


def expected_scales(sim: QuantizationSimModel) -> dict[str, float]:
    return {r.name: float(r.quantizer.encoding.scale) for r in sim.quantizers()
            if r.kind != "param"}


def test_from_a_sim_activation_scales_only(sim: QuantizationSimModel) -> None:
    scales = scales_from_encodings(sim)
    want = expected_scales(sim)
    assert sorted(scales) == sorted(want) == ["1", "input_1"]  # no "0.weight"
    for name, (values, axis) in scales.items():
        assert values.dtype == np.float64 and values.shape == (1,) and axis is None
        assert values[0] == pytest.approx(want[name], rel=1e-7)
    assert 1e-3 < want["1"] < 1.0  # a real step, not the degenerate one


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1", "2.0.0"])
def test_from_a_file_fxquant_writes_and_from_its_dict(sim: QuantizationSimModel, tmp_path: Path,
                                                      version: str) -> None:
    path = tmp_path / f"tiny_{version}.encodings"
    write_encodings(path, sim.quantizers(), version=version)
    want = expected_scales(sim)
    for source in (path, str(path), json.loads(path.read_text())):
        scales = scales_from_encodings(source)
        assert sorted(scales) == sorted(want)
        for name, (values, axis) in scales.items():
            assert axis is None
            assert values[0] == pytest.approx(want[name], rel=1e-6)


def test_a_0_6_1_dict_without_version_is_an_encodings_dict(sim: QuantizationSimModel) -> None:
    data = encodings_dict(sim.quantizers(), version="0.6.1")
    del data["version"]
    assert sorted(scales_from_encodings(data)) == ["1", "input_1"]


def test_per_channel_activation_keeps_its_axis() -> None:
    data = {"version": "1.0.0", "activation_encodings": [
        {"name": "pc", "dtype": "INT", "bw": 8, "is_sym": True, "scale": [0.1, 0.2, 0.4],
         "offset": [-128, -128, -128], "enc_type": "PER_CHANNEL"}], "param_encodings": []}
    ((name, (values, axis)),) = scales_from_encodings(data).items()
    assert name == "pc" and axis == 0
    np.testing.assert_allclose(values, [0.1, 0.2, 0.4], rtol=1e-6)


def test_float16_encodings_have_no_step() -> None:
    data = {"version": "2.0.0", "encodings": [
        {"name": "h", "output_dtype": "float16"},
        {"name": "a", "output_dtype": "uint8", "y_scale": 0.5, "y_zero_point": 3},
        {"name": "w.weight", "output_dtype": "int8", "y_scale": [0.1, 0.2], "axis": 0}]}
    scales = scales_from_encodings(data)
    assert list(scales) == ["a"]  # float16 skipped, the weight is a param
    np.testing.assert_array_equal(scales["a"][0], [0.5])
    float_sim = tiny_sim(calibrate=False, default_output_bw=16, default_param_bw=16,
                         default_data_type="float")
    assert scales_from_encodings(float_sim) == {}


def test_disabled_quantizers_are_left_out() -> None:
    sim = tiny_sim()
    sim.quantizer("input_1").enabled = False
    assert list(scales_from_encodings(sim)) == ["1"]


def test_name_to_scale_mapping() -> None:
    scales = scales_from_encodings({"fc": 0.25, "conv": [0.1, 0.2], 3: np.float32(0.5),
                                    "t": torch.tensor([[1.0], [2.0]])})
    assert list(scales) == ["fc", "conv", "3", "t"]
    np.testing.assert_array_equal(scales["fc"][0], [0.25])
    np.testing.assert_array_equal(scales["conv"][0], [0.1, 0.2])
    np.testing.assert_array_equal(scales["t"][0], [1.0, 2.0])
    assert all(v.dtype == np.float64 and axis is None for v, axis in scales.values())
    assert scales_from_encodings({}) == {}
    assert scales_from_encodings(None) == {}


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, got", [(3.0, "float"), ([0.25], "list"), (b"x.encodings", "bytes")])
def test_other_types_are_a_type_error(bad: Any, got: str) -> None:
    with pytest.raises(TypeError, match=r"encodings must be an encodings file path, its dict, a "
                                        r"QuantizationSimModel or a \{name: scale\} mapping, got "
                                        + got):
        scales_from_encodings(bad)


def test_uncalibrated_sim_names_the_quantizer() -> None:
    with pytest.raises(ConfigError, match=r"quantizer 'input_1' \(input\) is enabled but has no "
                                          r"encoding; run sim.compute_encodings"):
        scales_from_encodings(tiny_sim(calibrate=False))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"encodings file .*nope.encodings not found"):
        scales_from_encodings(tmp_path / "nope.encodings")


def test_file_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.encodings"
    path.write_text('{"version": "1.0.0", ')
    with pytest.raises(ConfigError, match=r"encodings file .*broken\.encodings"):
        scales_from_encodings(path)


@pytest.mark.parametrize("data, match", [
    ({"version": "3.0.0"}, r"version: unsupported version '3.0.0'; supported: "
                           r"\['1.0.0', '0.6.1', '2.0.0'\]"),
    ({"version": "1.0.0", "activation_encodings": [
        {"name": "a", "dtype": "INT", "bw": 8, "is_sym": False, "scale": [-0.1], "offset": [0],
         "enc_type": "PER_TENSOR"}]},
     r"activation_encodings\[0\]\.scale\[0\]: invalid value -0.1; expected a number > 0"),
    ({"version": "1.0.0", "activation_encodings": {"a": []}},
     r"activation_encodings: expected a list in version 1.0.0, got (dict|object)"),
    ({"version": "2.0.0", "encodings": [{"name": "a", "output_dtype": "int4x"}]},
     r"encodings\[0\]\.output_dtype: expected int<b>, uint<b> \(b in 2-32\) or float16, "
     r"got 'int4x'"),
])
def test_invalid_encodings_dict_names_the_json_path(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        scales_from_encodings(data)


@pytest.mark.parametrize("mapping, match", [
    ({"fc": "abc"}, r"encodings \{name: scale\} mapping: fc: invalid value 'abc'; expected a "
                    r"scale > 0 or a list of scales"),
    ({"fc": [0.1, "x"]}, r"mapping: fc\[1\]: invalid value 'x'; expected a scale > 0"),
    ({"conv 1": -0.5}, r'mapping: \["conv 1"\]: invalid scale -0.5; scales are finite numbers > 0'),
    ({"fc": float("nan")}, r"mapping: fc: invalid scale nan"),
    ({"fc": []}, r"mapping: fc: an empty list"),
    ({"fc": {"scale": 0.1}}, r"mapping: fc: invalid value \{\"scale\": 0.1\}"),
    ({"fc": np.array(["a"])}, r"mapping: fc: invalid array of dtype <U1"),
])
def test_bad_name_to_scale_mapping_names_the_key(mapping: dict[str, Any], match: str) -> None:
    """A bare numpy ValueError before; now the key and what a scale must be."""
    with pytest.raises(ConfigError, match=match):
        scales_from_encodings(mapping)


def test_a_0_6_1_dict_with_param_encodings_only_is_an_encodings_dict(
        sim: QuantizationSimModel) -> None:
    """Misread as a {name: scale} mapping before (a numpy error on the nested entries)."""
    data = encodings_dict(sim.quantizers(), version="0.6.1")
    only_params = {"param_encodings": data["param_encodings"]}
    assert only_params["param_encodings"]  # the weight encodings are there
    assert scales_from_encodings(only_params) == {}  # no activation steps, no error
    only_params["param_encodings"] = {"0.weight": "abc"}
    with pytest.raises(ConfigError, match=r"param_encodings(\.0\.weight|\[\"0\.weight\"\])"):
        scales_from_encodings(only_params)
