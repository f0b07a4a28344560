"""End to end: a real uvicorn server on 127.0.0.1 and the websockets client."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import falcon.asgi
import msgspec
import pytest
import uvicorn
import websockets
from websockets.exceptions import ConnectionClosed

import pachinko
from pachinko import WebSocketResource, WebSocketRouter

pytestmark = pytest.mark.live

TIMEOUT = 5.0
DISCONNECTS: list[int] = []


class Join(msgspec.Struct, tag="join"):
    room: str


class Say(msgspec.Struct, tag="say"):
    text: str


class Joined(msgspec.Struct, tag="joined"):
    room: str


class Chat(WebSocketResource):
    schema = Join | Say

    async def on_join(self, ws: Any, payload: Join) -> None:
        await self.send(Joined(room=payload.room))

    async def on_say(self, ws: Any, payload: Say) -> None:
        await self.send({"type": "said", "text": payload.text})

    async def on_disconnect(self, ws: Any, close_code: int) -> None:
        DISCONNECTS.append(close_code)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    DISCONNECTS.clear()
    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/chat", Chat)
    pachinko.mount(app, "/ws", router, settings=pachinko.Settings(max_message_size=1024))
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(TIMEOUT):
        while not server.started:
            await asyncio.sleep(0.01)
    yield f"ws://127.0.0.1:{port}/ws"
    server.should_exit = True
    async with asyncio.timeout(TIMEOUT * 2):
        await task


async def recv(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def test_conversation_over_a_real_socket(server_url: str) -> None:
    async with websockets.connect(f"{server_url}/chat", open_timeout=TIMEOUT) as ws:
        await ws.send('{"type": "join", "room": "lobby"}')
        assert await recv(ws) == {"type": "joined", "room": "lobby"}
        await ws.send('{"type": "say", "text": "hello"}')
        assert await recv(ws) == {"type": "said", "text": "hello"}
        # a validation error is answered and the connection stays usable
        await ws.send('{"type": "say", "text": 42}')
        assert await recv(ws) == {
            "type": "error",
            "reason": "validation_error",
            "detail": "Expected `str`, got `int`",
            "path": "$.text",
        }
        await ws.send('{"type": "say", "text": "still open"}')
        assert await recv(ws) == {"type": "said", "text": "still open"}
    # client close -> on_disconnect ran, with the client's code
    async with asyncio.timeout(TIMEOUT):
        while not DISCONNECTS:
            await asyncio.sleep(0.01)
    assert DISCONNECTS == [1000]


async def test_oversize_message_closes_1009(server_url: str) -> None:
    async with websockets.connect(f"{server_url}/chat", open_timeout=TIMEOUT) as ws:
        await ws.send('{"type": "say", "text": "' + "x" * 2000 + '"}')
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009
    async with asyncio.timeout(TIMEOUT):
        while not DISCONNECTS:
            await asyncio.sleep(0.01)
    assert DISCONNECTS == [1009]


async def test_unknown_path_is_refused(server_url: str) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(f"{server_url}/nowhere", open_timeout=TIMEOUT):
            pass
    assert info.value.response.status_code == 403
