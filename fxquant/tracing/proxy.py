"""The proxy of concrete mode: a ``torch.fx.Proxy`` that knows its value on the example inputs.

Questions about values (``len()``, iteration, ``bool()``, ``int()``, ``in``, ``keys()``) are
answered from that value and each answer is recorded as a specialization by the tracer
(:class:`~fxquant.tracing.concrete.ConcreteTracerMixin`); a question whose answer depends on tensor
data is refused with :class:`~fxquant.errors.DataDependentError`. :func:`describe` renders a node
argument as the short Python-like expression those records show.

Example:
    >>> describe(size_node)                  # a node computing x.shape[-2:]
    'x.shape[-2:]'
"""
from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch
from torch.fx import Node
from torch.fx.proxy import Attribute, Proxy

from fxquant.errors import TraceError

if TYPE_CHECKING:
    from fxquant.tracing.concrete import ConcreteTracerMixin

__all__ = ["ConcreteProxy", "BINARY_SYMBOLS", "describe", "is_proxy", "is_lazy_attribute"]

BINARY_SYMBOLS = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
    operator.floordiv: "//", operator.mod: "%", operator.pow: "**", operator.lt: "<",
    operator.le: "<=", operator.gt: ">", operator.ge: ">=", operator.eq: "==",
    operator.ne: "!=", operator.and_: "&", operator.or_: "|",
}


# Type checks on proxies go through type(): isinstance() would consult ConcreteProxy.__class__.
def is_proxy(obj: Any) -> bool:
    return issubclass(type(obj), Proxy)


def is_lazy_attribute(obj: Any) -> bool:
    return issubclass(type(obj), Attribute) and obj._node is None


def describe(arg: Any, depth: int = 4) -> str:
    """A short Python-like expression for a node argument, for specialization records."""
    for level in range(depth, -1, -1):
        text = _expression(arg, level)
        if len(text) <= 100:
            return text
    return text[:97] + "..."


def _expression(arg: Any, depth: int) -> str:
    if is_proxy(arg):
        if is_lazy_attribute(arg):
            return f"{_expression(arg.root, depth)}.{arg.attr}"
        arg = arg.node
    if isinstance(arg, slice):
        parts = [_expression(p, depth) if p is not None else "" for p in (arg.start, arg.stop)]
        step = f":{_expression(arg.step, depth)}" if arg.step is not None else ""
        return ":".join(parts) + step
    if isinstance(arg, (list, tuple)) and not isinstance(arg, torch.Size):
        inner = ", ".join(_expression(a, depth) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner})"
    if not isinstance(arg, Node):
        return repr(arg)
    node = arg
    if depth <= 0 or node.op in ("placeholder", "get_attr", "call_module"):
        return node.name if node.op != "get_attr" else str(node.target)
    args = node.args
    sub = depth - 1
    if node.op == "call_function":
        if node.target is getattr and len(args) == 2:
            return f"{_expression(args[0], sub)}.{args[1]}"
        if node.target is operator.getitem:
            index = args[1]
            text = ", ".join(_expression(i, sub) for i in index) if isinstance(index, tuple) \
                else _expression(index, sub)
            return f"{_expression(args[0], sub)}[{text}]"
        if node.target in BINARY_SYMBOLS and len(args) == 2:
            return f"({_expression(args[0], sub)} {BINARY_SYMBOLS[node.target]} " \
                   f"{_expression(args[1], sub)})"
        name = getattr(node.target, "__name__", str(node.target))
        return f"{name}({', '.join(_expression(a, sub) for a in args)})"
    if node.op == "call_method" and args:
        rest = ", ".join(_expression(a, sub) for a in args[1:])
        return f"{_expression(args[0], sub)}.{node.target}({rest})"
    return node.name


def _tracer(proxy: Proxy) -> ConcreteTracerMixin:
    return proxy.tracer  # type: ignore[return-value]


def _check_question(proxy: Proxy, question: str, value: Any, taint: str | None,
                    structural: bool) -> str:
    """Raises when ``question`` on ``proxy`` would depend on data; else returns the record kind."""
    container = isinstance(value, (list, tuple, dict)) and not isinstance(value, torch.Size)
    if container and structural:
        return "structure"
    if taint:
        raise _tracer(proxy).refuse(proxy, question, f"derived from {taint}")
    if container:
        return "structure"
    if isinstance(value, (torch.Tensor, torch.Size)):
        return "shape"
    return "value"


