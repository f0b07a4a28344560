"""Recovery across real server processes, real sockets and a real Redis.

Two ``pachinko serve tests/apps/history.toml`` processes (its ``[rooms]``
tables keep the history) share one private Redis; a client drops,
broadcasts go on from the other process (some while it reconnects), it
reconnects to that process with its position and must end with exactly what
was broadcast, in order. Then a server is killed with SIGKILL mid-stream, and
Redis is flushed: clients are told recovery failed, then get the live stream.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from pachinko.rooms import Position
from pachinko.testing import RoomFollower, ServerProcess, WebSocketClosed
from tests.redis_server import unique_prefix

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "apps" / "history.toml"
ROOM = "feed:proc"

pytestmark = pytest.mark.live


def serve(backend: str) -> ServerProcess:
    """``pachinko serve`` of the routes.toml (one process: SIGKILL kills the server)."""
    return ServerProcess(
        [sys.executable, "-m", "pachinko", "serve", str(CONFIG), "--port", "0"],
        cwd=ROOT,
        env={"PACHINKO_BACKEND": backend},
    )


def said(numbers: Any) -> list[dict[str, Any]]:
    return [{"type": "said", "room": ROOM, "n": n} for n in numbers]


async def join(ws: Any, follower: RoomFollower, **recovery: Any) -> dict[str, Any]:
    await ws.send_json({"type": "join", "room": ROOM, **recovery})
    return await follower.recovery(ws)


async def burst(ws: Any, count: int, start: int) -> None:
    await ws.send_json({"type": "burst", "room": ROOM, "count": count, "start": start})
    await ws.expect(type="burst_done", timeout=30)


async def drain_until_closed(ws: Any, follower: RoomFollower) -> None:
    """Take what arrives until the socket dies (its server was killed)."""
    try:
        while True:
            follower.feed(await ws.receive_json(timeout=10))
    except WebSocketClosed:
        return


async def drop_and_recover(first: ServerProcess, second: ServerProcess) -> None:
    follower = RoomFollower(ROOM)
    async with second.websocket("/ws/history") as sender:
        async with first.websocket("/ws/history") as phone:
            await join(phone, follower, last=0)
            await burst(sender, 5, 0)
            await follower.follow(phone, 5)
        before = len(follower.messages)
        # the phone is gone: 60 broadcasts, then 40 more while it reconnects
        await burst(sender, 60, 5)
        await sender.send_json({"type": "burst", "room": ROOM, "count": 40, "start": 65})
        async with second.websocket("/ws/history") as phone:
            outcome = await join(phone, follower, since=follower.position)
            assert outcome["recovered"] is True
            assert outcome["missed"] >= 60
            await follower.follow(phone, 100, timeout=30)
            await sender.expect(type="burst_done", timeout=30)
        assert len(follower.messages) - before == 100
        follower.assert_exactly(said(range(105)))


@pytest.mark.redis
async def test_two_processes_on_redis_a_dropped_client_gets_exactly_the_100(
    redis_url: str,
) -> None:
    backend = f"{redis_url}?prefix={unique_prefix()}"
    async with serve(backend) as one, serve(backend) as two:
        await drop_and_recover(one, two)


async def test_one_process_in_memory_a_dropped_client_gets_exactly_the_100() -> None:
    async with serve("memory://") as only:
        await drop_and_recover(only, only)


@pytest.mark.redis
async def test_a_killed_server_then_a_flushed_redis(redis_url: str) -> None:
    backend = f"{redis_url}?prefix={unique_prefix()}&presence_ttl=2"
    follower = RoomFollower(ROOM)
    async with (
        serve(backend) as one,
        serve(backend) as two,
        two.websocket("/ws/history") as sender,
        redis.asyncio.Redis.from_url(redis_url) as client,
    ):
        phone_cm = one.websocket("/ws/history")
        phone = await phone_cm.__aenter__()
        try:
            await join(phone, follower, last=0)
            await burst(sender, 10, 0)
            await follower.follow(phone, 10)
            # mid-stream: the phone's server dies (no close frame, no cleanup)
            await sender.send_json({"type": "burst", "room": ROOM, "count": 50, "start": 10})
            await follower.follow(phone, 1)
            one.send_signal(signal.SIGKILL)
            await drain_until_closed(phone, follower)
        finally:
            await phone_cm.__aexit__(None, None, None)
        await sender.expect(type="burst_done", timeout=30)
        async with two.websocket("/ws/history") as phone:
            outcome = await join(phone, follower, since=follower.position)
            assert outcome["recovered"] is True
            await follower.follow(phone, 60 - len(follower.messages), timeout=30)
            follower.assert_exactly(said(range(60)))
        epoch = Position.parse(follower.position or "").epoch

        # Redis loses everything: the history's epoch is gone
        await client.flushall()
        async with two.websocket("/ws/history") as phone:
            outcome = await join(phone, follower, since=follower.position)
            assert (outcome["recovered"], outcome["reason"]) == (False, "epoch")
            fresh = Position.parse(outcome["position"])
            assert fresh.epoch != epoch
            assert fresh.offset == 0
            # then the live stream, in the new epoch
            await burst(sender, 3, 60)
            await follower.follow(phone, 3)
            assert follower.positions[-1] == Position(fresh.epoch, 3)
