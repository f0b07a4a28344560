"""End to end: a real uvicorn server on 127.0.0.1 and the websockets client.

Dogfoods pachinko.testing: ``pachinko_live`` serves the app with uvicorn on a
free loopback port and its clients are ``websockets`` clients with timeouts.
"""

from __future__ import annotations

from typing import Any

import falcon.asgi
import msgspec
import pytest

import pachinko
from pachinko import WebSocketResource, WebSocketRouter
from tests.helpers import eventually

pytestmark = pytest.mark.live

TIMEOUT = 5.0


class Join(msgspec.Struct, tag="join"):
    room: str


class Say(msgspec.Struct, tag="say"):
    text: str


class Joined(msgspec.Struct, tag="joined"):
    room: str


class Chat(WebSocketResource):
    schema = Join | Say
    disconnects: list[int]  # one list per app (see chat_app)

    async def on_join(self, ws: Any, payload: Join) -> None:
        await self.send(Joined(room=payload.room))

    async def on_say(self, ws: Any, payload: Say) -> None:
        await self.send({"type": "said", "text": payload.text})

    async def on_disconnect(self, ws: Any, close_code: int) -> None:
        self.disconnects.append(close_code)


def chat_app(disconnects: list[int] | None = None) -> falcon.asgi.App:
    """The chat app; ``on_disconnect`` appends each close code to ``disconnects``."""
    resource = type(
        "RecordingChat", (Chat,), {"disconnects": [] if disconnects is None else disconnects}
    )
    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/chat", resource)
    pachinko.mount(app, "/ws", router, settings=pachinko.Settings(max_message_size=1024))
    return app


async def test_conversation_over_a_real_socket(pachinko_live: Any) -> None:
    disconnects: list[int] = []
    server = await pachinko_live(chat_app(disconnects))
    async with server.websocket("/ws/chat") as ws:
        await ws.send_json({"type": "join", "room": "lobby"})
        assert await ws.expect_next(type="joined") == {"type": "joined", "room": "lobby"}
        await ws.send_json({"type": "say", "text": "hello"})
        assert await ws.expect_next() == {"type": "said", "text": "hello"}
        # a validation error is answered and the connection stays usable
        await ws.send_text('{"type": "say", "text": 42}')
        assert await ws.expect_next() == {
            "type": "error",
            "reason": "validation_error",
            "detail": "Expected `str`, got `int`",
            "path": "$.text",
        }
        await ws.send_json({"type": "say", "text": "still open"})
        assert await ws.expect_next() == {"type": "said", "text": "still open"}
    # client close -> on_disconnect ran, with the client's code
    assert await eventually(lambda: disconnects, TIMEOUT) == [1000]


async def test_oversize_message_closes_1009(pachinko_live: Any) -> None:
    disconnects: list[int] = []
    server = await pachinko_live(chat_app(disconnects))
    async with server.websocket("/ws/chat") as ws:
        await ws.send_text('{"type": "say", "text": "' + "x" * 2000 + '"}')
        assert await ws.expect_close() == 1009
    assert await eventually(lambda: disconnects, TIMEOUT) == [1009]


async def test_unknown_path_is_refused(pachinko_live: Any) -> None:
    server = await pachinko_live(chat_app())
    # a close before accept reaches a real client as HTTP 403
    assert await server.refused("/ws/nowhere") == 403
