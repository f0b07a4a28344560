"""The parts of the loader that need no server: line lookup, interpolation, imports, schemas."""

from __future__ import annotations

import datetime
import sys
import uuid
from typing import Any

import msgspec
import pytest

from pachinko.config._toml import format_path, key_lines, line_of
from pachinko.config.imports import ImportFailure, import_path
from pachinko.config.interpolate import interpolate
from pachinko.config.model import FieldConfig, TypeConfig
from pachinko.config.schema import compile_types, parse_type


class Point(msgspec.Struct):
    x: int
    y: int


# -- key path -> line -----------------------------------------------------------


def test_key_lines_follow_tables_arrays_inline_tables_and_multiline_values() -> None:
    text = (
        "# comment\n"  # 1
        'include = ["a.toml",\n'  # 2
        '  "b.toml"]\n'  # 3
        "[[routes]]\n"  # 4
        "path = '/chat'  # a comment with = and [x]\n"  # 5
        'handlers.join = { handler = """x\n'  # 6
        'y""", payload = "Join" }\n'  # 7
        "[[routes.routes]]\n"  # 8
        'path = "/sub"\n'  # 9
        "[[routes]]\n"  # 10
        '"odd.key".list = [ {a = 1},\n'  # 11
        "  {b = 2} ]\n"  # 12
        "[types.Join.fields]\n"  # 13
        "room = { type = 'str' }\n"  # 14
    )
    lines = key_lines(text)
    expect = {
        "include[1]": 3,
        "routes[0].path": 5,
        "routes[0].handlers.join.handler": 6,
        "routes[0].handlers.join.payload": 7,
        "routes[0].routes[0].path": 9,
        "routes[1]": 10,
        'routes[1]."odd.key".list[1].b': 12,
        "types.Join.fields.room.type": 14,
    }
    assert {k: lines[p] for p in lines if (k := format_path(p)) in expect} == expect


def test_line_of_falls_back_to_the_nearest_written_ancestor() -> None:
    lines = key_lines("[[routes]]\npath = '/a'\n")
    assert line_of(lines, ("routes", 0, "handlers", "join")) == 1
    assert line_of(lines, ("nowhere",)) is None


def test_format_path_quotes_keys_that_are_not_bare() -> None:
    assert (
        format_path(("routes", 2, "handlers", "chat.message"))
        == 'routes[2].handlers."chat.message"'
    )


# -- interpolation ----------------------------------------------------------------


def test_interpolation_substitutes_defaults_and_escapes() -> None:
    doc = {"a": "${HOST}:${PORT:-8000}", "b": ["$${LITERAL}", "${EMPTY:-}"], "c": 3}
    result, touched, problems = interpolate(doc, {"HOST": "redis"})
    assert result == {"a": "redis:8000", "b": ["${LITERAL}", ""], "c": 3}
    assert touched == {("a",), ("b", 0), ("b", 1)}
    assert problems == []


def test_interpolation_default_also_replaces_an_empty_variable() -> None:
    doc = {"backend": "${BACKEND:-memory://}", "plain": "${BACKEND}"}
    result, _, problems = interpolate(doc, {"BACKEND": ""})
    assert result == {"backend": "memory://", "plain": ""}
    assert problems == []


def test_interpolation_reports_unset_and_unterminated_variables() -> None:
    _, _, problems = interpolate({"x": {"y": "${MISSING}"}, "z": "${oops"}, {})
    assert [(p.path, p.expected, p.found) for p in problems] == [
        (
            ("x", "y"),
            "environment variable MISSING to be set (or a default: ${MISSING:-...})",
            "it is not set",
        ),
        (("z",), "${NAME} or ${NAME:-default}", "an unterminated '${' in '${oops'"),
    ]


