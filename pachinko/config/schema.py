"""Compile the ``[types]`` of a routes.toml into msgspec Structs.

Each declared type becomes one ``msgspec.defstruct`` class, with
``Annotated[T, msgspec.Meta(...)]`` for constraints: the same objects a
Python user writes by hand, built once at load. Type strings follow a tiny
grammar::

    type  := name | name "[" type ("," type)* "]"
    name  := str | int | float | bool | datetime | date | time | uuid | any
           | list | dict | optional | <declared type> | <package.module:Struct>
"""

from __future__ import annotations

import datetime
import re
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, Union

import msgspec

from ._toml import KeyPath
from .imports import Importer, ImportFailure, is_import_path
from .model import FieldConfig, TypeConfig
from .validate import Problem, kind_of

__all__ = ["SCALARS", "compile_types", "parse_type"]

#: Scalar type names of the grammar.
SCALARS: Final[dict[str, Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "datetime": datetime.datetime,
    "date": datetime.date,
    "time": datetime.time,
    "uuid": uuid.UUID,
    "any": Any,
}
_GENERICS: Final = {"list": 1, "dict": 2, "optional": 1}
_LENGTHS: Final = ("min_length", "max_length")
_BOUNDS: Final = ("ge", "gt", "le", "lt", "multiple_of")
_CONSTRAINTS: Final = (*_LENGTHS, "pattern", *_BOUNDS)
_TOKEN: Final = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?)|(?P<punct>[\[\],]))"
)
_MODULE: Final = "pachinko.config.types"
_EXPECTED_TYPE: Final = (
    "a type: str, int, float, bool, datetime, date, time, uuid, any, list[T], dict[str, T], "
    "optional[T], a declared type or an import path to a msgspec.Struct"
)


