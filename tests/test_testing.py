"""The testing toolkit, tested on real Falcon apps (in-process and over uvicorn)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import falcon.asgi
import msgspec
import pytest
from falcon.errors import WebSocketDisconnected

import pachinko
from pachinko.testing import (
    AppClient,
    HandshakeRefused,
    LiveServer,
    ReceiveTimeout,
    ResourceHarness,
    WebSocketClosed,
    WebSocketSimulator,
    matches,
)

NORMAL = 1000
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
UNSUPPORTED_DATA = 1003
TOO_BIG = 1009
INTERNAL_ERROR = 1011
NOT_FOUND = 3404
FORBIDDEN = 3403
HTTP_FORBIDDEN = 403


class Say(msgspec.Struct, tag="say"):
    text: str


class Bye(msgspec.Struct, tag="bye"):
    code: int = NORMAL


class Echo(pachinko.WebSocketResource):
    schema = Say | Bye

    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        return req is None or req.get_param("deny") is None

    async def on_say(self, ws: Any, payload: Say) -> None:
        await self.send({"type": "echo", "text": payload.text})
        await self.send({"type": "count", "n": len(payload.text)})

    async def on_bye(self, ws: Any, payload: Bye) -> None:
        await ws.close(payload.code)


def echo_app() -> falcon.asgi.App[Any, Any]:
    router = pachinko.WebSocketRouter()
    router.add_route("/echo", Echo, name="echo")
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router)
    return app


# -- matching -------------------------------------------------------------------


def test_matches_is_a_deep_subset_match() -> None:
    message = {"type": "joined", "members": ["a", "b"], "meta": {"n": 1, "m": 2}}
    assert matches(message, {"type": "joined"})
    assert matches(message, {"meta": {"n": 1}})
    assert matches(message, {"members": ["a", "b"]})
    assert not matches(message, {"members": ["a"]})  # lists match whole
    assert not matches(message, {"type": "left"})
    assert not matches(message, {"absent": None})  # a missing key is not None
    assert not matches("text", {"type": "joined"})
    assert matches("text", "text")


# -- in-process -----------------------------------------------------------------


async def test_in_process_round_trip_and_expect(pachinko_client: Any) -> None:
    client = await pachinko_client(echo_app())
    async with client.websocket("/ws/echo") as ws:
        await ws.send_json({"type": "say", "text": "hi"})
        # expect skips the echo and finds the count
        assert await ws.expect(type="count") == {"type": "count", "n": 2}
        assert ws.received == [{"type": "echo", "text": "hi"}, {"type": "count", "n": 2}]
        await ws.send_json({"type": "say", "text": "yo"})
        assert await ws.expect_next({"type": "echo"}, text="yo") == {"type": "echo", "text": "yo"}
        with pytest.raises(AssertionError, match="expected a message matching"):
            await ws.expect_next(type="echo")  # the next one is the count


async def test_a_missing_message_fails_fast_with_what_came_instead() -> None:
    async with AppClient(echo_app(), timeout=0.2) as client, client.websocket("/ws/echo") as ws:
        await ws.send_json({"type": "say", "text": "hi"})
        with pytest.raises(ReceiveTimeout) as caught:
            await ws.expect(type="never")
        text = str(caught.value)
        assert "no message matching {'type': 'never'} within 0.2 s" in text
        assert "'type': 'echo'" in text
        assert isinstance(caught.value, TimeoutError)
        with pytest.raises(ReceiveTimeout, match=r"no message within 0\.1 s"):
            await ws.receive_json(timeout=0.1)


async def test_expect_silence(pachinko_client: Any) -> None:
    client = await pachinko_client(echo_app())
    async with client.websocket("/ws/echo") as ws:
        await ws.expect_silence(within=0.05)
        await ws.send_json({"type": "say", "text": "hi"})
        with pytest.raises(AssertionError, match="expected no message matching"):
            await ws.expect_silence(within=1.0)
        await ws.expect_silence({"type": "error"}, within=0.05)  # the count is not an error


async def test_close_codes_and_refusals(pachinko_client: Any) -> None:
    client = await pachinko_client(echo_app())
    async with client.websocket("/ws/echo") as ws:
        await ws.send_json({"type": "bye", "code": POLICY_VIOLATION})
        assert await ws.expect_close() == POLICY_VIOLATION
        with pytest.raises(WebSocketClosed) as caught:
            await ws.receive_json()
        assert caught.value.code == POLICY_VIOLATION
    assert await client.refused("/ws/nowhere") == NOT_FOUND
    assert await client.refused("/ws/echo", query_string="deny=1") == FORBIDDEN
    with pytest.raises(AssertionError, match="to be refused, it was accepted"):
        await client.refused("/ws/echo")
    with pytest.raises(HandshakeRefused, match=r"/ws/nowhere \(close code 3404\)"):
        async with client.websocket("/ws/nowhere"):
            pass


async def test_expect_close_fails_when_the_server_keeps_the_socket_open() -> None:
    async with AppClient(echo_app(), timeout=0.1) as client, client.websocket("/ws/echo") as ws:
        with pytest.raises(ReceiveTimeout, match=r"did not close within 0\.1 s"):
            await ws.expect_close()


async def test_error_replies_are_visible(pachinko_client: Any) -> None:
    client = await pachinko_client(echo_app())
    async with client.websocket("/ws/echo") as ws:
        await ws.send_text("not json")
        reply = await ws.expect(type="error")
        assert reply["reason"] == "invalid_json"


def test_timeout_fixture_default(pachinko_timeout: float) -> None:
    assert pachinko_timeout == 5.0


# -- live -----------------------------------------------------------------------


@pytest.mark.live
async def test_live_server_round_trip_over_a_real_socket(pachinko_live: Any) -> None:
    server = await pachinko_live(echo_app())
    assert server.port > 0
    async with server.websocket("/ws/echo") as ws:
        await ws.send_json({"type": "say", "text": "über"})
        assert await ws.expect(type="echo") == {"type": "echo", "text": "über"}
        await ws.send_json({"type": "bye", "code": POLICY_VIOLATION})
        assert await ws.expect_close() == POLICY_VIOLATION
    assert await server.refused("/ws/nowhere") == HTTP_FORBIDDEN


@pytest.mark.live
async def test_live_server_shutdown_closes_open_sockets_with_1001() -> None:
    server = LiveServer(echo_app(), timeout=2.0)
    async with server:
        ws_context = server.websocket("/ws/echo")
        ws = await ws_context.__aenter__()
        await ws.send_json({"type": "say", "text": "x"})
        await ws.expect(type="count")
    try:
        assert await ws.expect_close() == GOING_AWAY
    finally:
        await ws_context.__aexit__(None, None, None)


@pytest.mark.live
async def test_live_server_stops_and_frees_its_port() -> None:
    async with LiveServer(echo_app(), timeout=2.0) as server:
        port = server.port
        async with server.websocket("/ws/echo") as ws:
            with pytest.raises(ReceiveTimeout):
                await ws.receive_json(timeout=0.05)
    with socket.socket() as probe:
        probe.settimeout(2.0)
        with pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))


# -- unit tests of one resource -------------------------------------------------


async def test_simulator_records_what_a_resource_sends() -> None:
    ws = WebSocketSimulator(timeout=0.5)
    server = ws.socket  # what the code under test gets as its Falcon WebSocket
    await server.accept()
    await server.send_media({"a": 1})
    await server.send_text("plain")
    await server.send_data(b"\x00")
    assert ws.sent == ['{"a": 1}', "plain", b"\x00"]
    assert await ws.next_sent() == {"a": 1}
    with pytest.raises(AssertionError, match="expected JSON, got 'plain'"):
        await ws.receive_json()
    assert await ws.receive_bytes() == b"\x00"
    await ws.send_json({"type": "say"})
    assert await server.receive_text() == '{"type": "say"}'
    await server.close(4000, "done")
    assert await ws.expect_close() == 4000
    with pytest.raises(WebSocketDisconnected) as caught:
        await server.send_text("late")
    assert caught.value.code == 4000


async def test_simulator_has_one_direction_per_method() -> None:
    # the test's end: send_* go to the server, receive_* return what the server sent
    ws = WebSocketSimulator(timeout=0.5)
    server = ws.socket
    await server.accept()
    await ws.send_text("from the client")
    await ws.send_json({"n": 1})
    await ws.send_bytes(b"\x01")
    await server.send_text("from the server")
    await server.send_media({"n": 2})
    await server.send_data(b"\x02")
    assert await ws.receive_text() == "from the server"
    assert await ws.receive_json() == {"n": 2}
    assert await ws.receive_bytes() == b"\x02"
    # the server's end: receive_* return what the client sent
    assert await server.receive_text() == "from the client"
    assert await server.receive_media() == {"n": 1}
    assert await server.receive_data() == b"\x01"
    await ws.close(4001)
    with pytest.raises(WebSocketDisconnected) as caught:
        await server.receive_text()
    assert caught.value.code == 4001


@pytest.mark.parametrize("end", ["client", "server"])
@pytest.mark.parametrize("method", ["receive_text", "receive_json", "receive_bytes"])
async def test_every_simulator_receive_is_bounded(end: str, method: str) -> None:
    ws = WebSocketSimulator(timeout=0.05)
    server_methods = {
        "receive_text": "receive_text",
        "receive_json": "receive_media",
        "receive_bytes": "receive_data",
    }
    receive = getattr(ws, method) if end == "client" else getattr(ws.socket, server_methods[method])
    # NOTE: the outer bound only keeps a regression from hanging the suite.
    with pytest.raises(ReceiveTimeout):
        await asyncio.wait_for(receive(), 5.0)
    with pytest.raises(ReceiveTimeout, match=r"within 0\.01 s|waited 0\.01 s"):
        await asyncio.wait_for(receive(timeout=0.01), 5.0)


async def test_harness_dispatches_like_the_serve_loop() -> None:
    async with ResourceHarness(Echo, timeout=0.5) as echo:
        assert await echo.connect()
        await echo.receive({"type": "say", "text": "abc"})
        assert await echo.ws.expect(type="count") == {"type": "count", "n": 3}
        await echo.receive({"type": "say", "text": 5})
        error = await echo.ws.expect(type="error")
        assert error["reason"] == "validation_error"
        assert error["path"] == "$.text"
        await echo.receive({"type": "bye"})
        assert await echo.ws.expect_close() == NORMAL
        with pytest.raises(WebSocketClosed):
            await echo.receive({"type": "say", "text": "after the close"})


class Hooked(pachinko.WebSocketResource):
    """Hooks, a custom on_unhandled and a handler that fails."""

    schema = Say

    def __init__(self) -> None:
        self.log: list[str] = []

    async def after_connect(self, ws: Any) -> None:
        self.log.append("after_connect")

    async def before_receive(self, ws: Any, message: str) -> None:
        self.log.append(f"before {message}")

    async def after_receive(self, ws: Any, message: str) -> None:
        self.log.append(f"after {message}")

    async def on_say(self, ws: Any, payload: Say) -> None:
        if payload.text == "boom":
            raise ValueError("boom")
        if payload.text == "handled":
            raise KeyError("handled")
        await self.send({"type": "said", "text": payload.text})

    async def on_error(self, ws: Any, exc: Exception) -> bool:
        self.log.append(f"on_error {exc!r}")
        return isinstance(exc, KeyError)

    async def on_unhandled(self, ws: Any, error: pachinko.MessageError) -> None:
        self.log.append(f"unhandled {error.reason}")

    async def before_disconnect(self, ws: Any, close_code: int) -> None:
        self.log.append(f"before_disconnect {close_code}")

    async def on_disconnect(self, ws: Any, close_code: int) -> None:
        self.log.append(f"on_disconnect {close_code}")


class CountingDecoder:
    """Wraps a class's decoder and counts its decodes."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.calls = 0

    def decode(self, text: str) -> Any:
        self.calls += 1
        return self.decoder.decode(text)


