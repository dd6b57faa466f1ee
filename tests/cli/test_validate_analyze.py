"""`fxquant validate` and `fxquant analyze` end to end, and the CLI's error contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fxquant.cli import main
from tests.analysis.fragile import fragile_net
from tests.quantsim.digits import digits


@pytest.mark.parametrize("command", ["validate", "analyze"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"fxquant {command} torchvision:resnet18" in out


def test_validate_a_clean_model(tmp_path, capsys):
    out_json = tmp_path / "report.json"
    assert main(["validate", "tests.models:ConvBnNet", "--input-shape", "1x3x16x16",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "model validation of ConvBnNet" in out
    assert json.loads(out_json.read_text())["ok"] is True


def test_validate_exits_1_on_error_findings(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text("import torch\n"
                    "class Net(torch.nn.Module):\n"
                    "    def forward(self, x):\n"
                    "        if x.sum() > 0:\n"
                    "            return x\n"
                    "        return -x\n")
    assert main(["validate", f"{path}:Net", "--input-shape", "2x3"]) == 1
    assert "if x.sum() > 0" in capsys.readouterr().out


def fragile() -> torch.nn.Module:
    """The digits net with a fragile layer (tests/analysis/fragile.py), for the MODEL argument."""
    return fragile_net()


def test_analyze_finds_the_fragile_layer(tmp_path, capsys):
    x, _, xt, yt = digits()
    np.save(tmp_path / "calib.npy", x[:256].numpy())
    np.savez(tmp_path / "eval.npz", x=xt.numpy(), y=yt.numpy())
    results = tmp_path / "analysis"
    assert main(["analyze", "tests.cli.test_validate_analyze:fragile",
                 "--calib", str(tmp_path / "calib.npy"), "--eval", str(tmp_path / "eval.npz"),
                 "--results-dir", str(results), "--scheme", "tf", "--batch-size", "128",
                 "--suggestions", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("activations hurt more")
    assert "worst layers: relu1" in out and "suggested: relu1 at 16-bit activations" in out
    summary = json.loads((results / "summary.json").read_text())
    assert summary["culprits"][0] == "relu1" and summary["scores"]["fp32"] > 0.95
    assert (results / "index.html").exists() and (results / "per_layer_mse_loss.json").exists()


@pytest.mark.parametrize("argv, match", [
    (["validate", "resnet18"], "fxquant validate: error: MODEL: expected torchvision:NAME"),
    (["analyze", "torchvision:resnet18", "--calib", "no_such_dir", "--eval", "x.npz",
      "--results-dir", "r"], "fxquant analyze: error: DATA: no_such_dir not found"),
    (["validate", "tests.models:ConvBnNet", "--weights", "WEIGHTS"],
     "fxquant validate: error: --weights: .*is not a state dict"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "WEIGHTS").write_bytes(b"\x00garbage")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    import re
    assert re.search(match, err), err


def test_bad_scheme_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["analyze", "torchvision:resnet18", "--calib", "random:1x3x8x8", "--eval", "e.npz",
              "--results-dir", "r", "--scheme", "minmax"])
    assert info.value.code == 2
    assert "invalid choice: 'minmax'" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    from fxquant.cli.specs import SpecError

    with pytest.raises(SpecError, match="MODEL: expected"):
        main(["--debug", "validate", "resnet18"])
