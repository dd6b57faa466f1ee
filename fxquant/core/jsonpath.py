"""The one JSON-path validator: configs, encodings files and dump manifests are checked with it.

Every error names where the document came from, the JSON path of the bad value, the value and what
is allowed, in one form::

    quantsim config (dict): defaults.ops.is_output_quantized: invalid value 1; expected one of
    'True', 'False' (JSON true/false also accepted)

JSON paths are written as in JavaScript: ``op_type.Softmax.encoding_constraints.min``,
``supergroups[2].op_list[1]``, ``op_type["Conv 2d"]`` (keys that are not identifiers are quoted);
the document itself is ``<root>``. A :class:`JsonValidator` raises a configurable error class
(:class:`~fxquant.errors.ConfigError` by default), so each loader keeps its own error type.

Example:
    >>> v = JsonValidator("config file 'a.json'")
    >>> ops = v.object({"is_output_quantized": "True"}, "defaults.ops")
    >>> v.flag(ops, "is_output_quantized", "defaults.ops")
    True
    >>> v.flag({"is_output_quantized": 1}, "is_output_quantized", "defaults.ops")
    Traceback (most recent call last):
    ...
    fxquant.errors.ConfigError: config file 'a.json': defaults.ops.is_output_quantized: invalid \
value 1; expected one of 'True', 'False' (JSON true/false also accepted)
"""
from __future__ import annotations

import difflib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from fxquant.errors import ConfigError

__all__ = ["FLAG_VALUES", "JsonValidator", "got", "index", "join", "json_type", "loads", "quoted",
           "show", "suggest"]

logger = logging.getLogger(__name__)

#: The AIMET spelling of JSON flags (JSON ``true``/``false`` are accepted as well).
FLAG_VALUES: tuple[str, ...] = ("True", "False")
_FLAG_ALLOWED = "expected one of 'True', 'False' (JSON true/false also accepted)"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
               tuple: "array", dict: "object", Mapping: "object", type(None): "null"}


# -------------------------------------------------------------------------------------------------
# Paths and renderings
# -------------------------------------------------------------------------------------------------
def join(path: str, key: str) -> str:
    """JSON path of ``key`` inside the object at ``path`` (``""`` is the root).

    Example:
        >>> join("op_type", "Softmax"), join("op_type", "Conv 2d"), join("", "defaults")
        ('op_type.Softmax', 'op_type["Conv 2d"]', 'defaults')
    """
    if _IDENT.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def index(path: str, i: int) -> str:
    """JSON path of item ``i`` of the array at ``path``.

    Example:
        >>> index("supergroups", 2)
        'supergroups[2]'
    """
    return f"{path}[{i}]"


def show(value: Any) -> str:
    """A short rendering of a JSON value for messages (strings quoted, ``null``, ``true``).

    Example:
        >>> show("True"), show(None), show(False), show([0, 1])
        ("'True'", 'null', 'false', '[0, 1]')
    """
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = _short_repr(value)
        except RecursionError:
            text = f"<{json_type(value)} nested too deeply to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def _short_repr(value: Any) -> str:
    try:
        return repr(value)[:200]
    except (RecursionError, ValueError):  # deep nesting; an int too long for str()
        return f"<{type(value).__name__}>"


def json_type(value: Any) -> str:
    """The JSON type name of a parsed value (``"object"``, ``"array"``, ``"number"`` …).

    Example:
        >>> json_type({}), json_type([1]), json_type(1.5), json_type(True), json_type(None)
        ('object', 'array', 'number', 'boolean', 'null')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def got(value: Any) -> str:
    """``"got <type> <value>"`` for messages.

    Example:
        >>> got([0, 1]), got(None)
        ('got array [0, 1]', 'got null')
    """
    return "got null" if value is None else f"got {json_type(value)} {show(value)}"


def quoted(names: Iterable[str]) -> str:
    """``'a', 'b'`` for messages.

    Example:
        >>> quoted(["min", "max"])
        "'min', 'max'"
    """
    return ", ".join(repr(n) for n in names)


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was probably meant to be (same letters in another case, or close).

    Example:
        >>> suggest("op_types", ["defaults", "op_type"]), suggest("zzz", ["op_type"])
        ('op_type', None)
    """
    candidates = list(candidates)
    folded = {c.lower(): c for c in candidates}
    if word.lower() in folded:
        return folded[word.lower()]
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _type_names(types: type | tuple[type, ...]) -> str:
    names = list(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in
                               (types if isinstance(types, tuple) else (types,))))
    if "integer" in names and "number" in names:
        names.remove("integer")
    return " or ".join(names)


