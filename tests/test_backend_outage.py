"""A backend outage in a handler: an error reply, the connection kept, one log line.

Proven with a private redis-server stopped mid-test, over the real Falcon app
(the example chat served by uvicorn, and small apps in-process).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import falcon.asgi
import msgspec
import pytest

import pachinko
from pachinko import BackendUnavailable, MessageError, Settings, runtime_of
from pachinko.backends.redis import RedisBackend
from pachinko.config import create_app
from pachinko.testing import AppClient, LiveServer
from tests.helpers import eventually
from tests.redis_server import RedisServer, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "routes.example.toml"
ONCE_PER_OUTAGE = "logged once per outage"
UNAVAILABLE = {
    "type": "error",
    "reason": "unavailable",
    "detail": "A service the server needs is unavailable; try again later",
    "path": None,
}


def outage_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ONCE_PER_OUTAGE in r.getMessage()]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


async def until_broadcasts_work(ws: Any, other: Any, room: str) -> None:
    """Say something until it reaches ``other`` (Redis is back and resubscribed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        await ws.send_json({"type": "say", "room": room, "text": "back?"})
        reply = await ws.expect()
        if reply["type"] == "message":
            await other.expect(type="message", text="back?")
            return
        assert reply == UNAVAILABLE, reply
        assert loop.time() < deadline, "broadcasts did not resume after the restart"
        await asyncio.sleep(0.1)  # NOTE: pacing the retries, not a timed assertion


@pytest.mark.live
async def test_the_example_chat_survives_a_redis_outage(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PACHINKO_BACKEND", redis_server.url)
    app = create_app(EXAMPLE)
    caplog.set_level(logging.DEBUG, logger="pachinko")
    async with (
        LiveServer(app, timeout=5.0) as server,
        server.websocket("/ws/chat") as ann,
        server.websocket("/ws/chat") as bob,
    ):
        for ws, name in ((ann, "Ann"), (bob, "Bob")):
            await ws.send_json({"type": "join", "room": "lobby", "name": name})
            await ws.expect(type="joined")
        await ann.expect(type="presence", name="Bob")

        backend = runtime_of(app).manager.backend
        for outage in (1, 2):
            redis_server.stop()
            # NOTE: the backend notices within a second; a second outage counts
            #   as new once the backend was seen down and back up in between.
            await eventually(lambda: backend.available is False, timeout=10)
            for _ in range(6):  # every client that speaks gets a reply, and stays
                for ws in (ann, bob):
                    await ws.send_json({"type": "say", "room": "lobby", "text": "during"})
                    assert await ws.expect(type="error") == UNAVAILABLE
            assert len(outage_logs(caplog)) == outage
            assert tracebacks(caplog) == []
            await redis_server.start()
            await eventually(lambda: backend.available is True, timeout=15)  # resubscribed
            await until_broadcasts_work(ann, bob, "lobby")
        assert len(outage_logs(caplog)) == 2
    assert tracebacks(caplog) == []


class Loud(msgspec.Struct, tag="say"):
    text: str


class Speaker(pachinko.WebSocketResource):
    schema = Loud

    async def after_connect(self, ws: Any) -> None:
        await self.join_room("r")

    async def on_say(self, ws: Any, payload: Loud) -> None:
        said = {"type": "said", "text": payload.text}
        await self.broadcast_to_room("r", said, exclude_self=False)

    @pachinko.handles_message("ping")
    async def ping(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "pong"})  # needs no backend


class OwnErrorHook(Speaker):
    async def on_error(self, ws: Any, exc: Exception) -> bool:
        if isinstance(exc, BackendUnavailable):
            await self.send({"type": "try-later"})
            return True
        return False


class OwnUnhandled(Speaker):
    async def on_unhandled(self, ws: Any, error: MessageError) -> None:
        await self.send({"type": "own", "reason": error.reason, "raw": error.raw})


def speaker_app(resource: type[Speaker], url: str, **settings: Any) -> falcon.asgi.App:
    router = pachinko.WebSocketRouter()
    router.add_route("/s", resource)
    app = falcon.asgi.App()
    backend = RedisBackend(url, prefix=unique_prefix(), reconnect_min=0.05, reconnect_max=0.3)
    pachinko.mount(app, "/ws", router, settings=Settings(**settings), backend=backend)
    return app


@pytest.mark.parametrize(
    ("resource", "settings", "reply"),
    [
        (Speaker, {}, UNAVAILABLE),
        (OwnErrorHook, {}, {"type": "try-later"}),
        (
            OwnUnhandled,
            {},
            {"type": "own", "reason": "unavailable", "raw": '{"type": "say", "text": "x"}'},
        ),
        (OwnUnhandled, {"error_replies": False}, {"type": "own", "reason": "unavailable"}),
    ],
    ids=["default", "error hook", "on_unhandled", "on_unhandled, error_replies off"],
)
async def test_the_app_can_take_a_backend_outage_itself(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    resource: type[Speaker],
    settings: dict[str, Any],
    reply: dict[str, Any],
) -> None:
    app = speaker_app(resource, redis_server.url, **settings)
    caplog.set_level(logging.DEBUG, logger="pachinko")
    async with AppClient(app, timeout=5.0) as client, client.websocket("/ws/s") as ws:
        await ws.send_json({"type": "say", "text": "before"})
        await ws.expect(type="said", text="before")
        redis_server.stop()
        for _ in range(3):
            await ws.send_json({"type": "say", "text": "x"})
            await ws.expect_next(reply)
        await ws.send_json({"type": "ping"})
        await ws.expect_next(type="pong")  # the connection is kept
    assert tracebacks(caplog) == []
    # the default path logs (once); an error hook that handles it keeps it quiet
    assert len(outage_logs(caplog)) == (0 if resource is OwnErrorHook else 1)


async def test_silent_by_default_with_error_replies_off(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = speaker_app(Speaker, redis_server.url, error_replies=False)
    caplog.set_level(logging.DEBUG, logger="pachinko")
    async with AppClient(app, timeout=5.0) as client, client.websocket("/ws/s") as ws:
        await ws.send_json({"type": "say", "text": "before"})
        await ws.expect(type="said", text="before")
        redis_server.stop()
        await ws.send_json({"type": "say", "text": "x"})
        await ws.send_json({"type": "ping"})
        await ws.expect_next(type="pong")  # nothing came before it; the connection is kept
    assert len(outage_logs(caplog)) == 1
    assert tracebacks(caplog) == []
