"""The command line: `fxquant prepare` and `fxquant compare-outputs` (the other commands:
tests/cli/)."""
from __future__ import annotations

import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from fxquant.cli import main
from fxquant.layer_outputs.dump_writer import DumpWriter, HostInstance


def test_prepare_prints_what_changed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "functionals -> modules: 9" in out
    assert "layer1.0.module_add (Add)" in out
    assert "batch norms folded:     20" in out
    assert "bn1 -> conv1" in out


def test_unknown_command_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# compare-outputs: --check fails on findings; hostile dumps are one-line errors (issue 11, 4 / 13)
# ------------------------------------------------------------------------------------------------

_LAYERS = [f"layer{i}" for i in range(8)]


def _write(root: os.PathLike[str], layers=_LAYERS, fill=None) -> os.PathLike[str]:
    rng = np.random.default_rng(0)
    writer = DumpWriter(root)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    outputs = []
    for i, name in enumerate(_LAYERS):
        value = rng.standard_normal((1, 2, 3)).astype(np.float32)
        if name in layers:
            outputs.append((name, np.full_like(value, fill) if fill is not None else value))
    writer.submit(HostInstance([("x", x)], outputs))
    writer.close()
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["compare-outputs", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_check_fails_on_an_all_nan_dump_and_names_it(tmp_path, capsys) -> None:
    a = _write(tmp_path / "a", fill=math.nan)
    b = _write(tmp_path / "b", fill=math.nan)
    assert _run(capsys, str(a), str(b))[0] == 0  # without --check: a report, not a verdict
    rc, out, err = _run(capsys, str(a), str(b), "--check", "--json", str(tmp_path / "r.json"),
                        "--html", str(tmp_path / "r.html"))
    assert rc == 1
    assert "findings: 8" in out and "layer0: A has 6 NaN; B has 6 NaN" in out
    assert "check failed (8)" in err
    data = json.loads((tmp_path / "r.json").read_text())
    assert [f["kind"] for f in data["findings"]] == ["nonfinite"] * 8
    assert data["findings"][3] == {"kind": "nonfinite", "name": "layer3",
                                   "detail": "A has 6 NaN; B has 6 NaN"}
    page = (tmp_path / "r.html").read_text()
    assert "check fails" in page and "layer7" in page and "A has 6 NaN; B has 6 NaN" in page


def test_check_fails_on_one_inf_value(tmp_path, capsys) -> None:
    a = _write(tmp_path / "a")
    b = shutil.copytree(a, tmp_path / "b")
    path = b / "outputs" / "layer_outputs_0" / "layer2.raw"
    values = np.fromfile(path, dtype=np.float32)
    values[4] = np.inf
    values.tofile(path)
    rc, out, err = _run(capsys, str(a), str(b), "--check", "--plot", str(tmp_path / "p.png"))
    assert rc == 1, err
    assert "layer2: B has 1 Inf" in out and "math domain" not in err
    assert (tmp_path / "p.png").stat().st_size > 1000
    # the same dump without its manifest (flat raw files, layouts guessed): still found
    os.remove(b / "manifest.json")
    rc, out, _ = _run(capsys, str(a), str(b), "--check")
    assert rc == 1 and "layer2: B has 1 Inf" in out


def test_check_fails_on_layers_missing_on_one_side(tmp_path, capsys) -> None:
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b", layers=_LAYERS[:1])
    rc, out, err = _run(capsys, str(a), str(b), "--check", "--json", str(tmp_path / "r.json"))
    assert rc == 1
    assert "findings: 7" in out and "tensor only in dump A: layer7" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert sorted(f["name"] for f in data["findings"] if f["kind"] == "only_in_a") == _LAYERS[1:]
    assert data["check_failures"][0].startswith("tensor only in dump A: layer1")
    assert _run(capsys, str(a), str(b), "--check", "--allow-missing")[0] == 0
    assert _run(capsys, str(a), str(a), "--check")[0] == 0  # identical dumps pass


@pytest.mark.parametrize("mutate, match", [
    (lambda m: [m], r"manifest.json: <root>: expected a JSON object, got array"),
    (lambda m: m["instances"][0].update(shapes="1x2") or m,
     r"instances\[0\].shapes: expected a JSON object, got string"),
    (lambda m: m["tensors"]["layer0"].update(file="../../etc/hostname") or m,
     r"tensors.layer0.file: invalid value '../../etc/hostname'; expected a file name inside the "
     r"instance folder"),
])
def test_hostile_manifest_is_one_line_rc_2(tmp_path, capsys, mutate, match: str) -> None:
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b")
    path = b / "manifest.json"
    path.write_text(json.dumps(mutate(json.loads(path.read_text()))))
    rc, out, err = _run(capsys, str(a), str(b), "--check")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("fxquant compare-outputs: error: ")
    assert re.search(match, err), err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "twenty"])
def test_threshold_must_be_a_finite_number(tmp_path, capsys, value: str) -> None:
    a = _write(tmp_path / "a")
    with pytest.raises(SystemExit) as info:
        main(["compare-outputs", str(a), str(a), f"--threshold={value}"])
    assert info.value.code == 2
    assert re.search(r"--threshold: expected a (finite )?number \(dB\), got '" + re.escape(value),
                     capsys.readouterr().err)
