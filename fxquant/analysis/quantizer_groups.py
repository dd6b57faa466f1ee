"""The quantizers of a sim grouped by layer, as AIMET's quant wrappers group them, and the switches
the analyzer's sweeps flip on one calibrated sim (nothing is rebuilt or recalibrated).

A layer's group holds its parameter quantizers and the activation quantizers a
``_torch.encodings`` file lists under it (:func:`fxquant.export.encodings_file.torch_names`): its
output quantizer and its input quantizers, model-input quantizers included under the layers that
consume them. This is also what the quantsim config's ``layers`` entries act on, so a suggestion
measured here is what ``suggested_config.json`` does.

Example:
    >>> groups = layer_groups(sim)
    >>> [q.name for q in groups["conv1"].quantizers]
    ['x', 'conv1.weight']
    >>> with only_enabled(sim, groups["conv1"].quantizers):
    ...     score = evaluate(sim.model)
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterable, Iterator, Sequence

from fxquant.core.layers import iter_layers, type_name
from fxquant.export.encodings_file import torch_names
from fxquant.quantsim.quantizer import QuantizerBase
from fxquant.quantsim.quantsim import QuantizationSimModel, QuantizerRef

__all__ = ["LayerQuantizers", "layer_groups", "activation_names", "enabled_refs", "only_enabled",
           "disabled", "bitwidths"]


@dataclasses.dataclass(frozen=True)
class LayerQuantizers:
    """One layer's quantizers (AIMET's quant wrapper).

    Attributes:
        layer: the layer name (module path in ``sim.model``).
        type_name: the layer module's class name.
        quantizers: its quantizers, parameters first, then activations (inputs, then output).
        activation_keys: ``{quantizer name: "<layer>_input_<i>" | "<layer>_output_<i>"}``, AIMET's
            names for the activation quantizers in ``min_max_ranges/activations.json``.
    """

    layer: str
    type_name: str
    quantizers: tuple[QuantizerRef, ...]
    activation_keys: dict[str, str] = dataclasses.field(hash=False, compare=False)

    @property
    def params(self) -> tuple[QuantizerRef, ...]:
        return tuple(q for q in self.quantizers if q.kind == "param")

    @property
    def activations(self) -> tuple[QuantizerRef, ...]:
        return tuple(q for q in self.quantizers if q.kind != "param")


def enabled_refs(sim: QuantizationSimModel) -> list[QuantizerRef]:
    """The sim's enabled quantizers (a disabled one stays disabled through every sweep)."""
    return [r for r in sim.quantizers() if r.quantizer.enabled]


def activation_names(sim: QuantizationSimModel) -> dict[str, list[tuple[str, str, int]]]:
    """``{activation quantizer name: [(layer, "input" | "output", index), ...]}`` (AIMET keys)."""
    return torch_names(sim)


def layer_groups(sim: QuantizationSimModel, ignore: Iterable[str] = ()
                 ) -> dict[str, LayerQuantizers]:
    """The enabled quantizers of ``sim`` grouped by layer, in graph order; layers without an
    enabled quantizer and the layers in ``ignore`` are left out.

    Example:
        >>> list(layer_groups(sim))[:2]
        ['conv1', 'layer1.0.conv1']
    """
    ignored = set(ignore)
    nodes = dict(iter_layers(sim.model))
    order = {name: i for i, name in enumerate(nodes)}
    keys = activation_names(sim)
    members: dict[str, list[QuantizerRef]] = {}
    labels: dict[str, dict[str, str]] = {}
    for ref in enabled_refs(sim):
        if ref.kind == "param":
            members.setdefault(ref.layer, []).append(ref)
            continue
        for layer, io, index in keys.get(ref.name, [(ref.name, "output", 0)]):
            members.setdefault(layer, []).append(ref)
            labels.setdefault(layer, {})[ref.name] = f"{layer}_{io}_{index}"
    groups = {}
    for layer in sorted(members, key=lambda n: order.get(n, len(order))):
        if layer in ignored:
            continue
        refs = members[layer]
        ordered = ([r for r in refs if r.kind == "param"]
                   + [r for r in refs if r.kind != "param" and
                      labels[layer][r.name].startswith(f"{layer}_input_")]
                   + [r for r in refs if r.kind != "param" and
                      labels[layer][r.name].startswith(f"{layer}_output_")])
        kind = type_name(sim.model, nodes[layer]).rsplit(".", 1)[-1] if layer in nodes else ""
        groups[layer] = LayerQuantizers(layer, kind,
                                        tuple(dict.fromkeys(ordered)), labels.get(layer, {}))
    return groups


def _set_enabled(quantizers: Iterable[QuantizerBase], value: bool) -> None:
    for q in quantizers:
        q.enabled = value


@contextlib.contextmanager
def disabled(refs: Iterable[QuantizerRef]) -> Iterator[None]:
    """Disables ``refs`` inside the block and re-enables them after (even on error).

    Example:
        >>> with disabled([r for r in enabled_refs(sim) if r.kind == "param"]):
        ...     activation_only_score = evaluate(sim.model)
    """
    quantizers = list(dict.fromkeys(r.quantizer for r in refs if r.quantizer.enabled))
    _set_enabled(quantizers, False)
    try:
        yield
    finally:
        _set_enabled(quantizers, True)


@contextlib.contextmanager
def only_enabled(sim: QuantizationSimModel, keep: Sequence[QuantizerRef],
                 among: Sequence[QuantizerRef] | None = None) -> Iterator[None]:
    """Inside the block only ``keep`` of the enabled quantizers (``among``, default all enabled
    ones) quantize.

    Example:
        >>> with only_enabled(sim, groups["conv1"].quantizers):
        ...     conv1_only_score = evaluate(sim.model)
    """
    kept = {id(r.quantizer) for r in keep}
    pool = enabled_refs(sim) if among is None else among
    with disabled([r for r in pool if id(r.quantizer) not in kept]):
        yield


@contextlib.contextmanager
def bitwidths(changes: Sequence[tuple[QuantizerRef, int]]) -> Iterator[None]:
    """Inside the block each quantizer of ``changes`` runs at its new bit width, its encoding
    recomputed from the statistics it kept from calibration (no new forward pass); afterwards
    everything (bit width, encoding, statistics) is as before.

    Raises:
        ValueError: a quantizer is not an integer quantizer or has no statistics (it was not
            calibrated by this sim).

    Example:
        >>> with bitwidths([(ref, 16) for ref in groups["conv1"].activations]):
        ...     a16_score = evaluate(sim.model)
    """
    snapshots: list[tuple[QuantizerBase, Any]] = []
    try:
        for ref, bits in changes:
            q = ref.quantizer
            if not hasattr(q, "bitwidth") or getattr(q, "encoding_analyzer", None) is None:
                raise ValueError(f"quantizer {ref.name!r} is not an integer quantizer with "
                                 "calibration statistics; its bit width cannot be changed here")
            if q.is_frozen or q.bitwidth == bits:
                continue
            if not q.encoding_analyzer.has_stats:
                raise ValueError(f"quantizer {ref.name!r} kept no calibration statistics; "
                                 "calibrate the sim before changing bit widths")
            snapshots.append((q, q.state_snapshot()))
            q.bitwidth = bits
            q.compute_encoding()
        yield
    finally:
        for q, snapshot in reversed(snapshots):
            q.restore_snapshot(snapshot)
