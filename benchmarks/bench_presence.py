"""Presence: the cost of a join/leave event, in-process and over Redis.

Run:  python benchmarks/bench_presence.py [--users 500] [--rounds 7] [--redis]

One real ``falcon.asgi.App`` (driven in-process over ASGI by
benchmarks/_asgi.py) with ``--users`` idle connections, each of its own
user. In each round every connection joins a room and leaves it again,
one after the other, through ``manager.join_room`` / ``leave_room`` (what a
handler's ``self.join_room`` does):

- ``plain``: a room without presence (membership only);
- ``presence``: a room with ``presence = true``: every join and every leave
  is an event (a new user each time; ``presence_linger = 0``), written and
  broadcast to the room.

Reported: µs per join or leave (median and best of ``--rounds``), and the
ratio presence / plain in the same run. With ``--redis`` the app uses a
RedisBackend on a private ``redis-server`` (or $REDIS_URL): membership is
written to Redis in both kinds, presence adds its script and the event's
PUBLISH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import falcon.asgi  # noqa: E402
from _asgi import IdleClient, Lifespan  # noqa: E402

import pachinko  # noqa: E402
from pachinko import RoomPolicy, Settings, User  # noqa: E402
from tests.redis_server import private_redis  # noqa: E402


class Member(pachinko.WebSocketResource):
    pass


def app(backend: Any) -> falcon.asgi.App:
    ours = falcon.asgi.App()
    router = pachinko.WebSocketRouter()
    router.add_route("/member/{user}", Member)
    pachinko.mount(
        ours,
        "/ws",
        router,
        settings=Settings(presence_linger=0.0, slow_consumer="drop", send_timeout=3600),
        backend=backend,
        authenticate=lambda req: User(req.path.rsplit("/", 1)[1], {"name": "x"}),
        rooms={"presence:*": RoomPolicy(presence=True)},
    )
    return ours


@contextlib.asynccontextmanager
async def redis_url() -> AsyncIterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with tempfile.TemporaryDirectory() as directory:
        async with private_redis(Path(directory)) as server:
            yield server.url


async def bench(users: int, rounds: int, redis: str | None) -> dict[str, list[float]]:
    backend = None
    if redis is not None:
        from pachinko.backends.redis import RedisBackend

        backend = RedisBackend(redis, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    else:
        backend = pachinko.InProcessBackend()
    ours = app(backend)
    times: dict[str, list[float]] = {"plain": [], "presence": []}
    async with Lifespan(ours):
        manager = pachinko.runtime_of(ours).manager
        clients = [IdleClient(lambda: None) for _ in range(users)]
        for i, client in enumerate(clients):
            client.open(ours, f"/ws/member/u{i}")
        await asyncio.wait_for(asyncio.gather(*(c.accepted.wait() for c in clients)), 60)
        while len(manager) < users:
            await asyncio.sleep(0.01)
        conns = [c async for c in manager.connections()]

        async def run(kind: str, n: int) -> float:
            room = f"{kind}:{n}"
            gc.collect()
            start = time.perf_counter()
            for conn in conns:
                await manager.join_room(conn, room)
                await manager.leave_room(conn, room)
            return (time.perf_counter() - start) / (2 * len(conns))

        await run("plain", -1)  # warm up
        await run("presence", -1)
        for n in range(rounds):
            for kind in ("plain", "presence"):
                times[kind].append(await run(kind, n))
        if await manager.presence("presence:0"):
            raise RuntimeError("presence left behind")
        for client in clients:
            await client.disconnect()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--redis", action="store_true", help="over Redis (a private server)")
    args = parser.parse_args()
    if args.redis:
        async with redis_url() as url:
            times = await bench(args.users, args.rounds, url)
    else:
        times = await bench(args.users, args.rounds, None)
    where = "Redis" if args.redis else "in-process"
    print(f"join or leave, {where} ({args.users} users x {args.rounds} rounds)")
    print(f"{'':>10} {'median µs':>10} {'best µs':>8}")
    for kind in ("plain", "presence"):
        print(
            f"{kind:>10} {statistics.median(times[kind]) * 1e6:>10.1f} "
            f"{min(times[kind]) * 1e6:>8.1f}"
        )
    ratio = statistics.median(times["presence"]) / statistics.median(times["plain"])
    best = min(times["presence"]) / min(times["plain"])
    print(f"{'ratio':>10} {ratio:>10.2f} {best:>8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
