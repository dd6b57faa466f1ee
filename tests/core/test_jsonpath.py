"""Tests of the one JSON-path validator (fxquant/core/jsonpath.py)."""
from __future__ import annotations

import doctest
import json
import logging
import math

import pytest

from fxquant.core import jsonpath
from fxquant.core.jsonpath import JsonValidator
from fxquant.errors import ConfigError


class _ManifestError(ValueError):
    pass


@pytest.fixture()
def v() -> JsonValidator:
    return JsonValidator("config file 'a.json'")


def test_docstring_examples_run() -> None:
    result = doctest.testmod(jsonpath, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


# -------------------------------------------------------------------------------------------------
# Paths and renderings
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, key, expected", [
    ("", "defaults", "defaults"),
    ("defaults", "ops", "defaults.ops"),
    ("op_type", "Conv 2d", 'op_type["Conv 2d"]'),
    ("", "a.b", '["a.b"]'),
    ("params", "1x", 'params["1x"]'),
    ("t", 'q"uote', 't["q\\"uote"]'),
])
def test_join(path: str, key: str, expected: str) -> None:
    assert jsonpath.join(path, key) == expected


def test_index_show_type_got_quoted() -> None:
    assert jsonpath.index(jsonpath.join("supergroups", ""), 0) == 'supergroups[""][0]'
    assert jsonpath.index("a", 3) == "a[3]"
    assert [jsonpath.show(x) for x in ("x", None, True, 1.5, {"a": [1]})] == [
        "'x'", "null", "true", "1.5", '{"a": [1]}']
    assert jsonpath.show(object).startswith("<class")  # not JSON: repr
    long = jsonpath.show(list(range(100)))
    assert len(long) == 60 and long.endswith("...")
    assert [jsonpath.json_type(x) for x in ({}, [], (), 1, 1.0, "", True, None, object())] == [
        "object", "array", "array", "number", "number", "string", "boolean", "null", "object"]
    assert jsonpath.got("x") == "got string 'x'" and jsonpath.got(None) == "got null"
    assert jsonpath.quoted(("min", "max")) == "'min', 'max'"


def test_suggest() -> None:
    assert jsonpath.suggest("TRUE", ("True", "False")) == "True"  # letter case first
    assert jsonpath.suggest("is_output_quantised", ("is_output_quantized", "params")) == \
        "is_output_quantized"
    assert jsonpath.suggest("zzz", ("op_type",)) is None


# -------------------------------------------------------------------------------------------------
# loads
# -------------------------------------------------------------------------------------------------
def test_loads_warns_about_duplicate_keys_on_the_callers_logger(
        caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("fxquant.tests.jsonpath")
    with caplog.at_level(logging.WARNING, logger="fxquant.tests.jsonpath"):
        data = jsonpath.loads('{"a": {"b": 1, "b": 2}}', "x.json", log=log)
    assert data == {"a": {"b": 2}}
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("fxquant.tests.jsonpath", "x.json: key 'b' appears twice in one JSON object; the last one "
                                   "is used")]


def test_loads_invalid_json_names_line_column_and_fix() -> None:
    with pytest.raises(ConfigError, match=r"^x.json: invalid JSON at line 2, column 1: Expecting "
                                          r"',' delimiter; the file is not valid JSON \(fix the "
                                          r"file or write it again\)$") as info:
        jsonpath.loads('{"a": 1\n"b": 2}', "x.json")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
    with pytest.raises(_ManifestError, match=r"not valid JSON \(re-generate the dump\)"):
        jsonpath.loads("", "m.json", error_cls=_ManifestError, fix="re-generate the dump")


