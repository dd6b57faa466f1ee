"""Checkpoints and encodings reload of a QuantizationSimModel, without executing pickled code.

A checkpoint is one ``torch.save`` file holding only tensors and plain data: the sim's state dict
(weights, encodings, learned ranges), each quantizer's ``enabled`` flag and calibration state, the
QuantSim arguments, the quantsim config as JSON-able data, and the model's class and input shapes
(to say what to pass when loading). Loading uses ``torch.load(weights_only=True)`` and rebuilds the
sim from the float model, so the model's code comes from the caller, never from the file.
Everything loaded is validated as strictly as what calibration computes
(:func:`fxquant.core.encoding.encoding_problem`): a bad value is a :class:`CheckpointError` naming
the file and the state-dict key, before anything is installed.

:func:`load_encodings_to_sim` is AIMET's reload of an export: ``<prefix>_torch.encodings``
(torch-named) or ``<prefix>.encodings`` (ONNX-named) into a sim built like the exported one.

Example:
    >>> save_checkpoint(sim, "sim.ckpt")
    >>> sim2 = load_checkpoint("sim.ckpt", model, dummy_input)
    >>> load_encodings_to_sim(sim3, "out/resnet18_torch.encodings")
"""
from __future__ import annotations

import io
import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fxquant.core import files
from fxquant.core.encoding import encoding_problem, quant_range
from fxquant.core.jsonpath import JsonValidator, join, show
from fxquant.core.layers import float_param
from fxquant.errors import ConfigError, FxQuantError
from fxquant.export.encodings_file import EncodingsFileError
from fxquant.quantsim.config import load_config
from fxquant.quantsim.encodings_load import install_encodings
from fxquant.quantsim.quantizer import BITWIDTH_RANGES, AffineQuantizer
from fxquant.quantsim.quantsim import QuantizationSimModel

__all__ = ["save_checkpoint", "load_checkpoint", "load_encodings_to_sim", "CheckpointError",
           "EncodingsFileError"]

logger = logging.getLogger(__name__)

_FORMAT = "fxquant.quantsim.checkpoint"
_VERSION = 2
_READS = (1, 2)


class CheckpointError(FxQuantError):
    """A checkpoint file is not one fxquant wrote, holds invalid state, or does not fit the model it
    is loaded into. The message names the file and the field or state-dict key."""


# -------------------------------------------------------------------------------------------------
# Saving
# -------------------------------------------------------------------------------------------------
def _is_calibrated(quantizer: nn.Module) -> bool:
    if isinstance(quantizer, AffineQuantizer):
        return quantizer.encoding is not None
    return True  # float16 casts and the like need no encoding


def _model_info(sim: QuantizationSimModel) -> dict[str, Any]:
    inputs = []
    for node in sim.model.graph.nodes:
        if node.op != "placeholder":
            continue
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        dtype = getattr(meta, "dtype", None)
        inputs.append({"name": str(node.name),
                       "shape": [int(d) for d in shape] if shape is not None else None,
                       "dtype": str(dtype).replace("torch.", "") if dtype is not None else None})
    # a traced GraphModule's class carries the traced model's class name (not its module)
    return {"class": type(sim.model).__name__, "inputs": inputs}


