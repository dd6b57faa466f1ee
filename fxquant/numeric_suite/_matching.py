"""Which layer of model A is compared with which layer of model B.

Layers are matched by their canonical names (module paths after the preparer), which both
models get from the same tracing of the same architecture — never by similarity of names or
types. The module types of a matched pair must agree (same class, a subclass, or a torch.ao
quantized module and its float original); a disagreement is reported, not compared.

torch.ao-quantized models fuse modules (``conv1`` = Conv2d + ReLU becomes one ``ConvReLU2d``
named ``conv1``): the fused module's output is matched with the *last* op of the same chain in
the float model, found by following the float graph from the layer of the same name (``conv1``
→ its only user, a ReLU). The float layers inside the chain are reported as unmatched ("computed
inside model b's fused layer 'conv1'").

Everything a model has that is not compared is listed as an :class:`UnmatchedLayer`.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Iterable

import torch.fx
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fxquant import nn as fxnn
from fxquant.numeric_suite.compared_models import (TORCH_QUANTIZED, PreparedModel, fused_head,
                                                   is_torch_quantized_module)

__all__ = ["UnmatchedLayer", "LayerPair", "WeightPair", "Matching", "match_layers",
           "display_type"]


@dataclasses.dataclass(frozen=True)
class UnmatchedLayer:
    """A layer of one model that is not compared, and why.

    Attributes:
        layer: its canonical name in that model.
        model: the model's name.
        reason: why it is not compared.
    """

    layer: str
    model: str
    reason: str


@dataclasses.dataclass(frozen=True)
class LayerPair:
    """Two layers whose outputs are compared.

    Attributes:
        key_a: model A's canonical name of the layer whose output is compared.
        key_b: model B's.
        input_a: model A's layer whose inputs correspond to ``input_b``'s (differs from
            ``key_a`` only across a torch.ao fused module).
        input_b: model B's.
        op_type_a: class of A's layer module.
        op_type_b: class of B's layer module.
        quantized: whether the output is quantized in either model.
    """

    key_a: str
    key_b: str
    input_a: str
    input_b: str
    op_type_a: str
    op_type_b: str
    quantized: bool


@dataclasses.dataclass(frozen=True)
class WeightPair:
    """Two layers whose weights are compared (``key_a`` in A, ``key_b`` in B)."""

    key_a: str
    key_b: str
    op_type_a: str
    op_type_b: str
    quantized: bool


@dataclasses.dataclass(frozen=True)
class Matching:
    """The outcome of matching two models' layers (model A's graph order)."""

    name_a: str
    name_b: str
    activations: tuple[LayerPair, ...]
    weights: tuple[WeightPair, ...]
    unmatched: tuple[UnmatchedLayer, ...]
    counterparts: dict[str, str]  # B layer -> A layer computing the same value, where they differ

    def select(self, layers: Iterable[str] | str | None, auto_quantized: bool
               ) -> tuple[list[LayerPair], list[WeightPair]]:
        """The pairs to compare.

        Args:
            layers: None (quantized layers when ``auto_quantized``, else all), "all", or names
                of layers (in either model).
            auto_quantized: whether None means "only quantized layers".

        Raises:
            ValueError: a name is not a matched layer (the message says why, or lists close
                names).
        """
        if layers is None:
            acts = [p for p in self.activations if p.quantized or not auto_quantized]
            weights = [w for w in self.weights if w.quantized or not auto_quantized]
            return acts, weights
        if isinstance(layers, str):
            if layers != "all":
                raise ValueError(f"layers must be None, 'all' or a list of layer names, got "
                                 f"{layers!r}; write layers=[{layers!r}] for one layer")
            return list(self.activations), list(self.weights)
        names = list(layers)
        known = {p.key_a for p in self.activations} | {p.key_b for p in self.activations} | \
            {w.key_a for w in self.weights} | {w.key_b for w in self.weights}
        why = {u.layer: u for u in self.unmatched}
        for name in names:
            if name in known:
                continue
            if name in why:
                raise ValueError(f"layer {name!r} of model {why[name].model!r} cannot be "
                                 f"compared: {why[name].reason}")
            close = difflib.get_close_matches(name, sorted(known), n=3)
            raise ValueError(f"{name!r} is not a layer of either model" + (
                f"; did you mean {', '.join(map(repr, close))}?" if close else
                "; layer names are module paths after fxquant.prepare_model"))
        wanted = set(names)
        acts = [p for p in self.activations if {p.key_a, p.key_b} & wanted]
        weights = [w for w in self.weights if {w.key_a, w.key_b} & wanted]
        return acts, weights


def display_type(module: nn.Module) -> str:
    """Qualified class name of ``module`` (the original class of a parametrized module)."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return f"{cls.__module__}.{cls.__qualname__}"


_FUSED: dict[type, tuple[type, tuple[type, ...]]] | None = None


