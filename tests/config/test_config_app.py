"""Everything a routes.toml declares, proven through a real Falcon app."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import msgspec
import pytest

from pachinko import WebSocketResource, handles_message, runtime_of
from pachinko.config import ConfigFileError, configure, create_app
from pachinko.errors import ConfigError
from tests.helpers import recv_json

HERE = "test_config_app"
CALLS: list[str] = []


# -- things the files below import --------------------------------------------------


class Store:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix


class Greeter:
    def __init__(self, store: Store, word: str) -> None:
        self.text = store.prefix + word


class Hello(msgspec.Struct):
    who: str


class Imported(WebSocketResource):
    """A Python resource; its constructor asks for services by name."""

    def __init__(self, greeter: Greeter, store: Store, suffix: str = "") -> None:
        self.greeter = greeter
        self.suffix = suffix

    @handles_message("hello")
    async def hello(self, ws: Any, payload: Hello) -> None:
        await self.send({"type": "hi", "text": f"{self.greeter.text} {payload.who}{self.suffix}"})


async def room_connect(resource: Any, req: Any, ws: Any, room: str) -> bool:
    resource.room = room
    return True


def room_context(resource: Any) -> dict[str, Any]:
    return {"room": resource.room}


async def where(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send({"type": "where", "room": resource.room, "label": resource.label})


async def show(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send({"type": "show", "payload": msgspec.to_builtins(payload)})


async def greet(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send(resource.types.Greeting(text=resource.greeter.text))


def _hook(name: str) -> Any:
    async def hook(resource: Any, ws: Any, message: Any) -> None:
        CALLS.append(name)

    hook.__qualname__ = hook.__name__ = name
    return hook


outer_before = _hook("outer_before")
outer_after = _hook("outer_after")
inner_before = _hook("inner_before")
resource_before = _hook("resource_before")


def add_health(app: falcon.asgi.App[Any, Any]) -> None:
    class Health:
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.media = {"ok": True, "routes": len(runtime_of(app).mounts[0].router.routes())}

    app.add_route("/health", Health())


CONFIG = f"""
[app]
prefix = "/api"
setup = ["{HERE}:add_health"]

[settings]
max_message_size = "${{FX_MAX_SIZE:-4096}}"
rate_limit = false

[services.store]
factory = "{HERE}:Store"
kwargs = {{ prefix = ">" }}

[services.greeter]
factory = "{HERE}:Greeter"
kwargs = {{ word = "hello" }}

[types.Greeting]
tag = "greet"
fields = {{ text = "str" }}

[types.Point.fields]
x = {{ type = "int", ge = 0 }}
y = {{ type = "int", default = 0 }}

[hooks]
before_receive = "{HERE}:outer_before"
after_receive = ["{HERE}:outer_after"]

[[routes]]
path = "/imported"
name = "imported"
resource = "{HERE}:Imported"
kwargs = {{ suffix = "!" }}

[[routes]]
path = "/greet"
services = ["greeter"]
handlers.greet = "{HERE}:greet"

[[routes]]
path = "/rooms/{{room}}"
name = "room"
on_connect = "{HERE}:room_connect"
child_context = "{HERE}:room_context"

[[routes.routes]]
path = "/info"
name = "room-info"
kwargs = {{ label = "child" }}
handlers.where = "{HERE}:where"

[[routers]]
prefix = "/v2"
hooks.before_receive = "{HERE}:inner_before"

[[routers.routes]]
path = "/points"
name = "points"
wire = "envelope"
tag_field = "kind"
hooks.before_receive = "{HERE}:resource_before"
handlers.show = {{ handler = "{HERE}:show", payload = "Point" }}
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("FX_MAX_SIZE", raising=False)
    CALLS.clear()
    path = tmp_path / "routes.toml"
    path.write_text(CONFIG)
    return path


async def test_settings_services_setup_and_names(config: Path, conductor_for: Any) -> None:
    app = create_app(config)
    runtime = runtime_of(app)
    assert runtime.settings.max_message_size == 4096  # interpolated, then converted
    assert runtime.settings.rate_limit is None  # `false` turns it off
    router = runtime.mounts[0].router
    assert router.url_for("room-info", room="a b") == "/api/rooms/a%20b/info"
    assert router.url_for("points") == "/api/v2/points"
    conductor = await conductor_for(app)
    health = await conductor.simulate_get("/health")
    assert health.json == {"ok": True, "routes": 5}
    assert isinstance(runtime.services["greeter"], Greeter)
    assert runtime.services["greeter"].text == ">hello"  # the store was injected


