"""Slow consumers: a client that stops reading delays nobody and gets the policy.

The stalled client talks ASGI to the real Falcon app directly: its ``send``
callable blocks on every frame once it is "stalled", exactly what a socket
whose peer stopped reading does to the server. The other members use
Falcon's in-process client.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import falcon.asgi
import falcon.testing
import pytest

import pachinko
from pachinko import Settings, handles_message, runtime_of
from pachinko.testing import AppClient, LiveServer
from tests.apps.ticker import Ticker, ticker_app
from tests.helpers import POLICY_VIOLATION, TRY_AGAIN_LATER, StalledClient, eventually
from tests.raw_client import RawClient

TICKS = 20


async def test_a_failed_socket_is_evicted_and_the_failure_is_counted() -> None:
    app = ticker_app()
    manager = runtime_of(app).manager
    async with (
        AppClient(app, timeout=5.0) as client,
        client.websocket("/ws/ticks") as ann,
        StalledClient(app, "/ws/ticks") as gone,
    ):
        await ann.send_json({"type": "join", "room": "r"})
        await ann.expect(type="joined")
        await gone.join("r")
        gone.broken = True
        result = await manager.broadcast_to_room("r", {"type": "tick", "n": 0}, timeout=2.0)
        assert (result.recipients, result.delivered, result.pending) == (2, 1, 0)
        assert (result.dropped, result.failed, result.ok) == (0, 1, False)
        assert len(await manager.members("r")) == 1
        result = await manager.broadcast_to_room("r", {"type": "tick", "n": 1}, timeout=2.0)
        assert (result.recipients, result.delivered, result.ok) == (1, 1, True)
        assert [(await ann.expect(type="tick"))["n"] for _ in range(2)] == [0, 1]


@pytest.mark.parametrize("code", [POLICY_VIOLATION, TRY_AGAIN_LATER])
async def test_close_policy_closes_the_stalled_member_only(code: int) -> None:
    app = ticker_app(
        send_queue_size=4, slow_consumer="close", slow_consumer_close_code=code, send_timeout=30
    )
    manager = runtime_of(app).manager
    async with (
        AppClient(app, timeout=5.0) as client,
        client.websocket("/ws/ticks") as ann,
        client.websocket("/ws/ticks") as bob,
        StalledClient(app, "/ws/ticks") as slow,
    ):
        for ws in (ann, bob):
            await ws.send_json({"type": "join", "room": "r"})
            await ws.expect(type="joined")
        await slow.join("r")
        slow.stalled = True
        await ann.send_json({"type": "pub", "room": "r", "n": TICKS})
        for ws in (ann, bob):
            for n in range(TICKS):
                assert await ws.expect(type="tick") == {"type": "tick", "n": n}
        done = await ann.expect(type="done")
        # 1 frame in flight + 4 queued; the 6th overflowed: dropped, and the
        # connection closed and evicted: later broadcasts no longer target it.
        assert (done["dropped"], done["failed"]) == (1, 0)
        assert done["recipients"] == [3] * 6 + [2] * (TICKS - 6)
        await eventually(lambda: slow.close_code is not None)
        assert slow.close_code == code
        assert slow.received == ['{"type":"joined"}']
        assert await manager.members("r") == {c.id async for c in manager.connections("r")}
        assert len(await manager.members("r")) == 2


async def test_drop_policy_drops_what_does_not_fit_and_keeps_the_connection() -> None:
    app = ticker_app(send_queue_size=4, slow_consumer="drop", send_timeout=30)
    manager = runtime_of(app).manager
    async with (
        AppClient(app, timeout=5.0) as client,
        client.websocket("/ws/ticks") as ann,
        client.websocket("/ws/ticks") as bob,
        StalledClient(app, "/ws/ticks") as slow,
    ):
        for ws in (ann, bob):
            await ws.send_json({"type": "join", "room": "r"})
            await ws.expect(type="joined")
        await slow.join("r")
        slow.stalled = True
        await ann.send_json({"type": "pub", "room": "r", "n": TICKS})
        # the others get everything while the slow one is still stalled
        for ws in (ann, bob):
            for n in range(TICKS):
                assert await ws.expect(type="tick") == {"type": "tick", "n": n}
        done = await ann.expect(type="done")
        assert (done["dropped"], done["failed"]) == (TICKS - 5, 0)
        assert done["recipients"] == [3] * TICKS
        assert slow.close_code is None
        slow.release.set()
        await eventually(lambda: len(slow.received) == 1 + 5)
        assert slow.received[1:] == [f'{{"type":"tick","n":{n}}}' for n in range(5)]
        # NOTE: no dropped tick comes later: a marker broadcast after them all
        #   reaches the member after anything still queued for it (frames keep
        #   their order per connection), so when it arrives nothing else came.
        marker = await manager.broadcast_to_room("r", {"type": "marker"})
        assert marker.recipients == 3
        await eventually(lambda: slow.received[-1] == '{"type":"marker"}')
        assert len(slow.received[:-1]) == 6
        assert slow.close_code is None


async def test_a_send_over_the_timeout_closes_a_stalled_member_under_both_policies() -> None:
    app = ticker_app(send_queue_size=64, slow_consumer="drop", send_timeout=0.2)
    manager = runtime_of(app).manager
    async with (
        AppClient(app, timeout=5.0) as client,
        client.websocket("/ws/ticks") as ann,
        StalledClient(app, "/ws/ticks") as slow,
    ):
        await ann.send_json({"type": "join", "room": "r"})
        await ann.expect(type="joined")
        await slow.join("r")
        slow.stalled = True
        await ann.send_json({"type": "pub", "room": "r", "n": TICKS, "pace": 0.03})
        for n in range(TICKS):
            assert await ann.expect(type="tick") == {"type": "tick", "n": n}
        done = await ann.expect(type="done")
        # the frame in flight timed out: the connection was closed and evicted
        assert done["recipients"][0] == 2
        assert done["recipients"][-1] == 1
        assert slow.close_code == TRY_AGAIN_LATER
        assert len(await manager.members("r")) == 1


@pytest.mark.live
async def test_a_real_client_that_stops_reading_is_closed_and_delays_nobody() -> None:
    """Over uvicorn: the stalled peer's socket buffers fill, its queue overflows."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    # NOTE: the stalled client reads again only once the fast one has every
    #   tick; its close frame waits for it up to send_timeout, so the bound is
    #   far above that delay (a client that never reads again is reset at
    #   send_timeout: test_a_member_that_stays_stalled_is_reset_within_the_bound).
    app = ticker_app(
        send_queue_size=8,
        slow_consumer="close",
        send_timeout=10,
        slow_consumer_close_code=POLICY_VIOLATION,
    )
    manager = runtime_of(app).manager
    async with LiveServer(app, timeout=10.0) as server, server.websocket("/ws/ticks") as fast:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        async with connect(
            server.url + "/ws/ticks",
            sock=sock,
            max_queue=1,
            compression=None,
            ping_interval=None,
            close_timeout=1,
        ) as slow:
            await slow.send('{"type": "join", "room": "r"}')
            assert await asyncio.wait_for(slow.recv(), 5) == '{"type":"joined"}'
            await fast.send_json({"type": "join", "room": "r"})
            await fast.expect(type="joined")
            # `slow` reads nothing from now on
            await fast.send_json(
                {"type": "pub", "room": "r", "n": 400, "pace": 0, "pad": 64 * 1024}
            )
            for n in range(400):
                assert (await fast.expect(type="tick"))["n"] == n
            await fast.expect(type="done")
            await eventually(lambda: len(manager) == 1, timeout=10)
            assert await manager.members("r") == {c.id async for c in manager.connections()}
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(_read_until_closed(slow), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == POLICY_VIOLATION


async def _read_until_closed(ws: Any) -> None:
    while True:
        await ws.recv()


class Member(Ticker):
    """A Ticker that can talk to its room and records its disconnects."""

    disconnects: list[tuple[str, int]]

    @handles_message("say")
    async def say(self, ws: Any, payload: Any) -> None:
        message = {"type": "said", "by": self.connection.id}
        await self.broadcast_to_room(payload["room"], message, exclude_self=False)

    async def on_disconnect(self, ws: Any, close_code: int) -> None:
        self.disconnects.append((self.connection.id, close_code))


def member_app(disconnects: list[tuple[str, int]], **settings: Any) -> falcon.asgi.App:
    resource = type("RecordingMember", (Member,), {"disconnects": disconnects})
    router = pachinko.WebSocketRouter()
    router.add_route("/members", resource)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router, settings=Settings(**settings))
    return app


