"""Tests of the AIMET-compatible quantsim config (fxquant/quantsim/config.py, op_types.py)."""
from __future__ import annotations

import copy
import dataclasses
import doctest
import json
import logging
import re
from pathlib import Path

import pytest
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.errors import ConfigError
from fxquant.quantsim import config as config_module
from fxquant.quantsim import op_types as op_types_module
from fxquant.quantsim.config import (
    EncodingConstraints,
    KernelDtype,
    ParamQuantSettings,
    QuantSimConfig,
    SupportedKernel,
    load_config,
)
from fxquant.quantsim.op_types import (
    DATA_MOVEMENT_OP_TYPES,
    ONNX_OP_TYPE_BY_CLASS_NAME,
    PER_CHANNEL_AXIS_BY_OP_TYPE,
    is_known_op_type,
    onnx_op_type,
    register_op_type,
)

# SPEC.md §4, verbatim.
SPEC_EXAMPLE = """\
{"defaults": {"ops": {"is_output_quantized": "True"},
              "params": {"is_quantized": "True", "is_symmetric": "True"},
              "per_channel_quantization": "True", "strict_symmetric": "False", "unsigned_symmetric": "False"},
 "params": {"bias": {"is_quantized": "False"}},
 "op_type": {"Gather": {"is_output_quantized": "False"},
             "Softmax": {"encoding_constraints": {"min": 0.0, "max": 1.0}}},
 "supergroups": [{"op_list": ["Conv", "Relu"]}, {"op_list": ["Add", "Relu"]},
                 {"op_list": ["Conv", "BatchNormalization", "Relu"]}],
 "model_input": {"is_input_quantized": "True"}, "model_output": {}}
"""


def spec_example() -> dict:
    return json.loads(SPEC_EXAMPLE)


def minimal() -> dict:
    return {"defaults": {"ops": {}, "params": {}}, "params": {}, "op_type": {},
            "supergroups": [], "model_input": {}, "model_output": {}}


def raises_config_error(*fragments: str):
    """pytest.raises(ConfigError) whose message contains every fragment literally."""
    return pytest.raises(ConfigError, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


# ------------------------------------------------------------------------------------------------
# Built-in configs
# ------------------------------------------------------------------------------------------------


def test_builtin_default_loads_and_is_the_none_default():
    cfg = load_config()
    assert isinstance(cfg, QuantSimConfig)
    assert cfg == load_config("default")
    assert cfg.source == "built-in 'default'"
    assert cfg.per_channel is True
    assert cfg.model_input_quantized is True
    assert cfg.model_output_quantized is None
    conv = cfg.settings_for_op("Conv")
    assert conv.is_output_quantized and not conv.is_symmetric  # asymmetric activations
    assert conv.param("weight") == ParamQuantSettings(is_quantized=True, is_symmetric=True)
    assert conv.param("bias").is_quantized is False
    assert conv.per_channel is True
    assert ("Conv", "Relu") in cfg.supergroups
    assert ("Conv", "BatchNormalization", "Relu") in cfg.supergroups
    assert ("Add", "Relu") in cfg.supergroups
    assert cfg.settings_for_op("Softmax").encoding_constraints is None  # not in AIMET's default


def test_builtin_per_tensor_differs_only_in_per_channel():
    default, per_tensor = load_config("default"), load_config("per_tensor")
    assert per_tensor.per_channel is False
    assert per_tensor.settings_for_op("Conv").per_channel is False
    assert dataclasses.replace(default, per_channel=False) == per_tensor
    assert load_config("default", per_channel=False) == per_tensor
    assert load_config("per_tensor", per_channel=True) == default


def test_builtin_json_files_are_valid_aimet_json_with_string_flags(tmp_path):
    for name in ("default", "per_tensor"):
        cfg = load_config(name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg.to_dict()))
        assert load_config(path) == cfg
        assert load_config(str(path)).source == str(path)


