"""A connection's outbox is made for its first frame, through a real app.

Until then it holds one of two shared stand-ins (``UNOPENED`` before the
handshake is accepted, ``OPENED`` after): an idle connection allocates no
outbox. What must not change: the first broadcast reaches it at once and in
order with the resource's own sends, a frame for a connection still in its
handshake waits for the accept, and shutdown closes a connection that never
got a frame.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pachinko
from pachinko import User, WebSocketResource, runtime_of
from pachinko._outbox import OPENED, UNOPENED, NoOutbox, Outbox
from pachinko.backends.inprocess import InProcessBackend
from pachinko.testing import AppClient
from tests.apps.ticker import ticker_app
from tests.helpers import eventually, make_app


async def test_an_idle_connection_has_no_outbox_until_its_first_frame() -> None:
    app = ticker_app()
    manager = runtime_of(app).manager
    async with AppClient(app, timeout=5.0) as client, client.websocket("/ws/ticks") as ann:
        await eventually(lambda: len(manager) == 1)
        (conn,) = manager._connections.values()
        assert conn.outbox is OPENED
        result = await manager.broadcast_to_all({"type": "tick", "n": 0})
        assert (result.recipients, result.dropped, result.failed) == (1, 0, 0)
        assert type(conn.outbox) is Outbox
        assert (await ann.expect(type="tick"))["n"] == 0


async def test_the_first_broadcast_keeps_its_place_before_the_resources_reply() -> None:
    # The outbox made for the first frame is idle: the frame is written at
    # once, as to any idle outbox, so it comes before the reply sent after it.
    class Shout(WebSocketResource):
        @pachinko.handles_message("shout")
        async def shout(self, ws: Any, payload: Any) -> None:
            await self.manager.broadcast_to_all({"type": "heard"})
            await self.send({"type": "shouted"})

    router = pachinko.WebSocketRouter()
    router.add_route("/shout", Shout)
    app = make_app(router)
    async with AppClient(app, timeout=5.0) as client, client.websocket("/ws/shout") as ann:
        await ann.send_json({"type": "shout"})
        assert (await ann.receive_json())["type"] == "heard"
        assert (await ann.receive_json())["type"] == "shouted"


class _SlowBackend(InProcessBackend):
    """Records users' connections only when ``release`` is set (a slow Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.recording = asyncio.Event()
        self.release = asyncio.Event()

    async def add_connection(self, conn_id: str, user_id: str | None, first: bool) -> None:
        self.recording.set()
        await self.release.wait()


class _Plain(WebSocketResource):
    pass


async def test_a_frame_for_a_connection_in_its_handshake_waits_for_the_accept() -> None:
    backend = _SlowBackend()
    router = pachinko.WebSocketRouter()
    router.add_route("/plain", _Plain)
    app = make_app(router, backend=backend, authenticate=lambda req: User("ann"))
    manager = runtime_of(app).manager
    async with AppClient(app, timeout=5.0) as client:
        opening = asyncio.ensure_future(client.websocket("/ws/plain").__aenter__())
        await asyncio.wait_for(backend.recording.wait(), 5)
        # registered here, the backend's step under way, not accepted yet
        (conn,) = manager._connections.values()
        assert conn.outbox is UNOPENED
        result = await manager.send_to_user("ann", {"type": "early"})
        assert (result.delivered, result.pending) == (0, 1)  # queued until the accept
        assert type(conn.outbox) is Outbox
        backend.release.set()
        ann = await asyncio.wait_for(opening, 5)
        try:
            assert await ann.receive_json() == {"type": "early"}
        finally:
            await ann.close()


async def test_shutdown_closes_a_connection_that_never_got_a_frame() -> None:
    app = ticker_app()
    runtime = runtime_of(app)
    async with AppClient(app, timeout=5.0) as client, client.websocket("/ws/ticks") as ann:
        await eventually(lambda: len(runtime.manager) == 1)
        (conn,) = runtime.manager._connections.values()
        assert isinstance(conn.outbox, NoOutbox)
        await runtime.close_connections()
        assert await ann.expect_close() == 1001
