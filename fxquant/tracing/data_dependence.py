"""Which torch operations make a value depend on tensor data, and the probe that notices them.

Concrete mode never specializes control flow on data (``bool()`` / ``int()`` of a tensor) or on
anything derived from a data-dependent operation (``.item()``, ``.tolist()``, ``nonzero``,
boolean-mask indexing, ``torch.where(cond)``, ``unique``, tensor ``repeat_interleave``, ...).
:class:`DataDependenceProbe` watches the torch operations a node runs (a ``TorchFunctionMode``)
and notes the first such operation; the node's value is then *tainted*. Rank, dtype and device
queries (:data:`METADATA_ATTRS`, :data:`METADATA_METHODS`) do not depend on data and clear the
taint.

Example:
    >>> with DataDependenceProbe() as probe:
    ...     _ = torch.tensor([1, 0, 2]).nonzero()
    >>> probe.reason
    'nonzero()'
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["DataDependenceProbe", "data_dependent_reason", "METADATA_ATTRS", "METADATA_METHODS",
           "SHAPE_DEPENDENT_COUNT"]

# Queries whose answer does not depend on data even for a tensor of data-dependent shape.
METADATA_ATTRS = frozenset({"dtype", "device", "ndim", "layout", "is_cuda", "is_sparse",
                             "is_quantized", "is_meta", "requires_grad", "is_leaf"})
METADATA_METHODS = frozenset({"dim", "ndimension", "is_floating_point", "is_complex",
                               "get_device", "element_size", "is_contiguous", "is_signed"})
# torch functions / Tensor methods whose result (or result shape) depends on tensor values.
_DATA_DEPENDENT = frozenset({
    "item", "tolist", "numpy", "__int__", "__float__", "__index__", "__complex__",
    "_local_scalar_dense", "nonzero", "argwhere", "masked_select", "unique", "_unique",
    "_unique2", "unique_dim", "unique_consecutive", "bincount", "nms",
})
# torch ops returning a tuple whose *length* follows an input's shape.
SHAPE_DEPENDENT_COUNT = frozenset({"split", "split_with_sizes", "unbind", "chunk",
                                    "tensor_split", "hsplit", "vsplit", "dsplit", "nonzero",
                                    "where", "meshgrid", "unsafe_split", "unsafe_chunk"})


class DataDependenceProbe(TorchFunctionMode):
    """Notes the first data-dependent torch operation run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def __torch_function__(self, func: Callable[..., Any], types_: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.reason is None:
            self.reason = data_dependent_reason(func, args, kwargs)
        return func(*args, **kwargs)


def data_dependent_reason(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    name = getattr(func, "__name__", "") or ""
    name = name.split(".")[0]
    if name == "__getitem__" and len(args) > 1 and _has_bool_index(args[1]):
        return "boolean-mask indexing"
    if name == "where" and len(args) + len(kwargs) == 1:
        return "torch.where(condition)"
    if name == "repeat_interleave":
        repeats = kwargs.get("repeats", args[1] if len(args) > 1 else None)
        if isinstance(repeats, torch.Tensor) or (len(args) == 1 and not kwargs):
            return "repeat_interleave(tensor repeats)"
    if name in _DATA_DEPENDENT:
        return f"{name}()"
    return None


def _has_bool_index(index: Any) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype in (torch.bool, torch.uint8)
    if isinstance(index, (tuple, list)):
        return any(_has_bool_index(i) for i in index)
    return False