def test_quantsimconfig_passes_through_and_is_frozen():
    cfg = load_config()
    assert load_config(cfg) is cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.per_channel = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.op_types["Conv"] = cfg.op_types["Gather"]  # type: ignore[index]
    # value semantics: an equal config loaded again hashes equal and finds the same dict entry
    again = load_config()
    assert again is not cfg and again == cfg and hash(again) == hash(cfg)
    assert {cfg: "default"}[again] == "default"
    assert load_config(cfg.to_dict()) == cfg
    other = load_config("per_tensor")
    assert other != cfg
    assert len({cfg, again, other}) == 2
    conv = cfg.settings_for_op("Conv")
    assert conv == again.settings_for_op("Conv") and conv is not again.settings_for_op("Conv")
    assert hash(conv) == hash(again.settings_for_op("Conv"))
    assert {conv: 1}[again.settings_for_op("Conv")] == 1
    assert conv != cfg.settings_for_op("Gather")
    with pytest.raises(dataclasses.FrozenInstanceError):
        conv.is_output_quantized = not conv.is_output_quantized  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# The SPEC §4 example
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_file", [False, True])
def test_spec_example_loads_and_resolves(tmp_path, as_file):
    if as_file:
        path = tmp_path / "aimet_config.json"
        path.write_text(SPEC_EXAMPLE)
        cfg = load_config(path)
    else:
        cfg = load_config(spec_example())
    assert cfg.per_channel is True and cfg.strict_symmetric is False
    assert cfg.unsigned_symmetric is False
    assert cfg.supergroups == (("Conv", "Relu"), ("Add", "Relu"),
                               ("Conv", "BatchNormalization", "Relu"))
    assert cfg.model_input_quantized is True
    assert cfg.model_output_quantized is None

    gather = cfg.settings_for_op("Gather")
    assert gather.is_output_quantized is False

    softmax = cfg.settings_for_op("Softmax")
    assert softmax.is_output_quantized is True
    assert softmax.encoding_constraints == EncodingConstraints(min=0.0, max=1.0)

    conv = cfg.settings_for_op("Conv")
    assert conv.is_output_quantized is True
    assert conv.is_input_quantized is False
    assert conv.is_symmetric is False
    assert conv.per_channel is True
    assert conv.param("weight") == ParamQuantSettings(is_quantized=True, is_symmetric=True)
    assert conv.param("bias") == ParamQuantSettings(is_quantized=False, is_symmetric=True)
    assert conv.param("anything_else") == ParamQuantSettings(True, True)

    unknown = cfg.settings_for_op(None)
    assert unknown.is_output_quantized is True and unknown.encoding_constraints is None


def test_json_booleans_are_accepted_like_strings():
    raw = spec_example()
    raw["defaults"]["ops"]["is_output_quantized"] = True
    raw["params"]["bias"]["is_quantized"] = False
    raw["model_input"]["is_input_quantized"] = True
    assert load_config(raw) == load_config(spec_example())


def test_source_dict_is_not_mutated():
    raw = spec_example()
    before = copy.deepcopy(raw)
    load_config(raw)
    assert raw == before


# ------------------------------------------------------------------------------------------------
# Precedence
# ------------------------------------------------------------------------------------------------


def test_precedence_defaults_params_op_type():
    raw = minimal()
    raw["defaults"] = {
        "ops": {"is_output_quantized": "True", "is_symmetric": "False"},
        "params": {"is_quantized": "True", "is_symmetric": "False"},
        "per_channel_quantization": "False",
        "supported_kernels": [{"activation": {"bitwidth": 8, "dtype": "int"},
                               "param": {"bitwidth": 8, "dtype": "int"}}],
    }
    raw["params"] = {"weight": {"is_symmetric": "True"}, "bias": {"is_quantized": "False"}}
    raw["op_type"] = {
        "Conv": {"per_channel_quantization": "True", "is_input_quantized": "True",
                 "params": {"bias": {"is_quantized": "True"}}},
        "Gemm": {"is_symmetric": "True", "params": {"weight": {"is_symmetric": "False"}},
                 "supported_kernels": [{"activation": {"bitwidth": 16, "dtype": "float"}}]},
        "PRelu": {"params": {"weight": {"is_quantized": "False"}}},
    }
    cfg = load_config(raw)

    relu = cfg.settings_for_op("Relu")  # defaults + top-level params only
    assert relu.per_channel is False and relu.is_input_quantized is False
    assert relu.param("weight") == ParamQuantSettings(is_quantized=True, is_symmetric=True)
    assert relu.param("bias").is_quantized is False
    assert relu.supported_kernels == (SupportedKernel(KernelDtype(8, "int"), KernelDtype(8, "int")),)

    conv = cfg.settings_for_op("Conv")  # op_type beats defaults and top-level params
    assert conv.per_channel is True and conv.is_input_quantized is True
    assert conv.param("bias") == ParamQuantSettings(is_quantized=True, is_symmetric=False)
    assert conv.param("weight").is_symmetric is True

    gemm = cfg.settings_for_op("Gemm")
    assert gemm.is_symmetric is True
    assert gemm.param("weight") == ParamQuantSettings(is_quantized=True, is_symmetric=False)
    assert gemm.supported_kernels == (SupportedKernel(KernelDtype(16, "float"), None),)

    assert cfg.settings_for_op("PRelu").param("weight").is_quantized is False


def test_per_channel_keyword_overrides_every_op():
    raw = minimal()
    raw["defaults"]["per_channel_quantization"] = "True"
    raw["op_type"] = {"Gemm": {"per_channel_quantization": "False"},
                      "Conv": {"per_channel_quantization": "True"}}
    cfg = load_config(raw)
    assert cfg.settings_for_op("Gemm").per_channel is False
    assert cfg.settings_for_op("Conv").per_channel is True
    forced_on = load_config(raw, per_channel=True)
    assert forced_on.settings_for_op("Gemm").per_channel is True
    forced_off = load_config(raw, per_channel=False)
    assert not any(forced_off.settings_for_op(t).per_channel for t in ("Gemm", "Conv", "Relu"))
    with pytest.raises(TypeError, match="per_channel"):
        load_config(raw, per_channel="yes")  # type: ignore[arg-type]


