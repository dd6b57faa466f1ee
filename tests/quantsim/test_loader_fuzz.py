"""Property-based fuzzing of every loader of quantization state (issue 11, acceptance).

Each test starts from a valid document (a quantsim config, an encodings file of each version and
naming, a checkpoint payload), applies generated damage (wrong types at every JSON path, missing
and unknown keys, NaN/Inf/huge/tiny numbers, wrong lengths, deep nesting, truncated JSON,
non-UTF-8 bytes) and checks the loader's contract: it either loads something valid, or raises
fxquant's own error class whose message names the file and either the damaged key (its JSON
path, see ``_check_error``) or a file-level reason. Nothing else may escape.

Examples per loader in a normal run (FXQUANT_FUZZ_SCALE unset), each stated at its section too:

* quantsim config: 2,000 (1,000 parsed dicts + 1,000 files);
* encodings: 2,000 per version — 1.0.0, 0.6.1, 2.0.0 — and 2,000 for the torch-named file;
* checkpoint payloads: 2,300 (1,000 damaged fields + 1,000 damaged state dicts + 300 damaged
  files);
* layer-dump manifests: tests/layer_outputs/test_dump_reader.py (2,200).

FXQUANT_FUZZ_SCALE (e.g. 0.05) scales every count down for a quick local run. The examples are
derandomized (the same in every run, so CI failures reproduce) and no example database is kept.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fxquant.core.jsonpath import index as json_index
from fxquant.core.jsonpath import join as json_join
from fxquant.errors import ConfigError, FxQuantError
from fxquant.export.encodings_file import EncodingsFileError, encodings_dict, torch_encodings_dict
from fxquant.export.encodings_reader import read_encodings
from fxquant.quantsim import checkpoint
from fxquant.quantsim.checkpoint import CheckpointError, load_encodings_to_sim
from fxquant.quantsim.config import load_config
from fxquant.quantsim.quantizer import AffineQuantizer
from fxquant.quantsim.quantsim import QuantizationSimModel

#: Examples per test; FXQUANT_FUZZ_SCALE (e.g. 0.05) scales them down for a quick local run.
_SCALE = float(os.environ.get("FXQUANT_FUZZ_SCALE", "1"))
FUZZ = {n: max(1, int(n * _SCALE)) for n in (300, 1000, 2000)}

X = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))

#: Reproducible in CI: the examples follow from the test (derandomize), no example database, no
#: per-example deadline (a sim is built per example).
_FAST = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                    HealthCheck.data_too_large])


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _Net().eval()


@pytest.fixture(scope="module")
def calibrated() -> QuantizationSimModel:
    sim = QuantizationSimModel(_net(), X[:1], default_param_bw=4)
    sim.compute_encodings(lambda m: m(X))
    return sim


@pytest.fixture(scope="module")
def target() -> QuantizationSimModel:
    """The sim encodings are loaded into (built once; every load replaces all its encodings)."""
    return QuantizationSimModel(_net(), X[:1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# -------------------------------------------------------------------------------------------------
# Damage
# -------------------------------------------------------------------------------------------------
def _nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


_SPECIAL_NUMBERS = [0, -1, 1, 255, 256, -129, 2 ** 31, 2 ** 64, 10 ** 400, -(10 ** 400), 3.5,
                    float("nan"), float("inf"), -float("inf"), 1e39, -1e39, 1e-45, 5e-324, -0.0,
                    1e308, 1.1920928955078125e-07]
_SPECIAL_STRINGS = ["", "True", "False", "true", "INT", "FLOAT", "PER_CHANNEL", "PER_TENSOR",
                    "int8", "uint8", "int32", "float16", "int", "float", "1.0.0", "0.6.1", "2.0.0",
                    "0", "conv", "conv.weight", "fc", "x", "\udcff", "Conv", "Relu"]
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(_SPECIAL_NUMBERS),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                    st.sampled_from(_SPECIAL_STRINGS))
_VALUES = st.one_of(
    _LEAVES,
    st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=9)
                 | st.dictionaries(st.sampled_from(_SPECIAL_STRINGS) | st.text(max_size=5), inner,
                                   max_size=4), max_leaves=10),
    st.integers(1000, 4000).map(_nest),
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location inside ``doc`` (dict keys, list items; 12 levels at most), depth first."""
    out = [prefix]
    if len(prefix) >= 12:
        return out
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, prefix + (i,))
    return out


