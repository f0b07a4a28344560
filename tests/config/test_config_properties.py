"""Properties: random valid configs compile, corruptions raise ConfigError, export round-trips."""

from __future__ import annotations

import asyncio
import copy
import string
from typing import Annotated, Any

import msgspec
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pachinko import WebSocketResource, handles_message
from pachinko.config import ConfigFileError, compile_text, export_toml
from pachinko.errors import ConfigError

HERE = "test_config_properties"


async def echo(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send(msgspec.to_builtins(payload))


async def other(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send({"type": "other"})


async def hook(resource: Any, ws: Any, message: Any) -> None:
    return None


class PyMsg(msgspec.Struct, forbid_unknown_fields=True):
    n: Annotated[int, msgspec.Meta(ge=0)]
    tags: list[str] = []


class PyRes(WebSocketResource):
    """A resource written in Python, routed from TOML and exported back."""

    sends = (PyMsg,)

    @handles_message("py", strict=False)
    async def py(self, ws: Any, payload: PyMsg) -> None:
        await self.send({"type": "py", "n": payload.n})

    async def on_echo(self, ws: Any, payload: Any) -> None:
        await self.send(payload)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start


# -- strategies -------------------------------------------------------------------

names = st.text(string.ascii_lowercase, min_size=1, max_size=6).filter(lambda s: s != "type")
# NOTE: a message type called "error" would be echoed back as {"type": "error"},
#   which the serving test cannot tell from an error reply.
tags = names.filter(lambda s: s != "error")
type_names = tags.map(lambda s: s.capitalize())
scalar = st.sampled_from(["str", "int", "float", "bool", "datetime", "uuid", "any", "date"])


@st.composite
def field_decl(draw: st.DrawFn, declared: list[str]) -> Any:
    base = draw(st.one_of(scalar, st.sampled_from(declared) if declared else scalar))
    wrapped = draw(st.sampled_from(["{}", "list[{}]", "optional[{}]", "dict[str, {}]"]))
    tp = wrapped.format(base)
    if draw(st.booleans()):
        return tp
    table: dict[str, Any] = {"type": tp}
    if tp == "str":
        table["max_length"] = draw(st.integers(3, 50))
        if draw(st.booleans()):
            table["pattern"] = "^[a-z]*$"
            table["default"] = "abc"
    elif tp == "int":
        table["ge"] = draw(st.integers(-5, 5))
        if draw(st.booleans()):
            table["default"] = 10
    elif tp.startswith("list["):
        table["max_length"] = draw(st.integers(0, 5))
    table["description"] = "a field"
    return table


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    declared: list[str] = []
    types: dict[str, Any] = {}
    for name in draw(st.lists(type_names, max_size=4, unique=True)):
        fields = draw(st.dictionaries(names, field_decl(declared), max_size=4))
        types[name] = {"fields": fields}
        if draw(st.booleans()):
            types[name]["tag"] = name.lower()
        if draw(st.booleans()):
            types[name]["description"] = f"The {name} message.\n\nSecond paragraph."
        declared.append(name)
    routes = []
    paths = draw(
        st.lists(st.tuples(names, st.booleans()), min_size=1, max_size=5, unique_by=lambda t: t[0])
    )
    for index, (segment, dynamic) in enumerate(paths):
        route: dict[str, Any] = {"path": f"/{segment}" + ("/{key}" if dynamic else "")}
        if draw(st.booleans()):
            route["name"] = f"r{index}"
        if draw(st.integers(0, 4)) == 0:
            route["resource"] = f"{HERE}:PyRes"
            routes.append(route)
            continue
        handlers = {}
        for tag in draw(st.lists(tags, max_size=3, unique=True)):
            handler: dict[str, Any] = {
                "handler": f"{HERE}:{draw(st.sampled_from(['echo', 'other']))}"
            }
            if declared and draw(st.booleans()):
                handler["payload"] = draw(st.sampled_from(declared))
            if draw(st.booleans()):
                handler["strict"] = False
            handlers[tag] = handler
        if handlers:
            route["handlers"] = handlers
        if draw(st.booleans()):
            route["wire"] = draw(st.sampled_from(["flat", "envelope"]))
        if draw(st.booleans()):
            route["hooks"] = {"before_receive": f"{HERE}:hook"}
        if draw(st.booleans()):
            route["kwargs"] = {"label": draw(names)}
        if draw(st.booleans()):
            route["routes"] = [{"path": "/sub", "handlers": {"ping": f"{HERE}:other"}}]
        routes.append(route)
    doc: dict[str, Any] = {"routes": routes}
    if types:
        doc["types"] = types
    if draw(st.booleans()):
        doc["services"] = {"counter": {"factory": f"{HERE}:Counter", "kwargs": {"start": 1}}}
    if draw(st.booleans()):
        doc["settings"] = {"max_message_size": draw(st.integers(10_000, 10**6))}
    if draw(st.booleans()):
        doc["hooks"] = {"after_receive": [f"{HERE}:hook"]}
    if draw(st.booleans()):
        doc["rooms"] = draw(st.dictionaries(room_patterns, room_tables, max_size=3))
    return doc


room_patterns = st.one_of(names, names.map(lambda s: f"{s}:*"), st.just("*"))
room_tables = st.fixed_dictionaries(
    {},
    optional={
        "history": st.integers(1, 1000),
        "history_ttl": st.one_of(st.integers(1, 3600), st.floats(0.5, 60.0)),
    },
).filter(lambda t: "history" in t or "history_ttl" not in t)


_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(configs())
def test_random_valid_configs_compile(doc: dict[str, Any]) -> None:
    compiled = compile_text(tomli_w.dumps(doc))
    tops = [r for r in compiled.router.routes() if r.parent is None]
    assert [r.template for r in tops] == [r["path"] for r in doc["routes"]]
    for pattern, table in doc.get("rooms", {}).items():
        policy = compiled.rooms[pattern]
        assert (policy.history, policy.history_ttl) == (
            table.get("history", 0),
            table.get("history_ttl"),
        )
    for info, route in zip(tops, doc["routes"], strict=True):
        expected = {"py"} if "resource" in route else set(route.get("handlers", {}))
        assert set(info.target.message_types()) == expected


# -- corruptions ------------------------------------------------------------------


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*path, index))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _delete(doc: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        doc = doc[key]
    del doc[path[-1]]


junk = st.one_of(
    st.integers(),
    st.text(max_size=8),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(names, st.integers(), max_size=2),
    st.sampled_from(
        [
            "Nope",
            "nowhere:f",
            f"{HERE}:missing",
            "a.b",
            "${UNSET_X}",
            f"{HERE}:Counter",
            "list[Nope]",
            "/x/{y",
            "envelope",
        ]
    ),
)


@_SETTINGS
@given(configs(), st.data())
def test_random_corruptions_raise_config_error_and_nothing_else(
    doc: dict[str, Any], data: st.DataObject
) -> None:
    broken = copy.deepcopy(doc)
    paths = [p for p in _paths(broken) if p]
    path = data.draw(st.sampled_from(paths))
    action = data.draw(st.sampled_from(["replace", "delete", "unknown-key", "text"]))
    if action == "replace":
        _set(broken, path, data.draw(junk))
    elif action == "delete" and not isinstance(path[-1], int):
        _delete(broken, path)
    elif action == "unknown-key":
        broken["zz_unknown"] = 1
    text = tomli_w.dumps(broken)
    if action == "text":
        at = data.draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + data.draw(st.sampled_from(["=", "[", '"', "{", "\n[x", "#", "]]"]))
            + text[at:]
        )
    error: ConfigError | None = None
    try:
        compile_text(text, environ={})
    except ConfigError as ex:  # anything else fails the test
        error = ex
    if error is None:
        assert action != "unknown-key"
        return
    assert isinstance(error, ConfigFileError)
    assert error.issues
    if action == "unknown-key":
        assert any(i.path == "zz_unknown" for i in error.issues)


