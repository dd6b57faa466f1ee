"""Runs aimet-torch beside fxquant: finds its python and runs a worker script in a subprocess.

The python comes from $AIMET_PYTHON, else from ../shared/tools/aimet-venv.sh (which builds the
venv once). When neither is available the benchmarks print fxquant's figures alone.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

_SCRIPT = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "aimet-venv.sh"


def aimet_python() -> str | None:
    """The python of an environment with aimet-torch, or None."""
    if os.environ.get("AIMET_PYTHON"):
        return os.environ["AIMET_PYTHON"]
    if not _SCRIPT.exists():
        return None
    try:
        out = subprocess.run(["bash", str(_SCRIPT)], check=True, capture_output=True, text=True,
                             timeout=1800)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"aimet-torch unavailable: {exc}", file=sys.stderr)
        return None
    return out.stdout.strip().splitlines()[-1]


#: Run before every worker: quiet imports of torch, torchvision and the aimet-torch entry points
#: the benchmarks use (aimet re-enables logging on import, hence the second ``disable``), the
#: JSON arguments as ``args`` and ``torch.set_num_threads(args["threads"])``.
WORKER_PRELUDE = r"""
import json, logging, os, shutil, statistics, sys, tempfile, time, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
import torch, torchvision
from aimet_common.defs import QuantScheme
from aimet_torch.batch_norm_fold import fold_all_batch_norms
from aimet_torch.layer_output_utils import LayerOutputUtil, NamingScheme
from aimet_torch.model_preparer import prepare_model
from aimet_torch.quantsim import QuantizationSimModel
logging.disable(logging.CRITICAL)
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
"""


def run_worker(code: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """Runs :data:`WORKER_PRELUDE` and then ``code`` with AIMET's python; ``args`` (which must
    hold "threads") reaches the code as ``args``; the code prints one JSON line last. Returns
    that JSON, or None when AIMET is unavailable or fails."""
    python = aimet_python()
    if python is None:
        return None
    env = dict(os.environ, OMP_NUM_THREADS=str(args["threads"]))
    proc = subprocess.run([python, "-c", WORKER_PRELUDE + code, json.dumps(args)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        print(f"aimet worker failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