def test_unset_settings_default_to_false_and_none():
    cfg = load_config(minimal())
    s = cfg.settings_for_op("Conv")
    assert (s.is_output_quantized, s.is_input_quantized, s.is_symmetric, s.per_channel) == (
        False, False, False, False)
    assert s.param("weight") == ParamQuantSettings(False, False)
    assert cfg.model_input_quantized is None and cfg.model_output_quantized is None
    assert cfg.hw_version is None and cfg.supported_kernels == () and cfg.supergroup_pass_list == ()


def test_optional_aimet_entries():
    raw = spec_example()
    raw["defaults"]["hw_version"] = "V73"
    raw["supergroup_pass_list"] = ["MatmulAdd", "LayerNormalization"]
    raw["model_output"] = {"is_output_quantized": "True"}
    raw["defaults"]["ops"]["is_input_quantized"] = "False"
    cfg = load_config(raw)
    assert cfg.hw_version == "V73"
    assert cfg.supergroup_pass_list == ("MatmulAdd", "LayerNormalization")
    assert cfg.model_output_quantized is True
    assert load_config(cfg.to_dict()) == cfg


@settings(max_examples=60, deadline=None)
@given(
    flags=st.lists(st.sampled_from(["True", "False", True, False, None]), min_size=9, max_size=9),
    ops=st.dictionaries(st.sampled_from(["Conv", "Gemm", "Relu", "Add", "Softmax"]),
                        st.fixed_dictionaries({}, optional={
                            "is_output_quantized": st.sampled_from(["True", "False"]),
                            "is_input_quantized": st.sampled_from(["True", "False"]),
                            "per_channel_quantization": st.sampled_from(["True", "False"]),
                            "params": st.dictionaries(
                                st.sampled_from(["weight", "bias"]),
                                st.fixed_dictionaries({}, optional={
                                    "is_quantized": st.sampled_from(["True", "False"]),
                                    "is_symmetric": st.sampled_from(["True", "False"])})),
                            "encoding_constraints": st.tuples(
                                st.floats(-10, 0), st.floats(0.001, 10)).map(
                                    lambda t: {"min": t[0], "max": t[1]}),
                        })),
    groups=st.lists(st.lists(st.sampled_from(["Conv", "Relu", "Add", "Clip"]), min_size=2,
                             max_size=3), max_size=3),
)
def test_to_dict_round_trip_and_resolution_are_consistent(flags, ops, groups):
    raw = minimal()
    keys = [("defaults", "ops", "is_output_quantized"), ("defaults", "ops", "is_input_quantized"),
            ("defaults", "ops", "is_symmetric"), ("defaults", "params", "is_quantized"),
            ("defaults", "params", "is_symmetric"), ("defaults", "per_channel_quantization"),
            ("defaults", "strict_symmetric"), ("model_input", "is_input_quantized"),
            ("model_output", "is_output_quantized")]
    for key, value in zip(keys, flags):
        if value is not None:
            target = raw
            for part in key[:-1]:
                target = target[part]
            target[key[-1]] = value
    raw["op_type"] = ops
    raw["supergroups"] = [{"op_list": g} for g in groups]
    cfg = load_config(raw)
    assert load_config(cfg.to_dict()) == cfg
    assert load_config(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for name, entry in ops.items():
        resolved = cfg.settings_for_op(name)
        if "is_output_quantized" in entry:
            assert resolved.is_output_quantized is (entry["is_output_quantized"] == "True")
        else:
            assert resolved.is_output_quantized is cfg.defaults.is_output_quantized
        for pname, pentry in entry.get("params", {}).items():
            if "is_quantized" in pentry:
                assert resolved.param(pname).is_quantized is (pentry["is_quantized"] == "True")


# ------------------------------------------------------------------------------------------------
# Errors: every message names the JSON path, the bad value and what is allowed
# ------------------------------------------------------------------------------------------------


def _set(raw: dict, path: tuple, value) -> dict:
    target = raw
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return raw


ALLOWED_FLAGS = "expected one of 'True', 'False'"

ERROR_CASES = [
    pytest.param(("defaults", "ops", "is_output_quantized"), "yes",
                 ["defaults.ops.is_output_quantized", "'yes'", ALLOWED_FLAGS], id="bad-flag-defaults"),
    pytest.param(("defaults", "ops", "is_output_quantized"), "true",
                 ["defaults.ops.is_output_quantized", "'true'", "did you mean 'True'?", ALLOWED_FLAGS],
                 id="lowercase-flag-suggests"),
    pytest.param(("op_type", "Gather", "is_output_quantized"), 0,
                 ["op_type.Gather.is_output_quantized", "invalid value 0", ALLOWED_FLAGS],
                 id="number-as-flag"),
    pytest.param(("params", "bias", "is_quantized"), None,
                 ["params.bias.is_quantized", "null", ALLOWED_FLAGS], id="null-flag"),
    pytest.param(("model_input", "is_input_quantized"), "Yes",
                 ["model_input.is_input_quantized", "'Yes'", ALLOWED_FLAGS], id="bad-flag-model-input"),
    pytest.param(("defaults", "per_channel_quantization"), "1",
                 ["defaults.per_channel_quantization", "'1'", ALLOWED_FLAGS], id="bad-flag-per-channel"),
    pytest.param(("op_type", "Softmax", "encoding_constraints", "min"), "0",
                 ["op_type.Softmax.encoding_constraints.min", "'0'", "expected a finite number"],
                 id="constraint-not-number"),
    pytest.param(("op_type", "Softmax", "encoding_constraints", "max"), True,
                 ["op_type.Softmax.encoding_constraints.max", "true", "expected a finite number"],
                 id="constraint-bool"),
    pytest.param(("op_type", "Softmax", "encoding_constraints"), {"min": 1.0, "max": 1.0},
                 ["op_type.Softmax.encoding_constraints", "min=1.0, max=1.0", "expected min < max"],
                 id="constraint-empty-range"),
    pytest.param(("op_type", "Softmax", "encoding_constraints"), {"min": 0.5, "max": 1.0},
                 ["op_type.Softmax.encoding_constraints.min", "0.5", "expected a number <= 0.0"],
                 id="constraint-excludes-zero"),
    pytest.param(("op_type", "Softmax", "encoding_constraints"), {"min": 0.0},
                 ["op_type.Softmax.encoding_constraints", "missing required key 'max'",
                  "required keys: 'min', 'max'"], id="constraint-missing-max"),
    pytest.param(("op_type", "Softmax", "encoding_constraints"), {"min": 0, "max": 1, "mx": 2},
                 ["op_type.Softmax.encoding_constraints.mx", "unknown key 'mx'",
                  "did you mean 'max'?", "known keys: 'min', 'max'"], id="constraint-unknown-key"),
    pytest.param(("op_type", "Softmax", "encoding_constraints"), [0, 1],
                 ["op_type.Softmax.encoding_constraints", "expected a JSON object", "array [0, 1]"],
                 id="constraint-not-object"),
    pytest.param(("op_type", "Gather", "is_output_quantised"), "False",
                 ["op_type.Gather.is_output_quantised", "unknown key", "did you mean 'is_output_quantized'?",
                  "known keys:", "'per_channel_quantization'", "'encoding_constraints'"],
                 id="unknown-op-key"),
    pytest.param(("defaults", "opps"), {},
                 ["defaults.opps", "did you mean 'ops'?", "known keys: 'ops', 'params'"],
                 id="unknown-defaults-key"),
    pytest.param(("params", "weight"), {"quantized": "True"},
                 ["params.weight.quantized", "did you mean 'is_quantized'?",
                  "known keys: 'is_quantized', 'is_symmetric'"], id="unknown-param-key"),
    pytest.param(("params", "weight"), "True",
                 ["params.weight", "expected a JSON object", "string 'True'"], id="param-not-object"),
    pytest.param(("model_output", "is_output_quantize"), "True",
                 ["model_output.is_output_quantize", "did you mean 'is_output_quantized'?"],
                 id="unknown-model-output-key"),
    pytest.param(("supergroups",), {"op_list": ["Conv", "Relu"]},
                 ["supergroups", "expected a JSON array", "got object"], id="supergroups-not-array"),
    pytest.param(("supergroups", 2, "op_list"), "Conv,Relu",
                 ["supergroups[2].op_list", "expected a JSON array", "string 'Conv,Relu'"],
                 id="op-list-not-list"),
    pytest.param(("supergroups", 2, "op_list"), ["Conv", 3],
                 ["supergroups[2].op_list[1]", "invalid value 3", "expected a non-empty string"],
                 id="op-list-item-not-string"),
    pytest.param(("supergroups", 1, "op_list"), ["Add"],
                 ["supergroups[1].op_list", "expected at least 2 items, got 1"], id="op-list-too-short"),
    pytest.param(("supergroups", 0), {"ops": ["Conv", "Relu"]},
                 ["supergroups[0].ops", "unknown key 'ops'", "did you mean 'op_list'?"],
                 id="supergroup-unknown-key"),
    pytest.param(("supergroups", 0), ["Conv", "Relu"],
                 ["supergroups[0]", "expected a JSON object", "array"], id="supergroup-not-object"),
    pytest.param(("defaults", "hw_version"), 73,
                 ["defaults.hw_version", "invalid value 73", "expected a string"], id="hw-version"),
    pytest.param(("defaults", "supported_kernels"), [{"activation": {"bitwidth": 3, "dtype": "float"},
                                                      "param": {"bitwidth": 8, "dtype": "int"}}],
                 ["defaults.supported_kernels[0].activation.bitwidth", "invalid value 3",
                  "for dtype 'float'", "expected one of 8, 16, 32"], id="kernel-bitwidth"),
    pytest.param(("defaults", "supported_kernels"), [{"activation": {"bitwidth": 8, "dtype": "int8"},
                                                      "param": {"bitwidth": 8, "dtype": "int"}}],
                 ["defaults.supported_kernels[0].activation.dtype", "'int8'",
                  "expected one of 'int', 'float'"], id="kernel-dtype"),
    pytest.param(("defaults", "supported_kernels"), [{"activation": {"bitwidth": 8, "dtype": "int"}}],
                 ["defaults.supported_kernels[0]", "missing required key 'param'"],
                 id="kernel-defaults-need-param"),
    pytest.param(("defaults", "supported_kernels"), [],
                 ["defaults.supported_kernels", "expected a non-empty JSON array"], id="kernels-empty"),
    pytest.param(("supergroup_pass_list",), "MatmulAdd",
                 ["supergroup_pass_list", "expected a JSON array of supergroup pass names"],
                 id="pass-list-not-array"),
    pytest.param(("op_type",), [],
                 ["op_type", "expected a JSON object, got array"], id="op-type-not-object"),
    pytest.param(("op_type", "Softmax"), "True",
                 ["op_type.Softmax", "expected a JSON object, got string"], id="op-entry-not-object"),
]


@pytest.mark.parametrize("path, value, fragments", ERROR_CASES)
def test_invalid_values_name_path_value_and_allowed(path, value, fragments):
    raw = spec_example()
    raw["supergroups"].append({"op_list": ["Gemm", "Relu"]})  # so supergroups[2] exists
    with raises_config_error("quantsim config (dict)", *fragments):
        load_config(_set(raw, path, value))


@pytest.mark.parametrize("missing", ["defaults", "params", "op_type", "supergroups", "model_input",
                                     "model_output"])
def test_missing_top_level_key(missing):
    raw = spec_example()
    del raw[missing]
    with raises_config_error("<root>", f"missing required key {missing!r}",
                             "required keys: 'defaults', 'params', 'op_type', 'supergroups'"):
        load_config(raw)


@pytest.mark.parametrize("missing", ["ops", "params"])
def test_missing_defaults_key(missing):
    raw = spec_example()
    del raw["defaults"][missing]
    with raises_config_error("defaults", f"missing required key {missing!r}"):
        load_config(raw)


def test_unknown_top_level_key_with_suggestion():
    raw = spec_example()
    raw["op_types"] = raw.pop("op_type")
    with raises_config_error("op_types", "unknown key 'op_types'", "did you mean 'op_type'?",
                             "known keys: 'defaults', 'params', 'op_type'"):
        load_config(raw)


@pytest.mark.parametrize("document, got", [("[1, 2]", "array [1, 2]"), ('"config"', "string 'config'"),
                                           ("3", "number 3"), ("null", "null")])
def test_top_level_must_be_an_object(tmp_path, document, got):
    path = tmp_path / "top.json"
    path.write_text(document)
    with raises_config_error(f"config file '{path}'", "<root>", f"expected a JSON object, got {got}"):
        load_config(path)


def test_validation_errors_from_a_file_name_the_file(tmp_path):
    raw = spec_example()
    raw["op_type"]["Softmax"]["encoding_constraints"]["min"] = "low"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with raises_config_error(f"config file '{path}'", "op_type.Softmax.encoding_constraints.min",
                             "'low'", "expected a finite number"):
        load_config(path)


def test_file_not_found_names_file(tmp_path):
    path = tmp_path / "missing.json"
    with raises_config_error(f"config file '{path}' not found"):
        load_config(path)
    with raises_config_error(f"config file '{path}' not found"):
        load_config(str(path))


def test_misspelt_builtin_name_suggests_builtin():
    with raises_config_error("config file 'per-tensor' not found",
                             "did you mean the built-in config 'per_tensor'?",
                             "built-in configs: 'default', 'per_tensor'"):
        load_config("per-tensor")
    with raises_config_error("config file 'foo' not found (built-in configs: 'default', 'per_tensor')"):
        load_config("foo")


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "defaults": {\n    "ops": {"is_output_quantized": "True"}\n    "params": {}\n}\n')
    with raises_config_error(f"config file '{path}'", "invalid JSON at line 4, column 5",
                             "Expecting ',' delimiter") as info:
        load_config(path)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_directory_is_not_a_config(tmp_path):
    with raises_config_error(f"config file '{tmp_path}' is a directory"):
        load_config(tmp_path)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_config({"defaults": {}})


@pytest.mark.parametrize("bad", [3, ["defaults"], b"{}"])
def test_wrong_argument_type_is_type_error(bad):
    with pytest.raises(TypeError, match="expected None, a built-in name"):
        load_config(bad)


# ------------------------------------------------------------------------------------------------
# Warnings, not errors
# ------------------------------------------------------------------------------------------------


def test_unknown_op_type_names_warn_but_load(caplog):
    raw = spec_example()
    raw["op_type"]["Relu6"] = {"is_output_quantized": "False"}
    raw["supergroups"].append({"op_list": ["conv", "Relu"]})
    with caplog.at_level(logging.WARNING, logger="fxquant.quantsim.config"):
        cfg = load_config(raw)
    assert cfg.op_types["Relu6"].is_output_quantized is False
    assert ("conv", "Relu") in cfg.supergroups
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "op_type.Relu6" in messages and "'Relu6' is not an ONNX op type" in messages
    assert "did you mean 'Clip'?" in messages
    assert "supergroups[3].op_list[0]" in messages and "did you mean 'Conv'?" in messages


def test_known_and_aimet_op_names_do_not_warn(caplog):
    raw = spec_example()
    raw["op_type"].update({"LayerNorm": {"per_channel_quantization": "False"},
                           "HardSwish": {}, "Squeeze": {"is_output_quantized": "False"}})
    with caplog.at_level(logging.WARNING, logger="fxquant.quantsim.config"):
        load_config(raw)
        load_config("default")
    assert not caplog.records


def test_duplicate_json_keys_warn(tmp_path, caplog):
    path = tmp_path / "dup.json"
    path.write_text(SPEC_EXAMPLE.replace('"op_type": {"Gather": {"is_output_quantized": "False"},',
                                         '"op_type": {"Gather": {"is_output_quantized": "False"}, '
                                         '"Gather": {},'))
    with caplog.at_level(logging.WARNING, logger="fxquant.quantsim.config"):
        cfg = load_config(path)
    assert cfg.settings_for_op("Gather").is_output_quantized is True  # JSON keeps the last
    assert any("'Gather' appears twice" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# torch module -> ONNX op type
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module, expected", [
    (nn.Conv1d(2, 2, 1), "Conv"), (nn.Conv2d(2, 2, 1), "Conv"), (nn.Conv3d(2, 2, 1), "Conv"),
    (nn.ConvTranspose1d(2, 2, 1), "ConvTranspose"), (nn.ConvTranspose2d(2, 2, 1), "ConvTranspose"),
    (nn.ConvTranspose3d(2, 2, 1), "ConvTranspose"), (nn.Linear(2, 2), "Gemm"),
    (nn.LazyLinear(2), "Gemm"), (nn.LazyConv2d(2, 1), "Conv"),
    (nn.BatchNorm1d(2), "BatchNormalization"), (nn.BatchNorm2d(2), "BatchNormalization"),
    (nn.BatchNorm3d(2), "BatchNormalization"), (nn.ReLU(), "Relu"), (nn.ReLU6(), "Clip"),
    (nn.Hardtanh(), "Clip"), (nn.LeakyReLU(), "LeakyRelu"), (nn.PReLU(), "PRelu"),
    (nn.Sigmoid(), "Sigmoid"), (nn.Tanh(), "Tanh"), (nn.GELU(), "Gelu"), (nn.SiLU(), "Swish"),
    (nn.Hardswish(), "HardSwish"), (nn.Hardsigmoid(), "HardSigmoid"), (nn.ELU(), "Elu"),
    (nn.Softmax(dim=1), "Softmax"), (nn.LogSoftmax(dim=1), "LogSoftmax"),
    (nn.MaxPool1d(2), "MaxPool"), (nn.MaxPool2d(2), "MaxPool"), (nn.MaxPool3d(2), "MaxPool"),
    (nn.AvgPool2d(2), "AveragePool"), (nn.AdaptiveAvgPool2d(1), "GlobalAveragePool"),
    (nn.AdaptiveAvgPool2d((1, 1)), "GlobalAveragePool"), (nn.AdaptiveAvgPool2d((7, 7)), "AveragePool"),
    (nn.AdaptiveAvgPool1d(1), "GlobalAveragePool"), (nn.AdaptiveMaxPool2d(1), "GlobalMaxPool"),
    (nn.AdaptiveMaxPool2d(3), "MaxPool"),
    (nn.Flatten(), "Flatten"), (nn.Dropout(), "Dropout"), (nn.Dropout2d(), "Dropout"),
    (nn.Identity(), "Identity"), (nn.LayerNorm(4), "LayerNormalization"),
    (nn.GroupNorm(2, 4), "GroupNormalization"), (nn.InstanceNorm2d(2), "InstanceNormalization"),
    (nn.Embedding(4, 2), "Gather"), (nn.Upsample(scale_factor=2), "Resize"),
    (nn.PixelShuffle(2), "DepthToSpace"), (nn.ZeroPad2d(1), "Pad"), (nn.LSTM(2, 2), "LSTM"),
    (nn.MultiheadAttention(4, 2), None), (nn.Sequential(), None),
])
def test_onnx_op_type_of_torch_modules(module, expected):
    assert onnx_op_type(module) == expected


