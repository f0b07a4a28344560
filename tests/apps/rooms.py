"""A rooms app for multi-process tests: ``uvicorn tests.apps.rooms:app``.

Environment: ``PACHINKO_BACKEND`` (a Redis URL; ``presence_ttl`` and
``prefix`` may be given as query parameters, see RedisBackend.from_url).

Client → server (flat JSON, tag ``type``): ``whoami``, ``join {room}``,
``leave {room}``, ``say {room, text}`` (to the room, sender excluded),
``dm {to, text}`` (to every connection of a user), ``direct {to, text}``
(to one connection id), ``members {room}``, ``rooms {prefix}``.
The user id is the ``user`` query parameter.
"""

from __future__ import annotations

import os
from typing import Any

import falcon.asgi

import pachinko
from pachinko import Settings, WebSocketResource, handles_message


class Rooms(WebSocketResource):
    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        self.user_id = req.get_param("user")
        return True

    @handles_message("whoami")
    async def whoami(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "me", "id": self.connection.id, "node": self.manager.node_id})

    @handles_message("join")
    async def join(self, ws: Any, payload: Any) -> None:
        await self.join_room(payload["room"])
        await self.send({"type": "joined", "room": payload["room"]})

    @handles_message("leave")
    async def leave(self, ws: Any, payload: Any) -> None:
        await self.leave_room(payload["room"])
        await self.send({"type": "left", "room": payload["room"]})

    @handles_message("say")
    async def say(self, ws: Any, payload: Any) -> None:
        message = {"type": "said", "text": payload["text"], "at": payload.get("at")}
        try:
            result = await self.broadcast_to_room(payload["room"], message)
        except pachinko.BackendUnavailable as ex:
            await self.send({"type": "unavailable", "detail": str(ex)})
            return
        if payload.get("ack"):
            await self.send({"type": "sent", "local": result.recipients, "remote": result.remote})

    @handles_message("dm")
    async def dm(self, ws: Any, payload: Any) -> None:
        await self.manager.send_to_user(payload["to"], {"type": "dm", "text": payload["text"]})

    @handles_message("direct")
    async def direct(self, ws: Any, payload: Any) -> None:
        await self.manager.send_to_connection(
            payload["to"], {"type": "direct", "text": payload["text"]}
        )

    @handles_message("members")
    async def members(self, ws: Any, payload: Any) -> None:
        members = await self.manager.members(payload["room"])
        await self.send({"type": "members", "room": payload["room"], "ids": sorted(members)})

    @handles_message("rooms")
    async def rooms(self, ws: Any, payload: Any) -> None:
        rooms = await self.manager.rooms(payload.get("prefix", ""))
        await self.send({"type": "rooms", "rooms": rooms})


def create() -> falcon.asgi.App:
    router = pachinko.WebSocketRouter()
    router.add_route("/rooms", Rooms)
    app = falcon.asgi.App()
    settings = Settings(backend=os.environ.get("PACHINKO_BACKEND", "memory://"), rate_limit=None)
    pachinko.mount(app, "/ws", router, settings=settings)
    return app


app = create()
