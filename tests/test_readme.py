"""The README's fifteen-line example runs and prints what the README says it prints.

The block is executed as written except for the image size (224 → 64, to keep CPU time low):
validator verdict, the three worst layers by SQNR, and the sim against ONNX Runtime running the
exported QDQ model.
"""
from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## In fifteen lines"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under '## In fifteen lines'"
    return match.group(1)


def test_example_is_fifteen_lines() -> None:
    lines = [line for line in _example().splitlines() if line.strip()]
    assert len(lines) <= 15, f"{len(lines)} non-blank lines"
    assert all(len(line) <= 100 for line in lines)


def test_example_runs_and_prints_its_figures(tmp_path: pathlib.Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    code = _example()
    assert code.count("224, 224") == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("224, 224", "64, 64"), str(README), "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    assert re.search(r"model validation of ResNet .*: 0 error, 0 warning, 17 fixed-by-preparer",
                     out), out
    rows = re.findall(r"^\d\s+(\S+)\s+\S+\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert len(rows) == 3, out
    assert [float(r[1]) for r in rows] == sorted(float(r[1]) for r in rows)  # worst first
    sqnr = float(re.search(r"sim vs ONNX Runtime: ([\d.]+) dB", out).group(1))
    assert sqnr >= 25.0, out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "resnet18.encodings", "resnet18.onnx", "resnet18.pth", "resnet18_qdq.onnx",
        "resnet18_torch.encodings"]