def _at(doc: Any, path: tuple) -> Any:
    for step in path:
        doc = doc[step]
    return doc


_MUTATIONS = ("replace", "replace", "replace", "delete", "add_key", "wrap", "unwrap", "empty",
              "extend", "shorten", "deep")


def _damage(data: st.DataObject, doc: Any, value_strategy: st.SearchStrategy = _VALUES,
            max_mutations: int = 3) -> tuple[Any, list[tuple]]:
    """``doc`` with 1-``max_mutations`` generated mutations; returns the paths damaged, as they
    read in the damaged document (a later mutation can move an earlier one's path)."""
    doc = copy.deepcopy(doc)
    hit: list[tuple] = []
    for _ in range(data.draw(st.integers(1, max_mutations), label="mutations")):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths), label="path")
        how = data.draw(st.sampled_from(_MUTATIONS), label="how")
        keep = None
        if not path:
            if how in ("replace", "deep"):
                doc = data.draw(value_strategy, label="root")
                hit = _moved(hit, path, "replace")
            hit.append(path)
            continue
        parent, key = _at(doc, path[:-1]), path[-1]
        current = parent[key]
        if how == "replace":
            parent[key] = data.draw(value_strategy, label="value")
        elif how == "delete":
            del parent[key]
        elif how == "add_key" and isinstance(current, dict):
            current[data.draw(st.sampled_from(_SPECIAL_STRINGS), label="new key")] = data.draw(
                value_strategy, label="new value")
        elif how == "wrap":
            parent[key] = [current]
        elif how == "unwrap" and isinstance(current, list) and current:
            parent[key] = current[0]
        elif how == "empty" and isinstance(current, (list, dict)):
            parent[key] = type(current)()
        elif how == "extend" and isinstance(current, list) and current:
            parent[key] = current + current[: data.draw(st.integers(1, 5), label="extra")]
        elif how == "shorten" and isinstance(current, list) and current:
            keep = data.draw(st.integers(0, len(current) - 1), label="keep")
            parent[key] = current[:keep]
        elif how == "deep":
            parent[key] = _nest(data.draw(st.integers(1000, 4000), label="depth"))
        else:
            how = "replace"
            parent[key] = data.draw(value_strategy, label="value")
        hit = _moved(hit, path, how, keep)
        hit.append(path)
    return doc, hit


def _moved(hit: list[tuple], path: tuple, how: str, keep: int | None = None) -> list[tuple]:
    """The damaged paths ``hit`` as they read after mutation ``how`` of the value at ``path``:
    a deleted list item shifts the items after it, a wrapped value gains ``[0]``, an unwrapped
    one loses it, and damage inside a value that is replaced, deleted or cut off becomes damage
    of the value itself."""
    n = len(path)
    out = []
    for h in hit:
        if len(h) <= n or h[:n] != path:  # not inside the mutated value
            at = n - 1
            if (how == "delete" and n and isinstance(path[-1], int) and len(h) > at
                    and h[:at] == path[:-1] and isinstance(h[at], int) and h[at] > path[-1]):
                h = h[:at] + (h[at] - 1,) + h[at + 1:]
            out.append(h)
        elif how == "wrap":
            out.append(path + (0,) + h[n:])
        elif how == "unwrap":
            out.append(path + h[n + 1:] if h[n] == 0 else path)
        elif how == "shorten":
            out.append(h if keep is not None and h[n] < keep else path)
        elif how in ("add_key", "extend"):
            out.append(h)
        else:
            out.append(path)
    return out


