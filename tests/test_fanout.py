"""Fan-out writes to idle sockets at once, and keeps every member isolated.

A broadcast writes the frame at once to each member whose socket takes it
without blocking; a send that would block continues in that member's own
task. What must hold whatever path a frame takes: a member that stopped
reading delays nobody, gets the slow-consumer policy, and costs bounded
memory; frames keep their order per connection; a send's own code (an ASGI
middleware around ``send``) behaves as if it ran in a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import socket
import tracemalloc
from typing import Any

import falcon.asgi
import pytest

import pachinko
from pachinko import Settings, WebSocketResource, handles_message, runtime_of
from pachinko.testing import AppClient, LiveServer
from tests.apps.ticker import ticker_app
from tests.helpers import POLICY_VIOLATION, StalledClient, eventually

BROADCASTS = 1000
PAD = 16 * 1024  # bytes of padding per broadcast


class Room(WebSocketResource):
    """Members join a room; ``pub`` broadcasts ``n`` numbered ticks to it."""

    @handles_message("join")
    async def join(self, ws: Any, payload: Any) -> None:
        await self.join_room("r")
        await self.send({"type": "joined"})

    @handles_message("pub")
    async def pub(self, ws: Any, payload: Any) -> None:
        pad = "x" * payload["pad"]
        for n in range(payload["n"]):
            await self.broadcast_to_room("r", {"type": "tick", "n": n, "pad": pad})
            await asyncio.sleep(0)  # a producer as fast as the loop lets it be
        await self.send({"type": "done"})


async def _ticks(ws: Any, count: int) -> list[int]:
    seen = []
    for _ in range(count):
        message = json.loads(await ws.recv())
        assert message["type"] == "tick", message
        seen.append(message["n"])
    return seen


@pytest.mark.live
async def test_a_stalled_member_delays_nobody_while_1000_broadcasts_go_to_its_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over uvicorn: the others get all of them in order; the stalled one is closed."""
    from websockets.asyncio.client import connect

    router = pachinko.WebSocketRouter()
    router.add_route("/room", Room)
    app = falcon.asgi.App()
    settings = Settings(
        send_queue_size=64,
        slow_consumer="close",
        slow_consumer_close_code=POLICY_VIOLATION,
        send_timeout=0.5,
    )
    pachinko.mount(app, "/ws", router, settings=settings)
    manager = runtime_of(app).manager
    async with (
        LiveServer(app, timeout=30.0) as server,
        server.websocket("/ws/room") as publisher,  # not a member
        contextlib.AsyncExitStack() as stack,
    ):
        # raw clients: pachinko.testing's keep every message they received
        members = [
            await stack.enter_async_context(connect(server.url + "/ws/room", ping_interval=None))
            for _ in range(3)
        ]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        async with connect(
            server.url + "/ws/room",
            sock=sock,
            max_queue=1,
            compression=None,
            ping_interval=None,
            close_timeout=1,
        ) as stalled:
            await stalled.send('{"type": "join"}')
            assert await asyncio.wait_for(stalled.recv(), 5) == '{"type":"joined"}'
            for ws in members:
                await ws.send('{"type": "join"}')
                assert await asyncio.wait_for(ws.recv(), 5) == '{"type":"joined"}'
            # `stalled` reads nothing from now on
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                await publisher.send_json({"type": "pub", "n": BROADCASTS, "pad": PAD})
                received = await asyncio.wait_for(
                    asyncio.gather(*(_ticks(ws, BROADCASTS) for ws in members)), 60
                )
                await publisher.expect(type="done")
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert received == [list(range(BROADCASTS))] * 3
            # Keeping the stalled member's frames would take BROADCASTS * PAD
            # (16 MiB); its queue and its transport's buffer are bounded.
            assert peak - before < BROADCASTS * PAD // 4
            # closed by the policy and evicted: the room is the three that kept
            # reading. NOTE: whether the close frame can reach a peer whose
            # buffers are full is the closing path's business, tested in
            # tests/test_slow_consumer.py.
            closing = [r for r in caplog.records if "closing a slow consumer" in r.getMessage()]
            assert [r.args[0] for r in closing] == [POLICY_VIOLATION]
            await eventually(lambda: len(manager) == 4, timeout=10)
            assert await manager.members("r") == {c.id async for c in manager.connections("r")}
            assert len(await manager.members("r")) == 3


async def test_frames_written_at_once_count_as_delivered_without_a_timeout() -> None:
    app = ticker_app(send_queue_size=4, slow_consumer="drop", send_timeout=30)
    manager = runtime_of(app).manager
    async with AppClient(app, timeout=5.0), StalledClient(app, "/ws/ticks") as member:
        await member.join("r")
        result = await manager.broadcast_to_room("r", {"type": "tick", "n": 0})
        # the member's socket took the frame without blocking
        assert (result.recipients, result.delivered, result.pending) == (1, 1, 0)
        member.stalled = True
        result = await manager.broadcast_to_room("r", {"type": "tick", "n": 1})
        # its send blocks now: under way in the member's own task
        assert (result.recipients, result.delivered, result.pending) == (1, 0, 1)
        result = await manager.broadcast_to_room("r", {"type": "tick", "n": 2})
        assert (result.recipients, result.delivered, result.pending) == (1, 0, 1)
        member.release.set()
        await eventually(lambda: len(member.received) == 4)
        assert member.received[1:] == [f'{{"type":"tick","n":{n}}}' for n in range(3)]
        member.stalled = False
        result = await manager.broadcast_to_room("r", {"type": "tick", "n": 3}, timeout=5.0)
        assert (result.delivered, result.pending, result.ok) == (1, 0, True)


TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace")


def traced(app: Any) -> Any:
    """An ASGI middleware that sets a context variable around every send."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        async def traced_send(event: Any) -> None:
            token = TRACE.set(event["type"])
            try:
                await send(event)
            finally:
                TRACE.reset(token)  # raises if resumed in another context

        await app(scope, receive, traced_send)

    return middleware


async def test_a_send_that_suspends_resumes_in_the_context_it_started_in() -> None:
    app = ticker_app(send_queue_size=4, slow_consumer="drop", send_timeout=30)
    manager = runtime_of(app).manager
    async with AppClient(app, timeout=5.0), StalledClient(traced(app), "/ws/ticks") as member:
        await member.join("r")
        member.stalled = True
        for n in range(3):
            await manager.broadcast_to_room("r", {"type": "tick", "n": n})
        assert TRACE.get("unset") == "unset"  # nothing leaked into the broadcaster
        member.release.set()
        await eventually(lambda: len(member.received) == 4)
        assert member.received[1:] == [f'{{"type":"tick","n":{n}}}' for n in range(3)]
        assert len(manager) == 1  # the send did not fail: still registered
        member.stalled = False
        result = await manager.broadcast_to_room("r", {"type": "tick", "n": 3})
        assert (result.delivered, result.failed) == (1, 0)