async def _flood_past_a_stalled_member(server: LiveServer, fast: Any) -> RawClient:
    """Join ``fast`` and a raw client that stops reading to room ``r``, flood the room."""
    slow = RawClient(server.url + "/ws/members")
    await slow.open(server.host, server.port)
    await slow.send('{"type": "join", "room": "r"}')
    assert await asyncio.wait_for(slow.recv(), 5) == '{"type":"joined"}'
    await fast.send_json({"type": "join", "room": "r"})
    await fast.expect(type="joined")
    # `slow` reads nothing from now on: its queue overflows, the policy closes it
    await fast.send_json({"type": "pub", "room": "r", "n": 200, "pace": 0, "pad": 64 * 1024})
    for n in range(200):
        assert (await fast.expect(type="tick"))["n"] == n
    await fast.expect(type="done")
    return slow


@pytest.mark.live
async def test_a_member_that_stays_stalled_is_reset_within_the_bound() -> None:
    """The close frame cannot be written: the TCP connection is reset at send_timeout.

    Before, the close gave up silently: the connection stayed open (its backlog
    queued in the server), on_disconnect never ran.
    """
    disconnects: list[tuple[str, int]] = []
    app = member_app(disconnects, send_queue_size=8, slow_consumer="close", send_timeout=0.5)
    manager = runtime_of(app).manager
    async with LiveServer(app, timeout=10.0) as server, server.websocket("/ws/members") as fast:
        slow = await _flood_past_a_stalled_member(server, fast)
        try:
            await eventually(lambda: bool(disconnects), timeout=10)
            assert [code for _, code in disconnects] == [TRY_AGAIN_LATER]
            slow_id = disconnects[0][0]
            assert await manager.members("r") == {c.id async for c in manager.connections()}
            # reading again, it finds a reset connection, not a backlog
            await asyncio.wait_for(slow.read_until(lambda: False), 10)
            assert slow.reset
            with pytest.raises(OSError):
                await slow.send('{"type": "say", "room": "r"}')
            await fast.send_json({"type": "say", "room": "r"})
            assert (await fast.expect(type="said"))["by"] != slow_id
        finally:
            slow.close()
    assert [cid for cid, _ in disconnects].count(slow_id) == 1