def _to_bytes(data: st.DataObject, doc: Any, hit: list[tuple]) -> bytes:
    """The JSON text of ``doc`` (NaN/Infinity allowed, as Python writes them), maybe truncated or
    with bytes that are not UTF-8 (then the whole document, ``()``, is added to ``hit``)."""
    try:
        text = json.dumps(doc, allow_nan=True)
    except (ValueError, RecursionError):
        text = "[" * 5000
    raw = text.encode("utf-8", "surrogatepass")
    how = data.draw(st.sampled_from(["whole"] * 6 + ["truncate", "latin1", "garbage"]),
                    label="file damage")
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)), label="cut")]
    elif how == "latin1":
        at = data.draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + b"\xe9\xff" + raw[at:]
    elif how == "garbage":
        raw = data.draw(st.binary(max_size=64), label="bytes")
    if how != "whole":
        hit.append(())
    return raw


#: Reasons that concern a file as a whole (its bytes, syntax or nesting), not one of its keys.
_FILE_LEVEL = re.compile(r"invalid JSON at line \d+, column \d+|: invalid JSON: |not UTF-8|"
                         r"JSON nested too deeply|cannot read checkpoint|"
                         r"is not an fxquant QuantSim checkpoint")


def _rendered(path: tuple) -> list[str]:
    """The JSON paths of ``path``'s ancestors and of ``path`` itself, written as fxquant's
    messages write them (``activation_encodings[0].scale``, ``op_type["Conv 2d"]``)."""
    out, current = [], ""
    for step in path:
        current = json_index(current, step) if isinstance(step, int) else json_join(current,
                                                                                     str(step))
        out.append(current)
    return out


def _names_damage(rest: str, path: tuple) -> bool:
    """Whether the message text ``rest`` (after the file's name) names the damaged ``path``:

    * its JSON path, an ancestor's (the object that lost or gained a key) or a path inside the
      damaged value, also as the other place of a duplicate (``(also at encodings[0].name)``);
    * a path inside the object (not the root) that holds the damaged key: a check across the keys
      of one entry (``encodings[2].y_zero_point: must be a list exactly when y_scale is``);
    * the damaged key itself, quoted (``the state dict lacks 'conv.weight.scale'``), or as a word
      when it is a top-level key (``checkpoint version null is not supported``);
    * any JSON path (``<root>`` too) when the root itself was damaged.
    """
    if not path:
        return re.search(r": (<root>|[^\s:]+): ", rest) is not None
    rendered = _rendered(path)
    if any(f": {r}: " in rest or f"(also at {r})" in rest for r in rendered):
        return True  # (a duplicate names both entries: the other one "also at" the path)
    if re.search(": " + re.escape(rendered[-1]) + r"[.\[]", rest):
        return True
    keys = [i for i, step in enumerate(path) if isinstance(step, str)]
    if not keys:
        return False
    at = keys[-1]
    key = str(path[at])
    if at and re.search(": " + re.escape(rendered[at - 1]) + r"[.\[]", rest):
        return True
    if repr(key) in rest or f'"{key}"' in rest:
        return True
    return at == 0 and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", rest) is not None


def _check_error(exc: BaseException, cls: type[FxQuantError], source: str,
                 hit: list[tuple]) -> None:
    """A refusal is ``cls``, names the file ``source`` and either a file-level reason (invalid
    JSON, not UTF-8, nested too deeply, not a readable checkpoint) or, after the file's name, one
    of the damaged locations ``hit`` (see :func:`_names_damage`)."""
    assert isinstance(exc, cls), f"{type(exc).__name__} escaped: {exc}"
    message = str(exc)
    assert source in message, f"the message does not name {source!r}: {message}"
    if _FILE_LEVEL.search(message):
        return
    rest = message[message.index(source) + len(source):]
    assert any(_names_damage(rest, path) for path in hit), (
        f"the message names neither a file-level reason nor a damaged JSON path "
        f"({', '.join(_rendered(p)[-1] if p else '<root>' for p in hit) or 'none'}): {message}")


