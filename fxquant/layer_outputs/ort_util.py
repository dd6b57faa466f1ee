"""``fxquant.onnx.LayerOutputUtil``: every intermediate tensor of an ONNX model, in ONNX Runtime.

The util adds the model's intermediate values as graph outputs on a copy of the model, runs it
with ONNX Runtime and writes the values in the same layout as the torch-side
:class:`fxquant.LayerOutputUtil`, so the two dumps can be compared with
:func:`fxquant.compare_layer_outputs`.

Which values are dumped: every node output that depends on the model's input *data* (values
computed only from initializers, constants or input *shapes* — ``Shape``/``Size`` outputs and
what follows from them, e.g. an exporter's zero-bias ``Expand`` — are not layer outputs).

QDQ models (QuantizeLinear/DequantizeLinear inserted after quantized tensors): what is dumped
for a quantized tensor ``t`` is its *dequantized* value, under the float graph's name ``t``; the
float value itself and the Q/DQ intermediates are not dumped. fxquant's QDQ export is recognised
by its names (``t/q``, ``t/dq``, ``t/float`` for graph outputs, ``t/clipped`` …), other QDQ models
by their ``QuantizeLinear → DequantizeLinear`` pairs (named after the QuantizeLinear's input).

Model inputs are dumped first, under their names, as the torch-side util records them: a quantized
model input (``x/dq``) as its dequantized value, any other (a float model's, or one the sim does
not quantize) as it was fed. So the dumps of a float model, its sim, ``<prefix>.onnx`` and
``<prefix>_qdq.onnx`` have the same names.

Note: the added graph outputs keep ONNX Runtime from fusing across them; for a QDQ model the
values are those of the QDQ graph evaluated op by op. Compare a sim with ``ORT_DISABLE_ALL``
(``SPEC.md`` §1).
"""
from __future__ import annotations

import difflib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from fxquant.layer_outputs.dump_writer import DumpWriter, HostInstance, check_dir
from fxquant.layer_outputs.dumping_util import DumpingUtil

__all__ = ["LayerOutputUtil", "dumped_tensors"]

logger = logging.getLogger(__name__)

# fxquant QDQ export (fxquant.export.qdq) value suffixes: "<t>/<suffix>".
_QDQ_INTERNAL = frozenset({"q", "clipped", "div", "round", "shift", "clamped", "centered", "fp16"})
_NOT_DATA = frozenset({"Shape", "Size"})
_MAX_PROTO = 2**31 - 1


def _outer_inputs(node: onnx.NodeProto) -> list[str]:
    names = [n for n in node.input if n]
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                names.extend(_outer_inputs(inner))
    return names


def _data_dependent(graph: onnx.GraphProto) -> list[str]:
    """Node outputs that depend on the graph inputs' data, in node order."""
    initializers = {t.name for t in graph.initializer}
    dependent = {i.name for i in graph.input if i.name not in initializers}
    ordered = []
    for node in graph.node:
        if node.op_type in _NOT_DATA:
            continue
        inputs = list(node.input[:1]) if node.op_type == "CastLike" else _outer_inputs(node)
        if any(name in dependent for name in inputs):
            for out in node.output:
                if out:
                    dependent.add(out)
                    ordered.append(out)
    return ordered


