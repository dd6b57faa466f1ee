"""Per-layer MSE between FP32 and quantized layer outputs, streamed: per batch the sim runs once
with its quantizers off (the FP32 model: the same folded graph) and once with them on, and every
layer's comparison sums (:class:`fxquant.core.metrics.PairAccumulator`: signal and noise power,
NaN/Inf count) are added up on the device (no host synchronisation per batch), so the same pass
gives each layer's SQNR too.

AIMET runs two forward passes per layer per batch (one module at a time); this runs two per
batch for all layers at once. Its value is the mean over all elements and batches of
``(fp32 - quantized)²`` (AIMET divides the sum of per-batch means by the number of samples).

Example:
    >>> sums = per_layer_sums(sim, groups, batches, num_batches=4)
    >>> sums["conv1"].noise / sums["conv1"].numel, sums["conv1"].sqnr_db      # MSE, SQNR
    (3.1e-05, 38.2)
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Iterable, Mapping

import torch
from tqdm.auto import tqdm

from fxquant._fx_utils import as_args
from fxquant.analysis.quantizer_groups import LayerQuantizers, enabled_refs, only_enabled
from fxquant.core.metrics import PairAccumulator, PairSums
from fxquant.quantsim.quantsim import QuantizationSimModel

__all__ = ["per_layer_sums", "mse_of", "model_device", "to_device"]

logger = logging.getLogger(__name__)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor or a nest of them) on ``device``."""
    return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), batch)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    leaves = [v for v in torch.utils._pytree.tree_leaves(value) if isinstance(v, torch.Tensor)]
    return leaves[0] if len(leaves) == 1 else None


def mse_of(sums: PairSums) -> float:
    """The mean squared error of compared sums (NaN when nothing was compared)."""
    return sums.noise / sums.numel if sums.numel else float("nan")


def per_layer_sums(sim: QuantizationSimModel, groups: Mapping[str, LayerQuantizers],
                   batches: Iterable[Any], num_batches: int) -> dict[str, PairSums]:
    """``{layer: PairSums}`` of FP32 (reference) vs quantized outputs over the first
    ``num_batches`` batches, for the layers of ``groups`` (:func:`mse_of` gives the MSE).

    A batch is passed as ``model(batch)``, or ``model(*batch)`` for a tuple or list. The
    quantized side of a layer is its output after its output quantizer (the layer's output
    when it has none).

    Raises:
        ValueError: ``batches`` yielded no batch.
    """
    model = sim.model
    modules = dict(model.named_modules())
    output_quantizers = {r.layer: r.module_path for r in sim.quantizers() if r.kind == "output"}
    device = model_device(model)
    reference: dict[tuple[str, int], torch.Tensor] = {}
    sums = {layer: PairAccumulator() for layer in groups}
    calls: dict[str, int] = {}
    phase = ["fp32"]

    def hook_for(layer: str) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            tensor = _first_tensor(output)
            if tensor is None or not tensor.is_floating_point():
                return
            i = calls.get(layer, 0)
            calls[layer] = i + 1
            if phase[0] == "fp32":
                reference[(layer, i)] = tensor.detach()
                return
            ref = reference.pop((layer, i), None)
            if ref is not None and ref.shape == tensor.shape:
                sums[layer].update(ref, tensor.detach())
        return hook

    handles = []
    for layer in groups:
        target = output_quantizers.get(layer, layer)
        if target in modules:
            handles.append(modules[target].register_forward_hook(hook_for(layer)))
    seen = 0
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in tqdm(itertools.islice(batches, num_batches), total=num_batches,
                              desc="per-layer MSE", unit="batch", leave=False, disable=None):
                args = as_args(to_device(batch, device))
                phase[0], calls = "fp32", {}
                with only_enabled(sim, [], enabled_refs(sim)):
                    model(*args)
                phase[0], calls = "quantized", {}
                model(*args)
                reference.clear()
                seen += 1
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ValueError("per-layer MSE: the unlabeled dataset yielded no batch; pass an iterable "
                         "of model inputs to enable_per_layer_mse_loss")
    if seen < num_batches:
        logger.warning("per-layer MSE: the dataset had %d batch(es), fewer than num_batches=%d",
                       seen, num_batches)
    results = {layer: acc.result() for layer, acc in sums.items()}   # read back once each
    return {layer: r for layer, r in results.items() if r.numel}