def test_the_error_check_can_fail() -> None:
    """_check_error accepts the damaged key's JSON path (or an ancestor, or a file-level reason)
    after the file's name, and refuses a message without the file, one naming another key, a
    bare "version"/"JSON" word, or another error class."""
    hit = [("defaults", "ops", "is_symmetric")]
    for good in ["fuzz config: defaults.ops.is_symmetric: invalid value 1; expected one of",
                 "fuzz config: defaults.ops: missing required key 'is_symmetric'",
                 "fuzz config: defaults.ops.is_output_quantized: is_symmetric contradicts it",
                 "fuzz config: invalid JSON at line 1, column 2: Expecting value"]:
        _check_error(ConfigError(good), ConfigError, "fuzz config", hit)
    for bad in ["defaults.ops.is_symmetric: invalid value 1",
                "fuzz config: op_type.Conv: invalid value 1",
                "fuzz config: params.weight.is_symmetric: invalid value 1",
                "fuzz config: unsupported version of the JSON schema",
                "fuzz config: <root>: something: else"]:
        with pytest.raises(AssertionError):
            _check_error(ConfigError(bad), ConfigError, "fuzz config", hit)
    with pytest.raises(AssertionError, match="ValueError escaped"):
        _check_error(ValueError("fuzz config: defaults.ops.is_symmetric: x"), ConfigError,
                     "fuzz config", hit)
    # a deleted list item moves the damage recorded after it; a wrap adds [0]
    assert _moved([("a", 3, "b"), ("a", 1)], ("a", 0), "delete") == [("a", 2, "b"), ("a", 0)]
    assert _moved([("a", "b")], ("a",), "wrap") == [("a", 0, "b")]
    assert _moved([("a", "b", 2)], ("a",), "replace") == [("a",)]


# -------------------------------------------------------------------------------------------------
# quantsim config: 2,000 examples (test_fuzz_config_dicts 1,000 + test_fuzz_config_files 1,000)
# -------------------------------------------------------------------------------------------------
_CONFIG = {
    "defaults": {"ops": {"is_output_quantized": "True", "is_symmetric": "False"},
                 "params": {"is_quantized": "True", "is_symmetric": "True"},
                 "per_channel_quantization": "True", "strict_symmetric": "False",
                 "unsigned_symmetric": "True", "hw_version": "V73",
                 "supported_kernels": [{"activation": {"bitwidth": 8, "dtype": "int"},
                                        "param": {"bitwidth": 8, "dtype": "int"}}]},
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {"Softmax": {"encoding_constraints": {"min": 0.0, "max": 1.0}},
                "Conv": {"is_input_quantized": "True", "per_channel_quantization": "False",
                         "params": {"weight": {"is_symmetric": "True"}},
                         "supported_kernels": [{"activation": {"bitwidth": 16,
                                                               "dtype": "float"}}]}},
    "supergroups": [{"op_list": ["Conv", "Relu"]}, {"op_list": ["Gemm", "Relu"]}],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {"is_output_quantized": "False"},
    "supergroup_pass_list": ["ReplaceReluWithSoftplus"],
}


def test_the_config_seed_is_valid() -> None:
    assert load_config(_CONFIG).per_channel is True


@settings(max_examples=FUZZ[1000], **_FAST)
@given(data=st.data())
def test_fuzz_config_dicts(data) -> None:
    doc, hit = _damage(data, _CONFIG)
    if not isinstance(doc, dict):   # a string is a file name, None the default: not this loader
        return
    try:
        load_config(doc, source="fuzz config")
    except ConfigError as exc:
        _check_error(exc, ConfigError, "fuzz config", hit)


@settings(max_examples=FUZZ[1000], **_FAST)
@given(data=st.data())
def test_fuzz_config_files(folder, data) -> None:
    doc, hit = _damage(data, _CONFIG)
    path = folder / "config.json"
    path.write_bytes(_to_bytes(data, doc, hit))
    try:
        load_config(path)
    except ConfigError as exc:
        _check_error(exc, ConfigError, "config.json", hit)


