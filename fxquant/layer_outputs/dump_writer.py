"""Writing a layer-output dump: directory check, file names, instance folders, manifest.

Layout (AIMET-compatible, ``SPEC.md`` §2, plus ``manifest.json``)::

    <dir>/layer_output_name_order.json   {"layer_output_names": [<file stem>, ...]} (topological)
    <dir>/manifest.json                  original names, shapes, dtypes, layouts
    <dir>/inputs/input_<k>.raw           one model input  (or inputs/input_<k>/<i>.raw for several)
    <dir>/outputs/layer_outputs_<k>/<file stem>.raw
    <dir>/instances/instance_<k>.json    instance k's manifest entry (per-instance shapes)

``.raw`` files hold the tensor's float32 values in C order without a header (``ndarray.tofile``);
with ``file_format="npy"`` they are ``.npy`` files in the tensor's own dtype.

Every file appears complete or not at all (through :mod:`fxquant.core.files`): an instance's
outputs are written into a hidden temporary folder (``outputs/.tmp-…``) that is moved into place as
``layer_outputs_<k>`` when done; single files (inputs, JSON) are written to a temporary name and
moved into place. A killed run can leave a hidden ``.tmp-*`` entry, never a partial file under a
final name; readers ignore hidden entries.

Order of an instance's writes (so that a run killed at any moment, even by SIGKILL, reads back as
the complete instances it finished): its inputs, then its own entry
(``instances/instance_<k>.json``: input and output shapes of this instance), then — when the
instance brings tensors the manifest does not know yet, as the first one does — the manifest with
their names, shapes and dtypes, and last the move of ``outputs/layer_outputs_<k>`` into place,
which is what makes the instance exist. The manifest's list of instances is rewritten at most once
a second and at the end; the reader takes instances found on disk but not yet listed from their
own entries.

Overwriting a dump (``overwrite=True`` on a directory that holds one) never mixes the two: the new
dump is written into a hidden folder (``.fxquant-stage-…``) in the directory until its first
instance is complete, and then replaces the previous dump's entries in one update
(:func:`fxquant.core.file_sets.replace_entries`: the previous ``outputs/`` moved out first, the new
one moved in last; any failure puts the previous dump back). So the previous dump survives, whole,
every failure (and a kill) before the new one has an instance; a writer closed without any failure
replaces it even when it wrote no instance. Entries of the directory that are not part of a dump
are kept.
"""
from __future__ import annotations

import concurrent.futures
import errno
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fxquant.core import file_sets, files
from fxquant.layer_outputs.dump_format import (FILE_FORMATS, INSTANCES, LAYOUTS, MANIFEST,
                                               MANIFEST_FORMAT, MANIFEST_VERSION, NAME_ORDER,
                                               default_layout, describe_input,
                                               instance_entry_path, sanitize_names)
from fxquant.layer_outputs.errors import DumpExistsError, DumpWriteError, InputInstanceError

__all__ = ["DumpWriter", "HostInstance", "check_dir"]

logger = logging.getLogger(__name__)

_OWN_ENTRIES = ("inputs", "outputs", INSTANCES, NAME_ORDER, MANIFEST)
# The order a dump's entries are moved in when it replaces another (outputs/, which makes the
# instances exist, last) and out (outputs/ first).
_MOVED_IN = ("inputs", INSTANCES, NAME_ORDER, MANIFEST, "outputs")
#: Seconds between the manifest rewrites while instances are written (and at the end).
MANIFEST_INTERVAL_S = 1.0
# numpy has no bfloat16 / float8: such tensors are widened to float32 before writing.
_NUMPY_SAFE = {torch.float16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16,
               torch.int32, torch.int64, torch.bool}