def save_checkpoint(sim: QuantizationSimModel, path: str | os.PathLike[str], *,
                    include_model: bool = False) -> None:
    """Writes ``sim`` to ``path`` atomically (:func:`fxquant.core.files.atomic_write_file`).

    Missing parent folders are created and an existing file is replaced; if writing fails, the
    previous file is left as it was. The file holds tensors and plain data only (no pickled code):
    weights, encodings, learned ranges, enabled flags, which quantizers are calibrated, the QuantSim
    arguments and config.

    With ``include_model=True`` the file also embeds the pickled float model (quantizers removed,
    batch norms folded), stored as a byte tensor, so that AIMET's one-argument
    ``load_checkpoint(path, weights_only=False)`` can rebuild the sim for users who trust the file;
    the default load still reads the file without unpickling it.

    Raises:
        FileWriteError: the file could not be written (the message names ``path`` and the fix).

    Example:
        >>> save_checkpoint(sim, "sim.ckpt")
        >>> sim2 = load_checkpoint("sim.ckpt", model, dummy_input)
    """
    s = sim.settings
    refs = sim.quantizers()
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "settings": {"quant_scheme": s.quant_scheme.name, "default_output_bw": s.default_output_bw,
                     "default_param_bw": s.default_param_bw,
                     "default_data_type": s.default_data_type.name},
        "config": sim.config.to_dict(),
        "fold_batch_norms": sim.fold_batch_norms,
        "quantize_bias": sim.quantize_bias,
        "enabled": {ref.name: bool(ref.quantizer.enabled) for ref in refs},
        "calibrated": {ref.name: _is_calibrated(ref.quantizer) for ref in refs},
        "encodings_computed": bool(getattr(sim, "_encodings_computed", False)),
        "model": _model_info(sim),
        "state_dict": sim.model.state_dict(),
    }
    if include_model:
        payload["pickled_model"] = _pickled_float_model(sim)
    files.atomic_write_file(path, lambda f: torch.save(payload, f), overwrite=True)


def _pickled_float_model(sim: QuantizationSimModel) -> Tensor:
    from fxquant.model_resolution import private_copy
    from fxquant.passes.remove_quantizers import RemoveQuantizersPass

    float_gm = RemoveQuantizersPass()(private_copy(sim.model)).graph_module
    buffer = io.BytesIO()
    torch.save(float_gm, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _unpickle_float_model(payload: Mapping[str, Any], source: str) -> nn.Module:
    blob = payload["pickled_model"]
    if not isinstance(blob, Tensor) or blob.dtype != torch.uint8 or blob.dim() != 1:
        raise CheckpointError(f"checkpoint {source!r}: pickled_model: expected a 1-D uint8 tensor")
    try:
        model = torch.load(io.BytesIO(blob.numpy().tobytes()), map_location="cpu",
                           weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is this file's problem
        raise CheckpointError(f"checkpoint {source!r}: pickled_model cannot be unpickled: "
                              f"{_first_line(exc)}; pass model and dummy_input instead") from exc
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"checkpoint {source!r}: pickled_model holds a "
                              f"{type(model).__qualname__}, not a torch.nn.Module")
    return model


def _recorded_input(payload: Mapping[str, Any], source: str) -> Any:
    info = payload.get("model")
    inputs = info.get("inputs") if isinstance(info, Mapping) else None
    tensors = []
    for item in inputs if isinstance(inputs, list) else []:
        shape = item.get("shape") if isinstance(item, Mapping) else None
        dtype = getattr(torch, str(item.get("dtype")), None) if isinstance(item, Mapping) else None
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(dtype, torch.dtype)):
            raise CheckpointError(f"checkpoint {source!r}: model.inputs does not record the input "
                                  "shapes; pass dummy_input")
        tensors.append(torch.zeros(shape, dtype=dtype))
    if not tensors:
        raise CheckpointError(f"checkpoint {source!r}: model.inputs is missing; pass dummy_input")
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


