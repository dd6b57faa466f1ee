"""Quantization steps of dumped tensors, from encodings, to express differences in LSBs.

Example:
    >>> scales = scales_from_encodings("out/r18.encodings")
    >>> scales["conv1"]
    (array([0.0123]), None)
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fxquant.core.jsonpath import JsonValidator, join, show
from fxquant.errors import ConfigError
from fxquant.export.encodings_file import encodings_from_refs
from fxquant.export.encodings_reader import read_encodings

__all__ = ["scales_from_encodings"]


def scales_from_encodings(encodings: Any) -> dict[str, tuple[np.ndarray, int | None]]:
    """``{tensor: (flat float64 scales, channel axis or None)}`` of the activation encodings.

    Args:
        encodings: an encodings file path or its dict (as ``sim.export`` writes it), a
            ``QuantizationSimModel`` (anything with ``quantizers()``), ``{name: scale}``, or None
            (no scales).

    Raises:
        TypeError: ``encodings`` is none of these.
        ConfigError: an invalid encodings file or dict, or a ``{name: scale}`` value that is not
            a positive finite number (or a non-empty list of them); the message names the file
            or the mapping and the key.

    Example:
        >>> scales_from_encodings({"fc": 0.25})
        {'fc': (array([0.25]), None)}
    """
    if encodings is None:
        return {}
    if hasattr(encodings, "quantizers") and callable(encodings.quantizers):
        activations = encodings_from_refs(encodings.quantizers())["activation"]
    elif isinstance(encodings, (str, os.PathLike)) or (
            isinstance(encodings, Mapping) and any(key in encodings for key in _ENCODINGS_KEYS)):
        activations = read_encodings(encodings)["activation"]
    elif isinstance(encodings, Mapping):
        return {str(k): (_scale_values(k, v), None) for k, v in encodings.items()}
    else:
        raise TypeError(f"encodings must be an encodings file path, its dict, a "
                        f"QuantizationSimModel or a {{name: scale}} mapping, got "
                        f"{type(encodings).__qualname__}")
    out = {}
    for name, enc in activations.items():
        scale = getattr(enc, "scale", None)
        if scale is None:  # float16 encodings have no step
            continue
        out[name] = (scale.detach().cpu().double().numpy().reshape(-1), getattr(enc, "axis", None))
    return out


# Keys that make a dict an encodings dict (any version; 0.6.1 may hold param_encodings only).
_ENCODINGS_KEYS = ("version", "activation_encodings", "param_encodings", "encodings",
                   "quantizer_args", "excluded_layers")
_MAPPING = JsonValidator("encodings {name: scale} mapping", error_cls=ConfigError)


def _scale_values(name: Any, value: Any) -> np.ndarray:
    """One ``{name: scale}`` value as flat float64 scales, each finite and > 0."""
    path = join("", str(name))
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            _MAPPING.fail(path, f"invalid array of dtype {value.dtype}; expected a scale > 0 or "
                                "a list of scales (one per channel)")
        flat = value.astype(np.float64).reshape(-1)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        flat = np.array([float(value)], dtype=np.float64)
    elif isinstance(value, (list, tuple)):
        items = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, numbers.Real):
                _MAPPING.fail(f"{path}[{i}]", f"invalid value {show(item)}; expected a scale > 0")
            items.append(float(item))
        flat = np.array(items, dtype=np.float64)
    else:
        _MAPPING.fail(path, f"invalid value {show(value)}; expected a scale > 0 or a list of "
                            "scales (one per channel), or pass the encodings file / its dict")
    if flat.size == 0:
        _MAPPING.fail(path, "an empty list; expected a scale > 0 or a list of scales")
    bad = [float(x) for x in flat if not (math.isfinite(x) and x > 0)]
    if bad:
        _MAPPING.fail(path, f"invalid scale {bad[0]!r}; scales are finite numbers > 0")
    return flat