# -- import paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected", "found"),
    [
        ("json.dumps", "an import path 'package.module:attribute'", "'json.dumps'"),
        ("json:", "an import path 'package.module:attribute'", "'json:'"),
        (
            "no_such_module_x:f",
            "an importable module 'no_such_module_x'",
            "no module named 'no_such_module_x'",
        ),
        (
            "no_such_pkg_x.sub:f",
            "an importable module 'no_such_pkg_x.sub'",
            "no module named 'no_such_pkg_x'",
        ),
        ("json:nope", "an attribute 'nope' in 'json'", "'json' has no attribute 'nope'"),
        (
            "json:JSONDecoder.nope",
            "an attribute 'nope' in 'json:JSONDecoder'",
            "'json:JSONDecoder' has no attribute 'nope'",
        ),
    ],
)
def test_import_failures_are_precise(path: str, expected: str, found: str) -> None:
    with pytest.raises(ImportFailure) as info:
        import_path(path)
    assert (info.value.expected, info.value.found) == (expected, found)


def test_import_path_walks_dotted_attributes() -> None:
    import json

    assert import_path("json:JSONDecoder.decode") is json.JSONDecoder.decode


def test_a_missing_module_imported_by_the_users_module_is_their_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fx_imports_missing.py").write_text("import fx_not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fx_imports_missing", raising=False)
    with pytest.raises(ImportFailure) as info:
        import_path("fx_imports_missing:x")
    assert info.value.expected == "module 'fx_imports_missing' to import cleanly"
    assert info.value.found.startswith("ModuleNotFoundError raised while importing it:\n")
    assert isinstance(info.value.cause, ModuleNotFoundError)


# -- schemas ------------------------------------------------------------------------


def _unknown(name: str) -> Any:
    raise LookupError(f"unknown type {name!r}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("str", str),
        ("int", int),
        ("float", float),
        ("bool", bool),
        ("datetime", datetime.datetime),
        ("date", datetime.date),
        ("uuid", uuid.UUID),
        ("list[int]", list[int]),
        ("dict[str, list[bool]]", dict[str, list[bool]]),
        ("optional[str]", str | None),
        ("list[optional[int]]", list[int | None]),
    ],
)
def test_parse_type(text: str, expected: Any) -> None:
    assert parse_type(text, _unknown) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("list", "list needs parameters: list[...]"),
        ("list[int", "list[...] is not closed"),
        ("dict[str]", "dict takes 2 parameter(s), got 1"),
        ("dict[float, int]", "dict keys must be str or int"),
        ("int]", "unexpected ']'"),
        ("Nope", "unknown type 'Nope'"),
    ],
)
def test_parse_type_errors(text: str, message: str) -> None:
    with pytest.raises((ValueError, LookupError)) as info:
        parse_type(text, _unknown)
    assert info.value.args[0] == message


def _types(**decls: TypeConfig) -> dict[str, tuple[Any, TypeConfig]]:
    return {name: (("types", name), decl) for name, decl in decls.items()}