async def test_harness_runs_the_real_step_hooks_fast_path_and_errors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import attrs

    table = Hooked.__pachinko_table__
    counting = CountingDecoder(table.decoder)
    monkeypatch.setattr(Hooked, "__pachinko_table__", attrs.evolve(table, decoder=counting))
    settings = pachinko.Settings(error_replies=False)
    async with ResourceHarness(Hooked, settings=settings, timeout=0.5) as harness:
        log: list[str] = harness.resource.log  # type: ignore[attr-defined]
        assert await harness.connect()
        assert log == ["after_connect"]
        await harness.receive({"type": "say", "text": "hi"})
        assert await harness.ws.expect_next(type="said") == {"type": "said", "text": "hi"}
        assert counting.calls == 1  # the class's one decoder: the fast path
        # a custom on_unhandled runs even with error_replies=False, as in the loop
        await harness.receive({"type": "nope"})
        # an error hook that handles the exception keeps the connection open
        await harness.receive({"type": "say", "text": "handled"})
        assert log[1:] == [
            'before {"type": "say", "text": "hi"}',
            'after {"type": "say", "text": "hi"}',
            'before {"type": "nope"}',
            "unhandled unknown_type",
            'before {"type": "say", "text": "handled"}',
            "on_error KeyError('handled')",
        ]
        del log[1:]
        # an exception no hook handles: logged, closed with 1011, on_disconnect runs
        with caplog.at_level("ERROR", logger="pachinko"):
            await harness.receive({"type": "say", "text": "boom"})
        assert await harness.ws.expect_close() == INTERNAL_ERROR
        assert log[1:] == [
            'before {"type": "say", "text": "boom"}',
            "on_error ValueError('boom')",
            f"before_disconnect {INTERNAL_ERROR}",
            f"on_disconnect {INTERNAL_ERROR}",
        ]
        assert [repr(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["ValueError('boom')"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [(b"\x00", UNSUPPORTED_DATA), ('{"type": "say", "text": "' + "x" * 70000 + '"}', TOO_BIG)],
)
async def test_harness_closes_like_the_serve_loop(frame: Any, code: int) -> None:
    async with ResourceHarness(Echo, timeout=0.5) as echo:
        assert await echo.connect()
        await echo.receive(frame)
        assert await echo.ws.expect_close() == code
        assert not echo.registered  # on_disconnect ran, the connection deregistered


async def test_harness_needs_an_open_connection() -> None:
    async with ResourceHarness(Echo, timeout=0.5) as echo:
        with pytest.raises(RuntimeError, match=r"call \(and await\) connect\(\) first"):
            await echo.receive({"type": "say", "text": "x"})


async def test_probe_receives_what_a_room_receives() -> None:
    class Room(pachinko.WebSocketResource):
        @pachinko.handles_message("join")
        async def join(self, ws: Any, payload: Any) -> None:
            await self.join_room(payload["room"])

        @pachinko.handles_message("say")
        async def say(self, ws: Any, payload: Any) -> None:
            await self.broadcast_to_room(payload["room"], {"type": "said", "text": payload["text"]})

    router = pachinko.WebSocketRouter()
    router.add_route("/room", Room)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router)
    async with AppClient(app, timeout=2.0) as client:
        manager = pachinko.runtime_of(app).manager
        async with (
            pachinko.testing.Probe(manager, rooms=["lobby"]) as lobby,
            pachinko.testing.Probe(manager, rooms=["other"]) as other,
            client.websocket("/ws/room") as ws,
        ):
            await ws.send_json({"type": "join", "room": "lobby"})
            await ws.send_json({"type": "say", "room": "lobby", "text": "hi"})
            assert await lobby.expect(type="said") == {"type": "said", "text": "hi"}
            await other.expect_silence(within=0.1)
            await ws.expect_silence(within=0.05)  # exclude_self


async def test_timeouts_bound_every_wait() -> None:
    ws = WebSocketSimulator(timeout=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ReceiveTimeout):
        await ws.expect(type="x")
    assert loop.time() - started < 2.0


async def test_probe_receives_what_a_user_receives() -> None:
    class Direct(pachinko.WebSocketResource):
        @pachinko.handles_message("dm")
        async def dm(self, ws: Any, payload: Any) -> None:
            await self.manager.send_to_user(payload["to"], {"type": "dm", "text": payload["text"]})

    router = pachinko.WebSocketRouter()
    router.add_route("/dm", Direct)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router)
    async with AppClient(app, timeout=2.0) as client:
        manager = pachinko.runtime_of(app).manager
        async with (
            pachinko.testing.Probe(manager, user_id="u1") as u1,
            pachinko.testing.Probe(manager, user_id="u2") as u2,
            client.websocket("/ws/dm") as ws,
        ):
            await ws.send_json({"type": "dm", "to": "u1", "text": "psst"})
            assert await u1.expect(type="dm") == {"type": "dm", "text": "psst"}
            await u2.expect_silence(within=0.1)
        assert [c async for c in manager.connections()] == []  # probes deregistered