@pytest.mark.live
async def test_a_member_that_reads_again_gets_the_close_and_reaches_nobody() -> None:
    """Reading again before the bound: the backlog, then the close frame; what it says is lost."""
    disconnects: list[tuple[str, int]] = []
    app = member_app(disconnects, send_queue_size=8, slow_consumer="close", send_timeout=10)
    manager = runtime_of(app).manager
    async with LiveServer(app, timeout=10.0) as server, server.websocket("/ws/members") as fast:
        slow = await _flood_past_a_stalled_member(server, fast)
        try:
            await eventually(lambda: len(manager) == 1, timeout=10)  # evicted
            # an evicted member's messages are no longer dispatched
            await slow.send('{"type": "say", "room": "r"}')
            await asyncio.wait_for(slow.read_until(lambda: False), 10)
            assert (slow.close_code, slow.reset) == (TRY_AGAIN_LATER, False)
            await eventually(lambda: bool(disconnects), timeout=10)
            assert [code for _, code in disconnects] == [TRY_AGAIN_LATER]
            slow_id = disconnects[0][0]
            # the slow member's "say" was read before its disconnect: had it
            # been dispatched, its "said" would be queued before this one
            fast_id = next(iter(await manager.members("r")))
            await fast.send_json({"type": "say", "room": "r"})
            assert (await fast.expect(type="said"))["by"] == fast_id
        finally:
            slow.close()
    assert [cid for cid, _ in disconnects].count(slow_id) == 1
