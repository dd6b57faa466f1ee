"""Every tutorial runs to completion and prints the figures it claims.

Each ``tutorials/NAME.py`` has a ``tests/tutorials/check_NAME.py`` whose ``check(out, folder)``
parses what the tutorial printed (and the files it wrote to ``$FXQUANT_TUTORIAL_OUT``): counts
(layers, quantizers, folds) exactly, SQNR, accuracy and error figures against floors a little below
the values measured on the seeded run (CPU, torch 2.14), so that a regression in what the tutorial
demonstrates fails here.
"""
from __future__ import annotations

import importlib
import pathlib
import runpy
import sys

import pytest

from tests.threads import torch_threads

TUTORIAL_DIR = pathlib.Path(__file__).parent.parent.parent / "tutorials"
TUTORIALS = sorted(p for p in TUTORIAL_DIR.glob("*.py") if not p.name.startswith("_"))
CHECK_MODULES = sorted(p.stem.removeprefix("check_")
                       for p in pathlib.Path(__file__).parent.glob("check_*.py"))


def test_every_tutorial_has_checks() -> None:
    assert [p.stem for p in TUTORIALS] == CHECK_MODULES


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_prints_its_figures(path: pathlib.Path, tmp_path: pathlib.Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    check = importlib.import_module(f"tests.tutorials.check_{path.stem}").check
    monkeypatch.setenv("FXQUANT_TUTORIAL_OUT", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # tutorials that write relative paths (AIMET's ./tmp) write here
    monkeypatch.setattr(sys, "path", list(sys.path))  # tutorials add their folder
    try:
        with torch_threads():   # the tutorials train nets: their figures depend on the count
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.modules.pop("_common", None)
    check(capsys.readouterr().out, tmp_path)