async def test_harnesses_sharing_a_manager_see_each_others_broadcasts() -> None:
    closed: list[int] = []

    class Room(pachinko.WebSocketResource):
        @pachinko.handles_message("join")
        async def join(self, ws: Any, payload: Any) -> None:
            await self.join_room(payload["room"])

        @pachinko.handles_message("say")
        async def say(self, ws: Any, payload: Any) -> None:
            await self.broadcast_to_room(payload["room"], {"type": "said", "text": payload["text"]})

        async def on_disconnect(self, ws: Any, close_code: int) -> None:
            closed.append(close_code)

    async with ResourceHarness(Room, timeout=0.5, user_id="ann") as ann:
        async with ResourceHarness(Room, manager=ann.manager, timeout=0.5) as bob:
            assert await ann.connect()
            assert await bob.connect()
            assert ann.resource.user_id == "ann"
            await ann.receive({"type": "join", "room": "r"})
            await bob.receive({"type": "say", "room": "r", "text": "hi"})
            assert await ann.ws.expect(type="said") == {"type": "said", "text": "hi"}
            await bob.ws.expect_silence(within=0.05)  # not a member
            await bob.disconnect(4000)
        assert closed == [4000]  # once, not again when the harness exits
    assert closed == [4000, NORMAL]


async def test_in_process_client_receives_binary_frames_without_losing_any() -> None:
    import falcon.asgi

    from pachinko import WebSocketResource, WebSocketRouter, mount
    from pachinko.testing import AppClient

    class Mixed(WebSocketResource):
        async def on_go(self, ws: Any, payload: Any) -> None:
            await ws.send_data(b"\x00binary")
            await ws.send_text('{"type": "text"}')
            await self.manager.send_to_connection(self.connection.id, b"\x01queued")

    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/m", Mixed)
    mount(app, "/ws", router)
    async with AppClient(app, timeout=2.0) as client, client.websocket("/ws/m") as ws:
        await ws.send_json({"type": "go"})
        assert await ws.receive_bytes() == b"\x00binary"
        assert await ws.receive_json() == {"type": "text"}
        assert await ws.receive_bytes() == b"\x01queued"
