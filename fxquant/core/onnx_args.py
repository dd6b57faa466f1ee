"""ONNX export options as AIMET spells them (``aimet_torch.onnx_utils.OnnxExportApiArgs``).

``sim.export(..., onnx_export_args=OnnxExportApiArgs(opset_version=17))`` and a plain dict of
``torch.onnx.export`` keyword arguments are equivalent; :func:`as_export_kwargs` turns either into
the dict the exporter takes.

Example:
    >>> as_export_kwargs(OnnxExportApiArgs(opset_version=17))
    {'opset_version': 17}
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fxquant.errors import ConfigError

__all__ = ["OnnxExportApiArgs", "as_export_kwargs"]


@dataclasses.dataclass(frozen=True)
class OnnxExportApiArgs:
    """Options of the ``torch.onnx.export`` call made by ``sim.export`` / ``export_onnx``.

    Attributes:
        opset_version: ONNX opset (None: the exporter's default; sim.export uses 21).
        input_names: must stay None — fxquant names ONNX inputs after the forward's parameters
            and outputs after the layers that produce them, so the encodings match the graph.
        output_names: as ``input_names``.
        dynamic_axes: ``torch.onnx.export``'s ``dynamic_axes`` (None: static shapes).

    Example:
        >>> sim.export("out", "model", dummy, onnx_export_args=OnnxExportApiArgs(opset_version=17))
    """

    opset_version: int | None = None
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    dynamic_axes: Mapping[str, Any] | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        """The options that are set, as ``torch.onnx.export`` keyword arguments (AIMET's name)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


def as_export_kwargs(onnx_export_args: OnnxExportApiArgs | Mapping[str, Any] | None
                     ) -> dict[str, Any]:
    """``onnx_export_args`` (None, a dict or an :class:`OnnxExportApiArgs`) as a new dict.

    Raises:
        ConfigError: an ``OnnxExportApiArgs`` sets ``input_names``/``output_names`` (fxquant names
            the ONNX values itself), or the argument has another type.

    Example:
        >>> as_export_kwargs({"opset_version": 18})
        {'opset_version': 18}
    """
    if onnx_export_args is None:
        return {}
    if isinstance(onnx_export_args, OnnxExportApiArgs):
        named = [n for n in ("input_names", "output_names")
                 if getattr(onnx_export_args, n) is not None]
        if named:
            raise ConfigError(
                f"OnnxExportApiArgs.{named[0]}={getattr(onnx_export_args, named[0])!r}: fxquant "
                "names the ONNX inputs after the forward's parameters and the outputs after the "
                "layers that produce them, so that the encodings file matches the graph; leave "
                f"{' and '.join(named)} unset")
        return onnx_export_args.kwargs
    if isinstance(onnx_export_args, Mapping):
        return dict(onnx_export_args)
    raise ConfigError(f"onnx_export_args must be a dict of torch.onnx.export keyword arguments or "
                      f"an OnnxExportApiArgs, got {type(onnx_export_args).__qualname__}")