# -- export round trip ------------------------------------------------------------


def _shape(compiled_router: Any) -> list[Any]:
    """What makes two router trees equivalent: templates, names, args, message types."""
    out = []
    for info in compiled_router.routes():
        cls = info.target
        types = {
            tag: (spec.strict, spec.payload_type and msgspec.json.schema(spec.payload_type))
            for tag, spec in cls.message_types().items()
        }
        out.append(
            (
                info.template,
                info.name,
                info.args,
                info.kwargs,
                info.parent.template if info.parent else None,
                cls.wire,
                cls.tag_field,
                types,
                [msgspec.json.schema(s) for s in cls.sends],
            )
        )
    return out


def _schema_shape(value: Any) -> Any:
    # NOTE: JSON schema titles name the Struct; an exported type keeps its name.
    return value


@_SETTINGS
@given(configs())
def test_load_of_export_is_equivalent(doc: dict[str, Any]) -> None:
    first = compile_text(tomli_w.dumps(doc))
    text = export_toml(first.router)
    second = compile_text(text)
    assert _shape(second.router) == _shape(first.router)
    assert export_toml(second.router) == text


def test_export_refuses_what_has_no_import_path() -> None:
    from pachinko.resource import WebSocketResource
    from pachinko.router import WebSocketRouter

    class Local(WebSocketResource):
        pass

    router = WebSocketRouter()
    router.add_route("/x", Local)
    with pytest.raises(ConfigFileError, match="expected a module-level class or function"):
        export_toml(router)


