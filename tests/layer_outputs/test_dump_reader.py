"""fxquant.layer_outputs.dump_reader: reading dumps (ours and AIMET's), validating manifests."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fxquant.layer_outputs import DumpFormatError, LayerOutputDump
from fxquant.layer_outputs.dump_writer import DumpWriter
from tests.layer_outputs.lo_helpers import sample_instance


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
    (lambda m: m.pop("format"), r"manifest.json: format: field 'format' is None, expected "
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
