"""Quantization steps of dumped tensors, from encodings, to express differences in LSBs.

Example:
    >>> scales = scales_from_encodings("out/r18.encodings")
    >>> scales["conv1"]
    (array([0.0123]), None)
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fxquant.export.encodings_file import encodings_from_refs, read_encodings

__all__ = ["scales_from_encodings"]


def scales_from_encodings(encodings: Any) -> dict[str, tuple[np.ndarray, int | None]]:
    """``{tensor: (flat float64 scales, channel axis or None)}`` of the activation encodings.

    Args:
        encodings: an encodings file path or its dict (as ``sim.export`` writes it), a
            ``QuantizationSimModel`` (anything with ``quantizers()``), ``{name: scale}``, or None
            (no scales).

    Raises:
        TypeError: ``encodings`` is none of these.

    Example:
        >>> scales_from_encodings({"fc": 0.25})
        {'fc': (array([0.25]), None)}
    """
    if encodings is None:
        return {}
    if hasattr(encodings, "quantizers") and callable(encodings.quantizers):
        activations = encodings_from_refs(encodings.quantizers())["activation"]
    elif isinstance(encodings, (str, os.PathLike)) or (
            isinstance(encodings, Mapping) and ("version" in encodings
                                                or "activation_encodings" in encodings
                                                or "encodings" in encodings)):
        activations = read_encodings(encodings)["activation"]
    elif isinstance(encodings, Mapping):
        return {str(k): (np.asarray(v, dtype=np.float64).reshape(-1), None)
                for k, v in encodings.items()}
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