def _fused_table() -> dict[type, tuple[type, tuple[type, ...]]]:
    """torch.ao intrinsic quantized class -> (float head class, classes that follow it)."""
    global _FUSED
    if _FUSED is None:
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.intrinsic.quantized.dynamic as nniqd

        _FUSED = {
            nniq.ConvReLU1d: (nn.Conv1d, (nn.ReLU,)), nniq.ConvReLU2d: (nn.Conv2d, (nn.ReLU,)),
            nniq.ConvReLU3d: (nn.Conv3d, (nn.ReLU,)), nniq.LinearReLU: (nn.Linear, (nn.ReLU,)),
            nniq.LinearLeakyReLU: (nn.Linear, (nn.LeakyReLU,)),
            nniq.LinearTanh: (nn.Linear, (nn.Tanh,)),
            nniq.BNReLU2d: (nn.BatchNorm2d, (nn.ReLU,)),
            nniq.BNReLU3d: (nn.BatchNorm3d, (nn.ReLU,)),
            nniq.ConvAdd2d: (nn.Conv2d, (fxnn.Add,)),
            nniq.ConvAddReLU2d: (nn.Conv2d, (fxnn.Add, nn.ReLU)),
            nniqd.LinearReLU: (nn.Linear, (nn.ReLU,)),
        }
    return _FUSED


def _fused_float_class(module: nn.Module) -> type | None:
    """The torch.ao intrinsic float class (e.g. ``nni.ConvReLU2d``) a fused quantized module
    was converted from, or None."""
    if type(module) not in _fused_table():
        return None
    floats = getattr(type(module), "_FLOAT_MODULE", None)
    return floats if isinstance(floats, type) else None


def _float_classes(module: nn.Module) -> tuple[type, ...]:
    fused = _fused_table().get(type(module))
    if fused is not None:
        fused_float = _fused_float_class(module)
        return (fused[0],) + ((fused_float,) if fused_float is not None else ())
    floats = getattr(type(module), "_FLOAT_MODULE", None)
    if isinstance(floats, type):
        return (floats,)
    return tuple(c for c in floats or () if isinstance(c, type))


def _compatible(ma: nn.Module, mb: nn.Module) -> bool:
    if isinstance(ma, type(mb)) or isinstance(mb, type(ma)):
        return True
    for q, f in ((ma, mb), (mb, ma)):
        if is_torch_quantized_module(q) and isinstance(f, _float_classes(q) or ()):
            return True
    return False


def _has_weight(module: nn.Module) -> bool:
    module = fused_head(module)
    if parametrize.is_parametrized(module) and "weight" in module.parametrizations:
        return True
    weight = getattr(module, "weight", None)
    return isinstance(weight, Tensor) or (callable(weight) and is_torch_quantized_module(module))


def _fusions(q: PreparedModel, f: PreparedModel
             ) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """For torch.ao model ``q`` and float model ``f``: ``(value_map, inside, failures)`` —
    q's fused layer -> f's layer computing its output; f's layers inside a fused layer -> that
    layer; q's fused layers without their chain in f -> why."""
    value_map: dict[str, str] = {}
    inside: dict[str, str] = {}
    failures: dict[str, str] = {}
    f_ops = f.layers()
    for name, node in q.layers().items():
        spec = _fused_table().get(type(q.gm.get_submodule(name)))
        if spec is None:
            continue
        cls_name = type(q.gm.get_submodule(name)).__name__
        head, trailing = spec
        current = f_ops.get(name)
        fused_float = _fused_float_class(q.gm.get_submodule(name))
        if current is not None and fused_float is not None and \
                isinstance(f.gm.get_submodule(name), fused_float):
            value_map[name] = name  # f holds the fused float module itself (torch.ao prepare_fx)
            continue
        if current is None or not isinstance(f.gm.get_submodule(name), head):
            failures[name] = (f"model {q.name!r}'s fused {cls_name} {name!r} has no "
                              f"{head.__name__} named {name!r} in model {f.name!r}")
            continue
        chain = [current]
        for cls in trailing:
            users = list(chain[-1].users)
            nxt = users[0] if len(users) == 1 else None
            if (nxt is None or nxt.op != "call_module" or str(nxt.target) not in f_ops
                    or not isinstance(f.gm.get_submodule(str(nxt.target)), cls)):
                failures[name] = (f"model {q.name!r}'s fused {cls_name} {name!r} expects "
                                  f"{cls.__name__} to follow {chain[-1].target!r} in model "
                                  f"{f.name!r}")
                break
            chain.append(nxt)
        else:
            value_map[name] = str(chain[-1].target)
            for node_in in chain[:-1]:
                inside[str(node_in.target)] = name
    return value_map, inside, failures


def _feeding_layers(node: torch.fx.Node, rename: dict[str, str]) -> list[str]:
    """The layers (or model inputs) whose values reach ``node``'s arguments, looking through
    non-layer nodes (torch.ao's quantize/dequantize); torch.ao names mapped by ``rename``."""
    out = []
    for arg in node.all_input_nodes:
        current = arg
        while current.op in ("call_function", "call_method") and current.all_input_nodes:
            current = current.all_input_nodes[0]
        if current.op == "get_attr":
            continue
        name = str(current.target) if current.op == "call_module" else current.name
        out.append(rename.get(name, name))
    return out