class _Optional:
    """Marker for ``optional[T]`` while building (``T | None`` at the end)."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner


def parse_type(text: str, resolve: Callable[[str], Any]) -> Any:
    """Parse a type string into a Python type.

    Args:
        text: e.g. ``list[optional[str]]``.
        resolve: Returns the type for a name that is not built in (a
            declared type or an import path); raises ``LookupError`` with a
            message if unknown.

    Raises:
        ValueError: The string does not follow the grammar.
        LookupError: From ``resolve``.
    """
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if found is None or found.end() == pos:
            raise ValueError(f"unexpected {text[pos:].strip()[:1]!r}")
        tokens.append(found.group("name") or found.group("punct"))
        pos = found.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if not tokens:
        raise ValueError("an empty type")
    result, index = _parse(tokens, 0, resolve)
    if index != len(tokens):
        raise ValueError(f"unexpected {tokens[index]!r}")
    return _finish(result)


def _parse(tokens: list[str], index: int, resolve: Callable[[str], Any]) -> tuple[Any, int]:
    if index >= len(tokens):
        raise ValueError("a type is missing")
    name = tokens[index]
    if name in "[],":
        raise ValueError(f"unexpected {name!r}")
    index += 1
    if name in _GENERICS:
        if index >= len(tokens) or tokens[index] != "[":
            raise ValueError(f"{name} needs parameters: {name}[...]")
        args: list[Any] = []
        index += 1
        while True:
            arg, index = _parse(tokens, index, resolve)
            args.append(arg)
            if index < len(tokens) and tokens[index] == ",":
                index += 1
                continue
            if index < len(tokens) and tokens[index] == "]":
                index += 1
                break
            raise ValueError(f"{name}[...] is not closed")
        if len(args) != _GENERICS[name]:
            raise ValueError(f"{name} takes {_GENERICS[name]} parameter(s), got {len(args)}")
        if name == "list":
            return list[_finish(args[0])], index  # type: ignore[misc]
        if name == "dict":
            key = _finish(args[0])
            if key not in (str, int):
                raise ValueError("dict keys must be str or int")
            return dict[key, _finish(args[1])], index  # type: ignore[misc,valid-type]
        return _Optional(_finish(args[0])), index
    if name in SCALARS:
        return SCALARS[name], index
    return resolve(name), index


def _finish(tp: Any) -> Any:
    if isinstance(tp, _Optional):
        return Union[tp.inner, None]  # noqa: UP007
    return tp


class _Compiler:
    def __init__(
        self,
        types: Mapping[str, tuple[KeyPath, TypeConfig]],
        structs: dict[str, Any],
        importer: Importer,
    ) -> None:
        self.import_path = importer
        self.types = types
        self.structs = structs
        self.problems: list[Problem] = []
        self.building: list[str] = []

    def resolve(self, name: str) -> Any:
        if name in self.structs:
            return self.structs[name]
        if name in self.types:
            if name in self.building:
                cycle = " -> ".join([*self.building[self.building.index(name) :], name])
                raise LookupError(f"a type that does not contain itself ({cycle})")
            built = self.build(name)
            if built is None:
                raise LookupError("")  # already reported where it is declared
            return built
        if is_import_path(name):
            try:
                value = self.import_path(name)
            except ImportFailure as ex:
                raise LookupError(f"{ex.found}") from ex
            if not (isinstance(value, type) and issubclass(value, msgspec.Struct)):
                raise LookupError(f"{name} is not a msgspec.Struct but {value!r}")
            return value
        known = ", ".join(sorted(self.types)) or "none declared"
        raise LookupError(f"unknown type {name!r} (declared types: {known})")

    def build(self, name: str) -> Any:
        if name in self.structs:
            return self.structs[name]
        path, decl = self.types[name]
        self.building.append(name)
        try:
            struct = self._build(name, path, decl)
        finally:
            self.building.pop()
        self.structs[name] = struct
        return struct

    def _build(self, name: str, path: KeyPath, decl: TypeConfig) -> Any:
        if decl.struct is not None:
            if decl.fields:
                self.problems.append(
                    Problem((*path, "struct"), "either 'struct' or 'fields'", "both")
                )
            if decl.description is not None:
                self.problems.append(
                    Problem(
                        (*path, "description"),
                        "no 'description' with 'struct' (the Struct's docstring describes it)",
                        repr(decl.description),
                    )
                )
            try:
                value = self.import_path(decl.struct)
            except ImportFailure as ex:
                self.problems.append(Problem((*path, "struct"), ex.expected, ex.found, ex))
                return None
            if not (isinstance(value, type) and issubclass(value, msgspec.Struct)):
                self.problems.append(
                    Problem((*path, "struct"), "a msgspec.Struct subclass", repr(value))
                )
                return None
            return value
        specs: list[Any] = []
        ok = True
        for fname, raw in decl.fields.items():
            fpath = (*path, "fields", fname)
            field = raw if isinstance(raw, FieldConfig) else FieldConfig(type=raw)
            spec = self._field(fname, fpath, field, isinstance(raw, FieldConfig))
            if spec is None:
                ok = False
            else:
                specs.append(spec)
        if not ok:
            return None
        options: dict[str, Any] = {}
        if decl.tag is not None:
            options.update(tag=decl.tag, tag_field=decl.tag_field)
        if decl.description is not None:
            # NOTE: a docstring, as a Python Struct carries it: msgspec's JSON
            #   Schema (and so AsyncAPI) reads it, export writes it back.
            options["namespace"] = {"__doc__": decl.description}
        try:
            return msgspec.defstruct(
                name, specs, module=_MODULE, kw_only=True, forbid_unknown_fields=True, **options
            )
        except (TypeError, ValueError) as ex:
            self.problems.append(Problem(path, "a valid message type", str(ex)))
            return None

    def _constraints_fit(
        self, fpath: KeyPath, field: FieldConfig, inner: Any, meta: dict[str, Any]
    ) -> bool:
        """Report each constraint key that does not apply to the field's type."""
        allowed = _allowed(inner)
        of = "an enum" if field.type is None else f"type {field.type!r}"
        if allowed:
            expected = f"one of {', '.join(allowed)} (the constraints of {of})"
        else:
            expected = f"no constraint on {of} (only description applies)"
        ok = True
        for key in _CONSTRAINTS:
            if key not in meta:
                continue
            value = meta[key]
            if key not in allowed:
                self.problems.append(Problem((*fpath, key), expected, f"{key} = {_written(value)}"))
                ok = False
            elif inner is int and key in _BOUNDS and not float(value).is_integer():
                self.problems.append(
                    Problem((*fpath, key), f"an integer (the field has {of})", f"{key} = {value}")
                )
                ok = False
            elif inner is int and key in _BOUNDS:
                meta[key] = int(value)
            elif key == "pattern":
                try:
                    re.compile(value)
                except re.error as ex:
                    self.problems.append(
                        Problem((*fpath, key), "a regular expression", f"{value!r}: {ex}")
                    )
                    ok = False
        return ok

    def _field(self, fname: str, fpath: KeyPath, field: FieldConfig, table: bool) -> Any:
        """The ``defstruct`` spec of one field, or ``None`` (reported)."""
        if not fname.isidentifier():
            self.problems.append(
                Problem(fpath, "a field name that is a Python identifier", repr(fname))
            )
            return None
        if field.type is None and field.enum is None:
            self.problems.append(Problem(fpath, "a key 'type' (or 'enum')", "no such key"))
            return None
        tp = self._field_type(fpath, field, table)
        if tp is None:
            return None
        tp = self._constrained(fpath, field, tp)
        if tp is None:
            return None
        if field.default is not msgspec.UNSET:
            return self._with_default(fname, fpath, field, tp)
        if _is_optional(tp) and not field.required:
            return (fname, tp, None)
        return (fname, tp)

    def _field_type(self, fpath: KeyPath, field: FieldConfig, table: bool) -> Any:
        """The field's type from ``enum`` or ``type``, or ``None`` (reported)."""
        if field.enum is None:
            return self._parsed_type(fpath, field, (*fpath, "type") if table else fpath)
        if not field.enum:
            self.problems.append(Problem((*fpath, "enum"), "at least one value", "[]"))
            return None
        if field.type is not None:
            self.problems.append(
                Problem(
                    (*fpath, "type"),
                    "no 'type' with 'enum' (the values give the type)",
                    repr(field.type),
                )
            )
            return None
        return Literal[tuple(field.enum)]

    def _parsed_type(self, fpath: KeyPath, field: FieldConfig, tpath: KeyPath) -> Any:
        text = field.type or ""
        try:
            return parse_type(text, self.resolve)
        except (ValueError, LookupError) as ex:
            message = str(ex)
            failure = ex.__cause__
            if isinstance(failure, ImportFailure) and failure.module is not None:
                self.problems.append(Problem(tpath, failure.expected, failure.found, failure))
            elif message.startswith("a type that"):
                self.problems.append(Problem(tpath, message, f"{text!r}"))
            elif message:
                self.problems.append(Problem(tpath, _EXPECTED_TYPE, f"{text!r}: {message}"))
            return None

    def _constrained(self, fpath: KeyPath, field: FieldConfig, tp: Any) -> Any:
        """``tp`` annotated with the field's constraints, or ``None`` (reported)."""
        optional = _is_optional(tp)
        meta = {
            key: getattr(field, key)
            for key in (*_CONSTRAINTS, "description")
            if getattr(field, key) is not None
        }
        inner = _strip_none(tp) if optional else tp
        if not self._constraints_fit(fpath, field, inner, meta):
            return None
        if not meta:
            return tp
        try:
            annotated: Any = Annotated[inner, msgspec.Meta(**meta)]
            msgspec.json.Decoder(annotated)
        except (TypeError, ValueError, re.error) as ex:  # NOTE: checked above; msgspec's word
            self.problems.append(Problem(fpath, "constraints that fit the field's type", str(ex)))
            return None
        return Union[annotated, None] if optional else annotated  # noqa: UP007

    def _with_default(self, fname: str, fpath: KeyPath, field: FieldConfig, tp: Any) -> Any:
        try:
            default = msgspec.convert(field.default, tp)
        except msgspec.ValidationError as ex:
            self.problems.append(
                Problem(
                    (*fpath, "default"),
                    f"a default that fits the field ({ex})",
                    kind_of(field.default),
                )
            )
            return None
        # NOTE: msgspec copies empty list/dict defaults itself (as a Python
        #   class body `= []` does); only non-empty ones need a factory.
        if isinstance(default, list | dict) and default:
            frozen = default
            return (fname, tp, msgspec.field(default_factory=lambda: _copy(frozen)))
        return (fname, tp, default)