def check_dir(dir_path: str | os.PathLike[str], overwrite: bool) -> None:
    """Checks, without creating anything, that a dump may be written to ``dir_path``.

    The overwrite policy is :func:`fxquant.core.files.check_destination`'s, with the dump's errors.

    Raises:
        DumpExistsError: ``dir_path`` holds files and ``overwrite`` is False.
        DumpWriteError: ``dir_path`` is a file, or its nearest existing parent is not writable.

    Example:
        >>> check_dir("dumps/new", overwrite=False)
    """
    files.check_destination(dir_path, overwrite=overwrite, kind="directory", what="dump directory",
                            exists_cls=DumpExistsError, error_cls=DumpWriteError)


def _is_temporary(entry: str) -> bool:
    """A hidden temporary entry a killed run may leave (this writer's or core.files')."""
    return (entry.startswith(".tmp-") or entry.startswith(files.STAGE_PREFIX)
            or (entry.startswith(".") and entry.endswith(".tmp")))


def _write_error(path: str, exc: OSError, action: str = "write") -> DumpWriteError:
    return files.describe_os_error(path, exc, action, DumpWriteError)


def _write_json(path: str, data: Mapping[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False)

    files.atomic_write(path, write, overwrite=True, error_cls=DumpWriteError,
                       exists_cls=DumpExistsError)


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()
        if value.dtype not in _NUMPY_SAFE:
            value = value.to(torch.float32)
        return value.numpy()
    return np.asarray(value)


class HostInstance:
    """One instance's tensors on the way to disk.

    Attributes:
        inputs: ``[(name, tensor or array)]`` model inputs in positional order.
        outputs: ``[(name, tensor or array)]`` captured values in topological order.
        ready: called in the writer thread before the values are read (waits for asynchronous
            device-to-host copies), or None.
    """

    __slots__ = ("inputs", "outputs", "ready")

    def __init__(self, inputs: Sequence[tuple[str, Any]], outputs: Sequence[tuple[str, Any]],
                 ready: Callable[[], None] | None = None) -> None:
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.ready = ready


class DumpWriter:
    """Writes instances of a dump into ``dir_path``; one background thread does the file I/O.

    Args:
        dir_path: target directory (created when missing).
        overwrite: allow a non-empty ``dir_path``. A previous dump there (``inputs/``,
            ``outputs/``, ``instances/``, ``manifest.json``, ``layer_output_name_order.json``)
            is replaced when the new dump's first instance is complete, or when the writer is
            closed without a failure (see the module's description); until then it stays
            readable as it was, and it stays when the writer fails before.
        file_format: "raw" (float32, AIMET) or "npy" (own dtype, with shape header).
        layout: "NCHW" (as computed) or "NHWC" (3- to 5-D tensors written channels last).
        producer: facts recorded in the manifest (library, source, naming scheme …).
        names: the tensor names expected, in order (written to the name-order file at once).

    Raises:
        DumpExistsError: ``dir_path`` holds files and ``overwrite`` is False.
        DumpWriteError: ``dir_path`` cannot be created or written.
        ValueError: unknown ``file_format`` or ``layout``.
    """

    def __init__(self, dir_path: str | os.PathLike[str], *, overwrite: bool = False,
                 file_format: str = "raw", layout: str = "NCHW",
                 producer: Mapping[str, Any] | None = None, names: Sequence[str] = ()) -> None:
        if file_format not in FILE_FORMATS:
            raise ValueError(f"file_format must be one of {list(FILE_FORMATS)}, got "
                             f"{file_format!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)} (the layout files are written "
                             f"in), got {layout!r}")
        if dir_path is None or (isinstance(dir_path, str) and not dir_path):
            raise ValueError("dir_path is required: the directory the dump is written to")
        self.dir_path = os.fspath(dir_path)
        self.file_format = file_format
        self.layout = layout
        self.producer = dict(producer or {})
        self._lock = threading.Lock()
        # one manifest (or name-order) write at a time, newest last; held while a staged new dump
        # replaces the previous one
        self._manifest_lock = threading.RLock()
        self._root = self.dir_path      # where the files go: dir_path, or the hidden stage
        self._stage: str | None = None  # the hidden folder while a previous dump is replaced
        self._failed = False            # a write or an input instance failed
        self._prepare_dir(overwrite)
        self.order: list[str] = []
        self.stems: dict[str, str] = {}
        self.tensors: dict[str, dict[str, Any]] = {}
        self.input_tensors: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []
        self.next_index = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future[None]] = []
        self._manifest_written = 0.0
        self._dirty = False
        try:
            if names:
                self.register(names)
            self._write_manifest()
        except BaseException:
            self._discard_stage()
            raise

    # -- directory ------------------------------------------------------------------------------
    def _prepare_dir(self, overwrite: bool) -> None:
        path = self.dir_path
        check_dir(path, overwrite)
        previous = self._previous_entries()
        for entry in sorted(os.listdir(path)) if os.path.isdir(path) else ():
            if entry not in previous:
                logger.warning("overwrite=True: %s is not part of a dump and is kept",
                               os.path.join(path, entry))
        if any(not _is_temporary(entry) for entry in previous):
            # a previous dump: write the new one beside it until its first instance is complete
            try:
                self._stage = self._root = files.make_temp_dir(path, files.STAGE_PREFIX)
            except OSError as exc:
                raise _write_error(path, exc, "write into") from exc
        else:
            for entry in previous:  # what a killed run left
                full = os.path.join(path, entry)
                try:
                    shutil.rmtree(full) if os.path.isdir(full) else os.unlink(full)
                except OSError as exc:
                    raise _write_error(full, exc, "remove the previous dump's") from exc
        try:
            for sub in ("", "inputs", "outputs", INSTANCES):
                target = os.path.join(self._root, sub) if sub else self._root
                try:
                    os.makedirs(target, exist_ok=True)
                except OSError as exc:
                    raise _write_error(target, exc, "create directory") from exc
            if not os.access(path, os.W_OK):
                raise _write_error(path, OSError(errno.EACCES, "permission denied"), "write into")
        except BaseException:
            self._discard_stage()
            raise

    def _previous_entries(self) -> list[str]:
        """The entries of the directory a previous dump (or a killed run) left: outputs/ first."""
        if not os.path.isdir(self.dir_path):
            return []
        stage = os.path.basename(self._stage) if self._stage else None
        found = [e for e in os.listdir(self.dir_path)
                 if (e in _OWN_ENTRIES or _is_temporary(e)) and e != stage]
        return sorted(found, key=lambda e: (e != "outputs", e not in _OWN_ENTRIES, e))

    def _commit_stage(self) -> None:
        """The staged new dump replaces the previous one (all or nothing, see the module)."""
        with self._manifest_lock:
            stage = self._stage
            if stage is None:
                return
            self._write_manifest()
            names = [n for n in _MOVED_IN if os.path.lexists(os.path.join(stage, n))]
            try:
                file_sets.replace_entries(self.dir_path, stage, names,
                                      previous=self._previous_entries(), error_cls=DumpWriteError)
            except BaseException:
                self._failed = True
                raise
            self._stage = None
            self._root = self.dir_path
        logger.info("%s: the new dump replaced the previous one", self.dir_path)
        self._remove_stage(stage, "the update is complete")

    def _discard_stage(self) -> None:
        """Removes the staged new dump; the previous dump stays as it was."""
        with self._manifest_lock:
            stage, self._stage = self._stage, None
            self._root = self.dir_path
        if stage is not None:
            logger.warning("%s: the new dump failed before its first complete instance; the "
                           "previous dump there is kept as it was", self.dir_path)
            self._remove_stage(stage, "the previous dump is kept")

    @staticmethod
    def _remove_stage(stage: str, outcome: str) -> None:
        try:
            shutil.rmtree(stage)
        except OSError as exc:
            logger.warning("could not remove the hidden folder %s (%s); %s, the folder is "
                           "skipped by readers and can be deleted", stage, exc, outcome)

    # -- names ----------------------------------------------------------------------------------
    def register(self, names: Iterable[str]) -> None:
        """Adds tensor names (in order) and rewrites the name-order file when any is new."""
        new = list(dict.fromkeys(n for n in names if n not in self.stems))
        if not new:
            return
        with self._lock:  # the writer thread reads stems and order
            self.stems.update(sanitize_names(new, taken=self.stems.values()))
            self.order.extend(new)
            stems = [self.stems[n] for n in self.order]
        with self._manifest_lock:
            self._write_own(NAME_ORDER, {"layer_output_names": stems})

    def _write_own(self, name: str, data: Mapping[str, Any]) -> None:
        """Writes the dump's JSON file ``name`` (into the stage while there is one)."""
        try:
            _write_json(os.path.join(self._root, name), data)
        except BaseException:
            self._failed = True
            raise

    # -- writing --------------------------------------------------------------------------------
    def submit(self, instance: HostInstance, *, wait: bool = True, max_pending: int = 2) -> int:
        """Queues one instance for writing; returns its index ``k``.

        With ``wait`` the call returns once the instance's files exist; otherwise at most
        ``max_pending`` instances are in flight (their values held in memory).
        """
        self.raise_pending_errors()
        self.register(name for name, _ in instance.outputs)
        index = self.next_index
        self.next_index += 1
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="fxquant-dump")
        while len(self._pending) >= max_pending:
            self._pending.pop(0).result()
        self._pending.append(self._executor.submit(self._write_instance, index, instance))
        if wait:
            self.flush()
        return index

    def raise_pending_errors(self) -> None:
        """Re-raises the error of a finished background write, if any."""
        for fut in [f for f in self._pending if f.done()]:
            self._pending.remove(fut)
            fut.result()

    def flush(self) -> None:
        """Waits for every queued instance and writes the manifest."""
        try:
            while self._pending:
                self._pending.pop(0).result()
        finally:
            if self._dirty:
                self._write_manifest()

    def submit_all(self, input_instances: Iterable[Any],
                   make_instance: Callable[[Any], HostInstance], *, desc: str,
                   progress: bool = True) -> int:
        """Runs ``make_instance`` on every input instance and writes the results, each write
        overlapping the next run; flushes at the end (also on failure). Returns the count.

        Example:
            >>> writer.submit_all(batches, util._instance, desc="layer outputs")
            32
        """
        total = len(input_instances) if hasattr(input_instances, "__len__") else None
        count = 0
        try:
            for instance in tqdm(input_instances, total=total, desc=desc, unit="input",
                                 leave=False, disable=None if progress else True):
                self.submit(self.run_instance(make_instance, instance, count), wait=False)
                count += 1
        finally:
            self.flush()
        return count

    def run_instance(self, make_instance: Callable[[Any], HostInstance], instance: Any,
                     position: int | None = None) -> HostInstance:
        """``make_instance(instance)``; a failure becomes an :class:`InputInstanceError` naming the
        instance (its position in the batch, the instance folder it was to fill, its shapes),
        with the original error chained.

        Example:
            >>> writer.run_instance(util._instance, torch.randn(1, 3, 8, 8), 0)
        """
        try:
            return make_instance(instance)
        except Exception as exc:  # noqa: BLE001 - re-raised with the instance named, chained
            self._failed = True
            where = "" if position is None else f" {position} of the batch"
            raise InputInstanceError(
                f"input instance{where} (would be layer_outputs_{self.next_index} in "
                f"{self.dir_path}; {describe_input(instance)}) failed: "
                f"{type(exc).__name__}: {exc}; the instances before it are written. Check this "
                "input (shape, dtype, device) against what the model expects") from exc

    def close(self) -> None:
        """Flushes and stops the writer thread.

        When the writer replaces a previous dump and no instance is complete yet, the new dump
        replaces it now if nothing failed; otherwise the previous dump is kept as it was.

        Raises:
            DumpWriteError: the final manifest (or the replacement of the previous dump) could
                not be written; the dump on disk reads back as the complete instances written
                (or as the previous dump).
        """
        try:
            self.flush()
        except BaseException:
            self._failed = True
            raise
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._stage is not None:
                if self._failed:
                    self._discard_stage()
                else:
                    try:
                        self._commit_stage()
                    except BaseException:
                        self._discard_stage()
                        raise

    def _stored(self, value: Any) -> tuple[np.ndarray, str, str | None]:
        array = _as_numpy(value)
        source_dtype = str(array.dtype)
        layout = default_layout(array.ndim)
        channels_last = default_layout(array.ndim, channels_last=True)
        if self.layout == "NHWC" and channels_last != layout:
            array = np.moveaxis(array, 1, -1)
            layout = channels_last
        if self.file_format == "raw" and array.dtype != np.float32:
            array = array.astype(np.float32)
        return array, source_dtype, layout

    def _save(self, array: np.ndarray, path: str) -> None:
        with open(path, "wb") as f:
            if self.file_format == "npy":  # through the handle: np.save(path) appends ".npy"
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            elif array.size == 0:
                pass
            elif array.flags.c_contiguous:
                f.write(memoryview(array).cast("B"))
            else:
                array.tofile(f)

    def _describe(self, array: np.ndarray, source_dtype: str, layout: str | None,
                  **extra: Any) -> dict[str, Any]:
        return {**extra, "shape": list(array.shape), "dtype": str(array.dtype),
                "source_dtype": source_dtype, "layout": layout}

    def _write_folder(self, final_dir: str, items: Sequence[tuple[str, Any]],
                      before_commit: Callable[[list[tuple[np.ndarray, str, str | None]]], None]
                      | None = None) -> list[tuple[np.ndarray, str, str | None]]:
        """Writes ``(file name, value)`` items into a hidden folder next to ``final_dir``, then
        (after ``before_commit(stored)``) moves it into place in one step; returns each item's
        stored ``(array, source dtype, layout)``. On failure nothing is left behind and the error
        names the file."""
        root = os.path.dirname(final_dir)
        tmp_dir = None
        path = final_dir
        stored = []
        try:
            tmp_dir = files.make_temp_dir(root, f".tmp-{os.path.basename(final_dir)}-")
            for file_name, value in items:
                array, source_dtype, layout = self._stored(value)
                path = os.path.join(final_dir, file_name)
                self._save(array, os.path.join(tmp_dir, file_name))
                stored.append((array, source_dtype, layout))
            path = final_dir
            if before_commit is not None:
                before_commit(stored)
            files.move_into_place(tmp_dir, final_dir, error_cls=DumpWriteError)
            tmp_dir = None
        except OSError as exc:
            raise _write_error(path, exc) from exc
        finally:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)
        return stored

    def _write_instance(self, index: int, instance: HostInstance) -> None:
        if instance.ready is not None:
            instance.ready()
        ext = "." + self.file_format
        root = self._root  # only this thread moves the dump out of its stage
        final_dir = os.path.join(root, "outputs", f"layer_outputs_{index}")
        items = [(self.stems[name] + ext, value) for name, value in instance.outputs]
        try:
            input_files, described = self._write_inputs(root, index, instance.inputs, ext)
        except BaseException:
            self._failed = True
            raise
        entry: dict[str, Any] = {"index": index, "inputs": input_files,
                                 "input_shapes": [d["shape"] for d in described],
                                 "outputs": f"outputs/layer_outputs_{index}"}

        def before_commit(stored: list[tuple[np.ndarray, str, str | None]]) -> None:
            # Everything that describes the instance is on disk before the instance exists.
            shapes: dict[str, list[int]] = {}
            new = False
            for (name, _), (file_name, _), (array, source_dtype, layout) in zip(
                    instance.outputs, items, stored):
                info = self._describe(array, source_dtype, layout, file=file_name)
                with self._lock:
                    known = self.tensors.get(name)
                    if known is None:
                        self.tensors[name] = known = info
                        new = True
                if known["shape"] != info["shape"]:
                    shapes[name] = info["shape"]
            captured = {name for name, _ in instance.outputs}
            with self._lock:
                missing = [n for n in self.order if n not in captured]
                if not self.input_tensors and described:
                    self.input_tensors = described
                    new = True
            if shapes:
                entry["shapes"] = shapes
            if missing:
                entry["missing"] = missing
            _write_json(instance_entry_path(root, index),
                        {"format": MANIFEST_FORMAT + ".instance", "version": MANIFEST_VERSION,
                         **entry})
            if new:  # names, shapes and dtypes are in the manifest before the first instance
                self._write_manifest()

        try:
            self._write_folder(final_dir, items, before_commit)
        except BaseException:
            self._failed = True
            self._remove_quietly([os.path.join(root, f) for f in input_files]
                                 + [instance_entry_path(root, index)])
            raise
        with self._lock:
            self.instances.append(entry)
            self._dirty = True
        if self._stage is not None:  # the first complete instance: replace the previous dump
            self._commit_stage()
        elif time.monotonic() - self._manifest_written > MANIFEST_INTERVAL_S:
            self._write_manifest()

    @staticmethod
    def _remove_quietly(paths: Iterable[str]) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        for path in paths:  # an emptied inputs/input_<k>/ folder
            parent = os.path.dirname(path)
            if os.path.basename(parent).startswith("input_"):
                try:
                    os.rmdir(parent)
                except OSError:
                    pass

    def _write_inputs(self, dump_root: str, index: int, inputs: Sequence[tuple[str, Any]],
                      ext: str) -> tuple[list[str], list[dict[str, Any]]]:
        root = os.path.join(dump_root, "inputs")
        described = []
        written: list[str] = []
        if len(inputs) == 1:
            array, source_dtype, layout = self._stored(inputs[0][1])
            final = os.path.join(root, f"input_{index}{ext}")
            files.atomic_write(final, lambda tmp: self._save(array, tmp), overwrite=True,
                               error_cls=DumpWriteError, exists_cls=DumpExistsError)
            written.append(f"inputs/input_{index}{ext}")
            described.append(self._describe(array, source_dtype, layout, name=inputs[0][0]))
        else:
            items = [(f"{i}{ext}", value) for i, (_, value) in enumerate(inputs)]
            stored = self._write_folder(os.path.join(root, f"input_{index}"), items)
            for (name, _), (file_name, _), (array, source_dtype, layout) in zip(
                    inputs, items, stored):
                written.append(f"inputs/input_{index}/{file_name}")
                described.append(self._describe(array, source_dtype, layout, name=name))
        return written, described

    def manifest(self) -> dict[str, Any]:
        """The manifest as a dict (what ``manifest.json`` holds)."""
        with self._lock:
            ext = "." + self.file_format
            tensors = {name: dict(self.tensors.get(name, {}), file=self.stems[name] + ext)
                       for name in self.order}
            return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                    "producer": self.producer, "file_format": self.file_format,
                    "layout": self.layout,
                    "layer_output_names": list(self.order),
                    "tensors": tensors,
                    "inputs": [dict(t) for t in self.input_tensors],
                    "instances": sorted((dict(i) for i in self.instances),
                                        key=lambda e: e["index"])}

    def _write_manifest(self) -> None:
        with self._manifest_lock:
            data = self.manifest()
            self._dirty = False
            self._manifest_written = time.monotonic()
            try:
                self._write_own(MANIFEST, data)
            except BaseException:
                self._dirty = True  # the next flush or close writes it again
                raise
