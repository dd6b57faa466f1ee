"""Calibration: encoding analyzers collect statistics batch by batch and turn them into encodings.

All analyzers keep their statistics on the input's device, never make an accelerator wait for the
host in ``update_stats`` (no ``.item()``, no Python branches on device values; on CPU, where a
read-back is free, one such branch skips the NaN/Inf masking of all-finite batches), exclude
NaN/Inf values and count them (``compute_encoding`` logs a warning naming the layer), and work
per tensor or per channel (``axis``; every channel gets its own statistics, computed in one batched
pass, not a Python loop).

* ``MinMaxEncodingAnalyzer`` ("tf", "min_max"): running min/max
  (:mod:`fxquant.quantsim.minmax_analyzer`, with the ``EncodingAnalyzer`` base class).
* ``TfEnhancedEncodingAnalyzer`` ("tf_enhanced"): AIMET's TF-enhanced search (``SPEC.md`` §5)
  over a 512-bin histogram.
* ``PercentileEncodingAnalyzer`` ("percentile"): the range between two percentiles of a
  (2048-bin) histogram; memory stays bounded by the histogram whatever the number of batches.
* ``MseEncodingAnalyzer`` ("mse"): the clipping range, among 100 fractions of the observed range,
  with the smallest quantization MSE over a (512-bin) histogram.

The histogram analyzers live in :mod:`fxquant.quantsim.histogram_analyzers`; this module is the
entry point that picks one per quantization scheme (:func:`get_encoding_analyzer`).

Histograms (all histogram analyzers): the first batch's ``[min, max]`` defines the bins; a later
batch outside it widens the histogram, never beyond 3x the first range (centred on it, as AIMET's
``[c - 1.5 R, c + 1.5 R]``), re-binning old counts proportionally to the overlap of old and new
bins. Values beyond that limit land in the edge bins. A first range of zero width (constant or
all-zero batches) fixes the limit only once a batch with spread arrives.

Example:
    >>> import torch
    >>> analyzer = get_encoding_analyzer("tf_enhanced", name="relu1")
    >>> analyzer.update_stats(torch.randn(1000).relu())
    >>> enc = analyzer.compute_encoding(bitwidth=8, symmetric=False)
    >>> int(enc.zero_point)
    0
"""
from __future__ import annotations

from fxquant.errors import ConfigError
from fxquant.quantsim.histogram_analyzers import (MseEncodingAnalyzer, PercentileEncodingAnalyzer,
                                                  TfEnhancedEncodingAnalyzer)
from fxquant.quantsim.minmax_analyzer import EncodingAnalyzer, MinMaxEncodingAnalyzer
from fxquant.quantsim.quant_scheme import QuantScheme

__all__ = [
    "EncodingAnalyzer", "MinMaxEncodingAnalyzer", "TfEnhancedEncodingAnalyzer",
    "PercentileEncodingAnalyzer", "MseEncodingAnalyzer", "get_encoding_analyzer",
]

_ANALYZERS = {
    "tf": MinMaxEncodingAnalyzer,
    "tf_enhanced": TfEnhancedEncodingAnalyzer,
    "percentile": PercentileEncodingAnalyzer,
    "mse": MseEncodingAnalyzer,
}


def get_encoding_analyzer(scheme: QuantScheme | str, axis: int | None = None,
                          name: str | None = None, **kwargs: object) -> EncodingAnalyzer:
    """Build the analyzer for a quantization scheme.

    Args:
        scheme: a ``QuantScheme`` (range-learning schemes give their initialisation analyzer) or
            one of "tf", "min_max", "tf_enhanced", "percentile", "mse" or a full scheme name.
        axis: per-channel axis or None.
        name: layer name used in messages.
        **kwargs: analyzer options, e.g. ``percentile=99.9`` or ``num_bins=1024``.

    Raises:
        ConfigError: unknown scheme (the message lists the valid ones) or an option the analyzer
            lacks.

    Example:
        >>> type(get_encoding_analyzer("percentile", percentile=99.9)).__name__
        'PercentileEncodingAnalyzer'
    """
    cls = _ANALYZERS[QuantScheme.parse(scheme).calibration]
    try:
        return cls(axis=axis, name=name, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__} (scheme {scheme!r}) does not accept the options "
                          f"{sorted(kwargs)}: {e}") from e