def match_layers(a: PreparedModel, b: PreparedModel) -> Matching:
    """Matches the layers of two prepared models (see the module docstring)."""
    ops_a, ops_b = a.layers(), b.layers()
    mods_a, mods_b = dict(a.gm.named_modules()), dict(b.gm.named_modules())
    partner: dict[str, str] = {}      # A layer -> B layer whose output is compared with it
    inputs: dict[str, tuple[str, str]] = {}  # A layer -> (A input layer, B input layer)
    inside_a: dict[str, str] = {}
    inside_b: dict[str, str] = {}
    fail_a: dict[str, str] = {}
    fail_b: dict[str, str] = {}
    counterparts: dict[str, str] = {}
    value_map: dict[str, str] = {}  # torch.ao layer -> float layer computing its output
    if b.kind == TORCH_QUANTIZED and a.kind != TORCH_QUANTIZED:
        value_map, inside_a, fail_b = _fusions(b, a)
        for lb in ops_b:
            if lb not in fail_b:
                la = value_map.get(lb, lb)
                partner[la] = lb
                inputs[la] = (lb, lb)
        counterparts = dict(value_map)
    elif a.kind == TORCH_QUANTIZED and b.kind != TORCH_QUANTIZED:
        value_map, inside_b, fail_a = _fusions(a, b)
        for la in ops_a:
            if la not in fail_a:
                partner[la] = value_map.get(la, la)
                inputs[la] = (la, la)
        counterparts = {v: k for k, v in value_map.items()}
    else:
        partner = {la: la for la in ops_a}
        inputs = {la: (la, la) for la in ops_a}

    acts: list[LayerPair] = []
    unmatched: list[UnmatchedLayer] = []
    matched_b: set[str] = set()
    for la in ops_a:
        lb = partner.get(la)
        if lb is None or lb not in ops_b:
            if la in inside_a:
                reason = (f"computed inside model {b.name!r}'s fused layer {inside_a[la]!r} "
                          f"({type(mods_b[inside_a[la]]).__name__}); its output does not exist "
                          "there")
            else:
                reason = fail_a.get(la, f"model {b.name!r} has no layer named {la!r}")
            unmatched.append(UnmatchedLayer(la, a.name, reason))
            continue
        in_a, in_b = inputs[la]
        if not _compatible(mods_a[in_a], mods_b[in_b]):
            reason = (f"model {a.name!r} has a {display_type(mods_a[in_a])} but model "
                      f"{b.name!r} a {display_type(mods_b[in_b])} under this name")
            unmatched.append(UnmatchedLayer(la, a.name, reason))
            unmatched.append(UnmatchedLayer(lb, b.name, reason))
            matched_b.add(lb)
            continue
        if TORCH_QUANTIZED in (a.kind, b.kind) and isinstance(mods_a[in_a], fxnn.FunctionalModule):
            # torch.ao's convert flattens module scopes: a functional op's canonical name there is
            # scoped at the root, so check that it reads the same layers before matching it
            feeds_a = _feeding_layers(ops_a[in_a], value_map if a.kind == TORCH_QUANTIZED
                                      else {})
            feeds_b = _feeding_layers(ops_b[in_b], value_map if b.kind == TORCH_QUANTIZED
                                      else {})
            if feeds_a != feeds_b:
                reason = (f"same name, but model {a.name!r} feeds it {feeds_a} and model "
                          f"{b.name!r} {feeds_b} (functional ops of a torch.ao model are named "
                          "at its root scope)")
                unmatched.append(UnmatchedLayer(la, a.name, reason))
                unmatched.append(UnmatchedLayer(lb, b.name, reason))
                matched_b.add(lb)
                continue
        matched_b.add(lb)
        acts.append(LayerPair(la, lb, in_a, in_b, display_type(mods_a[in_a]),
                              display_type(mods_b[in_b]),
                              a.output_quantized(la) or b.output_quantized(lb)))
    for lb in ops_b:
        if lb in matched_b:
            continue
        if lb in inside_b:
            reason = (f"computed inside model {a.name!r}'s fused layer {inside_b[lb]!r}; its "
                      "output does not exist there")
        else:
            reason = fail_b.get(lb, f"model {a.name!r} has no layer named {lb!r}")
        unmatched.append(UnmatchedLayer(lb, b.name, reason))

    weights = [
        WeightPair(la, la, display_type(mods_a[la]), display_type(mods_b[la]),
                   a.weight_quantized(la) or b.weight_quantized(la))
        for la in ops_a
        if la in ops_b and _has_weight(mods_a[la]) and _has_weight(mods_b[la])
        and _compatible(mods_a[la], mods_b[la])]
    return Matching(a.name, b.name, tuple(acts), tuple(weights), tuple(unmatched), counterparts)

