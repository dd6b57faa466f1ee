"""Reading a layer-output dump: fxquant's (with ``manifest.json``) or AIMET's / a target tool's.

A manifest is validated as strictly as the writer's own output: every field's type, shapes
(integers, at most 2**62 elements), dtypes (an allow-list), unique names and files, and paths —
tensor files are plain names inside their instance folder, instance and input paths stay inside the
dump, and no file that resolves (through links) outside the dump is read. Manifest versions 1 and
2 are read; instances found on disk but not yet in the manifest (a killed run) are read with their
own entries (``instances/instance_<k>.json``). Every failure is a
:class:`~fxquant.layer_outputs.DumpFormatError` naming the file and the JSON path.

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
import math
import os
import re
from typing import Any

import numpy as np

from fxquant.core.jsonpath import JsonValidator, got, index, join, loads, show
from fxquant.layer_outputs.dump_format import (INSTANCES, LAYOUTS, MANIFEST, MANIFEST_FORMAT,
                                               MANIFEST_VERSIONS, NAME_ORDER, instance_entry_path)
from fxquant.layer_outputs.errors import DumpFormatError

__all__ = ["LayerOutputDump", "TensorInfo"]

logger = logging.getLogger(__name__)

_INSTANCE_DIR = re.compile(r"^layer_outputs_(\d+)$")
_MAX_INDEX = 2**31 - 1
_MAX_DIM = 2**62
_MAX_RANK = 32
#: dtypes a dump's tensors may be stored in.
_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
           "uint32", "uint64", "bool")


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
        DumpFormatError: not a directory, no instances, or a malformed manifest or instance entry
            (the message names the file and the JSON path), including paths that leave the dump.

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
        self._inputs: list[dict[str, Any]] = []
        self.version: int | None = None
        manifest_path = os.path.join(self.dir_path, MANIFEST)
        self.manifest: dict[str, Any] | None = None
        self._manifest_path: str | None = None
        if os.path.exists(manifest_path):
            self._manifest_path = manifest_path
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
        if "format" not in m:
            v.fail("format", f"missing; expected {MANIFEST_FORMAT!r} (not an fxquant manifest)")
        if m["format"] != MANIFEST_FORMAT:
            v.fail("format", f"field 'format' is {show(m['format'])}, expected "
                             f"{MANIFEST_FORMAT!r} (not an fxquant manifest)")
        self.version = 1 if "version" not in m else v.one_of(m["version"], "version",
                                                              MANIFEST_VERSIONS)
        self.file_format = v.one_of(v.get(m, "file_format", "", str), "file_format",
                                    ("raw", "npy"))
        if m.get("layout") is not None:
            v.one_of(m["layout"], "layout", LAYOUTS)
        if m.get("producer") is not None:
            v.object(m["producer"], "producer")
        self.names = list(v.string_list(v.get(m, "layer_output_names", "", list),
                                        "layer_output_names", what="tensor names"))
        seen: set[str] = set()
        for i, name in enumerate(self.names):
            if name in seen:
                v.fail(index("layer_output_names", i), f"{show(name)} appears twice; tensor "
                                                       "names are unique (re-generate the dump)")
            seen.add(name)
        tensors = v.object(v.get(m, "tensors", "", dict), "tensors")
        self._tensors = {}
        files_used: dict[str, str] = {}
        for name in self.names:
            where = join("tensors", name)
            if name not in tensors:
                v.fail(where, "missing: every name of layer_output_names needs an entry; "
                              "re-generate the dump")
            t = v.object(tensors[name], where)
            file = _file_name(v, v.get(t, "file", where, str), join(where, "file"))
            if file in files_used:
                v.fail(join(where, "file"), f"{file!r} is also the file of "
                                            f"{files_used[file]!r}; every tensor has its own file")
            files_used[file] = name
            self._tensors[name] = TensorInfo(
                name, file, _shape(v, t.get("shape"), join(where, "shape")),
                _dtype(v, t.get("dtype", "float32"), join(where, "dtype")),
                _optional_str(v, t.get("source_dtype"), join(where, "source_dtype")),
                self._layout or _layout(v, t.get("layout"), join(where, "layout")))
        self._inputs = []
        for i, item in enumerate(v.array(m.get("inputs", []), "inputs", what="input tensors")):
            where = index("inputs", i)
            item = v.object(item, where)
            self._inputs.append({"shape": _shape(v, item.get("shape"), join(where, "shape")),
                                 "dtype": _dtype(v, item.get("dtype", "float32"),
                                                 join(where, "dtype"))})
        self._instances = {}
        for i, entry in enumerate(v.get(m, "instances", "", list)):
            parsed = self._entry(v, entry, index("instances", i))
            if parsed["index"] in self._instances:
                v.fail(join(index("instances", i), "index"),
                       f"instance {parsed['index']} is listed twice")
            self._instances[parsed["index"]] = parsed
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
                           "run?); read with their own entries in %s/", self.dir_path, extra,
                           INSTANCES)
            for k in extra:
                self._instances[k] = self._own_entry(k)
        self.instances = sorted(self._instances)

    def _own_entry(self, k: int) -> dict[str, Any]:
        """Instance ``k``'s entry from ``instances/instance_<k>.json`` (written before the
        instance was moved into place), or the default entry when there is none (version 1)."""
        path = instance_entry_path(self.dir_path, k)
        if not os.path.exists(path):
            return {"index": k, "outputs": f"outputs/layer_outputs_{k}"}
        v = JsonValidator(path, error_cls=DumpFormatError)
        data = v.object(_read_json(path), "")
        if data.get("format") != MANIFEST_FORMAT + ".instance":
            v.fail("format", f"field 'format' is {show(data.get('format'))}, expected "
                             f"{MANIFEST_FORMAT + '.instance'!r}")
        entry = self._entry(v, {key: val for key, val in data.items()
                                if key not in ("format", "version")}, "")
        if entry["index"] != k:
            v.fail("index", f"invalid value {entry['index']}; this is the entry of instance {k}")
        return entry

    def _entry(self, v: JsonValidator, entry: Any, where: str) -> dict[str, Any]:
        """One instance entry, validated: index, files inside the dump, per-instance shapes."""
        entry = v.object(entry, where)
        k = v.int_in_range(v.get(entry, "index", where, int), join(where, "index"), 0, _MAX_INDEX,
                           what="an instance index")
        out: dict[str, Any] = {"index": k, "where": (v.where, where)}
        outputs = entry.get("outputs", f"outputs/layer_outputs_{k}")
        out["outputs"] = _relative(v, outputs, join(where, "outputs"))
        out["outputs_given"] = "outputs" in entry
        if entry.get("inputs") is not None:
            files = v.array(entry["inputs"], join(where, "inputs"), what="input file paths")
            out["inputs"] = [_relative(v, f, index(join(where, "inputs"), i))
                             for i, f in enumerate(files)]
        if entry.get("input_shapes") is not None:
            shapes = v.array(entry["input_shapes"], join(where, "input_shapes"),
                             what="input shapes")
            out["input_shapes"] = [_shape(v, s, index(join(where, "input_shapes"), i))
                                   for i, s in enumerate(shapes)]
            if "inputs" in out and len(out["input_shapes"]) != len(out["inputs"]):
                v.fail(join(where, "input_shapes"), f"{len(out['input_shapes'])} shapes for "
                                                    f"{len(out['inputs'])} input files (the "
                                                    f"entries of {join(where, 'inputs')})")
        if entry.get("shapes") is not None:
            shapes = v.object(entry["shapes"], join(where, "shapes"))
            out["shapes"] = {}
            for name, dims in shapes.items():
                if name not in self._tensors:
                    v.fail(join(join(where, "shapes"), name),
                           "not a tensor of layer_output_names")
                out["shapes"][name] = _shape(v, dims, join(join(where, "shapes"), name))
        if entry.get("missing") is not None:
            out["missing"] = list(v.string_list(entry["missing"], join(where, "missing"),
                                                what="tensor names"))
        return out

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
                info = dataclasses.replace(info, shape=override)
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
        entry = self._instances.get(instance, {})
        manifest = (self._manifest_path, "") if self._manifest_path else None
        if name in entry.get("shapes", {}):
            shape_from = _json_ref(entry.get("where"), "shapes", name)
        else:
            shape_from = _json_ref(manifest, "tensors", name, "shape")
            own = _json_ref(entry.get("where"), "shapes")
            if shape_from and own:
                shape_from += f"; no shape of this instance's own in {own}"
        named_by = [_json_ref(manifest, "tensors", name, "file"),
                    _json_ref(entry.get("where"), "outputs") if entry.get("outputs_given")
                    else None]
        return self._load_file(self.path(name, instance), info.shape, info.dtype,
                               shape_from=shape_from, named_by=named_by)

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
        described = self._inputs
        files = entry.get("inputs")
        if files is None:
            single = os.path.join("inputs", f"input_{instance}.{self.file_format}")
            folder = os.path.join(self.dir_path, "inputs", f"input_{instance}")
            if os.path.isdir(folder):
                files = [os.path.join("inputs", f"input_{instance}", f)
                         for f in sorted(os.listdir(folder), key=_numeric_key) if f[:1] != "."]
            else:
                files = [single]
        own = entry.get("input_shapes")
        where = entry.get("where")
        manifest = (self._manifest_path, "") if self._manifest_path else None
        out = []
        for i, rel in enumerate(files):
            info = described[i] if i < len(described) else {}
            if own is not None and i < len(own):
                shape, shape_from = own[i], _json_ref(where, "input_shapes", i)
            else:
                shape, shape_from = info.get("shape"), _json_ref(manifest, "inputs", i, "shape")
                if shape_from and where and self.version != 1:
                    shape_from += (f"; no input shapes of this instance's own in "
                                   f"{_json_ref(where, 'input_shapes')}")
            note = ("" if own is not None or self.version != 1 else
                    " (a version-1 manifest records the first instance's input shapes only; "
                    "re-generate the dump to read inputs whose shapes vary)")
            named_by = [_json_ref(where, "inputs", i) if "inputs" in entry else None]
            out.append(self._load_file(os.path.join(self.dir_path, rel), shape,
                                       str(info.get("dtype", "float32")), note,
                                       shape_from=shape_from, named_by=named_by))
        return out

    def _load_file(self, path: str, shape: tuple[int, ...] | None, dtype: str,
                   note: str = "", *, shape_from: str | None = None,
                   named_by: list[str | None] | None = None) -> np.ndarray:
        """The array in ``path``; ``shape_from`` and ``named_by`` name the JSON file and path of
        its shape and of its file name, for messages."""
        self._check_inside(path)
        refs = [r for r in named_by or () if r]
        named = f" (named by {' and '.join(refs)})" if refs else ""
        try:
            if path.endswith(".npy"):
                return np.load(path, allow_pickle=False)
            array = np.fromfile(path, dtype=np.dtype(dtype))
        except FileNotFoundError as exc:
            raise DumpFormatError(f"{path} is missing{named}; the dump is incomplete "
                                  "(re-generate it)") from exc
        except (OSError, ValueError, EOFError) as exc:
            raise DumpFormatError(f"{path}{named} cannot be read as a {dtype} tensor file: {exc}; "
                                  "the file is not from this dump or was truncated") from exc
        if shape is None:
            return array
        expected = math.prod(shape)
        if array.size != expected:
            source = f" ({shape_from})" if shape_from else ""
            raise DumpFormatError(f"{path} holds {array.size} {dtype} values but the manifest's "
                                  f"shape {list(shape)} needs {expected}{source}; the file is not "
                                  f"from this dump or was truncated{note}")
        return array.reshape(shape)

    def _check_inside(self, path: str) -> None:
        """Refuses a file that resolves (through links) to a place outside the dump."""
        root = os.path.realpath(self.dir_path)
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise DumpFormatError(f"{path} resolves to {real}, outside the dump {root}; a dump "
                                  "reads only its own files")

    def __repr__(self) -> str:
        kind = "manifest" if self.has_manifest else "no manifest"
        return (f"LayerOutputDump({self.dir_path!r}, {len(self.names)} tensors, "
                f"{len(self.instances)} instance(s), {self.file_format}, {kind})")


def _json_ref(origin: tuple[str, str] | None, *steps: str | int) -> str | None:
    """``"<json file>: <json path>"`` of ``steps`` below ``origin`` (a file and a JSON path in it),
    or None without an origin (a dump without manifest)."""
    if origin is None:
        return None
    file, path = origin
    for step in steps:
        path = index(path, step) if isinstance(step, int) else join(path, step)
    return f"{file}: {path or '<root>'}"


def _numeric_key(name: str) -> tuple[int, str]:
    stem = os.path.splitext(name)[0]
    return (int(stem), name) if stem.isdigit() else (1 << 30, name)


def _is_layout(layout: str) -> bool:
    return (isinstance(layout, str) and layout.isalpha() and layout.isupper()
            and len(set(layout)) == len(layout))


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DumpFormatError(f"{path}: cannot be read ({exc.strerror or exc}); re-generate the "
                              "dump") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DumpFormatError(f"{path}: <root>: not UTF-8 text (byte {exc.start}); the file is "
                              "damaged or not a manifest (re-generate the dump)") from exc
    try:
        return loads(text, path, error_cls=DumpFormatError, fix="re-generate the dump", log=logger)
    except RecursionError as exc:
        raise DumpFormatError(f"{path}: <root>: JSON nested too deeply to be a manifest; "
                              "re-generate the dump") from exc


def _shape(v: JsonValidator, value: Any, path: str) -> tuple[int, ...] | None:
    """A shape: null (unknown) or an array of dimensions, integers in 0 .. 2**62."""
    if value is None:
        return None
    dims = v.array(value, path, what="dimensions")
    if len(dims) > _MAX_RANK:
        v.fail(path, f"{len(dims)} dimensions; at most {_MAX_RANK}")
    shape = tuple(v.int_in_range(d, index(path, i), 0, _MAX_DIM, what="a dimension")
                  for i, d in enumerate(dims))
    if math.prod(shape) > _MAX_DIM:
        v.fail(path, f"{show(list(shape))} has more than 2**62 elements")
    return shape


def _dtype(v: JsonValidator, value: Any, path: str) -> str:
    return str(v.one_of(value, path, _DTYPES))


def _optional_str(v: JsonValidator, value: Any, path: str) -> str | None:
    if value is not None and not isinstance(value, str):
        v.fail(path, f"expected a string or null, {got(value)}")
    return value


def _layout(v: JsonValidator, value: Any, path: str) -> str | None:
    if value is not None and not _is_layout(value):
        v.fail(path, f"invalid value {show(value)}; expected axis letters such as 'NCHW' or "
                     "'NHWC', or null")
    return value


def _file_name(v: JsonValidator, value: str, path: str) -> str:
    """A tensor's file: a plain file name inside the instance folder."""
    if (not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value
            or value.startswith(".")):
        v.fail(path, f"invalid value {show(value)}; expected a file name inside the instance "
                     "folder (no folders, no '..', not hidden)")
    return value


def _relative(v: JsonValidator, value: Any, path: str) -> str:
    """A path relative to the dump directory that stays inside it."""
    if not isinstance(value, str) or not value:
        v.fail(path, f"expected a path inside the dump directory, {got(value)}")
    norm = os.path.normpath(value)
    if (os.path.isabs(value) or "\0" in value or "\\" in value or norm == "."
            or norm == ".." or norm.startswith(".." + os.sep) or norm.startswith(os.sep)):
        v.fail(path, f"invalid value {show(value)}; expected a path inside the dump directory "
                     "(relative, no '..'): a dump reads only its own files")
    return norm