def test_onnx_op_type_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module instance"):
        onnx_op_type(nn.Conv2d)  # type: ignore[arg-type]


def test_subclasses_inherit_op_type():
    class SameConv(nn.Conv2d):
        pass

    assert onnx_op_type(SameConv(1, 1, 3)) == "Conv"


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(op_types_module, "_USER_OP_TYPE_BY_CLASS", {})
    monkeypatch.setattr(op_types_module, "_USER_OP_TYPE_NAMES", set())


def test_register_op_type(clean_registry, caplog):
    class MyAct(nn.Module):
        def forward(self, x):
            return x

    class MyActChild(MyAct):
        pass

    assert onnx_op_type(MyAct()) is None
    assert not is_known_op_type("MyAct")
    assert register_op_type(MyAct, "MyAct") is MyAct
    assert onnx_op_type(MyAct()) == onnx_op_type(MyActChild()) == "MyAct"
    assert is_known_op_type("MyAct")

    # A registered name is no longer an unknown op type in configs.
    raw = spec_example()
    raw["op_type"]["MyAct"] = {"is_output_quantized": "False"}
    with caplog.at_level(logging.WARNING, logger="fxquant.quantsim.config"):
        cfg = load_config(raw)
    assert not caplog.records
    assert cfg.settings_for_op(onnx_op_type(MyAct())).is_output_quantized is False

    # Registrations win over the built-in mapping.
    register_op_type(nn.ReLU6, "Relu6")
    assert onnx_op_type(nn.ReLU6()) == "Relu6"
    assert onnx_op_type(nn.Hardtanh()) == "Clip"

    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_op_type(MyAct(), "X")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_op_type(int, "X")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        register_op_type(MyAct, "")


