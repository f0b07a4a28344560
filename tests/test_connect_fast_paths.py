"""The handshake's shortcuts change nothing a resource, a hook, a backend or an observer sees.

A connection of one resource class without hooks skips work (no hook
lookups, no default ``on_connect``/``on_disconnect`` call, no backend call
for an anonymous connection, a remembered static path). Each test here pins
what must still happen around such a shortcut, through a real app.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from falcon.errors import WebSocketDisconnected

from pachinko import WebSocketResource, WebSocketRouter, runtime_of
from pachinko.backends.inprocess import InProcessBackend
from pachinko.connection import ENDED
from pachinko.errors import RequestAborted
from pachinko.observe import Observer
from tests.helpers import eventually, expect_close, make_app, recv_json

FORBIDDEN = 3403


class Echo(WebSocketResource):
    async def on_say(self, ws: Any, payload: dict[str, Any]) -> None:
        await self.send({"type": "said", "who": type(self).__name__})


class Other(Echo):
    pass


async def test_a_route_added_after_a_static_path_was_remembered_is_served(
    conductor_for: Any,
) -> None:
    router = WebSocketRouter()
    router.add_route("/a", Echo)
    app = make_app(router)
    conductor = await conductor_for(app)
    for _ in range(2):  # the second handshake takes the remembered path
        async with conductor.simulate_ws("/ws/a") as ws:
            await ws.send_text('{"type": "say"}')
            assert (await recv_json(ws))["who"] == "Echo"
    router.add_route("/b", Other)
    async with conductor.simulate_ws("/ws/b") as ws:
        await ws.send_text('{"type": "say"}')
        assert (await recv_json(ws))["who"] == "Other"


async def test_a_swapped_router_is_used_for_a_remembered_path(conductor_for: Any) -> None:
    router = WebSocketRouter()
    router.add_route("/a", Echo)
    app = make_app(router)
    conductor = await conductor_for(app)
    async with conductor.simulate_ws("/ws/a") as ws:
        await ws.send_text('{"type": "say"}')
        assert (await recv_json(ws))["who"] == "Echo"
    swapped = WebSocketRouter()
    swapped.add_route("/a", Other)
    runtime_of(app).mounts[0].swap(swapped)
    async with conductor.simulate_ws("/ws/a") as ws:
        await ws.send_text('{"type": "say"}')
        assert (await recv_json(ws))["who"] == "Other"


def test_remembered_paths_are_bounded() -> None:
    router = WebSocketRouter()
    router.add_route("/a", Echo)
    mount = runtime_of(make_app(router)).mounts[0]
    # leading slashes are ignored: a client can name one route many ways
    for n in range(1, 2000):
        found = mount.match("/" * n + "a")
        assert found is not None
        assert found[0].info.target is Echo
    assert 0 < len(mount._static) <= 1024


async def test_a_before_connect_hook_that_closes_the_handshake_refuses_it(
    conductor_for: Any,
) -> None:
    # the resource keeps the default on_connect: the hook alone decides
    async def close(resource: Any, req: Any, ws: Any, params: Any) -> None:
        await ws.close(FORBIDDEN)

    router = WebSocketRouter()
    router.add_route("/a", Echo)
    router.add_hook("before_connect", close)
    app = make_app(router)
    seen = _Seen()
    runtime_of(app).manager.observe(seen)
    conductor = await conductor_for(app)
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws("/ws/a"):
            pass
    assert info.value.code == FORBIDDEN
    # refused at the handshake: never registered, never opened
    assert seen.events == ["refused refused"]
    assert len(runtime_of(app).manager) == 0


class _Recording(InProcessBackend):
    """An in-process backend that asks to record anonymous connections too."""

    records_anonymous = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str | None]] = []

    async def add_connection(self, conn_id: str, user_id: str | None, first: bool) -> None:
        self.calls.append(("add", user_id))

    async def remove_connection(self, conn_id: str, user_id: str | None, last: bool) -> None:
        self.calls.append(("remove", user_id))


@pytest.mark.parametrize("records", [True, False])
async def test_a_backend_says_whether_anonymous_connections_are_recorded(
    conductor_for: Any, records: bool
) -> None:
    backend = _Recording()
    backend.records_anonymous = records
    router = WebSocketRouter()
    router.add_route("/a", Echo)
    app = make_app(router, backend=backend)
    conductor = await conductor_for(app)
    async with conductor.simulate_ws("/ws/a") as ws:
        await ws.send_text('{"type": "say"}')
        await recv_json(ws)
    manager = runtime_of(app).manager
    await eventually(lambda: len(manager) == 0)
    await eventually(lambda: len(backend.calls) == (2 if records else 0))
    assert backend.calls == ([("add", None), ("remove", None)] if records else [])


class _Seen(Observer):
    """An observer keeping the default connection() (its state is None)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def refused(self, cause: str) -> None:
        self.events.append(f"refused {cause}")

    def opened(self, state: Any) -> None:
        self.events.append("opened")

    def closed(self, state: Any, code: int) -> None:
        self.events.append(f"closed {code}")


