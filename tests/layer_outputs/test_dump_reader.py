"""fxquant.layer_outputs.dump_reader: reading dumps (ours and AIMET's), validating manifests."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxquant.core.jsonpath import index as json_index
from fxquant.core.jsonpath import join as json_join
from fxquant.errors import FxQuantError
from fxquant.layer_outputs import DumpFormatError, LayerOutputDump
from fxquant.layer_outputs.dump_writer import DumpWriter
from tests.layer_outputs.lo_helpers import (assert_instances_as_written, sample_instance,
                                            varying_instance)


def test_interrupted_run_is_readable(tmp_path: os.PathLike[str]) -> None:
    """A killed run can leave a hidden temporary folder; readers ignore it."""
    writer = DumpWriter(tmp_path / "d")
    writer.submit(sample_instance(0))
    writer.close()
    (tmp_path / "d" / "outputs" / ".tmp-layer_outputs_1-abc").mkdir()
    (tmp_path / "d" / "outputs" / ".tmp-layer_outputs_1-abc" / "conv_1.raw").write_bytes(b"\0" * 3)
    assert LayerOutputDump(tmp_path / "d").instances == [0]


def test_reads_aimet_layout_without_manifest(tmp_path: os.PathLike[str]) -> None:
    root = tmp_path / "aimet"
    (root / "outputs" / "layer_outputs_0").mkdir(parents=True)
    (root / "inputs").mkdir()
    (root / "layer_output_name_order.json").write_text(
        json.dumps({"layer_output_names": ["conv1", "fc"]}))
    np.arange(6, dtype=np.float32).tofile(root / "outputs" / "layer_outputs_0" / "conv1.raw")
    np.ones(2, dtype=np.float32).tofile(root / "outputs" / "layer_outputs_0" / "fc.raw")
    dump = LayerOutputDump(root)
    assert (dump.names, dump.instances, dump.has_manifest) == (["conv1", "fc"], [0], False)
    assert dump.info("conv1").shape is None
    np.testing.assert_array_equal(dump.load("conv1"), np.arange(6, dtype=np.float32))


def test_bad_dumps_are_reported(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(DumpFormatError, match="is not a directory"):
        LayerOutputDump(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DumpFormatError, match="holds no complete instance"):
        LayerOutputDump(tmp_path / "empty")
    writer = DumpWriter(tmp_path / "d")
    writer.submit(sample_instance())
    writer.close()
    (tmp_path / "d" / "outputs" / "layer_outputs_0" / "conv_1.raw").write_bytes(b"\0" * 8)
    with pytest.raises(DumpFormatError, match=r"conv_1.raw holds 2 float32 values .*needs 40"):
        LayerOutputDump(tmp_path / "d").load("conv.1")
    (tmp_path / "d" / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(DumpFormatError, match="field 'format'"):
        LayerOutputDump(tmp_path / "d")
    with pytest.raises(ValueError, match="file_format must be one of"):
        DumpWriter(tmp_path / "e", file_format="csv")
    with pytest.raises(ValueError, match="layout must be one of"):
        DumpWriter(tmp_path / "e", layout="CHWN")


@pytest.mark.parametrize("mutate, match", [
    (lambda m: m.pop("tensors"), r"manifest.json: tensors: missing; expected object"),
    (lambda m: m["tensors"].pop("idx"), r'manifest.json: tensors.idx: missing: every name of '
                                        r"layer_output_names needs an entry"),
    (lambda m: m["tensors"]["conv.1"].update(shape="1x2"),
     r'manifest.json: tensors\["conv.1"\].shape: expected a JSON array of dimensions, got string'),
    (lambda m: m["tensors"]["conv.1"].update(shape=[1, 2.5]),
     r'tensors\["conv.1"\].shape\[1\]: invalid value 2.5; expected an integer'),
    (lambda m: m.update(file_format="csv"),
     r"manifest.json: file_format: invalid value 'csv'; expected one of 'raw', 'npy'"),
    (lambda m: m.update(instances={}), r"manifest.json: instances: expected array, got object"),
    (lambda m: m["instances"][0].pop("index"), r"instances\[0\].index: missing; expected integer"),
    (lambda m: m.update(layer_output_names=["conv.1", 7]),
     r"layer_output_names\[1\]: invalid value 7; expected a non-empty string"),
    (lambda m: m.pop("format"), r"manifest.json: format: missing; expected "
                                r"'fxquant.layer_outputs'"),
])
def test_malformed_manifest_names_file_and_field(tmp_path: os.PathLike[str], mutate,
                                                 match: str) -> None:
    writer = DumpWriter(tmp_path / "d")
    writer.submit(sample_instance())
    writer.close()
    path = tmp_path / "d" / "manifest.json"
    manifest = json.loads(path.read_text())
    mutate(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(DumpFormatError, match=match):
        LayerOutputDump(tmp_path / "d")


def test_manifest_not_json(tmp_path: os.PathLike[str]) -> None:
    writer = DumpWriter(tmp_path / "d")
    writer.submit(sample_instance())
    writer.close()
    (tmp_path / "d" / "manifest.json").write_text('{"format": ')
    with pytest.raises(DumpFormatError, match=r"manifest.json: invalid JSON at line 1, column 12: "
                                              r".*not valid JSON \(re-generate the dump\)"):
        LayerOutputDump(tmp_path / "d")


# ------------------------------------------------------------------------------------------------
# Hostile manifests (issue 11 item 13; acceptance: fuzzing)
# ------------------------------------------------------------------------------------------------


def _dump(root: os.PathLike[str]) -> os.PathLike[str]:
    writer = DumpWriter(root)
    writer.submit_all(range(2), varying_instance, desc="t", progress=False)
    writer.close()
    return root


@pytest.mark.parametrize("mutate, match", [
    (lambda m: [m], r"manifest.json: <root>: expected a JSON object, got array"),
    (lambda m: m["instances"][0].update(shapes=[1, 2]) or m,
     r"manifest.json: instances\[0\].shapes: expected a JSON object, got array"),
    (lambda m: m["instances"][1].update(shapes={"nope": [1]}) or m,
     r"instances\[1\].shapes.nope: not a tensor of layer_output_names"),
    (lambda m: m["tensors"]["fc"].update(file="../../../../etc/hostname") or m,
     r"tensors.fc.file: invalid value '../../../../etc/hostname'; expected a file name inside"),
    (lambda m: m["tensors"]["fc"].update(file="/etc/hostname") or m, r"tensors.fc.file: invalid"),
    (lambda m: m["instances"][0].update(outputs="../../etc") or m,
     r"instances\[0\].outputs: invalid value '../../etc'; expected a path inside the dump"),
    (lambda m: m["instances"][0].update(inputs=["/etc/hostname"]) or m,
     r"instances\[0\].inputs\[0\]: invalid value '/etc/hostname'"),
    (lambda m: m["tensors"]["fc"].update(shape=[2**70]) or m,
     r"tensors.fc.shape\[0\]: invalid value 1180591620717411303424; expected an integer in"),
    (lambda m: m["tensors"]["fc"].update(dtype="object") or m,
     r"tensors.fc.dtype: invalid value 'object'; expected one of 'float16'"),
    (lambda m: m.update(version=3) or m, r"manifest.json: version: invalid value 3; expected one "
                                         r"of 1, 2"),
    (lambda m: m.update(layer_output_names=["fc", "fc"]) or m,
     r"layer_output_names\[1\]: 'fc' appears twice"),
    (lambda m: m["instances"][1].update(index=0) or m,
     r"instances\[1\].index: instance 0 is listed twice"),
    (lambda m: m["instances"][0].update(input_shapes=[[1], [2]]) or m,
     r"instances\[0\].input_shapes: 2 shapes for 1 input files"),
])
def test_hostile_manifest_is_refused_naming_the_json_path(tmp_path: os.PathLike[str], mutate,
                                                          match: str) -> None:
    root = _dump(tmp_path / "d")
    path = root / "manifest.json"
    path.write_text(json.dumps(mutate(json.loads(path.read_text()))))
    with pytest.raises(DumpFormatError, match=match):
        LayerOutputDump(root)


def test_a_data_file_error_names_the_manifest_key_it_follows(tmp_path: os.PathLike[str]) -> None:
    """A tensor or input file that is missing or of the wrong size: the error names the file, and
    the manifest's JSON path that named it or gave its shape."""
    root = _dump(tmp_path / "d")
    path = root / "manifest.json"
    good = json.loads(path.read_text())
    m = re.escape(str(path))

    def refused(mutate, match: str, load) -> None:
        manifest = json.loads(json.dumps(good))
        mutate(manifest)
        path.write_text(json.dumps(manifest))
        with pytest.raises(DumpFormatError, match=match):
            load(LayerOutputDump(root))

    refused(lambda m: m["tensors"]["fc"].update(file="nothere.raw"),
            rf"layer_outputs_0/nothere.raw is missing \(named by {m}: tensors.fc.file and {m}: "
            r"instances\[0\].outputs\); the dump is incomplete", lambda d: d.load("fc", 0))
    refused(lambda m: m["instances"][1].pop("shapes"),
            r"layer_outputs_1/conv_1.raw holds 72 float32 values but the manifest's shape "
            rf'\[1, 2, 4, 5\] needs 40 \({m}: tensors\["conv.1"\].shape; no shape of this '
            rf"instance's own in {m}: instances\[1\].shapes\)", lambda d: d.load("conv.1", 1))
    refused(lambda m: m["instances"][1].pop("input_shapes"),
            r"input_1.raw holds 108 float32 values but the manifest's shape \[1, 3, 4, 5\] needs "
            rf"60 \({m}: inputs\[0\].shape; no input shapes of this instance's own in {m}: "
            r"instances\[1\].input_shapes\); the file is not from this dump or was truncated$",
            lambda d: d.load_inputs(1))
    refused(lambda m: m["instances"][1]["input_shapes"][0].__setitem__(2, 7),
            rf"input_1.raw holds 108 float32 values .* needs 126 \({m}: instances\[1\]."
            r"input_shapes\[0\]\)", lambda d: d.load_inputs(1))
    refused(lambda m: m["instances"][0].update(inputs=["inputs/gone.raw"]),
            rf"inputs/gone.raw is missing \(named by {m}: instances\[0\].inputs\[0\]\)",
            lambda d: d.load_inputs(0))