async def test_imported_resource_gets_services_by_parameter_name(
    config: Path, conductor_for: Any
) -> None:
    conductor = await conductor_for(create_app(config))
    async with conductor.simulate_ws("/api/imported") as ws:
        await ws.send_text('{"type": "hello", "who": "ann"}')
        assert await recv_json(ws) == {"type": "hi", "text": ">hello ann!"}
    async with conductor.simulate_ws("/api/greet") as ws:
        await ws.send_text('{"type": "greet"}')
        assert await recv_json(ws) == {"type": "greet", "text": ">hello"}


async def test_nested_routes_share_context(config: Path, conductor_for: Any) -> None:
    conductor = await conductor_for(create_app(config))
    async with conductor.simulate_ws("/api/rooms/lobby/info") as ws:
        await ws.send_text('{"type": "where"}')
        assert await recv_json(ws) == {"type": "where", "room": "lobby", "label": "child"}


async def test_nested_router_envelope_wire_and_hook_order(config: Path, conductor_for: Any) -> None:
    conductor = await conductor_for(create_app(config))
    async with conductor.simulate_ws("/api/v2/points") as ws:
        await ws.send_text('{"kind": "show", "payload": {"x": 3}}')
        assert await recv_json(ws) == {"type": "show", "payload": {"x": 3, "y": 0}}
        await ws.send_text('{"kind": "show", "payload": {"x": -1}}')
        assert await recv_json(ws) == {  # an envelope resource answers in envelopes
            "kind": "error",
            "payload": {
                "reason": "validation_error",
                "detail": "Expected `int` >= 0",
                "path": "$.payload.x",
            },
        }
    assert CALLS[:4] == ["outer_before", "inner_before", "resource_before", "outer_after"]


async def test_configure_an_existing_app_next_to_its_http_routes(
    config: Path, conductor_for: Any
) -> None:
    class Index:
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.text = "index"

    app = falcon.asgi.App()
    app.add_route("/", Index())
    configured = configure(app, config)
    assert configured.reloader is None  # reload is off unless asked for
    conductor = await conductor_for(app)
    assert (await conductor.simulate_get("/")).text == "index"
    async with conductor.simulate_ws("/api/greet") as ws:
        await ws.send_text('{"type": "greet"}')
        assert (await recv_json(ws))["text"] == ">hello"


def test_an_invalid_file_leaves_the_app_untouched(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[[routes]]\npath = "/a"\nhandlers.x = "nowhere_fx:f"\n')
    app = falcon.asgi.App()
    with pytest.raises(ConfigFileError):
        configure(app, path)
    with pytest.raises(Exception, match="not installed"):
        runtime_of(app)


async def test_include_merges_routes_and_types(
    tmp_path: Path, conductor_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "points.toml").write_text(
        f'[types.P.fields]\nx = "int"\n\n[[routes]]\npath = "/p"\n'
        f'handlers.show = {{ handler = "{HERE}:show", payload = "P" }}\n'
    )
    root = tmp_path / "routes.toml"
    root.write_text(
        f'include = ["parts/points.toml"]\n\n[[routes]]\npath = "/g"\n'
        f'handlers.show = {{ handler = "{HERE}:show", payload = "P" }}\n'
    )
    conductor = await conductor_for(create_app(root))
    for path in ("/ws/g", "/ws/p"):
        async with conductor.simulate_ws(path) as ws:
            await ws.send_text('{"type": "show", "x": 1}')
            assert await recv_json(ws) == {"type": "show", "payload": {"type": "show", "x": 1}}


def test_asgi_entry_reads_the_config_path_from_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "pachinko.config.asgi", raising=False)
    monkeypatch.delenv("PACHINKO_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="PACHINKO_CONFIG is not set"):
        importlib.import_module("pachinko.config.asgi")
    monkeypatch.delitem(sys.modules, "pachinko.config.asgi", raising=False)
    monkeypatch.setenv("PACHINKO_CONFIG", str(config))
    module = importlib.import_module("pachinko.config.asgi")
    assert isinstance(module.app, falcon.asgi.App)
    assert runtime_of(module.app).mounts[0].prefix == "/api"