@pytest.mark.parametrize("class_name, expected", [
    ("Add", "Add"), ("Sub", "Sub"), ("Mul", "Mul"), ("Div", "Div"), ("MatMul", "MatMul"),
    ("BMM", "MatMul"), ("Cat", "Concat"), ("Interpolate", "Resize"), ("Reshape", "Reshape"),
    ("View", "Reshape"), ("Permute", "Transpose"), ("Transpose", "Transpose"),
    ("Flatten", "Flatten"), ("Chunk", "Split"), ("GetItem", "Slice"), ("Mean", "ReduceMean"),
    ("Softmax", "Softmax"), ("Gelu", "Gelu"),
])
def test_fxquant_elementwise_modules_map_by_class_name(class_name, expected):
    cls = type(class_name, (nn.Module,), {"__module__": "fxquant.nn"})
    assert onnx_op_type(cls()) == expected
    assert ONNX_OP_TYPE_BY_CLASS_NAME[class_name] == expected


def test_real_fxquant_nn_modules():
    fxnn = pytest.importorskip("fxquant.nn")
    import operator

    import torch
    import torch.nn.functional as F

    cases = [("Add", {"fn": operator.add}, "Add"), ("Cat", {"fn": torch.cat}, "Concat"),
             ("Reshape", {"method": "view"}, "Reshape"), ("Permute", {"method": "permute"}, "Transpose"),
             ("Pool", {"fn": F.max_pool2d}, "MaxPool"), ("Pool", {"fn": F.avg_pool2d}, "AveragePool"),
             ("Pool", {"fn": F.adaptive_avg_pool2d}, "AveragePool"),
             ("Normalize", {"fn": F.layer_norm}, "LayerNormalization"),
             ("Normalize", {"fn": F.group_norm}, "GroupNormalization"),
             ("Sqrt", {"fn": torch.sqrt}, "Sqrt"), ("Sqrt", {"method": "rsqrt"}, "Reciprocal"),
             ("Clamp", {"fn": torch.clamp}, "Clip"), ("Stack", {"fn": torch.stack}, "Concat")]
    for class_name, kwargs, expected in cases:
        cls = getattr(fxnn, class_name, None)
        if cls is None:
            continue
        assert onnx_op_type(cls(**kwargs)) == expected, (class_name, kwargs)
    for name in getattr(fxnn, "__all__", []):
        cls = getattr(fxnn, name)
        if isinstance(cls, type) and issubclass(cls, nn.Module) and name != "FunctionalModule":
            assert name in ONNX_OP_TYPE_BY_CLASS_NAME, f"fxquant.nn.{name} has no ONNX op type"