# -------------------------------------------------------------------------------------------------
# encodings: 2,000 examples per version, test_fuzz_encodings[1.0.0], [0.6.1], [2.0.0], and 2,000
# for the torch-named file, [torch]
# -------------------------------------------------------------------------------------------------
def _finite_outputs(sim: QuantizationSimModel) -> None:
    """After a successful load the sim runs and every encoding is a valid one."""
    for ref in sim.quantizers():
        q = ref.quantizer
        if isinstance(q, AffineQuantizer) and q.enabled:
            enc = q.encoding
            assert enc is not None and math.isfinite(float(enc.scale.min()))
            assert float(enc.scale.min()) > 0
    with torch.no_grad():
        assert torch.isfinite(sim.model(X)).all()


def _encodings_case(data, folder, target, seed: dict, name: str) -> None:
    doc, hit = _damage(data, seed)
    # a parsed document is a dict; anything else is only reachable as file content
    to_file = not isinstance(doc, dict) or data.draw(st.booleans(), label="through a file")
    if to_file:
        path = folder / name
        path.write_bytes(_to_bytes(data, doc, hit))
        source: Any = path
    else:
        source = doc
    label = name if to_file else "encodings file"
    use_sim = data.draw(st.booleans(), label="into the sim")
    try:
        if use_sim:
            load_encodings_to_sim(target, source)
        else:
            read_encodings(source)
    except EncodingsFileError as exc:
        if ("version",) in hit:  # the version decides the schema: any key may be the first misfit
            hit = hit + [()]
        _check_error(exc, EncodingsFileError, label, hit)
        return
    if use_sim:
        _finite_outputs(target)


def _seed(calibrated, version: str) -> dict:
    if version == "torch":
        return json.loads(json.dumps(torch_encodings_dict(calibrated)))
    return json.loads(json.dumps(encodings_dict(calibrated.quantizers(), version=version)))


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1", "2.0.0", "torch"])
def test_the_encodings_seeds_load_bit_identically(calibrated, version) -> None:
    sim = QuantizationSimModel(_net(), X[:1])
    load_encodings_to_sim(sim, _seed(calibrated, version))
    with torch.no_grad():
        assert torch.equal(sim.model(X), calibrated.model(X))


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1", "2.0.0", "torch"])
@settings(max_examples=FUZZ[2000], **_FAST)
@given(data=st.data())
def test_fuzz_encodings(calibrated, target, folder, version, data) -> None:
    _encodings_case(data, folder, target, _seed(calibrated, version), f"fuzz_{version}.encodings")


# -------------------------------------------------------------------------------------------------
# checkpoint payloads: 2,300 examples (test_fuzz_checkpoint_payload_fields 1,000 +
# test_fuzz_checkpoint_state_dict 1,000 + test_fuzz_checkpoint_files 300)
# -------------------------------------------------------------------------------------------------
def _tensor_damage() -> st.SearchStrategy:
    def bad(kind: str) -> Any:
        return {
            "nan": torch.tensor(float("nan")), "inf": torch.tensor([float("inf")] * 4),
            "zero": torch.tensor(0.0), "neg": torch.tensor([-0.1] * 4),
            "tiny": torch.tensor(1e-30), "frac": torch.tensor(3.5), "off": torch.tensor(999.0),
            "long": torch.full((9,), 0.1), "short": torch.full((3,), 0.1),
            "2d": torch.full((2, 2), 0.1), "int": torch.tensor([1, 2, 3, 4]),
            "empty": torch.empty(0), "grid": {"grid": [3, "x", None, 1], "frozen": 1},
            "nogrid": {"grid": None, "frozen": True}, "string": "scale", "none": None,
        }[kind]

    return st.one_of(
        st.sampled_from(["nan", "inf", "zero", "neg", "tiny", "frac", "off", "long", "short",
                         "2d", "int", "empty", "grid", "nogrid", "string", "none"]).map(bad),
        _VALUES)


