"""fxquant/layer_outputs/matching.py: pairing the tensors of two dumps by name, and by file stem
when a dump has no manifest (AIMET's or a target's layout)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from fxquant.layer_outputs import compare_layer_outputs
from fxquant.layer_outputs.dump_reader import LayerOutputDump
from fxquant.layer_outputs.dump_format import NAME_ORDER
from fxquant.layer_outputs.dump_writer import DumpWriter, HostInstance
from fxquant.layer_outputs.matching import match_tensor_names


def fxquant_dump(path: Path, names: list[str]) -> LayerOutputDump:
    """A one-instance dump with manifest; tensor ``i`` holds the value ``i``."""
    writer = DumpWriter(path)
    writer.submit(HostInstance([("x", np.zeros(2, np.float32))],
                               [(n, np.full(2, i, np.float32)) for i, n in enumerate(names)]))
    writer.close()
    return LayerOutputDump(path)


def stem_dump(path: Path, stems: list[str], order: list[str] | None = None) -> LayerOutputDump:
    """An AIMET-layout dump without manifest: ``outputs/layer_outputs_0/<stem>.raw``."""
    out = path / "outputs" / "layer_outputs_0"
    out.mkdir(parents=True)
    for i, stem in enumerate(stems):
        np.full(2, i, np.float32).tofile(out / f"{stem}.raw")
    if order is not None:
        (path / NAME_ORDER).write_text(json.dumps({"layer_output_names": order}))
    return LayerOutputDump(path)


def test_equal_names_pair_in_a_order(tmp_path: Path) -> None:
    a = fxquant_dump(tmp_path / "a", ["conv", "relu", "fc", "only_a"])
    b = fxquant_dump(tmp_path / "b", ["fc", "new", "conv", "relu"])
    assert match_tensor_names(a, b) == (
        [("conv", "conv"), ("relu", "relu"), ("fc", "fc")], ["only_a"], ["new"])


def test_two_manifests_match_original_names_only(tmp_path: Path) -> None:
    """Both dumps know the original names, so ``a.b`` and ``a_b`` are different tensors even
    though their files are both called ``a_b.raw``."""
    a = fxquant_dump(tmp_path / "a", ["conv", "module_split#0", "layer1.0.relu"])
    b = fxquant_dump(tmp_path / "b", ["conv", "module_split_0", "layer1_0_relu"])
    assert a.info("layer1.0.relu").file == b.info("layer1_0_relu").file == "layer1_0_relu.raw"
    assert match_tensor_names(a, b) == (
        [("conv", "conv")], ["module_split#0", "layer1.0.relu"],
        ["module_split_0", "layer1_0_relu"])


def test_dump_without_manifest_matches_through_file_stems(tmp_path: Path) -> None:
    a = fxquant_dump(tmp_path / "a", ["conv", "module_split#0", "layer1.0.relu", "fc"])
    b = stem_dump(tmp_path / "b", ["fc", "layer1_0_relu", "module_split_0", "extra"])
    assert not b.has_manifest
    pairs, only_a, only_b = match_tensor_names(a, b)
    assert pairs == [("module_split#0", "module_split_0"), ("layer1.0.relu", "layer1_0_relu"),
                     ("fc", "fc")]                       # A's order, not B's
    assert (only_a, only_b) == (["conv"], ["extra"])
    # either side may be the one without manifest
    assert match_tensor_names(b, a) == (
        [("fc", "fc"), ("layer1_0_relu", "layer1.0.relu"), ("module_split_0", "module_split#0")],
        ["extra"], ["conv"])


def test_copy_without_manifest_pairs_the_same_files(tmp_path: Path) -> None:
    names = ["x.in", "stage-1/conv", "stage-1/relu#0", "head.fc"]
    a = fxquant_dump(tmp_path / "a", names)
    shutil.copytree(tmp_path / "a" / "outputs", tmp_path / "b" / "outputs")
    b = LayerOutputDump(tmp_path / "b")
    pairs, only_a, only_b = match_tensor_names(a, b)
    assert [p[0] for p in pairs] == names and only_a == [] and only_b == []
    assert dict(pairs)["stage-1/relu#0"] == "stage_1_relu_0"
    for name_a, name_b in pairs:
        np.testing.assert_array_equal(a.load(name_a), b.load(name_b))


def test_name_order_file_orders_a_dump_without_manifest(tmp_path: Path) -> None:
    a = stem_dump(tmp_path / "a", ["fc", "conv", "relu"], order=["conv", "relu", "fc"])
    b = stem_dump(tmp_path / "b", ["relu", "fc", "conv"])
    assert a.names == ["conv", "relu", "fc"] and b.names == ["conv", "fc", "relu"]
    assert match_tensor_names(a, b) == ([("conv", "conv"), ("relu", "relu"), ("fc", "fc")],
                                        [], [])


def test_colliding_names_use_the_writers_deduplicated_stems(tmp_path: Path) -> None:
    """``layer.0`` and ``layer_0`` are written as ``layer_0.raw`` and ``layer_0__1.raw``; a dump
    holding only the second file pairs it with ``layer_0``, not with ``layer.0``."""
    a = fxquant_dump(tmp_path / "a", ["layer.0", "layer_0"])
    assert [a.info(n).file for n in a.names] == ["layer_0.raw", "layer_0__1.raw"]
    b = stem_dump(tmp_path / "b", ["layer_0__1"])
    assert match_tensor_names(a, b) == ([("layer_0", "layer_0__1")], ["layer.0"], [])


def test_each_tensor_of_b_is_matched_once(tmp_path: Path) -> None:
    a = fxquant_dump(tmp_path / "a", ["a_b", "a.b"])  # "a.b" stem: a_b__1
    b = stem_dump(tmp_path / "b", ["a_b"])
    assert match_tensor_names(a, b) == ([("a_b", "a_b")], ["a.b"], [])


def test_nothing_in_common(tmp_path: Path) -> None:
    a = fxquant_dump(tmp_path / "a", ["p", "q"])
    b = stem_dump(tmp_path / "b", ["r"])
    assert match_tensor_names(a, b) == ([], ["p", "q"], ["r"])


def test_names_sharing_a_stem_pair_with_the_files_they_were_written_to(tmp_path) -> None:
    writer = DumpWriter(tmp_path / "a")
    writer.submit(HostInstance([("x", np.zeros(2, np.float32))],
                               [("a.b", np.zeros(2, np.float32)), ("a_b", np.ones(2, np.float32))]))
    writer.close()
    shutil.copytree(tmp_path / "a" / "outputs", tmp_path / "b" / "outputs")  # no manifest
    pairs, only_a, only_b = match_tensor_names(LayerOutputDump(tmp_path / "a"),
                                               LayerOutputDump(tmp_path / "b"))
    assert pairs == [("a.b", "a_b"), ("a_b", "a_b__1")] and only_a == [] and only_b == []
    report = compare_layer_outputs(tmp_path / "a", tmp_path / "b")
    assert [(r.name, r.sqnr_db) for r in report.layers] == [("a.b", math.inf), ("a_b", math.inf)]
