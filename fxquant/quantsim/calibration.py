"""Calibration: the sim's quantizers get their encodings, all or nothing.

Parameter encodings come from the weights (:func:`compute_param_encodings`); activation encodings
from what the user's callback runs through the model (:func:`calibrate`, which
``QuantizationSimModel.compute_encodings`` calls). Under ``torch.distributed`` the activation
statistics are reduced across the ranks before the encodings are computed
(:mod:`fxquant.distributed`). Whatever fails, every quantizer is put back as it was.

Example:
    >>> passes = calibrate(sim.model, sim.quantizers(), lambda m: m(x), (sim.model,))
    >>> passes
    1
"""
from __future__ import annotations

import contextlib
import datetime
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from fxquant.core.layers import float_param
from fxquant.distributed import (DEFAULT_TIMEOUT, agree_on_failure, is_distributed,
                                 reduce_statistics)
from fxquant.errors import CalibrationError, FxQuantError
from fxquant.quantsim.quantizer import AffineQuantizer, QuantizerBase

if TYPE_CHECKING:
    from fxquant.quantsim.quantsim import QuantizerRef

__all__ = ["calibrate", "compute_param_encodings"]

logger = logging.getLogger(__name__)

# the process group when there is nothing to reduce over (None is the world group)
_SINGLE_PROCESS: Any = object()
# stages after which the other ranks no longer wait in the failure check
_BEFORE_REDUCTION = ("computing parameter encodings", "running forward_pass_callback")


@torch.no_grad()
def compute_param_encodings(model: nn.Module, refs: Iterable[QuantizerRef], *,
                            only_missing: bool = False) -> None:
    """Computes the encodings of the parameter quantizers among ``refs`` from the float
    parameters of ``model`` (``sim.model``); a frozen quantizer keeps its encoding.

    Args:
        model: the sim's model.
        refs: quantizers of it (``sim.quantizers()``); those that are not ``"param"`` are skipped.
        only_missing: leave the quantizers that already have an encoding as they are.

    Example:
        >>> compute_param_encodings(sim.model, sim.quantizers())
        >>> sim.quantizer("conv1.weight").encoding is not None
        True
    """
    modules = dict(model.named_modules())
    for ref in refs:
        if ref.kind != "param" or (only_missing and ref.quantizer.is_initialized):
            continue
        original = float_param(modules[ref.layer], ref.name.rsplit(".", 1)[1])
        with ref.quantizer.calibration():
            ref.quantizer(original)


def calibrate(model: nn.Module, refs: list[QuantizerRef], forward_pass_callback: Callable[..., Any],
              args: tuple[Any, ...], *, process_group: Any = None,
              timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> int:
    """Calibrates every quantizer of ``refs`` (all of ``model``'s), all or nothing: see
    ``QuantizationSimModel.compute_encodings`` for what it does and raises. Returns the number
    of forward passes of ``model`` that ``forward_pass_callback(*args)`` ran.

    Example:
        >>> calibrate(sim.model, sim.quantizers(), calibrate_fn, (sim.model, batches))
        32
    """
    quantizers = [m for m in model.modules() if isinstance(m, QuantizerBase)]
    snapshots = [(q, q.state_snapshot()) for q in quantizers]
    stage = ["computing parameter encodings"]
    group = process_group if is_distributed(process_group) else _SINGLE_PROCESS
    try:
        passes = _calibrate(model, refs, forward_pass_callback, args, stage, group, timeout)
    except BaseException as exc:
        if (group is not _SINGLE_PROCESS and isinstance(exc, Exception)
                and stage[0] in _BEFORE_REDUCTION):
            # the other ranks are waiting in the failure check: tell them (never a hang)
            with contextlib.suppress(CalibrationError):
                agree_on_failure(True, group, timeout)
        for quantizer, snapshot in snapshots:
            quantizer.restore_snapshot(snapshot)
        note = ("fxquant: compute_encodings was rolled back; every quantizer of the sim is as "
                "it was before the call")
        if isinstance(exc, FxQuantError) or not isinstance(exc, Exception):
            exc.add_note(note)
            raise
        name = getattr(forward_pass_callback, "__qualname__", repr(forward_pass_callback))
        raise CalibrationError(
            f"compute_encodings failed while {stage[0]} (forward_pass_callback {name}): "
            f"{type(exc).__name__}: {exc}. The sim's encodings were rolled back to what they "
            "were before this call; fix the cause and call compute_encodings again") from exc
    logger.info("computed encodings of %d quantizers over %d forward passes", len(quantizers),
                passes)
    return passes


def _calibrate(model: nn.Module, refs: list[QuantizerRef], forward_pass_callback: Callable[..., Any],
               args: tuple[Any, ...], stage: list[str], group: Any,
               timeout: datetime.timedelta) -> int:
    """The calibration itself; ``stage[0]`` says what it is doing, for the error message.
    ``group``: the process group to reduce statistics over, or ``_SINGLE_PROCESS``."""
    compute_param_encodings(model, refs)
    activations = [r for r in refs if r.kind != "param"]
    progress = tqdm(desc="calibration forward passes", unit="batch", leave=False, disable=None)
    passes = [0]     # counted here: a disabled bar (no terminal) does not count

    def count(*_: Any) -> None:
        passes[0] += 1
        progress.update(1)

    hook = model.register_forward_pre_hook(count)
    try:
        with contextlib.ExitStack() as stack:
            for ref in activations:
                stack.enter_context(ref.quantizer.calibration())
            stack.enter_context(torch.no_grad())
            stack.enter_context(parametrize.cached())
            stage[0] = "running forward_pass_callback"
            forward_pass_callback(*args)
            if group is not _SINGLE_PROCESS:
                stage[0] = "checking that every rank calibrated"
                failing = agree_on_failure(False, group, timeout)
                if failing:
                    raise CalibrationError(
                        f"rank(s) {', '.join(map(str, failing))} failed during calibration "
                        f"(see their errors); this rank's calibration is rolled back")
                stage[0] = "reducing statistics across ranks"
                reduce_statistics([ref.quantizer.encoding_analyzer for ref in activations
                                   if isinstance(ref.quantizer, AffineQuantizer)
                                   and not ref.quantizer.is_frozen], group, timeout)
            stage[0] = "computing activation encodings"
    finally:
        hook.remove()
        progress.close()
    return passes[0]
