"""A room that broadcasts numbered ticks, for the slow-consumer and fan-out tests.

Client → server: ``join {room}`` (answered ``joined``), ``pub {room, n,
pace?, pad?}``: ``n`` broadcasts ``{"type": "tick", "n": i}`` to the room
(``pad`` bytes of padding each, ``pace`` seconds apart, 0: never yielding),
then ``done {dropped, failed, recipients}`` to the publisher, summing the
broadcasts' results.
"""

from __future__ import annotations

import asyncio
from typing import Any

import falcon.asgi

import pachinko
from pachinko import Settings, WebSocketResource, handles_message


class Ticker(WebSocketResource):
    @handles_message("join")
    async def join(self, ws: Any, payload: Any) -> None:
        await self.join_room(payload["room"])
        await self.send({"type": "joined"})

    @handles_message("pub")
    async def pub(self, ws: Any, payload: Any) -> None:
        dropped = failed = 0
        recipients = []
        for n in range(payload["n"]):
            tick: dict[str, Any] = {"type": "tick", "n": n}
            if "pad" in payload:
                tick["pad"] = "x" * payload["pad"]
            result = await self.broadcast_to_room(payload["room"], tick, exclude_self=False)
            dropped += result.dropped
            failed += result.failed
            recipients.append(result.recipients)
            # a producer at a steady pace (0: as fast as it can, never yielding)
            await asyncio.sleep(payload.get("pace", 0.002))
        await self.send(
            {"type": "done", "dropped": dropped, "failed": failed, "recipients": recipients}
        )


def ticker_app(**settings: Any) -> falcon.asgi.App:
    """The ticker on ``/ws/ticks`` with ``Settings(**settings)``."""
    router = pachinko.WebSocketRouter()
    router.add_route("/ticks", Ticker)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router, settings=Settings(**settings))
    return app