def loads(text: str, where: str, *, error_cls: type[Exception] = ConfigError,
          fix: str = "fix the file or write it again",
          log: logging.Logger | None = None) -> Any:
    """Parses JSON ``text``; a duplicated key inside one object logs a warning (the last one wins).

    Args:
        text: the document.
        where: what the document is, for messages (``"config file 'a.json'"``).
        error_cls: the error raised for invalid JSON (chained with the ``JSONDecodeError``).
        fix: what to do about invalid JSON, for the message.
        log: the logger warned on (the caller's, so its users see it under its name).

    Example:
        >>> loads('{"a": 1, "a": 2}', "x.json")["a"]
        2
    """
    warn = log or logger

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                warn.warning("%s: key %r appears twice in one JSON object; the last one is used",
                             where, key)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as e:
        raise error_cls(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; "
                        f"the file is not valid JSON ({fix})") from e
    except RecursionError as e:
        raise error_cls(f"{where}: JSON nested too deeply to read (arrays/objects nested "
                        f"deeper than Python's parser allows); no valid file nests like this "
                        f"({fix})") from e
    except ValueError as e:  # e.g. an integer literal longer than Python's digit limit
        raise error_cls(f"{where}: invalid JSON: {e}; the file is not valid JSON ({fix})") from e


# -------------------------------------------------------------------------------------------------
# The validator
# -------------------------------------------------------------------------------------------------
class JsonValidator:
    """Checks parsed JSON values; every failure raises ``error_cls("<where>: <path>: <message>")``.

    Args:
        where: what the document is (``"config file 'a.json'"``,
            ``"encodings file out/m.encodings"``).
        error_cls: the error class raised (called with the message only).

    Example:
        >>> v = JsonValidator("encodings file", error_cls=ValueError)
        >>> v.get({"bw": 8}, "bw", "activation_encodings[0]", int)
        8
    """

    def __init__(self, where: str, *, error_cls: type[Exception] = ConfigError) -> None:
        self.where = where
        self.error_cls = error_cls

    def fail(self, path: str, message: str) -> NoReturn:
        """Raises the error for the value at ``path`` (``""`` is ``<root>``).

        Example:
            >>> JsonValidator("x.json").fail("a.b", "expected a number")
            Traceback (most recent call last):
            ...
            fxquant.errors.ConfigError: x.json: a.b: expected a number
        """
        raise self.error_cls(f"{self.where}: {path or '<root>'}: {message}")

    def object(self, value: Any, path: str) -> Mapping[str, Any]:
        """``value``, checked to be a JSON object with string keys.

        Example:
            >>> JsonValidator("x").object({"a": 1}, "")
            {'a': 1}
        """
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a JSON object, {got(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {show(key)}")
        return value

    def array(self, value: Any, path: str, *, what: str = "values",
              min_items: int = 0) -> list[Any]:
        """``value``, checked to be a JSON array of at least ``min_items`` items.

        Example:
            >>> JsonValidator("x").array([1, 2], "supergroups", min_items=1)
            [1, 2]
        """
        if not isinstance(value, list):
            self.fail(path, f"expected a JSON array of {what}, {got(value)}")
        if len(value) < min_items:
            self.fail(path, f"expected at least {min_items} items, got {len(value)}: {show(value)}")
        return value

    def check_keys(self, obj: Mapping[str, Any], path: str, known: Sequence[str],
                   required: Sequence[str] = ()) -> None:
        """Unknown keys (with a did-you-mean) and missing required keys are errors.

        Example:
            >>> JsonValidator("x").check_keys({"min": 0, "mx": 1}, "c", ("min", "max"))
            Traceback (most recent call last):
            ...
            fxquant.errors.ConfigError: x: c.mx: unknown key 'mx'; did you mean 'max'? known keys: \
'min', 'max'
        """
        for key in obj:
            if key not in known:
                guess = suggest(key, known)
                hint = f"did you mean {guess!r}? " if guess else ""
                self.fail(join(path, key),
                          f"unknown key {key!r}; {hint}known keys: {quoted(known)}")
        for key in required:
            if key not in obj:
                self.fail(path, f"missing required key {key!r}; required keys: {quoted(required)}")

    def get(self, obj: Mapping[str, Any], key: str, path: str,
            types: type | tuple[type, ...]) -> Any:
        """The required ``obj[key]``, checked to be of one of ``types`` (``bool`` only if listed).

        Example:
            >>> JsonValidator("x").get({"scale": "1"}, "scale", "e[0]", (list, float))
            Traceback (most recent call last):
            ...
            fxquant.errors.ConfigError: x: e[0].scale: expected array or number, got string '1'
        """
        key_path = join(path, key)
        if key not in obj:
            self.fail(key_path, f"missing; expected {_type_names(types)}")
        value = obj[key]
        allowed = types if isinstance(types, tuple) else (types,)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            self.fail(key_path, f"expected {_type_names(types)}, {got(value)}")
        return value

    def flag(self, obj: Mapping[str, Any], key: str, path: str) -> bool | None:
        """``obj[key]`` as a flag (``"True"``/``"False"`` or JSON true/false); None when absent.

        Example:
            >>> JsonValidator("x").flag({"is_symmetric": "False"}, "is_symmetric", "params.weight")
            False
        """
        if key not in obj:
            return None
        value = obj[key]
        if isinstance(value, bool):
            return value
        if value in FLAG_VALUES:
            return value == "True"
        hint = ""
        if isinstance(value, str):
            guess = suggest(value.strip(), FLAG_VALUES)
            if guess is not None and guess.lower() == value.strip().lower():
                hint = f" (did you mean {guess!r}?)"
        self.fail(join(path, key), f"invalid value {show(value)}{hint}; {_FLAG_ALLOWED}")

    def one_of(self, value: Any, path: str, allowed: Sequence[Any], *, note: str = "") -> Any:
        """``value``, checked to be one of ``allowed`` (``note`` is appended to the message).

        Example:
            >>> JsonValidator("x").one_of("int", "kernel.dtype", ("int", "float"))
            'int'
        """
        if isinstance(value, bool) or value not in allowed:
            extra = f" ({note})" if note else ""
            self.fail(path, f"invalid value {show(value)}; expected one of "
                            f"{', '.join(show(a) for a in allowed)}{extra}")
        return value

    def string_list(self, value: Any, path: str, *, min_items: int = 0,
                    what: str = "strings") -> tuple[str, ...]:
        """``value``, checked to be an array of non-empty strings.

        Example:
            >>> JsonValidator("x").string_list(["Conv", "Relu"], "op_list", min_items=2)
            ('Conv', 'Relu')
        """
        self.array(value, path, what=what, min_items=min_items)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.fail(index(path, i),
                          f"invalid value {show(item)}; expected a non-empty string ({what})")
        return tuple(value)

    def number(self, value: Any, path: str, *, integer: bool = False,
               positive: bool = False, what: str = "") -> int | float:
        """``value``, checked to be a finite number (an integral one, > 0, when asked).

        ``integer`` accepts ``3.0`` and returns ``3``; ``what`` names the quantity in messages.

        Example:
            >>> JsonValidator("x").number(-0.5, "scale", positive=True, what="a scale")
            Traceback (most recent call last):
            ...
            fxquant.errors.ConfigError: x: scale: invalid value -0.5; expected a number > 0 \
(a scale)
        """
        note = f" ({what})" if what else ""
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not _finite(value)):
            self.fail(path, f"invalid value {show(value)}; expected a finite number{note}")
        if integer:
            if float(value) != int(value):
                self.fail(path, f"invalid value {show(value)}; expected an integer{note}")
            value = int(value)
        if positive and value <= 0:
            self.fail(path, f"invalid value {show(value)}; expected a number > 0{note}")
        return value

    def number_list(self, value: Any, path: str, *, integer: bool = False,
                    positive: bool = False, what: str = "") -> list[Any]:
        """A number or a non-empty array of numbers, checked as :meth:`number`, as a list.

        Example:
            >>> JsonValidator("x").number_list([-128, 0.0], "offset", integer=True)
            [-128, 0]
        """
        items = value if isinstance(value, list) else [value]
        if not items:
            self.fail(path, "expected a number or a non-empty array of numbers, got an empty array")
        return [self.number(v, index(path, i) if isinstance(value, list) else path,
                            integer=integer, positive=positive, what=what)
                for i, v in enumerate(items)]

    def int_in_range(self, value: Any, path: str, lo: int, hi: int, *, what: str = "") -> int:
        """``value``, checked to be an integer (not a boolean, not ``8.0``) in ``[lo, hi]``.

        Example:
            >>> JsonValidator("x").int_in_range(64, "bw", 2, 32, what="a bit width")
            Traceback (most recent call last):
            ...
            fxquant.errors.ConfigError: x: bw: invalid value 64; expected an integer in 2-32 \
(a bit width)
        """
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            note = f" ({what})" if what else ""
            self.fail(path, f"invalid value {show(value)}; expected an integer in {lo}-{hi}{note}")
        return value
