"""Reading a layer-output dump: fxquant's (with ``manifest.json``) or AIMET's / a target tool's.

Example:
    >>> dump = LayerOutputDump("dumps/sim")
    >>> dump.names[:2], dump.instances
    (['x', 'conv1'], [0, 1])
    >>> dump.load("conv1", instance=1).shape
    (1, 64, 112, 112)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import numpy as np

from fxquant.core.jsonpath import JsonValidator, index, join, loads
from fxquant.layer_outputs.dump_writer import LAYOUTS, MANIFEST, MANIFEST_FORMAT, NAME_ORDER
from fxquant.layer_outputs.errors import DumpFormatError

__all__ = ["LayerOutputDump", "TensorInfo"]

logger = logging.getLogger(__name__)

_INSTANCE_DIR = re.compile(r"^layer_outputs_(\d+)$")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What a dump says about one tensor.

    Attributes:
        name: the tensor's original name (the file stem when the dump has no manifest).
        file: file name inside ``outputs/layer_outputs_<k>/``.
        shape: shape as stored, or None when unknown (a raw file without manifest).
        dtype: dtype of the stored values ("float32" for raw files).
        source_dtype: dtype the tensor had before writing (None when unknown).
        layout: axis letters as stored ("NCHW", "NHWC" …), or None when unknown.
    """

    name: str
    file: str
    shape: tuple[int, ...] | None
    dtype: str
    source_dtype: str | None
    layout: str | None


