"""What a message becomes on the wire, over a real socket, over both backends.

A Struct, dict or list is one JSON text frame; a str is a text frame as is;
bytes are a binary frame. The same holds when the frame crosses Redis to
another manager (two apps in one process sharing one Redis and prefix: two
nodes, as two processes would be).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import falcon.asgi
import msgspec
import pytest

import pachinko
from pachinko import Settings, WebSocketResource, handles_message, runtime_of
from pachinko.backends import ConnectionBackend, InProcessBackend
from pachinko.backends.redis import RedisBackend
from pachinko.testing import LiveServer
from tests.redis_server import private_redis, unique_prefix

pytestmark = pytest.mark.live


class Note(msgspec.Struct, tag="note", tag_field="type"):
    text: str


class Member(WebSocketResource):
    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        self.user_id = req.get_param("user")
        return True

    @handles_message("join")
    async def join(self, ws: Any, payload: Any) -> None:
        await self.join_room(payload["room"])
        await self.send({"type": "joined", "id": self.connection.id})


def member_app(backend: ConnectionBackend) -> falcon.asgi.App:
    router = pachinko.WebSocketRouter()
    router.add_route("/member", Member)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router, settings=Settings(), backend=backend)
    return app


async def joined(
    stack: contextlib.AsyncExitStack, server: LiveServer, user: str, room: str
) -> tuple[Any, str]:
    ws = await stack.enter_async_context(server.websocket(f"/ws/member?user={user}"))
    await ws.send_json({"type": "join", "room": room})
    reply = await ws.expect(type="joined")
    return ws, reply["id"]


MESSAGES: list[tuple[Any, str | bytes]] = [
    (Note(text="hi"), '{"type":"note","text":"hi"}'),
    ({"type": "note", "text": "hi"}, '{"type":"note","text":"hi"}'),
    ([1, "two"], '[1,"two"]'),
    ("plain, not JSON", "plain, not JSON"),
    (b"\x00\x01binary\n\xff", b"\x00\x01binary\n\xff"),
    (bytearray(b"\x02\n"), b"\x02\n"),
]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ConnectionBackend]:
    if request.param == "memory":
        yield InProcessBackend()
        return
    async with redis_at(tmp_path) as url:
        yield RedisBackend(url, prefix=unique_prefix())


@contextlib.asynccontextmanager
async def redis_at(directory: Path) -> AsyncIterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    async with private_redis(directory) as server:
        yield server.url


async def receive(ws: Any, expected: str | bytes) -> None:
    if isinstance(expected, bytes):
        assert await ws.receive_bytes() == expected
    else:
        assert await ws.receive_text() == expected


@pytest.mark.parametrize(("message", "frame"), MESSAGES, ids=lambda v: type(v).__name__)
async def test_every_send_method_sends_the_same_frame(
    backend: ConnectionBackend, message: Any, frame: str | bytes
) -> None:
    app = member_app(backend)
    manager = runtime_of(app).manager
    async with LiveServer(app) as client, contextlib.AsyncExitStack() as stack:
        ann, ann_id = await joined(stack, client, "ann", "r")
        bob, _ = await joined(stack, client, "bob", "r")
        result = await manager.broadcast_to_room("r", message, timeout=5.0)
        assert (result.recipients, result.delivered) == (2, 2)
        for ws in (ann, bob):
            await receive(ws, frame)
        await manager.send_to_user("bob", message)
        await receive(bob, frame)
        await manager.send_to_connection(ann_id, message)
        await receive(ann, frame)
        await manager.broadcast_to_all(message, exclude=ann_id)
        await receive(bob, frame)
        # excluded: the next frame ann gets is the one sent after
        await manager.send_to_connection(ann_id, "after")
        assert await ann.receive_text() == "after"


@pytest.mark.redis
async def test_frames_keep_their_kind_across_redis(redis_url: str) -> None:
    prefix = unique_prefix()
    app_here = member_app(RedisBackend(redis_url, prefix=prefix))
    app_there = member_app(RedisBackend(redis_url, prefix=prefix))
    manager = runtime_of(app_here).manager
    async with (
        LiveServer(app_here) as near,
        LiveServer(app_there) as far,
        contextlib.AsyncExitStack() as stack,
    ):
        ann, _ = await joined(stack, near, "ann", "r")
        bob, bob_id = await joined(stack, far, "bob", "r")
        for message, frame in MESSAGES:
            result = await manager.broadcast_to_room("r", message, exclude=[])
            assert result.remote == 1
            await receive(ann, frame)
            await receive(bob, frame)
            await manager.send_to_user("bob", message)
            await receive(bob, frame)
            await manager.send_to_connection(bob_id, message)
            await receive(bob, frame)
            await manager.broadcast_to_all(message)
            await receive(ann, frame)
            await receive(bob, frame)
