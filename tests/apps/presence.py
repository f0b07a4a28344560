"""A presence app for multi-process tests: ``uvicorn tests.apps.presence:app``.

Environment: ``PACHINKO_BACKEND`` (a Redis URL with ``presence_ttl`` and
``prefix`` as query parameters) and ``PRESENCE_LINGER`` (seconds).
Users authenticate with a signed token (``?token=``, pachinko.auth, the
secret below); rooms ``lobby`` and ``team:*`` have presence, and ``team:x``
needs ``x`` in the user's ``teams`` info.

Client → server: ``join {room}``, ``leave {room}``, ``who {room}``; the
server sends ``joined``, ``left``, ``who {members}`` and presence events.
"""

from __future__ import annotations

import os
from typing import Any

import falcon.asgi

import pachinko
from pachinko import RoomPolicy, Settings, WebSocketResource
from pachinko.auth import token_authenticator

SECRET = "presence-test-secret-0123456789"


async def is_member(resource: Any, room: str) -> bool:
    user = resource.connection.user
    return room.removeprefix("team:") in user.info.get("teams", ())


class Presence(WebSocketResource):
    async def on_join(self, ws: Any, payload: Any) -> None:
        await self.join_room(payload["room"])
        await self.send({"type": "joined", "room": payload["room"]})

    async def on_leave(self, ws: Any, payload: Any) -> None:
        await self.leave_room(payload["room"])
        await self.send({"type": "left", "room": payload["room"]})

    async def on_who(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "who", "members": await self.presence(payload["room"])})

    async def on_whoami(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "me", "node": self.manager.node_id})


def create_app() -> falcon.asgi.App:
    app = falcon.asgi.App()
    router = pachinko.WebSocketRouter()
    router.add_route("/presence", Presence)
    pachinko.mount(
        app,
        "/ws",
        router,
        settings=Settings(
            backend=os.environ.get("PACHINKO_BACKEND", "memory://"),
            presence_linger=float(os.environ.get("PRESENCE_LINGER", "0")),
        ),
        authenticate=token_authenticator(SECRET),
        rooms={
            "lobby": RoomPolicy(presence=True),
            "team:*": RoomPolicy(presence=True, authorize=is_member),
        },
    )
    return app


app = create_app()
