"""Checks tutorials/model_validator.py's printed findings, figures and report files."""
from __future__ import annotations

import json
import pathlib
import re

from tests.tutorials.parsing import NUMBER
from tests.tutorials.parsing import find as _find

# (severity, check, module path) of every finding, most severe first, as the tutorial prints them
BEFORE = [
    ("error", "in_place", "<root>"),                 # y.add_(x), bn2's output read again
    ("error", "onnx_export", "clip"),                # the `if` on data cannot be exported
    ("warning", "untraceable", "clip"),              # ... nor traced: auto-leaf, stays float
    ("warning", "training_mode", "<root>"),
    ("warning", "functional_op", "<root>"),          # torch.linalg.vector_norm
    ("warning", "batch_norm_fold", "bn3"),           # BN after a ReLU
    ("fixed-by-preparer", "reused_module", "relu"),  # relu called at 3 sites: 2 copies
    ("fixed-by-preparer", "reused_module", "relu"),
    ("fixed-by-preparer", "functional_op", "module_add"),
    ("fixed-by-preparer", "functional_op", "module_pool"),
    ("fixed-by-preparer", "functional_op", "module_flatten"),
    ("fixed-by-preparer", "functional_op", "module_div"),
]
AFTER = [
    ("fixed-by-preparer", "functional_op", "module_add"),
    ("fixed-by-preparer", "functional_op", "module_pool"),
    ("fixed-by-preparer", "functional_op", "module_flatten"),
    ("fixed-by-preparer", "functional_op", "module_normalize"),
]
FINDING = re.compile(r"^  \[([\w-]+)\] (\w+): (\S+?)(?: \(node (\w+)\))?(?:, line \d+: (.*))?$",
                     re.M)


def _findings(block: str) -> list[tuple[str, str, str]]:
    return [m[:3] for m in FINDING.findall(block)]


def check(out: str, folder: pathlib.Path) -> None:
    _find(r"model validation of FixedClassifier", out)
    before, after = out.split("model validation of FixedClassifier")
    counts = _find(r"model validation of Classifier \(traced symbolic\): (\d+) error, (\d+) "
                   r"warning, (\d+) fixed-by-preparer", before)
    assert tuple(map(int, counts)) == (2, 4, 6)
    assert _findings(before) == BEFORE
    # where: the node and the user's source line of the in-place op and of the `if`
    rows = {(m[1], m[2]): m for m in FINDING.findall(before)}
    assert rows[("in_place", "<root>")][3:] == ("add_", "y.add_(x)")
    assert rows[("untraceable", "clip")][4] == "if x.max() > 6.0:"
    assert rows[("batch_norm_fold", "bn3")][3] == "bn3"
    _find(r"Tensor\.add_ overwrites 'bn2' in place, which relu_1 read\(s\) afterwards", before)
    _find(r"module 'relu' is called at 3 sites; this call gets its own copy 'relu_2'", before)
    _find(r"linalg_vector_norm stays a function", before)
    assert before.count("\n      fix: ") == len(BEFORE)   # every finding says how to fix it
    _find(r"\nok: False\n", before)

    counts = _find(r" \(traced symbolic\): (\d+) error, (\d+) warning, (\d+) fixed-by-preparer",
                   after)
    assert tuple(map(int, counts)) == (0, 0, 4)
    assert _findings(after) == AFTER
    _find(r"\nok: True; ModelValidator\.validate_model: True\n", after)

    (quantizers,) = _find(r"W8A8 sim of the fixed model: 12 quantizers: (.+)", after)
    assert quantizers.split(", ") == [
        "x", "conv1.weight", "relu1", "conv2.weight", "conv2", "relu2", "conv3.weight", "relu3",
        "module_pool", "module_normalize", "fc.weight", "fc"]
    (sqnr,) = _find(rf"logits SQNR, W8A8 sim vs float: {NUMBER} dB", after)
    assert float(sqnr) >= 38.0                          # measured 41.7

    assert sorted(p.name for p in folder.iterdir()) == ["validation_after.json",
                                                        "validation_before.json"]
    for name, expected, ok in (("validation_before.json", BEFORE, False),
                               ("validation_after.json", AFTER, True)):
        data = json.loads((folder / name).read_text())
        assert data["ok"] is ok and data["trace_mode"] == "symbolic"
        assert sum(data["counts"].values()) == len(data["findings"]) == len(expected)
        assert sorted((f["severity"], f["check"], f["module_path"] or "<root>")
                      for f in data["findings"]) == sorted(expected)
