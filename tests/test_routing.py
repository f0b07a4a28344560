"""Routing through a real Falcon app: trailing slashes, mounts and url_for."""

from __future__ import annotations

from typing import Any

import pytest
from falcon.errors import WebSocketDisconnected

import pachinko
from pachinko import RouteError, WebSocketResource, WebSocketRouter
from tests.helpers import NOT_FOUND, make_app, recv_json


class Where(WebSocketResource):
    def __init__(self, label: str) -> None:
        self.label = label

    async def on_where(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "here", "label": self.label, "params": self.connection.params})


async def test_a_trailing_slash_is_its_own_route(conductor_for: Any) -> None:
    router = WebSocketRouter()
    router.add_route("/a", Where, "no slash")
    router.add_route("/a/", Where, "slash")  # used to raise "route '/a' conflicts with '/a'"
    router.add_route("/b", Where, "b")
    router.add_route("/", Where, "root")
    conductor = await conductor_for(make_app(router))
    cases = [("/ws/a", "no slash"), ("/ws/a/", "slash"), ("/ws", "root"), ("/ws/", "root")]
    for path, label in cases:
        async with conductor.simulate_ws(path) as ws:
            await ws.send_text('{"type": "where"}')
            assert (await recv_json(ws))["label"] == label, path
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws("/ws/b/"):
            pass
    assert info.value.code == NOT_FOUND


class Links(WebSocketResource):
    async def on_link(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "link", "url": self.url_for("room", room=payload["room"])})


async def _link(conductor: Any, path: str) -> str:
    async with conductor.simulate_ws(path) as ws:
        await ws.send_text('{"type": "link", "room": "a b"}')
        url: str = (await recv_json(ws))["url"]
        return url


async def test_one_router_on_two_apps_shares_nothing(conductor_for: Any) -> None:
    router = WebSocketRouter()
    router.add_route("/rooms/{room}", Links, name="room")
    app_a = make_app(router, prefix="/a")
    app_b = make_app(router, prefix="/b")
    runtime_a, runtime_b = pachinko.runtime_of(app_a), pachinko.runtime_of(app_b)
    # each app builds its URLs with its own prefix (app A used to get /b/...)
    assert runtime_a.url_for("room", room="x") == "/a/rooms/x"
    assert runtime_b.url_for("room", room="x") == "/b/rooms/x"
    assert runtime_a.mounts[0].url_for("room", room="x") == "/a/rooms/x"
    # the router alone cannot tell which prefix is meant: it says so
    with pytest.raises(
        RouteError,
        match=r"url_for\('room'\): the router is mounted at '/a' and '/b', so the prefix "
        r"is ambiguous; ask the app instead: pachinko.runtime_of\(app\).url_for",
    ):
        router.url_for("room", room="x")
    conductor_a = await conductor_for(app_a)
    conductor_b = await conductor_for(app_b)
    # a resource builds URLs with the prefix its connection came in through
    assert await _link(conductor_a, "/a/rooms/r") == "/a/rooms/a%20b"
    assert await _link(conductor_b, "/b/rooms/r") == "/b/rooms/a%20b"
    # connections, managers and runtimes are the app's own
    assert runtime_a is not runtime_b
    assert runtime_a.manager is not runtime_b.manager
    async with conductor_a.simulate_ws("/a/rooms/r") as ws:
        await ws.send_text('{"type": "link", "room": "q"}')
        await recv_json(ws)
        assert [c.path async for c in runtime_a.manager.connections()] == ["/rooms/r"]
        assert [c async for c in runtime_b.manager.connections()] == []


def test_app_url_for_errors_say_what_to_do() -> None:
    router = WebSocketRouter()
    router.add_route("/rooms/{room}", Links, name="room")
    app = make_app(router, prefix="/a")
    pachinko.mount(app, "/b", router)
    runtime = pachinko.runtime_of(app)
    with pytest.raises(
        RouteError,
        match=r"url_for\('room'\): routers mounted at '/a' and '/b' both have a route of "
        r"that name; ask the mount: runtime_of\(app\).mounts\[i\].url_for\(...\)",
    ):
        runtime.url_for("room", room="x")
    assert [m.url_for("room", room="x") for m in runtime.mounts] == ["/a/rooms/x", "/b/rooms/x"]
    with pytest.raises(RouteError, match=r"no route named 'nope' on this app \(known: room\)"):
        runtime.url_for("nope")


def test_mount_url_for_follows_a_swap() -> None:
    old, new = WebSocketRouter(), WebSocketRouter()
    old.add_route("/v1/{room}", Links, name="room")
    new.add_route("/v2/{room}", Links, name="room")
    app = make_app(old, prefix="/live")
    mounted = pachinko.runtime_of(app).mounts[0]
    assert mounted.url_for("room", room="x") == "/live/v1/x"
    mounted.swap(new)
    assert mounted.url_for("room", room="x") == "/live/v2/x"
    assert pachinko.runtime_of(app).url_for("room", room="x") == "/live/v2/x"