# -------------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike[str], model: nn.Module | None = None,
                    dummy_input: Any = None, *, weights_only: bool = True) -> QuantizationSimModel:
    """Rebuilds the sim saved by :func:`save_checkpoint` on ``model`` (the same float model
    architecture it was built from) and loads its state; outputs are bit-identical.

    AIMET's ``load_checkpoint(path)`` unpickles a whole sim, code included. fxquant's checkpoints
    hold no code, so pass the float model and an example input, as when the sim was first built;
    called with the path alone, it raises a :class:`CheckpointError` that names the model class
    and the input shapes to pass. ``weights_only=False`` (as in ``torch.load``) unpickles, for
    users who trust the file: a checkpoint written with ``save_checkpoint(sim, path,
    include_model=True)`` is then rebuilt from its embedded float model with the path alone. It
    logs a warning, because unpickling can run arbitrary code.

    Args:
        path: the checkpoint file.
        model: the float model the sim was built from (its architecture; weights come from the
            file).
        dummy_input: an example input, as passed to ``QuantizationSimModel``.
        weights_only: False to unpickle a file you trust (see above).

    Example of the AIMET-style one-argument call (for files you trust):
        >>> save_checkpoint(sim, "sim.ckpt", include_model=True)
        >>> sim2 = load_checkpoint("sim.ckpt", weights_only=False)

    Raises:
        CheckpointError: the file is not an fxquant checkpoint, a field is missing, of the wrong
            type or holds an invalid encoding (the message names the file and the field or
            state-dict key), its state does not fit ``model``, or ``model``/``dummy_input`` are
            missing (the message says what to pass).

    Example:
        >>> sim = load_checkpoint("sim.ckpt", torchvision.models.resnet18(), dummy_input)
    """
    try:
        source = os.fspath(path)
    except TypeError as exc:
        raise CheckpointError(f"load_checkpoint expects a file path, got {type(path).__name__}"
                              ) from exc
    if weights_only is not True:
        logger.warning("load_checkpoint(%r, weights_only=False): unpickling runs whatever code the "
                       "file names; do this only for files you trust", source)
        try:
            obj = torch.load(source, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"cannot read checkpoint {source!r}: {_first_line(exc)}") from exc
        if isinstance(obj, QuantizationSimModel):
            if model is not None:
                logger.warning("%s holds a whole pickled sim; the model argument is not used",
                               source)
            return obj
        if not (isinstance(obj, dict) and obj.get("format") == _FORMAT):
            kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
            raise CheckpointError(
                f"{source!r} holds a {kind}, not an fxquant QuantizationSimModel or checkpoint. "
                "For a pickled AIMET sim: load it with AIMET, sim.export(...) it, then build the "
                "fxquant sim on the same model and call "
                "fxquant.quantsim.load_encodings_to_sim(sim, '<prefix>_torch.encodings')")
        payload = obj
        if model is None and "pickled_model" in payload:
            model = _unpickle_float_model(payload, source)
            if dummy_input is None:
                dummy_input = _recorded_input(payload, source)
    else:
        payload = _read_payload(source)
    return sim_from_checkpoint_payload(payload, model, dummy_input, source=source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _read_payload(source: str) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {source!r}: it holds pickled Python objects (code), which "
            "fxquant does not unpickle by default (e.g. a torch.save of a model or sim, not an "
            "fxquant checkpoint). If you trust the file, load it with "
            "load_checkpoint(path, weights_only=False); otherwise write a checkpoint with "
            f"fxquant.save_checkpoint(sim, path). ({_first_line(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to read is this file's problem
        raise CheckpointError(f"cannot read checkpoint {source!r}: {_first_line(exc)}") from exc


def _describe_inputs(payload: Mapping[str, Any]) -> str:
    info = payload.get("model")
    inputs = info.get("inputs") if isinstance(info, Mapping) else None
    if not isinstance(inputs, list) or not inputs:
        return "dummy_input=<the example input the sim was built with>"
    parts = []
    for item in inputs:
        shape = item.get("shape") if isinstance(item, Mapping) else None
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            dtype = item.get("dtype")
            extra = (f", dtype=torch.{dtype}" if isinstance(dtype, str) and dtype != "float32"
                     else "")
            parts.append(f"torch.randn({', '.join(str(d) for d in shape)}{extra})")
        else:
            parts.append("<input>")
    return "dummy_input=" + (parts[0] if len(parts) == 1 else f"({', '.join(parts)})")


def _model_class(payload: Mapping[str, Any]) -> str:
    info = payload.get("model")
    cls = info.get("class") if isinstance(info, Mapping) else None
    return cls if isinstance(cls, str) else "the float model class the sim was built from"


def sim_from_checkpoint_payload(payload: Any, model: nn.Module | None, dummy_input: Any, *,
                                source: str = "<payload>") -> QuantizationSimModel:
    """Validates a checkpoint payload (what :func:`save_checkpoint` writes, as ``torch.load``
    returns it) and rebuilds its sim on ``model``; :func:`load_checkpoint` after reading the file.

    Raises:
        CheckpointError: as :func:`load_checkpoint`, naming ``source``.

    Example:
        >>> sim = sim_from_checkpoint_payload(torch.load("sim.ckpt", weights_only=True), model, x,
        ...                                   source="sim.ckpt")
    """
    v = JsonValidator(f"checkpoint {source!r}", error_cls=CheckpointError)
    if not isinstance(payload, Mapping) or payload.get("format") != _FORMAT:
        raise CheckpointError(f"{source!r} is not an fxquant QuantSim checkpoint "
                              "(write one with fxquant.save_checkpoint(sim, path))")
    version = payload.get("version")
    if isinstance(version, bool) or version not in _READS:
        raise CheckpointError(f"{source!r}: checkpoint version {show(version)} is not supported "
                              f"(this fxquant reads versions {', '.join(map(str, _READS))})")
    _check_payload(payload, v)
    if model is None or dummy_input is None:
        missing = " and ".join(n for n, x in (("model", model), ("dummy_input", dummy_input))
                               if x is None)
        raise CheckpointError(
            f"checkpoint {source!r} holds weights and encodings but no code (fxquant checkpoints "
            f"never pickle code), so {missing} must be passed: "
            f"load_checkpoint({source!r}, model=<a {_model_class(payload)} built as before, in "
            f"eval mode>, {_describe_inputs(payload)})." + (
                " The file also embeds the pickled float model (save_checkpoint(..., "
                "include_model=True)): if you trust the file, "
                f"load_checkpoint({source!r}, weights_only=False) rebuilds the sim from it."
                if "pickled_model" in payload else
                " Or save it with save_checkpoint(sim, path, include_model=True) to load it "
                "later with load_checkpoint(path, weights_only=False) if you trust the file."))
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"load_checkpoint({source!r}, model=...): expected a torch.nn.Module,"
                              f" got {type(model).__qualname__}")
    try:
        config = load_config(payload["config"], source=f"checkpoint {source!r}: config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    s = payload["settings"]
    try:
        sim = QuantizationSimModel(
            model, dummy_input, quant_scheme=s["quant_scheme"],
            default_output_bw=s["default_output_bw"], default_param_bw=s["default_param_bw"],
            config_file=config, default_data_type=s["default_data_type"],
            fold_batch_norms=payload["fold_batch_norms"], quantize_bias=payload["quantize_bias"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {source!r}: settings: {exc}") from exc
    refs = {ref.name: ref for ref in sim.quantizers()}
    calibrated = _check_flags(payload, refs, v)
    state = payload["state_dict"]
    _check_fit(sim, state, source)
    _check_state(sim, refs, state, calibrated, v)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sim.model.to(device)
    try:
        sim.model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {source!r}: state_dict: does not fit this model (as "
                              f"built with the checkpoint's settings and config): {exc}. "
                              f"{_FIT_HINT}") from exc
    for name, enabled in payload["enabled"].items():
        refs[name].quantizer.enabled = enabled
    computed = payload.get("encodings_computed")
    sim._encodings_computed = (bool(computed) if isinstance(computed, bool)
                               else any(calibrated.values()))
    return sim


def _check_payload(payload: Mapping[str, Any], v: JsonValidator) -> None:
    settings = v.object(v.get(payload, "settings", "", dict), "settings")
    for key, types in (("quant_scheme", str), ("default_output_bw", int),
                       ("default_param_bw", int), ("default_data_type", str)):
        v.get(settings, key, "settings", types)
    v.get(payload, "config", "", dict)
    v.get(payload, "fold_batch_norms", "", bool)
    v.get(payload, "quantize_bias", "", (bool, type(None)))  # None: decided by the data type
    for key in ("enabled",) + (("calibrated",) if payload["version"] >= 2 else ()):
        flags = v.object(v.get(payload, key, "", dict), key)
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                v.fail(join(key, name), f"expected a boolean, got {show(flag)}")
    if payload["version"] >= 2:
        v.get(payload, "encodings_computed", "", bool)
    state = v.object(v.get(payload, "state_dict", "", dict), "state_dict")
    for key, value in state.items():
        if not isinstance(value, (Tensor, Mapping)):
            v.fail(join("state_dict", key), f"expected a tensor, got {type(value).__name__}")


def _check_flags(payload: Mapping[str, Any], refs: Mapping[str, Any],
                 v: JsonValidator) -> dict[str, bool]:
    """The per-quantizer flags name exactly this sim's quantizers; returns ``calibrated``."""
    keys = ("enabled", "calibrated") if "calibrated" in payload else ("enabled",)
    for key in keys:
        flags = payload[key]
        for name in flags:
            if name not in refs:
                v.fail(join(key, name), f"no quantizer of this sim is named {name!r} (its "
                                        f"quantizers: {list(refs)[:8]}...): the checkpoint does "
                                        f"not fit this model. {_FIT_HINT}")
        absent = [n for n in refs if n not in flags]
        if absent:
            v.fail(key, f"no entry for quantizer(s) {absent[:8]} of this sim: the checkpoint does "
                        f"not fit this model. {_FIT_HINT}")
    if "calibrated" in payload:
        return dict(payload["calibrated"])
    state = payload["state_dict"]
    return {n: (not isinstance(r.quantizer, AffineQuantizer)
                or f"{r.module_path}.scale" in state) for n, r in refs.items()}


def _check_grid(extra: Any, key: str, kind: str,
                v: JsonValidator) -> tuple[int, bool, bool, bool] | None:
    if extra is None:
        return None
    extra = v.object(extra, key)
    frozen = extra.get("frozen", False)
    if not isinstance(frozen, bool):
        v.fail(join(key, "frozen"), f"expected a boolean, got {show(frozen)}")
    grid = extra.get("grid")
    if grid is None:
        if frozen:
            v.fail(join(key, "frozen"), "a quantizer without an encoding cannot be frozen")
        return None
    if not isinstance(grid, (list, tuple)) or len(grid) != 4:
        v.fail(join(key, "grid"), f"expected [bitwidth, signed, symmetric, strict], got "
                                  f"{show(grid)}")
    bits, signed, symmetric, strict = grid
    lo, hi = BITWIDTH_RANGES[kind]
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        v.fail(join(key, "grid"), f"bit width {show(bits)} is invalid for a {kind} quantizer "
                                  f"(valid: {lo}-{hi})")
    for flag in (signed, symmetric, strict):
        if not isinstance(flag, bool):
            v.fail(join(key, "grid"), f"expected booleans after the bit width, got {show(flag)}")
    return bits, signed, symmetric, strict


def _expected_shape(ref: Any, modules: Mapping[str, nn.Module]) -> tuple[int, ...] | None:
    """The scale shape ``ref``'s quantizer needs: ``()`` per tensor, ``(C,)`` per channel (C the
    parameter's size along the axis); None when it cannot be told (a per-channel activation)."""
    axis = getattr(ref.quantizer, "axis", None)
    if axis is None:
        return ()
    if ref.kind == "param":
        owner = modules[ref.layer]
        original = float_param(owner, ref.name.rsplit(".", 1)[1])
        if -original.dim() <= axis < original.dim():
            return (int(original.shape[axis]),)
    return None


_FIT_HINT = ("Load it into the float model architecture the sim was built from, with the same "
             "dummy_input shapes; if that is the model, the file's 'config' or 'settings' were "
             "changed after saving (the sim is rebuilt from them, so they decide its quantizers "
             "and their shapes).")


def _check_fit(sim: QuantizationSimModel, state: Mapping[str, Any], source: str) -> None:
    """The model's own tensors (weights, buffers) have the shapes the file holds."""
    for key, tensor in sim.model.state_dict().items():
        saved = state.get(key)
        if isinstance(tensor, Tensor) and isinstance(saved, Tensor) and saved.shape != tensor.shape:
            raise CheckpointError(f"checkpoint {source!r}: {join('state_dict', key)}: does not "
                                  f"fit this model: size mismatch for {key}: the file has shape "
                                  f"{tuple(saved.shape)}, the model {tuple(tensor.shape)}. "
                                  f"{_FIT_HINT}")


def _check_state(sim: QuantizationSimModel, refs: Mapping[str, Any], state: Mapping[str, Any],
                 calibrated: Mapping[str, bool], v: JsonValidator) -> None:
    """Every quantizer's saved encoding passes the one validator, in the shape its tensor needs."""
    modules = dict(sim.model.named_modules())
    for name, ref in refs.items():
        quantizer = ref.quantizer
        if not isinstance(quantizer, AffineQuantizer):
            continue
        prefix = f"{ref.module_path}."
        keys = {k: prefix + k for k in ("scale", "zero_point", "_extra_state")}
        grid = _check_grid(state.get(keys["_extra_state"]),
                           join("state_dict", keys["_extra_state"]), quantizer.kind, v)
        scale, zp = state.get(keys["scale"]), state.get(keys["zero_point"])
        has = [scale is not None, zp is not None]
        if has[0] != has[1]:
            missing = keys["zero_point"] if has[0] else keys["scale"]
            v.fail(join("state_dict", missing), "missing (scale and zero_point are saved together)")
        if calibrated[name] != has[0]:
            v.fail(join("calibrated", name),
                   f"says {'calibrated' if calibrated[name] else 'not calibrated'}, but the state "
                   f"dict {'lacks' if calibrated[name] else 'holds'} {keys['scale']!r}")
        if scale is None:
            continue
        if grid is None:
            v.fail(join("state_dict", keys["_extra_state"]),
                   "missing the grid [bitwidth, signed, symmetric, strict] of a saved encoding")
        for key, tensor in ((keys["scale"], scale), (keys["zero_point"], zp)):
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                v.fail(join("state_dict", key), f"expected a float tensor, got {show(tensor)}")
        bits, signed, symmetric, strict = grid
        qmin, qmax = quant_range(bits, signed, symmetric, strict)
        shape = _expected_shape(ref, modules)
        if shape is None and scale.dim() != 1:
            v.fail(join("state_dict", keys["scale"]), f"a per-channel quantizer needs a 1-D "
                                                      f"scale, got shape {tuple(scale.shape)}")
        learned = quantizer.learn_range
        problem = encoding_problem(scale, zp, qmin=qmin, qmax=qmax, symmetric=symmetric,
                                   shape=shape, learned_scale=learned,
                                   learned_zero_point=learned and not symmetric)
        if problem is not None:
            field, message = problem
            v.fail(join("state_dict", keys[field]), message)


# -------------------------------------------------------------------------------------------------
# Encodings reload (AIMET's load_encodings_to_sim)
# -------------------------------------------------------------------------------------------------
def load_encodings_to_sim(sim: QuantizationSimModel,
                          path: str | os.PathLike[str] | Mapping[str, Any], *,
                          strict: bool = True, partial: bool = False) -> list[str]:
    """Loads the encodings of an export into ``sim`` (built on the same model and config), as
    AIMET's ``load_encodings_to_sim(sim, path)``: afterwards the sim computes what the exported
    sim did, bit for bit.

    Both files of ``sim.export()`` are accepted: ``<prefix>_torch.encodings`` (keyed by torch
    module/parameter names) and ``<prefix>.encodings`` (ONNX tensor names; versions 1.0.0, 0.6.1,
    2.0.0). A ``_torch.encodings`` file that aimet-torch exported loads too: its layer names
    from AIMET's ``prepare_model`` (``layer4.0.module_add_6``, ``layer1.0.module_relu_1``) are
    read as the same layers of ours (:func:`fxquant.core.layers.aimet_layer_names`). Every entry
    is validated before anything is installed: encodings as strictly as
    calibration's (:func:`fxquant.core.encoding.encoding_problem`), per-channel counts and axes
    against the quantizer's tensor, bit widths against the quantizer kind. int32 bias entries are
    skipped (biases follow their input and weight scales).

    Args:
        sim: the sim to load into.
        path: the encodings file, or its parsed dict.
        strict: an entry naming no quantizer of ``sim`` is an error (AIMET's default).
        partial: False (AIMET's default): quantizers without an entry are disabled, as they were
            in the exported sim; True: they are left as they are.

    Returns:
        The names of the quantizers that got an encoding.

    Raises:
        EncodingsFileError: the file is unreadable or malformed, an encoding is invalid or does
            not fit its quantizer, or (``strict``) an entry names no quantizer; the message names
            the file and the JSON path or quantizer.

    Example:
        >>> sim.export("out", "resnet18", dummy_input)
        >>> sim2 = QuantizationSimModel(model, dummy_input)
        >>> load_encodings_to_sim(sim2, "out/resnet18_torch.encodings")
    """
    return install_encodings(sim, path, strict=strict, partial=partial)
