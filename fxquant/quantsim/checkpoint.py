"""Checkpoints of a QuantizationSimModel that load without executing pickled code.

A checkpoint is one ``torch.save`` file holding only tensors and plain data: the sim's state dict
(weights, encodings, learned ranges), each quantizer's ``enabled`` flag, the QuantSim arguments
and the quantsim config as JSON-able data. Loading uses ``torch.load(weights_only=True)`` and
rebuilds the sim from the float model, so the model's code comes from the caller, never from the
file.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fxquant.core import files
from fxquant.core.jsonpath import JsonValidator, join
from fxquant.errors import FxQuantError
from fxquant.quantsim.quantsim import QuantizationSimModel

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

_FORMAT = "fxquant.quantsim.checkpoint"
_VERSION = 1


class CheckpointError(FxQuantError):
    """A checkpoint file is not one fxquant wrote, or does not fit the model it is loaded into."""


def save_checkpoint(sim: QuantizationSimModel, path: str | os.PathLike[str]) -> None:
    """Writes ``sim`` to ``path`` atomically (:func:`fxquant.core.files.atomic_write`).

    Missing parent folders are created and an existing file is replaced; if writing fails, the
    previous file is left as it was.

    Raises:
        FileWriteError: the file could not be written (the message names ``path`` and the fix).

    Example:
        >>> save_checkpoint(sim, "sim.ckpt")
        >>> sim2 = load_checkpoint("sim.ckpt", model, dummy_input)
    """
    s = sim.settings
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "settings": {"quant_scheme": s.quant_scheme.name, "default_output_bw": s.default_output_bw,
                     "default_param_bw": s.default_param_bw,
                     "default_data_type": s.default_data_type.name},
        "config": sim.config.to_dict(),
        "fold_batch_norms": sim.fold_batch_norms,
        "quantize_bias": sim.quantize_bias,
        "enabled": {ref.name: bool(ref.quantizer.enabled) for ref in sim.quantizers()},
        "state_dict": sim.model.state_dict(),
    }
    files.atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=True)


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module,
                    dummy_input: Any) -> QuantizationSimModel:
    """Rebuilds the sim saved by :func:`save_checkpoint` on ``model`` (the same float model
    architecture it was built from) and loads its state; outputs are bit-identical.

    Unlike AIMET's pickled checkpoints, the file holds no code: pass the float model and an
    example input, as when the sim was first built.

    Raises:
        CheckpointError: the file is not an fxquant checkpoint, a field is missing or of the wrong
            type (the message names the file and the field), or its state does not fit.

    Example:
        >>> sim = load_checkpoint("sim.ckpt", torchvision.models.resnet18(), dummy_input)
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {os.fspath(path)!r}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise CheckpointError(f"{os.fspath(path)!r} is not an fxquant QuantSim checkpoint "
                              "(write one with fxquant.save_checkpoint(sim, path))")
    if payload.get("version") != _VERSION:
        raise CheckpointError(f"{os.fspath(path)!r}: checkpoint version {payload.get('version')} "
                              f"is not supported (this fxquant reads version {_VERSION})")
    _check_payload(payload, JsonValidator(f"checkpoint {os.fspath(path)!r}",
                                          error_cls=CheckpointError))
    s = payload["settings"]
    sim = QuantizationSimModel(
        model, dummy_input, quant_scheme=s["quant_scheme"],
        default_output_bw=s["default_output_bw"], default_param_bw=s["default_param_bw"],
        config_file=payload["config"], default_data_type=s["default_data_type"],
        fold_batch_norms=payload["fold_batch_norms"], quantize_bias=payload["quantize_bias"])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sim.model.to(device)
    try:
        sim.model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} does not fit this model: {exc}. "
                              "Load it into the float model architecture the sim was built from, "
                              "with the same dummy_input shapes.") from exc
    refs = {ref.name: ref.quantizer for ref in sim.quantizers()}
    for name, enabled in payload["enabled"].items():
        if name in refs:
            refs[name].enabled = enabled
    sim._encodings_computed = True
    return sim


def _check_payload(payload: dict[str, Any], v: JsonValidator) -> None:
    settings = v.object(v.get(payload, "settings", "", dict), "settings")
    for key, types in (("quant_scheme", str), ("default_output_bw", int),
                       ("default_param_bw", int), ("default_data_type", str)):
        v.get(settings, key, "settings", types)
    v.get(payload, "config", "", dict)
    v.get(payload, "fold_batch_norms", "", bool)
    v.get(payload, "quantize_bias", "", (bool, type(None)))  # None: decided by the data type
    enabled = v.object(v.get(payload, "enabled", "", dict), "enabled")
    for name, flag in enabled.items():
        if not isinstance(flag, bool):
            v.fail(join("enabled", name), f"expected a boolean, got {flag!r}")
    v.get(payload, "state_dict", "", dict)