class ConcreteProxy(Proxy):
    """A ``torch.fx.Proxy`` that knows its value on the example inputs (see module docstring)."""

    def __repr__(self) -> str:
        return f"ConcreteProxy({self.node.name})"

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D401 - lets isinstance(p, torch.Tensor / int) answer
        cls = self.__dict__.get("_fxquant_class")
        if cls is None:
            try:
                value = _tracer(self).state(self)[0]
            except Exception:  # noqa: BLE001 - any failure: behave as a plain proxy
                value = None
            scalar = isinstance(value, (torch.Tensor, bool, int, float))
            cls = type(value) if scalar else type(self)
            self.__dict__["_fxquant_class"] = cls
        return cls

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)
        value = _tracer(self).state(self)[0]
        if not hasattr(value, k):
            raise AttributeError(f"{type(value).__name__!r} object has no attribute {k!r}")
        attribute = _ConcreteAttribute(self, k)
        if getattr(value, k) is None:
            _tracer(self).record(attribute, f"{describe(attribute)} is None", "structure")
            return None
        return attribute

    def __bool__(self) -> bool:
        value, taint, structural = _tracer(self).state(self)
        if isinstance(value, torch.Tensor):
            raise _tracer(self).refuse(self, "bool()", "control flow on a tensor value")
        kind = _check_question(self, "bool()", value, taint, structural)
        result = bool(value)
        text = describe(self)
        _tracer(self).record(self, f"{text} is {result}" if self.node.op == "call_function"
                             and self.node.target in BINARY_SYMBOLS
                             else f"bool({text}) is {result}", kind)
        return result

    def __len__(self) -> int:
        value, taint, structural = _tracer(self).state(self)
        kind = _check_question(self, "len()", value, taint, structural)
        length = len(value)
        _tracer(self).record(self, f"len({describe(self)}) == {length}", kind)
        return length

    def __iter__(self) -> Iterator[Any]:
        value, taint, structural = _tracer(self).state(self)
        kind = _check_question(self, "iteration", value, taint, structural)
        if isinstance(value, Mapping):
            keys = list(value.keys())
            _tracer(self).record(self, f"keys({describe(self)}) == {keys!r}", kind)
            return iter(keys)
        if not isinstance(value, (torch.Tensor, list, tuple)):
            raise TraceError(f"cannot iterate `{describe(self)}`: its value is a "
                             f"{type(value).__qualname__}, not a tensor, list, tuple or dict")
        length = len(value)
        _tracer(self).record(self, f"len({describe(self)}) == {length}", kind)
        return iter([self[i] for i in range(length)])

    def keys(self) -> Any:  # ``**proxy`` and ``proxy.keys()``
        value, taint, structural = _tracer(self).state(self)
        if not isinstance(value, Mapping):
            return _ConcreteAttribute(self, "keys")()
        kind = _check_question(self, "keys()", value, taint, structural)
        _tracer(self).record(self, f"keys({describe(self)}) == {list(value.keys())!r}", kind)
        return value.keys()

    def __contains__(self, item: Any) -> bool:
        value, taint, structural = _tracer(self).state(self)
        if isinstance(value, torch.Tensor):
            raise _tracer(self).refuse(self, "`in`", "membership in a tensor")
        if isinstance(value, Mapping) and not is_proxy(item):
            kind = _check_question(self, "`in`", value, taint, structural)
            result = item in value
            _tracer(self).record(self, f"({item!r} in {describe(self)}) is {result}", kind)
            return result
        return any(element is item or bool(element == item) for element in self)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def _number(self, convert: Callable[[Any], Any]) -> Any:
        value, taint, structural = _tracer(self).state(self)
        question = f"{convert.__name__}()"
        if isinstance(value, torch.Tensor):
            raise _tracer(self).refuse(self, question, "a tensor value read as a Python number")
        kind = _check_question(self, question, value, taint, structural)
        result = convert(value)
        _tracer(self).record(self, f"{convert.__name__}({describe(self)}) == {result!r}", kind)
        return result

    def __int__(self) -> int:
        return self._number(int)

    def __float__(self) -> float:
        return self._number(float)

    def __index__(self) -> int:
        return self._number(operator.index)

    def __complex__(self) -> complex:
        return self._number(complex)

    def __round__(self, ndigits: Any = None) -> Any:
        args = (self,) if ndigits is None else (self, ndigits)
        return self.tracer.create_proxy("call_function", round, args, {})

    def __trunc__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.trunc, (self,), {})

    def __floor__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.floor, (self,), {})

    def __ceil__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.ceil, (self,), {})


class _ConcreteAttribute(ConcreteProxy, Attribute):
    """``proxy.attr`` before it is used: a method call records one ``call_method`` node."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.attr in ("keys", "values", "items") and not args and not kwargs:
            value, taint, structural = _tracer(self).state(self.root)
            if isinstance(value, Mapping):
                kind = _check_question(self.root, f"{self.attr}()", value, taint, structural)
                keys = list(value.keys())
                _tracer(self).record(self.root, f"keys({describe(self.root)}) == {keys!r}", kind)
                if self.attr == "keys":
                    return value.keys()
                if self.attr == "values":
                    return [self.root[k] for k in keys]
                return [(k, self.root[k]) for k in keys]
        return Attribute.__call__(self, *args, **kwargs)
