"""Modules that stand for functional ops, so that every op can own quantizers.

The preparer (:class:`fxquant.passes.prepare.PrepareModelPass`) replaces ``x + y``,
``torch.cat(...)``, ``x.view(...)`` and friends by one of these modules. Each calls exactly the
function (or tensor method) it replaced, with the same arguments, so outputs are bit-identical;
the class tells later passes which op it is (``Add`` → ONNX ``Add``, ``Cat`` → ``Concat`` …).

Example:
    >>> add = Add(operator.add)
    >>> add(torch.ones(2), torch.ones(2))
    tensor([2., 2.])
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FunctionalModule", "Add", "Sub", "Mul", "Div", "MatMul", "Cat", "Stack", "Interpolate",
    "Reshape", "Permute", "Flatten", "Squeeze", "Unsqueeze", "Mean", "Sum", "Pool", "Pad",
    "Split", "Neg", "Exp", "Pow", "Sqrt", "Clamp", "Normalize", "Erf",
    "module_class_for",
]


class FunctionalModule(nn.Module):
    """A module that calls one torch function or tensor method with the arguments it is given.

    Args:
        fn: the function to call (e.g. ``operator.add``, ``torch.cat``), or
        method: the name of a tensor method to call on the first argument (e.g. ``"view"``).
    """

    #: Always a leaf when traced (see ``fxquant.tracing.LEAF_MARKER``): re-tracing a prepared
    #: model keeps ``layer1.0.module_add`` one ``call_module`` node, so preparing is idempotent.
    _fxquant_leaf = True

    def __init__(self, fn: Callable[..., Any] | None = None, method: str | None = None) -> None:
        super().__init__()
        if (fn is None) == (method is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of fn or method")
        self.fn = fn
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.method is not None:
            return getattr(args[0], self.method)(*args[1:], **kwargs)
        return self.fn(*args, **kwargs)

    def extra_repr(self) -> str:
        if self.method is not None:
            return f"Tensor.{self.method}"
        module = getattr(self.fn, "__module__", None) or ""
        name = getattr(self.fn, "__name__", repr(self.fn))
        return f"{module}.{name}" if module else name


# One class per op family: the class is what later passes and the quantsim config dispatch on.
class Add(FunctionalModule):
    """``x + y``, ``torch.add``, ``x.add_(y)`` …"""


class Sub(FunctionalModule):
    """``x - y``, ``torch.sub`` …"""


class Mul(FunctionalModule):
    """``x * y``, ``torch.mul`` …"""


class Div(FunctionalModule):
    """``x / y``, ``torch.div`` …"""


class MatMul(FunctionalModule):
    """``x @ y``, ``torch.matmul``, ``torch.bmm``."""


class Cat(FunctionalModule):
    """``torch.cat`` / ``torch.concat``."""


class Stack(FunctionalModule):
    """``torch.stack``."""


class Interpolate(FunctionalModule):
    """``F.interpolate``."""


class Reshape(FunctionalModule):
    """``x.view``, ``x.reshape``, ``torch.reshape`` (data movement)."""


class Permute(FunctionalModule):
    """``x.permute``, ``x.transpose``, ``torch.transpose`` (data movement)."""


class Flatten(FunctionalModule):
    """``torch.flatten`` / ``x.flatten`` (data movement)."""


class Squeeze(FunctionalModule):
    """``x.squeeze`` (data movement)."""


class Unsqueeze(FunctionalModule):
    """``x.unsqueeze`` (data movement)."""


class Split(FunctionalModule):
    """``torch.split``, ``torch.chunk``, ``x.chunk`` (data movement)."""


class Mean(FunctionalModule):
    """``x.mean`` / ``torch.mean``."""


class Sum(FunctionalModule):
    """``x.sum`` / ``torch.sum``."""


class Pool(FunctionalModule):
    """Functional pooling (``F.adaptive_avg_pool2d``, ``F.max_pool2d`` …)."""


class Pad(FunctionalModule):
    """``F.pad``."""


class Neg(FunctionalModule):
    """``-x``."""


class Exp(FunctionalModule):
    """``torch.exp``."""


class Pow(FunctionalModule):
    """``x ** y``, ``torch.pow``."""


class Sqrt(FunctionalModule):
    """``torch.sqrt``, ``torch.rsqrt``."""


class Clamp(FunctionalModule):
    """``torch.clamp`` / ``x.clamp``."""


class Normalize(FunctionalModule):
    """``F.layer_norm``, ``F.normalize``, ``F.group_norm`` with given parameters."""


class Erf(FunctionalModule):
    """``torch.erf``."""


_FUNCTIONS: dict[Any, type[FunctionalModule]] = {
    operator.add: Add, operator.iadd: Add, torch.add: Add,
    operator.sub: Sub, operator.isub: Sub, torch.sub: Sub, torch.subtract: Sub,
    operator.mul: Mul, operator.imul: Mul, torch.mul: Mul, torch.multiply: Mul,
    operator.truediv: Div, operator.itruediv: Div, torch.div: Div, torch.true_divide: Div,
    operator.matmul: MatMul, torch.matmul: MatMul, torch.bmm: MatMul,
    torch.cat: Cat, torch.concat: Cat, torch.concatenate: Cat, torch.stack: Stack,
    F.interpolate: Interpolate,
    torch.reshape: Reshape, torch.permute: Permute, torch.transpose: Permute,
    torch.flatten: Flatten, torch.squeeze: Squeeze, torch.unsqueeze: Unsqueeze,
    torch.split: Split, torch.chunk: Split,
    torch.mean: Mean, torch.sum: Sum,
    F.adaptive_avg_pool1d: Pool, F.adaptive_avg_pool2d: Pool, F.adaptive_avg_pool3d: Pool,
    F.adaptive_max_pool2d: Pool, F.avg_pool1d: Pool, F.avg_pool2d: Pool, F.avg_pool3d: Pool,
    F.max_pool1d: Pool, F.max_pool2d: Pool, F.max_pool3d: Pool,
    F.pad: Pad, operator.neg: Neg, torch.neg: Neg, torch.exp: Exp,
    operator.pow: Pow, torch.pow: Pow, torch.sqrt: Sqrt, torch.rsqrt: Sqrt,
    torch.clamp: Clamp, torch.clip: Clamp,
    F.layer_norm: Normalize, F.normalize: Normalize, F.group_norm: Normalize,
    torch.erf: Erf,
}

_METHODS: dict[str, type[FunctionalModule]] = {
    "add": Add, "add_": Add, "__add__": Add, "__radd__": Add, "__iadd__": Add,
    "sub": Sub, "sub_": Sub, "mul": Mul, "mul_": Mul, "div": Div, "div_": Div,
    "matmul": MatMul, "bmm": MatMul,
    "view": Reshape, "reshape": Reshape, "permute": Permute, "transpose": Permute,
    "flatten": Flatten, "squeeze": Squeeze, "unsqueeze": Unsqueeze,
    "chunk": Split, "split": Split, "mean": Mean, "sum": Sum,
    "exp": Exp, "pow": Pow, "sqrt": Sqrt, "rsqrt": Sqrt, "clamp": Clamp, "clip": Clamp,
    "neg": Neg,
}


def module_class_for(op: str, target: Any) -> type[FunctionalModule] | None:
    """The module class standing for an fx ``call_function``/``call_method`` target, or None.

    Example:
        >>> module_class_for("call_function", operator.add)
        <class 'fxquant.nn.Add'>
    """
    if op == "call_function":
        try:
            return _FUNCTIONS.get(target)
        except TypeError:  # unhashable target
            return None
    if op == "call_method":
        return _METHODS.get(target)
    return None