def test_class_name_registry_ignores_user_classes():
    user_add = type("Add", (nn.Module,), {"__module__": "my_project.layers"})
    assert onnx_op_type(user_add()) is None


def test_every_mapped_op_type_is_known():
    names = set(ONNX_OP_TYPE_BY_CLASS_NAME.values()) | set(DATA_MOVEMENT_OP_TYPES)
    names |= set(PER_CHANNEL_AXIS_BY_OP_TYPE)
    names |= {v for v in op_types_module._BUILTIN_OP_TYPE_BY_CLASS.values() if v is not None}
    assert {n for n in names if not is_known_op_type(n)} == set()


def test_data_movement_and_per_channel_axis_facts():
    for op in ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
               "MaxPool", "Identity", "Dropout", "Gather"):
        assert op in DATA_MOVEMENT_OP_TYPES
    for op in ("Concat", "AveragePool", "GlobalAveragePool", "Add", "Relu", "Resize", "Pad"):
        assert op not in DATA_MOVEMENT_OP_TYPES
    assert PER_CHANNEL_AXIS_BY_OP_TYPE == {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}


def test_builtin_config_covers_onnx_op_types_of_common_modules():
    cfg = load_config()
    fused = {(onnx_op_type(nn.Conv2d(1, 1, 1)), onnx_op_type(nn.ReLU())),
             (onnx_op_type(nn.Conv2d(1, 1, 1)), onnx_op_type(nn.ReLU6())),
             (onnx_op_type(nn.Linear(1, 1)), onnx_op_type(nn.ReLU())),
             (onnx_op_type(nn.ConvTranspose2d(1, 1, 1)), onnx_op_type(nn.ReLU()))}
    assert fused <= set(cfg.supergroups)