def test_a_payload_type_with_a_field_named_like_the_tag_field_is_a_config_error() -> None:
    text = (
        '[types.A.fields]\ntype = "str"\n\n[[routes]]\npath = "/a"\n'
        f'handlers.a = {{ handler = "{HERE}:echo", payload = "A" }}\n'
    )
    with pytest.raises(ConfigFileError) as info:
        compile_text(text)
    assert str(info.value) == (
        "1 error in <string>\n  <string>:6: routes[0].handlers.a.payload: expected a payload type "
        "that can be tagged on field 'type', found A: `tag_field='type' conflicts with an "
        "existing field of that name"
    )


# -- random valid configs also serve ------------------------------------------------


def _sample(tp: Any) -> Any:
    """A valid JSON value for a msgspec.inspect type (as the generator above builds them)."""
    import msgspec.inspect as mi

    if isinstance(tp, mi.Metadata):
        return _sample(tp.type)
    if isinstance(tp, mi.UnionType):
        return None if any(isinstance(t, mi.NoneType) for t in tp.types) else _sample(tp.types[0])
    if isinstance(tp, mi.StructType):
        out = {tp.tag_field: tp.tag} if tp.tag is not None else {}
        out.update({f.encode_name: _sample(f.type) for f in tp.fields if f.required})
        return out
    simple = {
        mi.StrType: "abc",
        mi.IntType: 10,
        mi.FloatType: 1.5,
        mi.BoolType: True,
        mi.DateTimeType: "2024-01-01T00:00:00Z",
        mi.DateType: "2024-01-01",
        mi.UUIDType: "4b1c8a3e-0d3a-4a43-9a55-3c1f2f5a6b7c",
        mi.AnyType: 1,
        mi.ListType: [],
        mi.DictType: {},
    }
    for kind, value in simple.items():
        if isinstance(tp, kind):
            return value
    if isinstance(tp, mi.LiteralType):
        return tp.values[0]
    raise AssertionError(f"no sample for {tp!r}")


async def _serve_all(doc: dict[str, Any], folder: Any) -> int:
    import json

    import falcon.testing

    from pachinko.config import create_app

    path = folder / "routes.toml"
    path.write_text(tomli_w.dumps(doc))
    app = create_app(path)
    answered = 0
    async with falcon.testing.ASGIConductor(app) as conductor:
        for info in app_routes(app):
            url = "/ws" + info.template.replace("{key}", "k1")
            cls = info.target
            async with conductor.simulate_ws(url) as ws:
                for tag, spec in cls.message_types().items():
                    body: Any = {}
                    if spec.payload_type is not None:
                        import msgspec.inspect as mi

                        body = _sample(mi.type_info(spec.payload_type))
                    if cls.wire == "envelope":
                        message = {cls.tag_field: tag, "payload": body}
                    else:
                        body = {k: v for k, v in body.items() if k != cls.tag_field}
                        message = {**body, cls.tag_field: tag}
                    await ws.send_text(json.dumps(message))
                    reply = json.loads(await asyncio.wait_for(ws.receive_text(), 5))
                    assert "error" not in (reply.get("type"), reply.get(cls.tag_field)), reply
                    answered += 1
    return answered


def app_routes(app: Any) -> list[Any]:
    from pachinko import runtime_of

    return runtime_of(app).mounts[0].router.routes()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(doc=configs())
def test_random_valid_configs_serve_every_message_type(doc: dict[str, Any], tmp_path: Any) -> None:
    expected = sum(
        1 if "resource" in r else len(r.get("handlers", {})) + (1 if r.get("routes") else 0)
        for r in doc["routes"]
    )
    assert asyncio.run(_serve_all(doc, tmp_path)) == expected