# -------------------------------------------------------------------------------------------------
# JsonValidator
# -------------------------------------------------------------------------------------------------
def test_the_error_form_and_class() -> None:
    with pytest.raises(ConfigError, match=r"^quantsim config \(dict\): defaults.ops."
                                          r"is_output_quantized: invalid value 1; expected one of "
                                          r"'True', 'False' \(JSON true/false also accepted\)$"):
        JsonValidator("quantsim config (dict)").flag({"is_output_quantized": 1},
                                                     "is_output_quantized", "defaults.ops")
    other = JsonValidator("dump/manifest.json", error_cls=_ManifestError)
    with pytest.raises(_ManifestError, match=r"^dump/manifest.json: <root>: expected a JSON "
                                             r"object, got array \[1\]$"):
        other.object([1], "")


def test_object(v: JsonValidator) -> None:
    assert v.object({"a": 1}, "x") == {"a": 1}
    with pytest.raises(ConfigError, match=r"a.json': op_type: expected a JSON object, got string "
                                          r"'Conv'"):
        v.object("Conv", "op_type")
    with pytest.raises(ConfigError, match=r"op_type: keys must be strings, got 3"):
        v.object({3: "x"}, "op_type")


def test_array(v: JsonValidator) -> None:
    assert v.array([1, 2], "a", min_items=2) == [1, 2]
    with pytest.raises(ConfigError, match=r"supergroups: expected a JSON array of groups, got "
                                          "object"):
        v.array({}, "supergroups", what="groups")
    with pytest.raises(ConfigError, match=r"op_list: expected at least 2 items, got 1: "
                                          r"\[\"Add\"\]$"):
        v.array(["Add"], "op_list", min_items=2)


def test_check_keys(v: JsonValidator) -> None:
    v.check_keys({"min": 0, "max": 1}, "c", ("min", "max"), ("min", "max"))
    with pytest.raises(ConfigError, match=r"c.mx: unknown key 'mx'; did you mean 'max'\? known "
                                          r"keys: 'min', 'max'$"):
        v.check_keys({"mx": 1}, "c", ("min", "max"))
    with pytest.raises(ConfigError, match=r"c\[\"q q\"\]: unknown key 'q q'; known keys: 'min', "
                                          "'max'$"):
        v.check_keys({"q q": 1}, "c", ("min", "max"))
    with pytest.raises(ConfigError, match=r"<root>: missing required key 'defaults'; required "
                                          r"keys: 'defaults', 'params'$"):
        v.check_keys({}, "", ("defaults", "params"), ("defaults", "params"))


def test_get(v: JsonValidator) -> None:
    entry = {"bw": 8, "scale": [0.5], "is_sym": True, "name": "x", "f": 1.0}
    assert v.get(entry, "bw", "e", int) == 8
    assert v.get(entry, "scale", "e", (list, int, float)) == [0.5]
    assert v.get(entry, "is_sym", "e", bool) is True
    with pytest.raises(ConfigError, match=r"e.offset: missing; expected array or number$"):
        v.get(entry, "offset", "e", (list, int, float))
    with pytest.raises(ConfigError, match=r"e.is_sym: expected integer, got boolean true$"):
        v.get(entry, "is_sym", "e", int)  # a boolean is not a number here
    with pytest.raises(ConfigError, match=r"e.f: expected integer, got number 1.0$"):
        v.get(entry, "f", "e", int)
    with pytest.raises(ConfigError, match=r"e.name: expected object, got string 'x'$"):
        v.get(entry, "name", "e", dict)
    with pytest.raises(ConfigError, match=r"a.json': encodings: missing; expected array$"):
        v.get({}, "encodings", "", list)


@pytest.mark.parametrize("value, expected", [("True", True), ("False", False), (True, True),
                                             (False, False)])
def test_flag_values(v: JsonValidator, value, expected: bool) -> None:
    assert v.flag({"k": value}, "k", "p") is expected