def test_declared_types_compile_to_structs_with_constraints_and_defaults() -> None:
    structs, problems = compile_types(
        _types(
            Entry=TypeConfig(
                fields={"at": "datetime", "tags": FieldConfig(type="list[str]", default=["a"])}
            ),
            Join=TypeConfig(
                tag="join",
                fields={
                    "room": FieldConfig(type="str", min_length=1, max_length=4, pattern="^[a-z]+$"),
                    "mode": FieldConfig(enum=["read", "write"], default="read"),
                    "level": FieldConfig(type="int", ge=0, le=10, default=1),
                    "note": "optional[str]",
                    "entries": "list[Entry]",
                    "point": "test_config_parts:Point",
                    "id": "optional[uuid]",
                },
            ),
        )
    )
    assert problems == []
    join = structs["Join"]
    decoded = msgspec.json.decode(
        b'{"type": "join", "room": "abc", "entries": [{"at": "2024-01-01T00:00:00Z"}],'
        b' "point": {"x": 1, "y": 2}}',
        type=join,
    )
    assert (decoded.room, decoded.mode, decoded.level, decoded.note) == ("abc", "read", 1, None)
    assert decoded.entries[0].tags == ["a"]
    assert decoded.point == Point(1, 2)
    with pytest.raises(
        msgspec.ValidationError, match=r"Expected `str` of length <= 4 - at `\$.room`"
    ):
        msgspec.json.decode(
            b'{"type": "join", "room": "abcde", "entries": [], "point": {"x": 1, "y": 2}}',
            type=join,
        )
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int` <= 10 - at `\$.level`"):
        msgspec.convert(
            {"type": "join", "room": "a", "level": 11, "entries": [], "point": {"x": 1, "y": 2}},
            join,
        )
    with pytest.raises(msgspec.ValidationError, match="Object contains unknown field `extra`"):
        msgspec.convert(
            {"type": "join", "room": "a", "entries": [], "point": {"x": 1, "y": 2}, "extra": 1},
            join,
        )


def test_type_problems_name_the_field_and_cycles_are_refused() -> None:
    _, problems = compile_types(
        _types(
            A=TypeConfig(fields={"b": "B"}),
            B=TypeConfig(fields={"a": "list[A]"}),
            C=TypeConfig(fields={"n": FieldConfig(type="int", default="x")}),
        )
    )
    assert [(p.path, p.expected, p.found) for p in problems] == [
        (
            ("types", "B", "fields", "a"),
            "a type that does not contain itself (A -> B -> A)",
            "'list[A]'",
        ),
        (
            ("types", "C", "fields", "n", "default"),
            "a default that fits the field (Expected `int`, got `str`)",
            "string 'x'",
        ),
    ]


# -- [types] description ------------------------------------------------------------


DESCRIBED = """\
[types.Join]
description = "Join a room.\\n\\nThe name is shown to the others."
fields = { room = { type = "str", description = "The room." } }

[types.Joined]
tag = "joined"
description = "You joined."
fields = { room = "str" }

[[routes]]
path = "/chat"
sends = ["Joined"]
handlers.join = { handler = "test_config_parts:join", payload = "Join" }
"""


async def join(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send(resource.types.Joined(room=payload.room))


def test_a_type_description_reaches_json_schema_asyncapi_and_export() -> None:
    import json
    from pathlib import Path

    import jsonschema

    from pachinko import asyncapi
    from pachinko.config import compile_text, export_toml

    compiled = compile_text(DESCRIBED)
    join_type = compiled.structs["Join"]
    assert join_type.__doc__ == "Join a room.\n\nThe name is shown to the others."
    schema = msgspec.json.schema(join_type)
    assert schema["$defs"]["Join"]["description"] == join_type.__doc__
    doc = asyncapi.document([(compiled.prefix, compiled.router)], title="t", version="1")
    messages = doc["components"]["messages"]
    assert messages["ChatResource.receive.join"]["description"] == join_type.__doc__
    assert messages["ChatResource.receive.join"]["payload"]["description"] == join_type.__doc__
    assert messages["ChatResource.send.joined"]["description"] == "You joined."
    assert doc["components"]["schemas"]["Joined"]["description"] == "You joined."
    spec = Path(__file__).parent.parent / "fixtures" / "asyncapi-3.0.0-schema.json"
    validator = jsonschema.Draft7Validator(json.loads(spec.read_text()))
    assert [e.message for e in validator.iter_errors(doc)] == []
    text = export_toml(compiled.router)
    assert '[types.Join]\ndescription = "Join a room.\\n\\nThe name is shown to the others."\n' in (
        text
    )
    assert '[types.Joined]\ntag = "joined"\ndescription = "You joined."\n' in text
    assert compile_text(text).structs["Join"].__doc__ == join_type.__doc__


def test_a_type_without_description_has_no_docstring() -> None:
    from pachinko.config import compile_text

    compiled = compile_text(DESCRIBED.replace('description = "You joined."\n', ""))
    assert compiled.structs["Joined"].__doc__ is None
    assert "description" not in msgspec.json.schema(compiled.structs["Joined"])


def test_export_writes_every_declared_type_a_handler_may_build() -> None:
    from pachinko.config import compile_text, export_toml

    # Handlers build any declared type as resource.types.Name: unused by the
    # routes' keys or not, each one is part of the app.
    text = DESCRIBED + '\n[types.Extra.fields]\nnote = "str"\n'
    exported = export_toml(compile_text(text).router)
    assert '[types.Extra.fields]\nnote = "str"\n' in exported
    assert compile_text(exported).structs["Extra"].__struct_fields__ == ("note",)
