"""The command line: `fxquant demo` (what `make demo` runs)."""
from __future__ import annotations

import pytest

from fxquant.cli import main


def test_demo_prints_what_changed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "functionals -> modules: 9" in out
    assert "layer1.0.module_add (Add)" in out
    assert "batch norms folded:     20" in out
    assert "bn1 -> conv1" in out


def test_unknown_command_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