async def test_an_observer_without_connection_state_sees_the_close(conductor_for: Any) -> None:
    router = WebSocketRouter()
    router.add_route("/a", Echo)
    app = make_app(router)
    seen = _Seen()
    runtime_of(app).manager.observe(seen)
    conductor = await conductor_for(app)
    async with conductor.simulate_ws("/ws/a") as ws:
        await ws.send_text('{"type": "say"}')
        await recv_json(ws)
        await ws.close(1000)
        assert await expect_close(ws) in (1000, None)
    await eventually(lambda: seen.events == ["opened", "closed 1000"])


class _Params(WebSocketResource):
    async def on_say(self, ws: Any, payload: dict[str, Any]) -> None:
        params = self.connection.params
        seen = dict(params)
        params["said"] = payload.get("text")  # the connection's own dict
        await self.send({"type": "params", "seen": seen})


async def test_params_of_a_route_without_fields_are_each_connections_own(
    conductor_for: Any,
) -> None:
    router = WebSocketRouter()
    router.add_route("/a", _Params)
    router.add_route("/r/{room}", _Params)
    conductor = await conductor_for(make_app(router))
    for _ in range(2):  # the second one takes the remembered path
        async with conductor.simulate_ws("/ws/a") as ws:
            await ws.send_text('{"type": "say", "text": "hi"}')
            assert (await recv_json(ws))["seen"] == {}
            await ws.send_text('{"type": "say", "text": "again"}')
            assert (await recv_json(ws))["seen"] == {"said": "hi"}
    async with conductor.simulate_ws("/ws/r/blue") as ws:
        await ws.send_text('{"type": "say", "text": "hi"}')
        assert (await recv_json(ws))["seen"] == {"room": "blue"}


async def test_an_ended_connection_is_freed_without_the_cycle_collector(
    conductor_for: Any,
) -> None:
    # The connection and its resource point at each other while it is open;
    # once it has ended, dropping the resource frees both at once.
    kept: list[WebSocketResource] = []

    class Kept(WebSocketResource):
        async def on_say(self, ws: Any, payload: dict[str, Any]) -> None:
            kept.append(self)
            await self.send({"type": "said"})

    router = WebSocketRouter()
    router.add_route("/k", Kept)
    app = make_app(router)
    manager = runtime_of(app).manager
    conductor = await conductor_for(app)
    gc.disable()
    try:
        async with conductor.simulate_ws("/ws/k") as ws:
            await ws.send_text('{"type": "say"}')
            await recv_json(ws)
        await eventually(lambda: len(manager) == 0)
        resource = kept.pop()
        conn = resource.connection  # the resource keeps its connection
        assert conn.receiver is ENDED  # in the same step as the deregistration
        assert conn.resource is None
        with pytest.raises(RequestAborted, match="the connection is closed"):
            await resource.request({"type": "ping"}, timeout=1.0)
        gone = weakref.ref(resource)
        del resource, conn
        assert gone() is None  # freed by its reference count, no collection ran
    finally:
        gc.enable()
