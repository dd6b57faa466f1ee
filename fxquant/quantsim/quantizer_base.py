"""What every fxquant quantizer is: :class:`QuantizerBase` (name, kind, ``enabled``, calibration
and freeze state, snapshots for all-or-nothing calibration), the valid bit widths and the grid.

The concrete quantizers (integer and float16) are in :mod:`fxquant.quantsim.quantizer`.

Example:
    >>> BITWIDTH_RANGES["activation"]
    (4, 32)
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fxquant.core.encoding import QuantEncoding
from fxquant.errors import ConfigError
from fxquant.quantsim.encoding_analyzer import EncodingAnalyzer

__all__ = ["BITWIDTH_RANGES", "Grid", "QuantizerBase", "QuantizerSnapshot", "validate_bitwidth"]

logger = logging.getLogger(__name__)

#: Valid integer bit widths per quantizer kind (inclusive).
BITWIDTH_RANGES: dict[str, tuple[int, int]] = {"param": (2, 32), "activation": (4, 32)}


def validate_bitwidth(bitwidth: Any, kind: str, label: str) -> int:
    lo, hi = BITWIDTH_RANGES[kind]
    if isinstance(bitwidth, bool) or not isinstance(bitwidth, int) or not lo <= bitwidth <= hi:
        article = "an" if kind[:1] in "aeiou" else "a"
        raise ConfigError(f"{label}: bitwidth {bitwidth!r} is not valid for {article} {kind} "
                          "quantizer; "
                          f"valid bit widths are {lo}-{hi} (integer), or 16 with "
                          f"data_type='float'")
    return bitwidth


class Grid(NamedTuple):
    bitwidth: int
    signed: bool
    symmetric: bool
    strict: bool


class QuantizerBase(nn.Module):
    """Common interface of all quantizers: a named module with ``enabled`` and a calibration mode.

    Attributes:
        kind: "param" or "activation" (selects the valid bit widths: 2-32 and 4-32).
        name: the quantizer's name, used in messages (e.g. "layer1.0.conv1.weight").
        enabled: when False the quantizer is the identity.
        calibrating: when True ``forward`` feeds its input to the encoding analyzer and returns
            it unquantized (see ``calibration()``).
    """

    #: fxquant.trace keeps modules with this class attribute opaque (one call_module node).
    _fxquant_leaf = True

    def __init__(self, *, kind: str = "activation", name: str = "", enabled: bool = True) -> None:
        super().__init__()
        if kind not in BITWIDTH_RANGES:
            raise ConfigError(f"quantizer {name!r}: kind {kind!r} is not valid; use 'param' or "
                              f"'activation'")
        self.kind = kind
        self.name = name
        self.enabled = bool(enabled)
        self.calibrating = False
        self._frozen = False

    def _label(self) -> str:
        return f"quantizer {self.name!r}" if self.name else f"unnamed {type(self).__name__}"

    @property
    def encoding(self) -> QuantEncoding | None:
        """The current encoding, or None (not computed yet, or not applicable)."""
        return None

    @property
    def is_initialized(self) -> bool:
        """True when ``forward`` can quantize (an encoding exists, or none is needed)."""
        return True

    @property
    def is_frozen(self) -> bool:
        """True when ``compute_encoding`` leaves the encoding alone."""
        return self._frozen

    def freeze_encoding(self) -> None:
        """Keep the current encoding: calibration neither collects statistics nor overwrites it."""
        self._frozen = True

    def unfreeze_encoding(self) -> None:
        """Undo ``freeze_encoding``."""
        self._frozen = False

    def set_encoding(self, encoding: QuantEncoding) -> None:
        """Install ``encoding`` (explicit calls work on frozen quantizers too)."""
        raise ConfigError(f"{self._label()} takes no encoding")

    def compute_encoding(self) -> None:
        """Compute the encoding from the statistics collected while calibrating (no-op when
        frozen)."""

    def _start_calibration(self) -> None:
        """Hook: called when a ``calibration()`` block starts."""

    def _finish_calibration(self) -> None:
        """Hook: called when a ``calibration()`` block ends without an exception."""

    @contextlib.contextmanager
    def calibration(self, *, compute: bool = True) -> Iterator[QuantizerBase]:
        """Collect statistics for the duration of the block, then compute the encoding.

        Inside the block ``forward`` returns its input unquantized and feeds it to the encoding
        analyzer (statistics are reset on entry). On a clean exit the encoding is computed when
        ``compute`` is True and the quantizer saw data; an enabled quantizer that saw none keeps
        its encoding and logs a warning.

        Example:
            >>> q = AffineQuantizer(8, name="act")
            >>> with q.calibration():
            ...     _ = q(torch.tensor([0.0, 1.0]))
            >>> q.encoding.bitwidth
            8
        """
        self._start_calibration()
        self.calibrating = True
        try:
            yield self
        finally:
            self.calibrating = False
        if compute:
            self._finish_calibration()

    # -- snapshots (all-or-nothing calibration) ---------------------------------------------
    def state_snapshot(self) -> QuantizerSnapshot:
        """Everything calibration may change: encoding tensors (by value, and which objects hold
        them), grid and flags, and the encoding analyzer's statistics.

        ``restore_snapshot`` puts it all back; an ``nn.Parameter`` scale stays the same object,
        so optimizers that hold it keep working.

        Example:
            >>> snap = q.state_snapshot()
            >>> q.set_encoding(other_encoding)
            >>> q.restore_snapshot(snap)      # q quantizes exactly as before
        """
        plain = {k: v for k, v in vars(self).items() if _is_plain_value(v)}
        tensors = {}
        for kind in ("_parameters", "_buffers"):
            tensors[kind] = [(name, t, None if t is None else t.detach().clone(),
                              None if t is None else t.requires_grad)
                             for name, t in getattr(self, kind).items()]
        analyzer = getattr(self, "encoding_analyzer", None)
        stats = None
        if isinstance(analyzer, EncodingAnalyzer):
            # fxquant's analyzers never modify their statistics tensors in place (see
            # EncodingAnalyzer): their attributes by reference are a snapshot (copying histograms
            # and caches took 0.2 s per compute_encodings on mobilenet_v2). A user's subclass
            # may, so its state is copied.
            ours = type(analyzer).__module__.startswith("fxquant.")
            stats = (analyzer, dict(vars(analyzer)) if ours else copy.deepcopy(vars(analyzer)))
        return QuantizerSnapshot(plain, tensors, set(self._non_persistent_buffers_set), stats)

    def restore_snapshot(self, snapshot: QuantizerSnapshot) -> None:
        """Put back the state recorded by :meth:`state_snapshot` (see there)."""
        vars(self).update(snapshot.plain)
        with torch.no_grad():
            for kind, entries in snapshot.tensors.items():
                table = getattr(self, kind)
                table.clear()
                for name, obj, value, requires_grad in entries:
                    if obj is not None:
                        obj.data = value
                        if isinstance(obj, nn.Parameter):
                            obj.requires_grad_(bool(requires_grad))
                    table[name] = obj
        self._non_persistent_buffers_set.clear()
        self._non_persistent_buffers_set.update(snapshot.non_persistent)
        if snapshot.analyzer is not None:
            analyzer, state = snapshot.analyzer
            vars(analyzer).clear()
            vars(analyzer).update(state)
            self.encoding_analyzer = analyzer

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind}, enabled={self.enabled}"


def _is_plain_value(value: Any) -> bool:
    """Immutable attribute values a snapshot records by reference (flags, grids, names)."""
    if value is None or isinstance(value, (bool, int, float, str, enum.Enum)):
        return True
    return isinstance(value, tuple) and all(_is_plain_value(v) for v in value)


@dataclasses.dataclass(frozen=True)
class QuantizerSnapshot:
    """What :meth:`QuantizerBase.state_snapshot` records (opaque to callers)."""

    plain: dict[str, Any]
    tensors: dict[str, list[tuple[str, Tensor | None, Tensor | None, bool | None]]]
    non_persistent: set[str]
    analyzer: tuple[EncodingAnalyzer, dict[str, Any]] | None