@pytest.mark.parametrize("value, fragment", [
    ("true", r"invalid value 'true' \(did you mean 'True'\?\); expected one of 'True', 'False'"),
    (" FALSE ", r"invalid value ' FALSE ' \(did you mean 'False'\?\)"),
    ("yes", r"invalid value 'yes'; expected one of"),
    (None, r"invalid value null; expected one of"),
    ([True], r"invalid value \[true\]; expected one of"),
])
def test_flag_errors(v: JsonValidator, value, fragment: str) -> None:
    assert v.flag({}, "k", "p") is None
    with pytest.raises(ConfigError, match=r"p.k: " + fragment):
        v.flag({"k": value}, "k", "p")


def test_one_of(v: JsonValidator) -> None:
    assert v.one_of("int", "d", ("int", "float")) == "int"
    with pytest.raises(ConfigError, match=r"e.enc_type: invalid value 'PER_BLOCK'; expected one of "
                                          r"'PER_TENSOR', 'PER_CHANNEL' \(block encodings are not "
                                          r"supported\)$"):
        v.one_of("PER_BLOCK", "e.enc_type", ("PER_TENSOR", "PER_CHANNEL"),
                 note="block encodings are not supported")
    with pytest.raises(ConfigError, match=r"invalid value true; expected one of 1, 0"):
        v.one_of(True, "b", (1, 0))  # True == 1 in Python, but not in JSON


def test_string_list(v: JsonValidator) -> None:
    assert v.string_list(["Conv", "Relu"], "ops", min_items=2) == ("Conv", "Relu")
    with pytest.raises(ConfigError, match=r"ops\[1\]: invalid value 3; expected a non-empty string "
                                          r"\(op names\)$"):
        v.string_list(["Conv", 3], "ops", what="op names")
    with pytest.raises(ConfigError, match=r"ops\[0\]: invalid value ''"):
        v.string_list([""], "ops")
    with pytest.raises(ConfigError, match=r"ops: expected a JSON array of strings, got string"):
        v.string_list("Conv,Relu", "ops")


def test_number(v: JsonValidator) -> None:
    assert v.number(3, "n") == 3 and v.number(-0.5, "n") == -0.5
    three = v.number(3.0, "n", integer=True)
    assert three == 3 and isinstance(three, int)
    for bad, shown in ((True, "true"), ("1", "'1'"), (None, "null"), (math.nan, "NaN"),
                       (math.inf, "Infinity")):
        with pytest.raises(ConfigError, match=rf"n: invalid value {shown}; expected a finite "
                                              "number$"):
            v.number(bad, "n")
    with pytest.raises(ConfigError, match=r"o: invalid value 2.5; expected an integer \(an "
                                          r"offset\)$"):
        v.number(2.5, "o", integer=True, what="an offset")
    with pytest.raises(ConfigError, match=r"s: invalid value 0; expected a number > 0 "
                                          r"\(a scale\)$"):
        v.number(0, "s", positive=True, what="a scale")


def test_number_list(v: JsonValidator) -> None:
    assert v.number_list(0.5, "s", positive=True) == [0.5]
    assert v.number_list([-128, 0.0], "o", integer=True) == [-128, 0]
    with pytest.raises(ConfigError, match=r"s\[1\]: invalid value -1.0; expected a number > 0"):
        v.number_list([0.1, -1.0], "s", positive=True)
    with pytest.raises(ConfigError, match=r"^config file 'a.json': s: invalid value -1; expected "):
        v.number_list(-1, "s", positive=True)  # a scalar keeps the path without index
    with pytest.raises(ConfigError, match=r"s: expected a number or a non-empty array of numbers, "
                                          "got an empty array"):
        v.number_list([], "s")


def test_int_in_range(v: JsonValidator) -> None:
    assert v.int_in_range(8, "bw", 2, 32) == 8
    for bad, shown in ((1, "1"), (33, "33"), (8.0, "8.0"), (True, "true"), ("8", "'8'")):
        with pytest.raises(ConfigError, match=rf"bw: invalid value {shown}; expected an integer in "
                                              r"2-32 \(a bit width\)$"):
            v.int_in_range(bad, "bw", 2, 32, what="a bit width")
