"""The example chat app written with the Python API (no TOML).

``routes.example.toml`` declares exactly this app; ``tests/test_example_app.py``
drives both through a real Falcon app with the same scripted conversation
and checks that they answer identically. Run it with::

    uvicorn --factory examples.chat.app_python:create_app
"""

from __future__ import annotations

import datetime
import functools
import os
from typing import Annotated, Any

import falcon.asgi
import msgspec

from examples.chat import auth, handlers
from examples.chat.page import add_page
from pachinko import (
    RestartPolicy,
    RoomPolicy,
    Settings,
    WebSocketResource,
    WebSocketRouter,
    handles_message,
    mount,
    runtime_of,
    worker,
)

__all__ = ["ChatResource", "create_app"]


class _Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


# -- client -> server ------------------------------------------------------------


class Join(_Message):
    room: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern="^[A-Za-z0-9_-]+$")]
    since: str | None = None
    last: int | None = None


class Leave(_Message):
    room: str


class Say(_Message):
    room: str
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class Typing(_Message):
    room: str
    active: bool


# -- server -> client ------------------------------------------------------------


class Joined(_Message, tag="joined"):
    room: str
    name: str
    members: dict[str, str]


class Message(_Message, tag="message"):
    room: str
    name: str
    text: str
    at: datetime.datetime


class TypingNotice(_Message, tag="typing"):
    room: str
    name: str
    active: bool


class Heartbeat(_Message, tag="heartbeat"):
    at: datetime.datetime
    connections: int


class Error(_Message, tag="error"):
    reason: str
    detail: str
    path: str | None = None


class ChatResource(WebSocketResource):
    """One chat connection; the logic lives in :mod:`examples.chat.handlers`."""

    sends = (Joined, Message, TypingNotice, Heartbeat, Error)  # + pachinko's presence

    def __init__(self, chat: handlers.ChatRooms) -> None:
        self.chat = chat

    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        return await handlers.on_connect(self, req, ws, **params)

    @handles_message("join")
    async def join(self, ws: Any, payload: Join) -> None:
        await handlers.join(self, ws, payload)

    @handles_message("leave")
    async def leave(self, ws: Any, payload: Leave) -> None:
        await handlers.leave(self, ws, payload)

    @handles_message("say")
    async def say(self, ws: Any, payload: Say) -> None:
        await handlers.say(self, ws, payload)

    @handles_message("typing")
    async def typing(self, ws: Any, payload: Typing) -> None:
        await handlers.typing(self, ws, payload)


def create_app(*, heartbeat: float = 10.0, page: bool = True) -> falcon.asgi.App:
    """Build the chat app: the same routes, schemas, rooms, services and worker as the TOML file."""
    app = falcon.asgi.App()
    settings = Settings(
        backend=os.environ.get("PACHINKO_BACKEND", "memory://"),
        max_message_size=16384,
        rate_limit=20.0,
        rate_burst=40,
        allowed_origins=("*",),
    )

    def inject(target: Any, *args: Any, **kwargs: Any) -> Any:
        return target(*args, chat=runtime_of(app).services["chat"], **kwargs)

    router = WebSocketRouter(resource_factory=inject)
    router.add_route("/chat", ChatResource, name="chat")

    @worker(restart=RestartPolicy(max_restarts=3))
    async def beat(manager: Any) -> None:
        await handlers.heartbeat(manager, interval=heartbeat)

    mount(
        app,
        "/ws",
        router,
        settings=settings,
        workers=[beat],
        services={"chat": functools.partial(handlers.ChatRooms, rooms_per_member=10)},
        authenticate=auth.authenticate,
        rooms={
            "*": RoomPolicy(history=50, history_ttl=600, presence=True),
            "typing:*": RoomPolicy(),
        },
    )
    if page:
        add_page(app)
        auth.add_token_endpoint(app)
    return app
