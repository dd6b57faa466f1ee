"""The layer-output dump format: file and folder names, manifest versions, layouts, file stems.

Shared by the writer (:mod:`fxquant.layer_outputs.dump_writer`), the reader
(:mod:`fxquant.layer_outputs.dump_reader`) and the comparison. The layout is AIMET's
(``SPEC.md`` §2) plus fxquant's ``manifest.json`` and ``instances/``; see the writer's docstring.

Example:
    >>> sanitize_names(["layer1.0.conv1"]), default_layout(4)
    ({'layer1.0.conv1': 'layer1_0_conv1'}, 'NCHW')
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["FILE_FORMATS", "INSTANCES", "LAYOUTS", "MANIFEST", "MANIFEST_FORMAT",
           "MANIFEST_VERSION", "MANIFEST_VERSIONS", "NAME_ORDER", "default_layout",
           "describe_input", "instance_entry_path", "sanitize_names"]

#: File of the AIMET name order.
NAME_ORDER = "layer_output_name_order.json"
#: fxquant's manifest file.
MANIFEST = "manifest.json"
#: Value of ``manifest["format"]``.
MANIFEST_FORMAT = "fxquant.layer_outputs"
#: Version written. 2: per-instance input shapes, per-instance entries in ``instances/``.
MANIFEST_VERSION = 2
#: Versions read (1: one input shape for all instances).
MANIFEST_VERSIONS = (1, 2)
#: Folder of the per-instance entries.
INSTANCES = "instances"
#: Supported file formats.
FILE_FORMATS = ("raw", "npy")
#: Supported dump layouts: as computed (channels first) or channels last.
LAYOUTS = ("NCHW", "NHWC")

_CHANNELS_FIRST = {1: "N", 2: "NC", 3: "NCL", 4: "NCHW", 5: "NCDHW"}
_CHANNELS_LAST = {3: "NLC", 4: "NHWC", 5: "NDHWC"}
_MAX_STEM = 180
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


def default_layout(rank: int, channels_last: bool = False) -> str | None:
    """The axis letters of a rank-``rank`` tensor as frameworks compute it (``"NCHW"`` for 4-D),
    or its channels-last form (``"NHWC"``); None when there is no convention (rank 0 or > 5).

    Example:
        >>> default_layout(4), default_layout(4, channels_last=True)
        ('NCHW', 'NHWC')
    """
    if channels_last and rank in _CHANNELS_LAST:
        return _CHANNELS_LAST[rank]
    return _CHANNELS_FIRST.get(rank)


def sanitize_names(names: Iterable[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """File stems for tensor names: AIMET's ``re.sub(r"\\W+", "_", name)``, made unique.

    Names that collide after sanitizing (``a.b`` and ``a_b``; or only by letter case, which
    case-insensitive file systems merge) get ``__1``, ``__2`` … in order of appearance; stems longer
    than 180 characters are shortened with a hash; empty stems and Windows device names are padded.

    Args:
        names: tensor names, in order.
        taken: stems already used (case-insensitively).

    Example:
        >>> sanitize_names(["layer1.0.conv1", "layer1_0_conv1", "fc#0"])
        {'layer1.0.conv1': 'layer1_0_conv1', 'layer1_0_conv1': 'layer1_0_conv1__1', 'fc#0': 'fc_0'}
    """
    used = {t.lower() for t in taken}
    out: dict[str, str] = {}
    for name in names:
        if name in out:
            continue
        stem = re.sub(r"\W+", "_", name) or "_"
        if len(stem) > _MAX_STEM:
            digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:12]
            stem = f"{stem[:_MAX_STEM - 13]}_{digest}"
        if stem.upper() in _WINDOWS_RESERVED:
            stem = f"{stem}_"
        candidate, k = stem, 0
        while candidate.lower() in used:
            k += 1
            candidate = f"{stem}__{k}"
        used.add(candidate.lower())
        out[name] = candidate
    return out


def instance_entry_path(dir_path: str | os.PathLike[str], index: int) -> str:
    """The file of instance ``index``'s own manifest entry.

    Example:
        >>> instance_entry_path("dumps/sim", 3)
        'dumps/sim/instances/instance_3.json'
    """
    return os.path.join(os.fspath(dir_path), INSTANCES, f"instance_{index}.json")


def describe_input(value: Any) -> str:
    """A short description of one input instance for messages: shapes and dtypes.

    Example:
        >>> describe_input((torch.zeros(1, 3, 8, 8), torch.zeros(2, dtype=torch.int64)))
        'tuple of 2: [tensor (1, 3, 8, 8) torch.float32, tensor (2,) torch.int64]'
    """
    def one(item: Any) -> str:
        shape = getattr(item, "shape", None)
        dtype = getattr(item, "dtype", None)
        if shape is not None and dtype is not None:
            kind = "tensor" if isinstance(item, torch.Tensor) else "array"
            return f"{kind} {tuple(int(d) for d in shape)} {dtype}"
        return type(item).__qualname__

    if isinstance(value, Mapping):
        return "dict: {" + ", ".join(f"{k!r}: {one(v)}" for k, v in list(value.items())[:8]) + "}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(one(v) for v in value[:8]) + (", ..." if len(value) > 8 else "")
        return f"{type(value).__name__} of {len(value)}: [{items}]"
    return one(value)
