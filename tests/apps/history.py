"""A history-rooms app: ``uvicorn tests.apps.history:app`` (or build_app()).

Environment: ``PACHINKO_BACKEND`` (``memory://`` or a Redis URL).

Rooms ``feed:*`` keep their last 1,000 broadcasts; ``short:*`` their last 3;
``brief:*`` theirs for 0.5 s; every other room keeps none.

Client → server (flat JSON, tag ``type``): ``join {room, since?, last?}``
(answered by the ``recovery`` message when ``since``/``last`` is given, else
by ``joined``), ``say {room, n}`` (to the room, sender included; answered by
``said`` with the position), ``burst {room, count, start}`` (that many
broadcasts, ``n`` from ``start``, answered by ``burst_done``), ``whoami``.
"""

from __future__ import annotations

import os
from typing import Any

import falcon.asgi
import msgspec

import pachinko
from pachinko import RoomPolicy, Settings, WebSocketResource

ROOMS = {
    "feed:*": RoomPolicy(history=1000),
    "short:*": RoomPolicy(history=3),
    "brief:*": RoomPolicy(history=100, history_ttl=0.5),
}


class Join(msgspec.Struct, tag="join"):
    room: str
    since: str | None = None
    last: int | None = None


class Say(msgspec.Struct, tag="say"):
    room: str
    n: int


class Burst(msgspec.Struct, tag="burst"):
    room: str
    count: int
    start: int = 0


class Whoami(msgspec.Struct, tag="whoami"):
    pass


class History(WebSocketResource):
    schema = Join | Say | Burst | Whoami

    async def on_join(self, ws: Any, payload: Join) -> None:
        outcome = await self.join_room(payload.room, since=payload.since, last=payload.last)
        if outcome is None:
            await self.send({"type": "joined", "room": payload.room})

    async def on_say(self, ws: Any, payload: Say) -> None:
        await self.broadcast_to_room(
            payload.room, {"type": "said", "room": payload.room, "n": payload.n}, exclude_self=False
        )

    async def on_burst(self, ws: Any, payload: Burst) -> None:
        for n in range(payload.start, payload.start + payload.count):
            await self.broadcast_to_room(
                payload.room, {"type": "said", "room": payload.room, "n": n}, exclude_self=False
            )
        await self.send({"type": "burst_done", "room": payload.room})

    async def on_whoami(self, ws: Any, payload: Whoami) -> None:
        await self.send({"type": "me", "id": self.connection.id, "node": self.manager.node_id})


def build_app(backend: Any = None, **settings: Any) -> falcon.asgi.App:
    """The app, with ``backend`` (default: from $PACHINKO_BACKEND)."""
    router = pachinko.WebSocketRouter()
    router.add_route("/history", History)
    app = falcon.asgi.App()
    if backend is None:
        settings.setdefault("backend", os.environ.get("PACHINKO_BACKEND", "memory://"))
    pachinko.mount(app, "/ws", router, settings=Settings(**settings), backend=backend, rooms=ROOMS)
    return app


app = build_app() if os.environ.get("PACHINKO_BACKEND") else None