def _model_inputs(graph: onnx.GraphProto) -> list[str]:
    """The graph's inputs that are fed (not initializers listed as inputs), in order."""
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def dumped_tensors(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``[(dumped name, graph value)]`` of the tensors the util dumps: the model inputs first
    (in input order), then node outputs in node order.

    For a float model both names are the value's name (a model input is dumped as fed); for a
    QDQ model a quantized tensor, model inputs included, is dumped under its float name from
    its dequantized value.

    Example:
        >>> dumped_tensors(onnx.load("out/resnet18_qdq.onnx"))[:2]
        [('x', 'x/dq'), ('conv1', 'conv1')]
        >>> dumped_tensors(onnx.load("out/resnet18.onnx"))[:2]
        [('x', 'x'), ('conv1', 'conv1')]
    """
    graph = model.graph
    candidates = _data_dependent(graph)
    producer = {out: node for node in graph.node for out in node.output if out}
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    known = set(producer) | graph_inputs
    rename: dict[str, str] = {}
    hidden: set[str] = set()
    for value in candidates:
        base, sep, suffix = value.rpartition("/")
        if not sep or base not in known:
            continue
        if suffix == "dq":
            rename[value] = base
            hidden.add(base)
        elif suffix in _QDQ_INTERNAL or (suffix == "float" and base in graph_outputs):
            hidden.add(value)
    for value in candidates:  # other QDQ models: QuantizeLinear -> DequantizeLinear pairs
        node = producer[value]
        if value in rename or value in hidden or node.op_type != "DequantizeLinear":
            continue
        q = producer.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        hidden.add(node.input[0])
        if value in graph_outputs:
            hidden.add(source)
        else:
            rename[value] = source
            hidden.add(source)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in _model_inputs(graph):  # first, as the torch side records them
        value = next((v for v in candidates if rename.get(v) == name and v not in hidden), name)
        seen.add(name)
        out.append((name, value))
    for value in candidates:
        if value in hidden:
            continue
        name = rename.get(value, value)
        if name in seen:
            continue
        seen.add(name)
        out.append((name, value))
    return out


def _load(model_or_path: Any) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model_or_path)
        return copy, f"ModelProto({model_or_path.graph.name or 'graph'})"
    if isinstance(model_or_path, (bytes, bytearray)):
        return onnx.load_model_from_string(bytes(model_or_path)), "serialized ModelProto"
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model {path} does not exist; pass the path of an .onnx "
                                    "file or an onnx.ModelProto")
        return onnx.load(path), path
    raise TypeError(f"LayerOutputUtil expects an onnx.ModelProto or the path of an .onnx file, got "
                    f"{type(model_or_path).__qualname__}")


_ORT_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(double)": np.dtype(np.float64),
              "tensor(float16)": np.dtype(np.float16), "tensor(int8)": np.dtype(np.int8),
              "tensor(uint8)": np.dtype(np.uint8), "tensor(int16)": np.dtype(np.int16),
              "tensor(uint16)": np.dtype(np.uint16), "tensor(int32)": np.dtype(np.int32),
              "tensor(uint32)": np.dtype(np.uint32), "tensor(int64)": np.dtype(np.int64),
              "tensor(uint64)": np.dtype(np.uint64), "tensor(bool)": np.dtype(np.bool_)}


def _providers(ort: Any, providers: Sequence[Any] | None, device: int | None) -> list[Any]:
    """The execution providers: the given ones, or CPU (CUDA on ``device`` first, as AIMET does,
    when ``device`` is given and ONNX Runtime has CUDA)."""
    if device is not None and (isinstance(device, bool) or not isinstance(device, int)
                               or device < 0):
        raise ValueError(f"device must be a CUDA device id (an integer >= 0), got {device!r}")
    if providers is not None:
        if isinstance(providers, str):
            return [providers]
        return list(providers)
    if device is not None and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
    if device is not None:
        logger.info("device=%d: ONNX Runtime has no CUDAExecutionProvider here; running on the "
                    "CPU", device)
    return ["CPUExecutionProvider"]


def _to_numpy(value: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(value)


class LayerOutputUtil(DumpingUtil):
    """Captures and saves every intermediate tensor of an ONNX model with ONNX Runtime.

    The keyword names are AIMET's (``aimet_onnx.layer_output_utils.LayerOutputUtil(model,
    dir_path, device=0)``); fxquant's own positional order ``(model, dir_path, providers,
    session_options)`` works too, and an ``int`` third argument is AIMET's ``device``.

    Args:
        model: an ``onnx.ModelProto`` (not modified) or the path of an ``.onnx`` file
            (float or QDQ, e.g. ``<prefix>.onnx`` / ``<prefix>_qdq.onnx`` of ``sim.export``).
            ``model_or_path=`` is accepted as well.
        dir_path: directory to write to (created when missing; must be empty unless
            ``overwrite``).
        providers: ONNX Runtime execution providers, in order of preference (default: CPU,
            or CUDA on ``device`` first when ``device`` is given and CUDA is available).
        device: AIMET's CUDA device id: with ``CUDAExecutionProvider`` available the model runs
            on that GPU (then CPU for what CUDA does not support); otherwise on the CPU.
        session_options: an ``onnxruntime.SessionOptions`` (e.g. with
            ``graph_optimization_level = ORT_DISABLE_ALL``), or None for ONNX Runtime's defaults.
        overwrite: replace a dump already in ``dir_path``.
        file_format: "raw" (float32, AIMET's format) or "npy".
        layout: "NCHW" (as computed) or "NHWC" (3- to 5-D tensors written channels last).
        names: dump only these tensors (dumped names, see :func:`dumped_tensors`); default all.

    Raises:
        ValueError: a name in ``names`` is not a dumpable tensor (the message lists close ones).
        DumpExistsError: ``dir_path`` is not empty and ``overwrite`` is False.
        DumpWriteError: ``dir_path`` cannot be created or written.

    Example:
        >>> so = onnxruntime.SessionOptions()
        >>> so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        >>> util = fxquant.onnx.LayerOutputUtil("out/resnet18_qdq.onnx", "dumps/ort",
        ...                                     session_options=so)
        >>> util.generate_layer_outputs(x.numpy())
    """

    _progress_label = "layer outputs (ORT)"

    def __init__(self, model: onnx.ModelProto | str | os.PathLike[str] | None = None,
                 dir_path: str | os.PathLike[str] | None = None,
                 providers: Sequence[Any] | int | None = None,
                 session_options: Any = None, *, device: int | None = None,
                 overwrite: bool = False, file_format: str = "raw",
                 layout: str = "NCHW", names: Iterable[str] | None = None,
                 model_or_path: onnx.ModelProto | str | os.PathLike[str] | None = None) -> None:
        import onnxruntime as ort

        if model_or_path is not None:  # the keyword of fxquant before AIMET's name
            if model is not None:
                raise TypeError("pass the model once: model=... (AIMET's name) or "
                                "model_or_path=..., not both")
            model = model_or_path
        if model is None:
            raise TypeError("LayerOutputUtil needs model=: an onnx.ModelProto or the path of an "
                            ".onnx file")
        if isinstance(providers, int) and not isinstance(providers, bool):
            if device is not None:  # AIMET's positional (model, dir_path, device)
                raise TypeError("the third argument is the device id (AIMET's order) and "
                                "device= was given too; pass one")
            device, providers = providers, None
        providers = _providers(ort, providers, device)
        model_or_path = model
        if dir_path is None or (isinstance(dir_path, str) and not dir_path):
            raise ValueError("dir_path is required: the directory the dump is written to")
        check_dir(dir_path, overwrite)
        model, description = _load(model_or_path)
        tensors = dumped_tensors(model)
        if names is not None:
            wanted = list(names)
            available = {name for name, _ in tensors}
            unknown = [n for n in wanted if n not in available]
            if unknown:
                close = difflib.get_close_matches(unknown[0], sorted(available), n=5)
                raise ValueError(f"names {unknown[:10]} are not dumpable tensors of {description}; "
                                 f"close to {unknown[0]!r}: {close}")
            keep = set(wanted)
            tensors = [t for t in tensors if t[0] in keep]
        existing = {o.name for o in model.graph.output}
        fed = set(_model_inputs(model.graph))
        for _, value in tensors:
            if value not in existing and value not in fed:  # inputs: taken from the feeds
                info = onnx.ValueInfoProto()
                info.name = value  # untyped: ONNX Runtime infers the type
                model.graph.output.append(info)
        self.model = model
        self.session = self._session(ort, model, list(providers), session_options)
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}
        self._cast_noted: set[str] = set()
        types = {o.name: o.type for o in self.session.get_outputs()}
        types.update((i.name, i.type) for i in self.session.get_inputs())
        skipped = [name for name, value in tensors
                   if not types.get(value, "").startswith("tensor(")]
        if skipped:  # sequences (SplitToSequence …) and maps are not tensors
            logger.info("not dumped (not tensors): %s", skipped)
            tensors = [t for t in tensors if t[0] not in set(skipped)]
        self.tensor_names = [name for name, _ in tensors]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._values = [value for _, value in tensors]
        self._fetched = [value for value in self._values if value not in self.input_names]
        self._writer = DumpWriter(dir_path, overwrite=overwrite, file_format=file_format,
                                  layout=layout, names=self.tensor_names,
                                  producer={"library": "fxquant", "source": "onnxruntime",
                                            "model": description,
                                            "providers": self.session.get_providers()})

    @staticmethod
    def _session(ort: Any, model: onnx.ModelProto, providers: list[str], options: Any) -> Any:
        if model.ByteSize() < _MAX_PROTO:
            return ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                        providers=providers)
        folder = tempfile.mkdtemp(prefix="fxquant-ort-")
        path = os.path.join(folder, "model.onnx")
        onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(path, sess_options=options, providers=providers)

    def _feeds(self, input_instance: Any) -> dict[str, np.ndarray]:
        if isinstance(input_instance, Mapping):
            unknown = [k for k in input_instance if k not in self.input_names]
            if unknown:
                raise ValueError(f"inputs {unknown} are not inputs of the model; its inputs are "
                                 f"{self.input_names}")
            return {k: _to_numpy(v) for k, v in input_instance.items()}
        args = (list(input_instance) if isinstance(input_instance, (tuple, list))
                else [input_instance])
        if len(args) != len(self.input_names):
            raise ValueError(f"the model has {len(self.input_names)} input(s) {self.input_names}, "
                             f"got {len(args)}; pass a tuple or list in that order, or a dict")
        return {name: self._cast(name, _to_numpy(a)) for name, a in zip(self.input_names, args)}

    def _cast(self, name: str, array: np.ndarray) -> np.ndarray:
        """``array`` in the dtype the model declares for input ``name``: a float input of another
        float precision is cast (noted in the log once per input); anything else is refused."""
        want = _ORT_TYPES.get(self._input_types.get(name, ""))
        if want is None or array.dtype == want:
            return array
        if array.dtype.kind == "f" and want.kind == "f" or (
                array.dtype.kind in "iub" and want.kind in "iu"
                and np.can_cast(array.dtype, want, casting="same_kind")
                and np.array_equal(array.astype(want), array)):
            if name not in self._cast_noted:
                self._cast_noted.add(name)
                logger.warning("input %r is %s but the model takes %s: cast to %s (pass %s to "
                               "avoid the copy)", name, array.dtype, want, want, want)
            return array.astype(want)
        raise ValueError(f"input {name!r} is {array.dtype} but the model takes {want} "
                         f"({self._input_types[name]}); convert it, e.g. x.astype(np.{want})")

    def _instance(self, input_instance: Any) -> HostInstance:
        feeds = self._feeds(input_instance)
        try:
            fetched = dict(zip(self._fetched, self.session.run(self._fetched, feeds)))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            given = {k: (tuple(v.shape), str(v.dtype)) for k, v in feeds.items()}
            declared = {i.name: (i.shape, i.type) for i in self.session.get_inputs()}
            raise ValueError(f"ONNX Runtime could not run the model on inputs {given}; the model "
                             f"takes {declared}: {' '.join(str(exc).split())}") from exc
        inputs = [(name, feeds[name]) for name in self.input_names if name in feeds]
        values = [feeds[v] if v in self.input_names else fetched[v] for v in self._values]
        return HostInstance(inputs, list(zip(self.tensor_names, values)))

    def generate_layer_outputs(self, input_instance: Any) -> None:
        """Runs one input instance and writes it and every dumped tensor.

        Args:
            input_instance: an array or tensor, a tuple/list in the model's input order, or a
                dict ``{input name: array}``.

        Example:
            >>> util.generate_layer_outputs(np.random.rand(1, 3, 224, 224).astype(np.float32))
        """
        index = self._writer.submit(self._writer.run_instance(self._instance, input_instance),
                                    wait=True)
        logger.info("wrote tensors of input instance %d to %s", index, self.dir_path)

