"""OnnxExportApiArgs (AIMET's spelling of the ONNX export options) and as_export_kwargs."""
from __future__ import annotations

import pytest

from fxquant.core.onnx_args import OnnxExportApiArgs, as_export_kwargs
from fxquant.errors import ConfigError


def test_kwargs_hold_only_the_options_that_are_set() -> None:
    args = OnnxExportApiArgs(opset_version=17, dynamic_axes={"x": {0: "batch"}})
    assert args.kwargs == {"opset_version": 17, "dynamic_axes": {"x": {0: "batch"}}}
    assert OnnxExportApiArgs().kwargs == {}
    assert as_export_kwargs(args) == args.kwargs
    assert as_export_kwargs(None) == {}
    plain = {"opset_version": 18}
    assert as_export_kwargs(plain) == plain and as_export_kwargs(plain) is not plain


@pytest.mark.parametrize("field", ["input_names", "output_names"])
def test_names_are_refused_with_the_reason(field) -> None:
    with pytest.raises(ConfigError, match=rf"OnnxExportApiArgs.{field}=\['a'\]: fxquant names "
                                          rf".*leave {field} unset"):
        as_export_kwargs(OnnxExportApiArgs(**{field: ["a"]}))


def test_other_types_are_refused() -> None:
    with pytest.raises(ConfigError, match="onnx_export_args must be a dict .* got list"):
        as_export_kwargs([("opset_version", 17)])
