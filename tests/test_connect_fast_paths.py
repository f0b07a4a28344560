"""The handshake's shortcuts change nothing a resource, a hook, a backend or an observer sees.

A connection of one resource class without hooks skips work (no hook
lookups, no default ``on_connect``/``on_disconnect`` call, no backend call
for an anonymous connection, a remembered static path). Each test here pins
what must still happen around such a shortcut, through a real app.
"""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import pytest
from falcon.errors import WebSocketDisconnected

from pachinko import Settings, WebSocketResource, WebSocketRouter, _serve, runtime_of
from pachinko.backends.inprocess import InProcessBackend
from pachinko.connection import ENDED
from pachinko.errors import PachinkoError, RequestAborted
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
        found = mount.match("/ws" + "/" * n + "a")  # the whole request path
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


# -- the plain lane: the second handshake of a remembered path -----------------


def _plain_app(**install: Any) -> Any:
    router = WebSocketRouter()
    router.add_route("/a", Echo)
    return make_app(router, **install)


async def _say(conductor: Any, path: str = "/ws/a", **options: Any) -> None:
    async with conductor.simulate_ws(path, **options) as ws:
        await ws.send_text('{"type": "say"}')
        assert (await recv_json(ws))["type"] == "said"


@pytest.fixture
def full_handshakes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The request paths that went through the full handshake (not the plain lane)."""
    paths: list[str] = []
    full = _serve._handshake

    def counted(runtime: Any, mount: Any, req: Any, ws: Any) -> Any:
        paths.append(req.path)
        return full(runtime, mount, req, ws)

    monkeypatch.setattr(_serve, "_handshake", counted)
    return paths


async def test_plain_connections_share_one_dispatch(
    conductor_for: Any, full_handshakes: list[str]
) -> None:
    app = _plain_app()
    manager = runtime_of(app).manager
    conductor = await conductor_for(app)
    await _say(conductor)  # the full handshake: the path is remembered
    async with conductor.simulate_ws("/ws/a") as one, conductor.simulate_ws("/ws/a") as two:
        for ws in (one, two):
            await ws.send_text('{"type": "say"}')
            await recv_json(ws)
        first, second = [conn async for conn in manager.connections()]
        assert first.receiver is second.receiver  # the route's one dispatch
        assert first.pending is None
        assert second.pending is None
    assert full_handshakes == ["/ws/a"]  # the next two took the plain lane


async def test_the_plain_lane_refuses_an_origin_the_full_handshake_refuses(
    conductor_for: Any,
) -> None:
    app = _plain_app(settings=Settings(allowed_origins=["https://good.example"]))
    conductor = await conductor_for(app)
    await _say(conductor, headers={"Origin": "https://good.example"})
    with pytest.raises(WebSocketDisconnected) as info:
        await _say(conductor, headers={"Origin": "https://evil.example"})
    assert info.value.code == FORBIDDEN
    assert len(runtime_of(app).manager) == 0


async def test_the_plain_lane_refuses_past_the_connection_limit(conductor_for: Any) -> None:
    app = _plain_app(settings=Settings(max_connections=1))
    conductor = await conductor_for(app)
    await _say(conductor)
    async with conductor.simulate_ws("/ws/a") as first:
        await first.send_text('{"type": "say"}')
        await recv_json(first)
        with pytest.raises(WebSocketDisconnected) as info:
            await _say(conductor)
        assert info.value.code == 1013
        assert len(runtime_of(app).manager) == 1


async def test_the_plain_lane_refuses_while_shutting_down(conductor_for: Any) -> None:
    built: list[int] = []

    class Counted(Echo):
        def __init__(self) -> None:
            built.append(1)

    router = WebSocketRouter()
    router.add_route("/a", Counted)
    app = make_app(router)
    conductor = await conductor_for(app)
    await _say(conductor)
    runtime_of(app).accepting = False
    with pytest.raises(WebSocketDisconnected) as info:
        await _say(conductor)
    # closed before the accept (Falcon's test client reports that as 3403)
    assert info.value.code == FORBIDDEN
    assert len(built) == 1  # refused before any resource was built


async def test_a_resource_that_fails_to_build_on_the_plain_lane_fails_the_handshake(
    conductor_for: Any, caplog: pytest.LogCaptureFixture, full_handshakes: list[str]
) -> None:
    built: list[int] = []

    class Fragile(Echo):
        def __init__(self) -> None:
            built.append(1)
            if len(built) > 1:
                raise RuntimeError("no more")

    router = WebSocketRouter()
    router.add_route("/f", Fragile)
    app = make_app(router)
    conductor = await conductor_for(app)
    await _say(conductor, "/ws/f")
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws("/ws/f"):
            pass
    assert info.value.code == 1011
    assert len(built) == 2  # built once per handshake, never retried
    assert full_handshakes == ["/ws/f"]  # the second took the plain lane
    (record,) = [r for r in caplog.records if "handshake for /ws/f failed" in r.getMessage()]
    assert record.exc_info is not None
    assert "no more" in str(record.exc_info[1])
    assert len(runtime_of(app).manager) == 0


async def test_a_hook_added_after_a_plain_connection_applies_to_the_next(
    conductor_for: Any,
) -> None:
    seen: list[str] = []

    async def before(resource: Any, ws: Any, text: str) -> None:
        seen.append(text)

    router = WebSocketRouter()
    router.add_route("/a", Echo)
    conductor = await conductor_for(make_app(router))
    await _say(conductor)
    await _say(conductor)  # the plain lane
    router.add_hook("before_receive", before)
    await _say(conductor)
    assert seen == ['{"type": "say"}']


async def test_an_observer_installed_later_sees_only_the_connections_opened_after(
    conductor_for: Any,
) -> None:
    app = _plain_app()
    conductor = await conductor_for(app)
    await _say(conductor)
    seen = _Seen()
    async with conductor.simulate_ws("/ws/a") as early:  # the plain lane, unobserved
        await early.send_text('{"type": "say"}')
        await recv_json(early)
        runtime_of(app).manager.observe(seen)
        await _say(conductor)  # observed: the full handshake
    await eventually(lambda: len(runtime_of(app).manager) == 0)
    assert seen.events == ["opened", "closed 1000"]


async def test_plain_connections_ask_each_other(conductor_for: Any) -> None:
    class Asker(WebSocketResource):
        async def on_poll(self, ws: Any, payload: Any) -> dict[str, Any]:
            async for conn in self.manager.connections():
                if conn is not self.connection:
                    answer = await conn.resource.request({"type": "vote?"}, timeout=2.0)
                    return {"type": "poll_result", "vote": answer["vote"]}
            return {"type": "poll_result", "vote": None}

        async def on_own(self, ws: Any, payload: Any) -> None:
            try:
                await self.request({"type": "vote?"}, timeout=2.0)
            except PachinkoError as ex:
                await self.send({"type": "refused", "why": str(ex)})

    router = WebSocketRouter()
    router.add_route("/q", Asker)
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/q"):
        pass  # the path is remembered: the next two take the plain lane
    async with conductor.simulate_ws("/ws/q") as ann, conductor.simulate_ws("/ws/q") as bob:
        await bob.send_text('{"type": "own", "id": "x"}')  # bob is registered
        assert "Asker.request() awaited by a handler" in (await recv_json(bob))["why"]
        await ann.send_text('{"type": "poll", "id": "p1"}')
        question = await recv_json(bob)
        assert question["type"] == "vote?"
        await bob.send_text(json.dumps({"type": "vote", "vote": "yes", "id": question["id"]}))
        assert await recv_json(ann) == {"type": "poll_result", "vote": "yes", "id": "p1"}


async def test_a_class_that_builds_another_class_takes_the_full_handshake(
    conductor_for: Any, full_handshakes: list[str]
) -> None:
    seen: list[str] = []

    class Chosen(Echo):
        async def before_receive(self, ws: Any, text: str) -> None:
            seen.append(text)

    class Chooser(Echo):
        def __new__(cls) -> Any:
            return object.__new__(Chosen)  # another class, with a hook of its own

    router = WebSocketRouter()
    router.add_route("/c", Chooser)
    conductor = await conductor_for(make_app(router))
    for _ in range(2):
        await _say(conductor, "/ws/c")
    assert seen == ['{"type": "say"}'] * 2  # the built class's hook ran each time
    assert full_handshakes == ["/ws/c", "/ws/c"]