def _allowed(tp: Any) -> tuple[str, ...]:
    """The constraint keys that apply to a field of type ``tp``."""
    if tp is str:
        return (*_LENGTHS, "pattern")
    if tp is int or tp is float:
        return _BOUNDS
    if typing.get_origin(tp) in (list, dict):
        return _LENGTHS
    return ()


def _written(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _copy(value: Any) -> Any:
    return msgspec.convert(msgspec.to_builtins(value), type(value))


def _is_optional(tp: Any) -> bool:
    from typing import get_args, get_origin

    return get_origin(tp) is Union and type(None) in get_args(tp)


def _strip_none(tp: Any) -> Any:
    from typing import get_args

    rest = [a for a in get_args(tp) if a is not type(None)]
    return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007


def compile_types(
    types: Mapping[str, tuple[KeyPath, TypeConfig]],
    importer: Importer | None = None,
) -> tuple[dict[str, Any], list[Problem]]:
    """Build a Struct for every declared type.

    Args:
        types: Type name → (key path of its table, declaration).
        importer: Resolves import paths (shared with the rest of the file's
            compilation, so a broken module runs once).

    Returns:
        Name → Struct (types with errors are missing) and every problem.
    """
    compiler = _Compiler(types, {}, importer or Importer())
    for name in types:
        if name not in compiler.structs:
            compiler.build(name)
    structs = {name: s for name, s in compiler.structs.items() if s is not None}
    return structs, compiler.problems