@pytest.fixture(scope="module")
def payload(calibrated, folder) -> dict:
    checkpoint.save_checkpoint(calibrated, folder / "seed.ckpt")
    return torch.load(folder / "seed.ckpt", weights_only=True)


def _state_paths(doc: dict) -> list[tuple]:
    return [("state_dict", key) for key in doc["state_dict"]] + [
        ("state_dict", key, sub) for key, value in doc["state_dict"].items()
        if isinstance(value, dict) for sub in value]


def test_the_checkpoint_seed_loads_bit_identically(calibrated, payload) -> None:
    sim = checkpoint.sim_from_checkpoint_payload(payload, _net(), X[:1], source="seed.ckpt")
    with torch.no_grad():
        assert torch.equal(sim.model(X), calibrated.model(X))


@settings(max_examples=FUZZ[1000], **_FAST)
@given(data=st.data())
def test_fuzz_checkpoint_payload_fields(payload, data) -> None:
    """Damage anywhere in the payload but the tensors (settings, config, flags, grid data)."""
    base = {k: v for k, v in payload.items() if k != "state_dict"}
    doc, hit = _damage(data, base)
    if isinstance(doc, dict):
        doc["state_dict"] = payload["state_dict"]
    _checkpoint_case(doc, hit)


@settings(max_examples=FUZZ[1000], **_FAST)
@given(data=st.data())
def test_fuzz_checkpoint_state_dict(payload, data) -> None:
    """Damage to the state dict: bad scales/zero points, shapes, grids, missing tensors."""
    doc = dict(payload)
    doc["state_dict"] = dict(payload["state_dict"])
    doc["state_dict"] = {k: (dict(v) if isinstance(v, dict) else v)
                         for k, v in doc["state_dict"].items()}
    hit = []
    for _ in range(data.draw(st.integers(1, 2), label="mutations")):
        path = data.draw(st.sampled_from(_state_paths(doc)), label="path")
        hit.append(path)
        parent = _at(doc, path[:-1])
        if data.draw(st.booleans(), label="delete"):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = data.draw(_tensor_damage(), label="value")
    _checkpoint_case(doc, hit)


#: Payload keys that decide which quantizers the rebuilt sim has: damage there shows where the
#: quantizers are listed (``enabled``, ``calibrated``, ``state_dict``) and no longer fit.
_SHAPES_THE_SIM = ("config", "settings", "fold_batch_norms", "quantize_bias")


def _checkpoint_case(doc: Any, hit: list[tuple]) -> None:
    try:
        sim = checkpoint.sim_from_checkpoint_payload(doc, _net(), X[:1], source="fuzz.ckpt")
    except CheckpointError as exc:
        if any(p[:1] and p[0] in _SHAPES_THE_SIM for p in hit):
            hit = hit + [("enabled",), ("calibrated",), ("state_dict",)]
        _check_error(exc, CheckpointError, "fuzz.ckpt", hit)
        return
    # accepted: every calibrated, enabled quantizer holds a valid encoding and the sim runs
    try:
        _finite_outputs(sim)
    except FxQuantError as exc:       # an uncalibrated quantizer says so when run
        assert "has no encoding yet" in str(exc), exc


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # a flipped byte
@settings(max_examples=FUZZ[300], **_FAST)
@given(data=st.data())
def test_fuzz_checkpoint_files(payload, folder, data) -> None:
    raw = (folder / "seed.ckpt").read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage"]), label="how")
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    elif how == "flip":
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255), label="xor")]) + \
            raw[at + 1:]
    else:
        raw = data.draw(st.binary(max_size=256), label="bytes")
    path = folder / "damaged.ckpt"
    path.write_bytes(raw)
    try:
        sim = checkpoint.load_checkpoint(path, _net(), X[:1])
    except CheckpointError as exc:  # the damage may be anywhere: any key of the payload
        _check_error(exc, CheckpointError, "damaged.ckpt", [(key,) for key in payload])
        return
    _finite_outputs(sim)  # a flip in padding or in a weight: still a valid sim