def test_non_utf8_and_deep_manifests(tmp_path: os.PathLike[str]) -> None:
    root = _dump(tmp_path / "d")
    (root / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(DumpFormatError, match=r"manifest.json: <root>: not UTF-8 text \(byte 12\)"):
        LayerOutputDump(root)
    (root / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DumpFormatError, match=r"manifest.json: (<root>: )?JSON nested too deeply"):
        LayerOutputDump(root)


def test_a_link_out_of_the_dump_is_not_followed(tmp_path: os.PathLike[str]) -> None:
    root = _dump(tmp_path / "d")
    secret = tmp_path / "secret.raw"
    np.zeros(3, dtype=np.float32).tofile(secret)
    target = root / "outputs" / "layer_outputs_0" / "fc.raw"
    target.unlink()
    target.symlink_to(secret)
    with pytest.raises(DumpFormatError, match=r"fc.raw resolves to .*secret.raw, outside the dump"):
        LayerOutputDump(root).load("fc", 0)


def test_instance_on_disk_but_not_in_the_manifest_uses_its_own_entry(
        tmp_path: os.PathLike[str]) -> None:
    root = _dump(tmp_path / "d")
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["instances"][1]  # what a run killed before its periodic manifest write leaves
    path.write_text(json.dumps(manifest))
    assert assert_instances_as_written(root) == [0, 1]
    entry = root / "instances" / "instance_1.json"
    data = json.loads(entry.read_text())
    data["shapes"] = "wide"
    entry.write_text(json.dumps(data))
    with pytest.raises(DumpFormatError, match=r"instance_1.json: shapes: expected a JSON object"):
        LayerOutputDump(root)


# -- fuzzing -------------------------------------------------------------------------------------

_HOSTILE_STRINGS = ["../../etc/hostname", "/etc/hostname", "..", ".", "", "a/../../b", "\x00",
                    "outputs/../../x", "C:\\x", "fc.raw", "layer_outputs_0", "NHWC", "float32",
                    "fxquant.layer_outputs", "raw", "npy", "é\udcff"[:1]]
_JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([2**64, 10**30, -1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(_HOSTILE_STRINGS),
    st.text(max_size=8))
_JSON = st.recursive(_JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


def _mutated(document, path, how, value):
    doc = json.loads(json.dumps(document))
    if not path:
        return value if how != "wrap" else [doc]
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if how == "delete":
        del parent[key]
    elif how == "wrap":
        parent[key] = [parent[key]]
    elif how == "as_dict":
        parent[key] = {"0": parent[key]}
    else:
        parent[key] = value
    return doc


def _read_everything(root) -> None:
    dump = LayerOutputDump(root)
    for k in dump.instances:
        for name in dump.names:
            if dump.has(name, k):
                dump.load(name, k)
        dump.load_inputs(k)


def _rendered(path: tuple) -> list[str]:
    """The JSON paths of ``path``'s ancestors and of ``path`` itself, as the reader writes them."""
    out, current = [], ""
    for step in path:
        current = json_index(current, step) if isinstance(step, int) else json_join(current, step)
        out.append(current)
    return out


#: Reasons that concern a JSON file as a whole (its bytes, syntax or nesting).
_FILE_LEVEL = re.compile(r"^\S+\.json: (<root>: not UTF-8|invalid JSON|(<root>: )?JSON nested too "
                         r"deeply|cannot be read)")


def _check_error(exc: FxQuantError, root, json_file, path: tuple | None) -> None:
    """The error is a DumpFormatError naming a file of the dump and either a file-level reason
    of the damaged JSON file ``json_file`` or the damaged JSON path ``path`` (None: the damage may
    be anywhere in it): the path itself, an ancestor (the object that lost a key), a path inside
    the damaged value, or a path in the same object when the message names the damaged key (a
    check across keys). A data file's error (missing, wrong size) names the manifest key it
    follows."""
    message = str(exc)
    assert isinstance(exc, DumpFormatError), (type(exc), message)
    assert message.startswith(str(root)), message
    if _FILE_LEVEL.match(message) and message.startswith(str(json_file)):
        return
    if path is None or not path:
        assert re.search(r"\.json: (<root>|[^\s:]+)(: |\)| and |;)", message), message
        return
    rendered = _rendered(path)

    def names(json_path: str, inside: bool = False) -> bool:  # "file: path" in the message
        after = r"[.\[]" if inside else r"(?=: |\)| and |;)"
        return re.search(": " + re.escape(json_path) + after, message) is not None

    named = any(names(r) for r in rendered) or names(rendered[-1], inside=True)
    keys = [i for i, step in enumerate(path) if isinstance(step, str)]
    if not named and keys:
        at = keys[-1]
        key = str(path[at])
        named = ((at and names(rendered[at - 1], inside=True)) or repr(key) in message
                 or (at == 0 and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message)))
    assert named, f"names neither a file-level reason nor {rendered[-1]}: {message}"


def test_the_error_check_can_fail(tmp_path: os.PathLike[str]) -> None:
    """The fuzz tests' check accepts the damaged JSON path, an ancestor, or a data file's error
    naming the manifest key it follows; it refuses another key, a data file error naming no key,
    a message not starting with the dump, and another error class."""
    manifest = tmp_path / "manifest.json"
    path = ("tensors", "fc", "shape", 1)
    for good in [f"{manifest}: tensors.fc.shape[1]: invalid value 2.5",
                 f"{manifest}: tensors.fc: missing key 'shape'",
                 f"{tmp_path}/outputs/layer_outputs_0/fc.raw holds 3 float32 values but the "
                 f"manifest's shape [1] needs 1 ({manifest}: tensors.fc.shape); the file is"]:
        _check_error(DumpFormatError(good), tmp_path, manifest, path)
    for bad in [f"{manifest}: tensors.conv.shape[1]: invalid value 2.5",
                f"{tmp_path}/outputs/layer_outputs_0/fc.raw holds 3 float32 values but the "
                "manifest's shape [1] needs 1; the file is not from this dump",
                f"elsewhere/manifest.json: tensors.fc.shape[1]: invalid value 2.5"]:
        with pytest.raises(AssertionError):
            _check_error(DumpFormatError(bad), tmp_path, manifest, path)
    with pytest.raises(AssertionError):
        _check_error(ValueError(f"{manifest}: tensors.fc.shape[1]: x"), tmp_path, manifest, path)


@pytest.fixture(scope="module")
def fuzz_dump(tmp_path_factory: pytest.TempPathFactory):
    root = _dump(tmp_path_factory.mktemp("fuzz") / "d")
    manifest = json.loads((root / "manifest.json").read_text())
    entry = json.loads((root / "instances" / "instance_1.json").read_text())
    return root, manifest, entry


#: Examples per test in a normal run: manifest values 900 + manifest bytes 900 + instance entries
#: 400 = 2,200 for the dump-manifest loader. FXQUANT_FUZZ_SCALE (e.g. 0.05) scales them down, as
#: in tests/quantsim/test_loader_fuzz.py; derandomized, so CI runs are reproducible.
_SCALE = float(os.environ.get("FXQUANT_FUZZ_SCALE", "1"))


def _fuzz(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * _SCALE)), deadline=None, derandomize=True,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_fuzz(900)
@given(data=st.data())
def test_fuzz_manifest_values(fuzz_dump, data) -> None:
    """Any JSON value at any JSON path of the manifest, a key deleted, a value wrapped in a list
    or an object: only DumpFormatError escapes, naming the file and the JSON path."""
    root, manifest, _ = fuzz_dump
    paths = list(_paths(manifest))
    path = data.draw(st.sampled_from(paths))
    how = data.draw(st.sampled_from(["replace", "replace", "delete", "wrap", "as_dict"]))
    if how == "delete" and not path:
        how = "replace"
    value = data.draw(_JSON)
    text = json.dumps(_mutated(manifest, path, how, value))
    (root / "manifest.json").write_text(text)
    try:
        _read_everything(root)
    except FxQuantError as exc:
        _check_error(exc, root, root / "manifest.json", path)


@_fuzz(900)
@given(data=st.data())
def test_fuzz_manifest_bytes(fuzz_dump, data) -> None:
    """Truncated JSON, inserted or replaced bytes (non-UTF-8 included), an empty file."""
    root, manifest, _ = fuzz_dump
    raw = json.dumps(manifest).encode()
    cut = data.draw(st.integers(0, len(raw)))
    kind = data.draw(st.sampled_from(["truncate", "insert", "overwrite"]))
    junk = data.draw(st.binary(min_size=1, max_size=6))
    if kind == "truncate":
        raw = raw[:cut]
    elif kind == "insert":
        raw = raw[:cut] + junk + raw[cut:]
    else:
        raw = raw[:cut] + junk + raw[cut + len(junk):]
    (root / "manifest.json").write_bytes(raw)
    try:
        _read_everything(root)
    except FxQuantError as exc:
        _check_error(exc, root, root / "manifest.json", None)


@_fuzz(400)
@given(data=st.data())
def test_fuzz_instance_entry(fuzz_dump, data) -> None:
    """The own entry of an instance the manifest does not list yet (a killed run): malformed in
    any way, only DumpFormatError escapes, naming instances/instance_1.json and the JSON path."""
    root, manifest, entry = fuzz_dump
    listed = dict(manifest, instances=manifest["instances"][:1])
    (root / "manifest.json").write_text(json.dumps(listed))
    path = data.draw(st.sampled_from(list(_paths(entry))))
    how = data.draw(st.sampled_from(["replace", "delete", "wrap"]))
    if how == "delete" and not path:
        how = "replace"
    (root / "instances" / "instance_1.json").write_text(
        json.dumps(_mutated(entry, path, how, data.draw(_JSON))))
    try:
        _read_everything(root)
    except FxQuantError as exc:
        _check_error(exc, root, root / "instances" / "instance_1.json", path)
    finally:
        (root / "instances" / "instance_1.json").write_text(json.dumps(entry))