# ------------------------------------------------------------------------------------------------
# Docstring examples
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [config_module, op_types_module], ids=lambda m: m.__name__)
def test_docstring_examples_run(module, clean_registry):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_builtin_files_are_package_data():
    from importlib import resources

    folder = resources.files("fxquant.quantsim").joinpath("default_configs")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
    assert names == ["default.json", "per_tensor.json"]
    assert Path(str(folder.joinpath("default.json"))).is_file()


# ------------------------------------------------------------------------------------------------
# The split: data model (config_model.py) and loading (config.py)
# ------------------------------------------------------------------------------------------------


def test_config_model_docstring_examples_run():
    from fxquant.quantsim import config_model

    result = doctest.testmod(config_model, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_data_model_names_are_importable_from_config():
    from fxquant.quantsim import config_model

    for name in config_model.__all__:
        assert getattr(config_module, name) is getattr(config_model, name), name
    loading = {"BUILTIN_CONFIGS", "load_config"}
    assert set(config_model.__all__) | loading == set(config_module.__all__)


def test_keys_that_are_not_identifiers_are_quoted_in_the_json_path(caplog):
    raw = spec_example()
    raw["op_type"]["my op"] = {"is_output_quantized": 1}
    with caplog.at_level(logging.WARNING, logger="fxquant.quantsim.config"):
        with raises_config_error('quantsim config (dict): op_type["my op"].is_output_quantized: '
                                 "invalid value 1; expected one of 'True', 'False'"):
            load_config(raw)
    assert any('op_type["my op"]' in r.getMessage() and r.name == "fxquant.quantsim.config"
               for r in caplog.records)


# Issue 11 item 10: nothing in a config file escapes as a raw Python error
def test_deeply_nested_and_oversized_json_are_config_errors(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"defaults": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match=rf"config file '{re.escape(str(deep))}': JSON nested "
                                          "too deeply to read"):
        load_config(deep)
    big = tmp_path / "big.json"
    big.write_text('{"defaults": ' + "7" * 5000 + "}")
    with pytest.raises(ConfigError, match=r"big.json': invalid JSON: Exceeds the limit"):
        load_config(big)
    nested: object = []
    for _ in range(5000):
        nested = [nested]
    raw = json.loads(SPEC_EXAMPLE)
    raw["defaults"]["hw_version"] = nested   # shown in the message without recursing
    with pytest.raises(ConfigError, match=r"defaults.hw_version: invalid value <array nested too "
                                          "deeply to show>"):
        load_config(raw)
    raw["defaults"]["hw_version"] = "V73"
    raw["op_type"]["Softmax"] = {"encoding_constraints": {"min": -(10 ** 400), "max": 1}}
    with pytest.raises(ConfigError, match=r"op_type.Softmax.encoding_constraints.min: invalid "
                                          "value"):
        load_config(raw)


def test_a_dict_config_can_name_where_it_came_from():
    raw = json.loads(SPEC_EXAMPLE)
    raw["defaults"]["ops"]["is_output_quantized"] = 1
    with pytest.raises(ConfigError, match=r"^checkpoint 'a.ckpt': config: defaults.ops."
                                          r"is_output_quantized: invalid value 1"):
        load_config(raw, source="checkpoint 'a.ckpt': config")
    with pytest.raises(ConfigError, match=r"^quantsim config \(dict\): defaults.ops"):
        load_config(raw)
