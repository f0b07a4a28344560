"""Check a parsed TOML document against the model Structs, collecting every error.

``msgspec.convert`` stops at the first error; a config file should report
them all. :func:`check` walks the document and the Struct definitions
together: unknown keys, missing keys and wrong values are each reported with
their key path; leaf values are checked by ``msgspec.convert`` itself, so the
rules are exactly the Structs'. A document without errors is then converted
in one ``msgspec.convert`` call.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import types
import typing
from typing import Any, Literal, Union

import msgspec

from ._toml import KeyPath

if typing.TYPE_CHECKING:
    from .imports import ImportFailure

__all__ = ["Problem", "check", "describe", "kind_of"]


class Problem:
    """A value that does not fit the model (collected into a ConfigError)."""

    __slots__ = ("expected", "failure", "found", "path")

    def __init__(
        self, path: KeyPath, expected: str, found: str, failure: ImportFailure | None = None
    ) -> None:
        self.path = path
        self.expected = expected
        self.found = found
        #: The user's module failed to import (reported once per module).
        self.failure = failure

    def __repr__(self) -> str:
        return f"Problem({self.path!r}, {self.expected!r}, {self.found!r})"


def kind_of(value: Any) -> str:
    """Describe a TOML value for a message: ``string 'x'``, ``a table``."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return f"{type(value).__name__} {value.isoformat()}"
    return type(value).__name__


_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "nothing",
}


def describe(tp: Any) -> str:
    """Describe what a model type accepts, in words."""
    if tp is Any:
        return "any value"
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "a table"
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _describe_annotated(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return _describe_union(tp)
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        return f"an array of {_plural(describe(args[0]))}" if args else "an array"
    if origin is dict:
        return f"a table of {_plural(describe(typing.get_args(tp)[1]))}"
    return _NAMES.get(tp, getattr(tp, "__name__", repr(tp)))


def _describe_annotated(tp: Any) -> str:
    """``an integer >= 1``; an import path's own description."""
    inner, *metadata = typing.get_args(tp)
    text = describe(inner)
    for meta in metadata:
        if not isinstance(meta, msgspec.Meta):
            continue
        if meta.description and meta.description.startswith("an import path"):
            return meta.description
        bounds = [
            f"{op} {getattr(meta, name)}"
            for name, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
            if getattr(meta, name) is not None
        ]
        if bounds:
            text += " " + " and ".join(bounds)
    return text


def _describe_union(tp: Any) -> str:
    parts = [describe(a) for a in typing.get_args(tp) if a is not type(None)]
    # NOTE: `int | float` keeps an integer as written; in words it is a number.
    parts = [
        p
        for p in parts
        if not (p.startswith("an integer") and "a number" + p[len("an integer") :] in parts)
    ]
    return " or ".join(parts)


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            rest = text[len(article) :]
            if rest.startswith("import path"):
                return "import paths" + rest[len("import path") :]
            head, _, tail = rest.partition(" ")
            return (head + "s" + (" " + tail if tail else "")) if head else rest
    return text


def check(
    value: Any,
    tp: Any,
    path: KeyPath = (),
    lenient: frozenset[KeyPath] = frozenset(),
) -> tuple[Any, list[Problem]]:
    """Check ``value`` against model type ``tp``.

    Args:
        value: The parsed (and interpolated) TOML value.
        tp: A model type (Struct, list, dict, union, scalar).
        path: Key path of ``value`` in the document.
        lenient: Paths whose string values came from interpolation and may
            be converted (``"1000"`` → ``1000``).

    Returns:
        The value with lenient strings converted, and every problem found.
    """
    problems: list[Problem] = []
    cleaned = _check(value, tp, path, lenient, problems)
    return cleaned, problems


def _check(
    value: Any, tp: Any, path: KeyPath, lenient: frozenset[KeyPath], out: list[Problem]
) -> Any:
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _check_struct(value, tp, path, lenient, out)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _check_union(value, tp, path, lenient, out)
    if origin in (list, tuple, dict):
        return _check_items(value, tp, path, lenient, out)
    return _leaf(value, tp, path, lenient, out, describe(tp))


def _check_union(
    value: Any, tp: Any, path: KeyPath, lenient: frozenset[KeyPath], out: list[Problem]
) -> Any:
    """Check ``value`` against the member of its kind (table, array or scalars)."""
    if value is None and type(None) in typing.get_args(tp):
        return None
    members = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(value, dict):
        fits = [m for m in members if _is_table(m)]
    elif isinstance(value, list):
        fits = [m for m in members if _is_array(m)]
    else:
        scalars = [m for m in members if not _is_table(m) and not _is_array(m)]
        if scalars:
            scalar: Any = scalars[0] if len(scalars) == 1 else Union[tuple(scalars)]  # noqa: UP007
            return _leaf(value, scalar, path, lenient, out, describe(tp))
        fits = []
    if fits:
        return _check(value, fits[0], path, lenient, out)
    out.append(Problem(path, describe(tp), kind_of(value)))
    return value


def _check_items(
    value: Any, tp: Any, path: KeyPath, lenient: frozenset[KeyPath], out: list[Problem]
) -> Any:
    """Check an array's items or a table's values against the item type."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict and isinstance(value, dict):
        return {k: _check(v, args[1], (*path, k), lenient, out) for k, v in value.items()}
    if typing.get_origin(tp) is not dict and isinstance(value, list):
        item = args[0] if args else Any
        return [_check(v, item, (*path, i), lenient, out) for i, v in enumerate(value)]
    out.append(Problem(path, describe(tp), kind_of(value)))
    return value


def _is_array(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple)


def _is_table(tp: Any) -> bool:
    return (isinstance(tp, type) and issubclass(tp, msgspec.Struct)) or typing.get_origin(
        tp
    ) is dict


def _leaf(
    value: Any,
    tp: Any,
    path: KeyPath,
    lenient: frozenset[KeyPath],
    out: list[Problem],
    expected: str,
) -> Any:
    try:
        return msgspec.convert(value, tp, strict=path not in lenient)
    except msgspec.ValidationError:
        out.append(Problem(path, expected, kind_of(value)))
        return value


@functools.cache
def _struct_info(tp: type[msgspec.Struct]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fields by key and resolved type hints of a model Struct (computed once)."""
    fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
    return fields, typing.get_type_hints(tp, include_extras=True)


def _check_struct(
    value: Any,
    tp: type[msgspec.Struct],
    path: KeyPath,
    lenient: frozenset[KeyPath],
    out: list[Problem],
) -> Any:
    if not isinstance(value, dict):
        out.append(Problem(path, "a table", kind_of(value)))
        return value
    fields, hints = _struct_info(tp)
    cleaned: dict[str, Any] = {}
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(
                Problem(
                    (*path, key),
                    "one of the keys " + ", ".join(fields),
                    f"unknown key {key!r}{hint}",
                )
            )
            continue
        cleaned[key] = _check(item, hints[field.name], (*path, key), lenient, out)
    for name, field in fields.items():
        if field.required and name not in value:
            out.append(Problem(path, f"a key {name!r}", "no such key"))
    return cleaned
