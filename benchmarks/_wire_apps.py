"""The two apps bench_wire.py serves with uvicorn (``--app-dir benchmarks --factory``).

Both have the same two routes and the same wire format:

- ``/ws/member``: a member of the one room (``lobby``): accepted, added to
  the room, then idle (it sends nothing);
- ``/ws/publish``: a publisher (not a member): each ``{"type": "say",
  "n": 1, "text": "...", "at": 12.5}`` it sends (``at`` optional) is
  decoded (msgspec) and broadcast to the room as ``{"type": "said", "n": 1,
  "text": "...", "at": 12.5}``, encoded once.

``handwritten_app`` does it with a Falcon ``on_websocket`` responder and a
plain sequential ``await ws.send_text(text)`` loop over the members (the
cheapest fan-out there is, with no isolation: one stalled member would delay
every member after it); ``pachinko_app`` with resources and
``manager.broadcast_to_room``. Falcon's receive queue is 0 on both sides
(pachinko sets it; ``BENCH_FALCON_QUEUE`` changes it for the hand-written app).
``BENCH_BACKEND`` is pachinko's backend URL (bench_redis.py: a Redis URL);
given a Redis URL, the hand-written app's publisher only PUBLISHes each
message with redis-py (a channel nobody listens on, the same payload size as
pachinko's): the reference for the publishing process's cost per broadcast.
"""

from __future__ import annotations

import os
from typing import Any

import falcon.asgi
import msgspec
from falcon.errors import WebSocketDisconnected

import pachinko


class Say(msgspec.Struct, tag="say", forbid_unknown_fields=True):
    n: int
    text: str
    at: float = 0.0


class Said(msgspec.Struct, tag="said"):
    n: int
    text: str
    at: float = 0.0


# -- the hand-written Falcon app ----------------------------------------------------


class Room:
    """The room: a set of sockets and a sequential send loop."""

    decoder = msgspec.json.Decoder(Say)
    encoder = msgspec.json.Encoder()

    def __init__(self) -> None:
        self.members: set[Any] = set()


class MemberRoute:
    def __init__(self, room: Room) -> None:
        self.room = room

    async def on_websocket(self, req: Any, ws: Any) -> None:
        await ws.accept()
        self.room.members.add(ws)
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnected:
            pass
        finally:
            self.room.members.discard(ws)


class PublishRoute:
    def __init__(self, room: Room) -> None:
        self.room = room

    async def on_websocket(self, req: Any, ws: Any) -> None:
        await ws.accept()
        decode = self.room.decoder.decode
        encode = self.room.encoder.encode
        while True:
            try:
                say = decode(await ws.receive_text())
            except WebSocketDisconnected:
                return
            text = encode(Said(say.n, say.text, say.at)).decode()
            for member in list(self.room.members):
                try:
                    await member.send_text(text)
                except WebSocketDisconnected:
                    self.room.members.discard(member)


class RedisPublishRoute:
    """The hand-written publisher for bench_redis.py: one redis-py PUBLISH per message."""

    def __init__(self, url: str) -> None:
        import redis.asyncio

        self.redis = redis.asyncio.Redis.from_url(url)

    async def on_websocket(self, req: Any, ws: Any) -> None:
        await ws.accept()
        decode = Room.decoder.decode
        encode = Room.encoder.encode
        publish = self.redis.publish
        while True:
            try:
                say = decode(await ws.receive_text())
            except WebSocketDisconnected:
                return
            text = encode(Said(say.n, say.text, say.at)).decode()
            await publish("bench-room-lobby", f"node\n\nt\n{text}")


def handwritten_app() -> falcon.asgi.App:
    app = falcon.asgi.App()
    app.ws_options.max_receive_queue = int(os.environ.get("BENCH_FALCON_QUEUE", "0"))
    room = Room()
    app.add_route("/ws/member", MemberRoute(room))
    backend = os.environ.get("BENCH_BACKEND", "memory://")
    if backend.startswith("redis"):
        app.add_route("/ws/publish", RedisPublishRoute(backend.partition("?")[0]))
    else:
        app.add_route("/ws/publish", PublishRoute(room))
    return app


# -- the same with pachinko -----------------------------------------------------------


class Member(pachinko.WebSocketResource):
    async def after_connect(self, ws: Any) -> None:
        await self.join_room("lobby")


class Publisher(pachinko.WebSocketResource):
    schema = Say

    async def on_say(self, ws: Any, msg: Say) -> None:
        await self.manager.broadcast_to_room("lobby", Said(msg.n, msg.text, msg.at))


def pachinko_app() -> falcon.asgi.App:
    app = falcon.asgi.App()
    router = pachinko.WebSocketRouter()
    router.add_route("/member", Member)
    router.add_route("/publish", Publisher)
    # NOTE: no inbound rate limit (the hand-written app has none, and a fast
    #   publisher must not be closed by it); every other setting is the default.
    settings = pachinko.Settings(
        rate_limit=None, backend=os.environ.get("BENCH_BACKEND", "memory://")
    )
    pachinko.mount(app, "/ws", router, settings=settings)
    return app