class LayerOutputDump:
    """A layer-output dump on disk (read only).

    Works on fxquant dumps (``manifest.json`` gives original names, shapes, dtypes, layouts) and on
    AIMET-layout dumps without manifest (names are the file stems from
    ``layer_output_name_order.json`` or the files found; ``.raw`` shapes are then unknown).

    Args:
        dir_path: the dump directory.
        layout: the layout of every tensor of a dump without manifest (e.g. "NHWC" for a target
            that writes channels last); overrides the manifest when given.

    Raises:
        DumpFormatError: not a directory, no instances, or a malformed manifest (the message names
            the file and the field).

    Example:
        >>> LayerOutputDump("dumps/qnn", layout="NHWC").info("conv1").layout
        'NHWC'
    """

    def __init__(self, dir_path: str | os.PathLike[str], *, layout: str | None = None) -> None:
        self.dir_path = os.fspath(dir_path)
        if not os.path.isdir(self.dir_path):
            raise DumpFormatError(f"{self.dir_path} is not a directory; pass the folder a "
                                  "LayerOutputUtil wrote (it holds outputs/layer_outputs_<k>/)")
        if layout is not None and layout not in LAYOUTS and not _is_layout(layout):
            raise ValueError(f"layout must be axis letters such as 'NCHW' or 'NHWC', got "
                             f"{layout!r}")
        self._layout = layout
        manifest_path = os.path.join(self.dir_path, MANIFEST)
        self.manifest: dict[str, Any] | None = None
        if os.path.exists(manifest_path):
            self.manifest = _read_json(manifest_path)
            self._from_manifest(manifest_path)
        else:
            self._from_files()
        if not self.instances:
            raise DumpFormatError(f"{self.dir_path} holds no complete instance "
                                  "(outputs/layer_outputs_<k>/); generate layer outputs first")

    # -- loading the index ----------------------------------------------------------------------
    def _from_manifest(self, path: str) -> None:
        v = JsonValidator(path, error_cls=DumpFormatError)
        m = v.object(self.manifest, "")
        if m.get("format") != MANIFEST_FORMAT:
            v.fail("format", f"field 'format' is {m.get('format')!r}, expected {MANIFEST_FORMAT!r} "
                             "(not an fxquant manifest)")
        self.file_format = v.one_of(v.get(m, "file_format", "", str), "file_format",
                                    ("raw", "npy"))
        self.names = list(v.string_list(v.get(m, "layer_output_names", "", list),
                                        "layer_output_names", what="tensor names"))
        tensors = v.object(v.get(m, "tensors", "", dict), "tensors")
        self._tensors = {}
        for name in self.names:
            where = join("tensors", name)
            if name not in tensors:
                v.fail(where, "missing: every name of layer_output_names needs an entry; "
                              "re-generate the dump")
            t = v.object(tensors[name], where)
            shape = None
            if t.get("shape") is not None:
                dims = v.array(t["shape"], join(where, "shape"), what="dimensions")
                shape = tuple(int(v.number(d, index(join(where, "shape"), i), integer=True))
                              for i, d in enumerate(dims))
            self._tensors[name] = TensorInfo(
                name, v.get(t, "file", where, str), shape, str(t.get("dtype", "float32")),
                t.get("source_dtype"), self._layout or t.get("layout"))
        self._instances = {}
        for i, entry in enumerate(v.get(m, "instances", "", list)):
            entry = v.object(entry, index("instances", i))
            k = int(v.number(v.get(entry, "index", index("instances", i), int),
                             join(index("instances", i), "index"), integer=True))
            self._instances[k] = dict(entry)
        on_disk = set(self._scan_instances())
        listed = set(self._instances)
        gone = sorted(listed - on_disk)
        if gone:
            logger.warning("%s: instances %s are in the manifest but not on disk; skipped",
                           self.dir_path, gone)
            for k in gone:
                del self._instances[k]
        extra = sorted(on_disk - listed)
        if extra:
            logger.warning("%s: instances %s are on disk but not in the manifest (interrupted "
                           "run?); read with the manifest's shapes", self.dir_path, extra)
            for k in extra:
                self._instances[k] = {"index": k, "outputs": f"outputs/layer_outputs_{k}"}
        self.instances = sorted(self._instances)

    def _scan_instances(self) -> list[int]:
        root = os.path.join(self.dir_path, "outputs")
        if not os.path.isdir(root):
            return []
        found = []
        for entry in os.listdir(root):
            match = _INSTANCE_DIR.match(entry)
            if match and os.path.isdir(os.path.join(root, entry)):
                found.append(int(match.group(1)))
        return sorted(found)

    def _from_files(self) -> None:
        self.instances = self._scan_instances()
        self._instances = {k: {"index": k, "outputs": f"outputs/layer_outputs_{k}"}
                           for k in self.instances}
        first = (os.path.join(self.dir_path, "outputs", f"layer_outputs_{self.instances[0]}")
                 if self.instances else None)
        files = sorted(os.listdir(first)) if first else []
        files = [f for f in files if not f.startswith(".")]
        exts = {os.path.splitext(f)[1] for f in files}
        self.file_format = "npy" if exts == {".npy"} else "raw"
        stems = {os.path.splitext(f)[0]: f for f in files}
        order_path = os.path.join(self.dir_path, NAME_ORDER)
        if os.path.exists(order_path):
            data = _read_json(order_path)
            order = data.get("layer_output_names") if isinstance(data, dict) else None
            if not isinstance(order, list):
                raise DumpFormatError(f"{order_path}: expected {{'layer_output_names': [...]}}")
            names = [str(n) for n in order]
            names += [s for s in stems if s not in set(names)]
        else:
            names = list(stems)
        self.names = names
        self._tensors = {}
        for name in names:
            file = stems.get(name, f"{name}.{self.file_format}")
            shape = None
            dtype = "float32"
            if file.endswith(".npy") and first and os.path.exists(os.path.join(first, file)):
                arr = np.load(os.path.join(first, file), mmap_mode="r", allow_pickle=False)
                shape, dtype = tuple(arr.shape), str(arr.dtype)
            self._tensors[name] = TensorInfo(name, file, shape, dtype, None, self._layout)

    # -- access ---------------------------------------------------------------------------------
    @property
    def has_manifest(self) -> bool:
        """Whether the dump has fxquant's manifest (original names, shapes, layouts)."""
        return self.manifest is not None

    def info(self, name: str, instance: int | None = None) -> TensorInfo:
        """What the dump knows of tensor ``name`` (shape of ``instance`` when it differs).

        Raises:
            KeyError: no tensor of that name (the message lists close ones).

        Example:
            >>> dump.info("layer1.0.conv1")
            TensorInfo(name='layer1.0.conv1', file='layer1_0_conv1.raw', shape=(1, 64, 56, 56), ...)
        """
        if name not in self._tensors:
            import difflib

            close = difflib.get_close_matches(name, self.names, n=5)
            raise KeyError(f"{self.dir_path} has no tensor {name!r}; close: "
                           f"{close or self.names[:5]}")
        info = self._tensors[name]
        if instance is not None:
            override = self._instances.get(instance, {}).get("shapes", {}).get(name)
            if override is not None:
                info = dataclasses.replace(info, shape=tuple(int(d) for d in override))
        return info

    def has(self, name: str, instance: int) -> bool:
        """Whether ``name`` was written for ``instance``.

        Example:
            >>> dump.has("fc", 0)
            True
        """
        if name not in self._tensors or instance not in self._instances:
            return False
        if name in self._instances[instance].get("missing", ()):
            return False
        return os.path.exists(self.path(name, instance))

    def path(self, name: str, instance: int = 0) -> str:
        """The file of tensor ``name`` for ``instance``.

        Example:
            >>> dump.path("layer1.0.conv1", 3)
            'dumps/sim/outputs/layer_outputs_3/layer1_0_conv1.raw'
        """
        entry = self._instances.get(instance)
        if entry is None:
            raise KeyError(f"{self.dir_path} has no instance {instance}; instances: "
                           f"{self.instances}")
        return os.path.join(self.dir_path, entry["outputs"], self.info(name).file)

    def load(self, name: str, instance: int = 0) -> np.ndarray:
        """Tensor ``name`` of ``instance``: the stored array, shaped when the shape is known
        (a flat float32 array for a raw file without manifest).

        Raises:
            DumpFormatError: the file's size does not match the manifest's shape.

        Example:
            >>> dump.load("fc").shape
            (1, 1000)
        """
        info = self.info(name, instance)
        return self._load_file(self.path(name, instance), info.shape, info.dtype)

    def load_inputs(self, instance: int = 0) -> list[np.ndarray]:
        """The model inputs of ``instance`` in positional order.

        Example:
            >>> [x.shape for x in dump.load_inputs(0)]
            [(1, 3, 224, 224)]
        """
        entry = self._instances.get(instance)
        if entry is None:
            raise KeyError(f"{self.dir_path} has no instance {instance}; instances: "
                           f"{self.instances}")
        described = (self.manifest or {}).get("inputs", [])
        files = entry.get("inputs")
        if files is None:
            single = os.path.join("inputs", f"input_{instance}.{self.file_format}")
            folder = os.path.join(self.dir_path, "inputs", f"input_{instance}")
            if os.path.isdir(folder):
                files = [os.path.join("inputs", f"input_{instance}", f)
                         for f in sorted(os.listdir(folder), key=_numeric_key) if f[:1] != "."]
            else:
                files = [single]
        out = []
        for i, rel in enumerate(files):
            info = described[i] if i < len(described) else {}
            shape = tuple(info["shape"]) if info.get("shape") is not None else None
            out.append(self._load_file(os.path.join(self.dir_path, rel), shape,
                                       str(info.get("dtype", "float32"))))
        return out

    def _load_file(self, path: str, shape: tuple[int, ...] | None, dtype: str) -> np.ndarray:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        array = np.fromfile(path, dtype=np.dtype(dtype))
        if shape is None:
            return array
        expected = int(np.prod(shape)) if shape else 1
        if array.size != expected:
            raise DumpFormatError(f"{path} holds {array.size} {dtype} values but the manifest's "
                                  f"shape {list(shape)} needs {expected}; the file is not from "
                                  "this dump or was truncated")
        return array.reshape(shape)

    def __repr__(self) -> str:
        kind = "manifest" if self.has_manifest else "no manifest"
        return (f"LayerOutputDump({self.dir_path!r}, {len(self.names)} tensors, "
                f"{len(self.instances)} instance(s), {self.file_format}, {kind})")


def _numeric_key(name: str) -> tuple[int, str]:
    stem = os.path.splitext(name)[0]
    return (int(stem), name) if stem.isdigit() else (1 << 30, name)


def _is_layout(layout: str) -> bool:
    return (isinstance(layout, str) and layout.isalpha() and layout.isupper()
            and len(set(layout)) == len(layout))


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return loads(text, path, error_cls=DumpFormatError, fix="re-generate the dump", log=logger)
