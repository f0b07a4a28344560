"""Room history: what positions and recovery cost, in-process and over Redis.

Run:  python benchmarks/bench_history.py [--sizes 100,1000] [--rounds 9] [--redis]

Real ``falcon.asgi.App`` instances driven in-process (benchmarks/_asgi.py);
with ``--redis`` a private ``redis-server`` (or $REDIS_URL) too.

1. Broadcast to N idle members (the median of ``--rounds`` rounds, kinds
   interleaved), ratios against a plain ``await ws.send_text()`` loop in the
   same run:
   - ``loop``: the hand-written loop;
   - ``plain``: ``broadcast_to_room`` to a room without history, in an app
     that declares no room policy;
   - ``plain+pol``: the same in an app that declares a history pattern (the
     room matches none: what a plain room pays when history is on elsewhere);
   - ``history``: to a room keeping its last 1,000 broadcasts.
2. ``--redis``: one broadcast after the other to a plain room and to a
   history room (one local member): µs per broadcast, and Redis commands
   per broadcast from ``INFO commandstats`` (the round trips).
3. Recovery of 1,000 missed messages: from ``join_room(since=...)`` to the
   client's last frame, per replayed message (in-process; ``--redis``: from
   Redis Streams).
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
from pathlib import Path
from typing import Any

import falcon.asgi
from _asgi import Counter, IdleClient, Lifespan, Members

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pachinko  # noqa: E402
from pachinko import RoomPolicy  # noqa: E402
from pachinko.resource import encode_text  # noqa: E402

MESSAGE = {"type": "message", "room": "lobby", "name": "ann", "text": "hello, everyone"}
KINDS = ("loop", "plain", "plain+pol", "history")
POLICIES = {"hist:*": RoomPolicy(history=1000)}


class Member(pachinko.WebSocketResource):
    async def after_connect(self, ws: Any) -> None:
        await self.join_room("lobby")
        await self.join_room("hist:lobby")


def ours(rooms: Any = None, backend: Any = None) -> falcon.asgi.App:
    app = falcon.asgi.App()
    router = pachinko.WebSocketRouter()
    router.add_route("/member", Member)
    settings = pachinko.Settings(slow_consumer="drop", send_timeout=3600, send_queue_size=4096)
    pachinko.mount(app, "/ws", router, settings=settings, rooms=rooms, backend=backend)
    return app


async def open_members(app: falcon.asgi.App, size: int, counter: Counter) -> list[IdleClient]:
    clients = [IdleClient(counter.hit) for _ in range(size)]
    for client in clients:
        client.open(app, "/ws/member")
    await asyncio.wait_for(asyncio.gather(*(c.accepted.wait() for c in clients)), 60)
    manager = pachinko.runtime_of(app).manager
    while len(await manager.members("hist:lobby")) < size:
        await asyncio.sleep(0.01)
    return clients


async def bench_fanout(size: int, rounds: int) -> dict[str, list[float]]:
    raw = falcon.asgi.App()
    raw.ws_options.max_receive_queue = 0
    members = Members()
    raw.add_route("/ws/member", members)
    plain_app, pol_app = ours(), ours(POLICIES)
    counter = Counter()
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    async with Lifespan(raw), Lifespan(plain_app), Lifespan(pol_app):
        raw_clients = [IdleClient(counter.hit) for _ in range(size)]
        for client in raw_clients:
            client.open(raw, "/ws/member")
        clients = raw_clients + await open_members(plain_app, size, counter)
        clients += await open_members(pol_app, size, counter)
        while len(members.sockets) < size:
            await asyncio.sleep(0.01)
        plain = pachinko.runtime_of(plain_app).manager
        pol = pachinko.runtime_of(pol_app).manager

        async def run(kind: str) -> float:
            counter.expect(size)
            gc.collect()
            start = time.perf_counter()
            if kind == "loop":
                text = encode_text(MESSAGE)
                for ws in members.sockets:
                    await ws.send_text(text)
            elif kind == "plain":
                await plain.broadcast_to_room("lobby", MESSAGE)
            elif kind == "plain+pol":
                await pol.broadcast_to_room("lobby", MESSAGE)
            else:
                await pol.broadcast_to_room("hist:lobby", MESSAGE)
            await counter.done.wait()
            return time.perf_counter() - start

        for kind in KINDS:
            await run(kind)
        for _ in range(rounds):
            for kind in KINDS:
                times[kind].append(await run(kind))
        for client in clients:
            await client.disconnect()
    return times


async def bench_recovery(backend: Any, missed: int, rounds: int) -> list[float]:
    """Seconds from join_room(since=...) to the last replayed frame, per round."""
    app = ours(POLICIES, backend)
    counter = Counter()
    times: list[float] = []
    async with Lifespan(app):
        manager = pachinko.runtime_of(app).manager
        for n in range(missed):
            await manager.broadcast_to_room("hist:replay", {**MESSAGE, "n": n})
        (client,) = await open_members(app, 1, counter)
        conn = next(iter(manager._connections))
        outcome, _ = await manager.history("hist:replay", last=0)
        if outcome.position is None:
            raise RuntimeError("the room has no history")
        since = f"{outcome.position.epoch}:{outcome.position.offset - missed}"
        for _ in range(rounds + 1):
            counter.expect(missed + 1)  # the recovery message, then the missed ones
            gc.collect()
            start = time.perf_counter()
            result = await manager.join_room(conn, "hist:replay", since=since)
            await counter.done.wait()
            times.append(time.perf_counter() - start)
            if result is None or result.missed != missed:
                raise RuntimeError(f"recovery replayed the wrong count: {result}")
            await manager.leave_room(conn, "hist:replay")
        await client.disconnect()
    return times[1:]


async def bench_redis(url: str, count: int) -> dict[str, tuple[float, float]]:
    import redis.asyncio

    from pachinko.backends.redis import RedisBackend

    app = ours(POLICIES, RedisBackend(url, prefix=f"benchhist{os.getpid()}"))
    counter = Counter()
    results: dict[str, tuple[float, float]] = {}
    async with Lifespan(app), redis.asyncio.Redis.from_url(url) as stats_client:
        manager = pachinko.runtime_of(app).manager
        (client,) = await open_members(app, 1, counter)

        async def commands() -> int:
            stats = await stats_client.info("commandstats")
            return sum(
                int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                for name in ("publish", "evalsha", "eval")
            )

        for kind, room in (("plain", "lobby"), ("history", "hist:lobby")) * 2:
            counter.expect(count)
            before = await commands()
            start = time.perf_counter()
            for _ in range(count):
                await manager.broadcast_to_room(room, MESSAGE)
            elapsed = time.perf_counter() - start
            await asyncio.wait_for(counter.done.wait(), 30)
            after = await commands()
            # inside a script, PUBLISH is counted too: one round trip is
            # EVALSHA (+ its PUBLISH) for history, PUBLISH alone for plain
            calls = (after - before) / count
            trips = calls if kind == "plain" else calls - 1
            results[kind] = (elapsed / count * 1e6, trips)
        await client.disconnect()
    return results


async def with_redis(fn: Any) -> Any:
    url = os.environ.get("REDIS_URL")
    if url:
        return await fn(url)
    from tests.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as tmp:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found (or set REDIS_URL)")
        server = RedisServer(binary, Path(tmp))
        await server.start()
        try:
            return await fn(server.url)
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--redis", action="store_true")
    args = parser.parse_args()
    print(f"1. fan-out: median of {args.rounds} rounds; µs per member; ratio against `loop`")
    print(f"{'members':>8} {'kind':>10} {'µs/member':>10} {'ratio':>6} {'vs plain':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        times = asyncio.run(bench_fanout(size, args.rounds))
        loop = statistics.median(times["loop"])
        plain = statistics.median(times["plain"])
        for kind in KINDS:
            med = statistics.median(times[kind])
            print(
                f"{size:>8} {kind:>10} {med / size * 1e6:>10.3f} {med / loop:>6.2f} "
                f"{med / plain:>9.3f}"
            )
    if args.redis:
        print("2. over Redis, one broadcast after the other (one local member)")
        found = asyncio.run(with_redis(lambda url: bench_redis(url, 2000)))
        for kind, (micros, trips) in found.items():
            print(f"{kind:>10} {micros:>8.1f} µs/broadcast  {trips:.2f} round trips/broadcast")
        print(f"   history/plain: {found['history'][0] / found['plain'][0]:.2f}")
    print(f"3. recovery of {args.missed} missed messages (median of {args.rounds})")
    memory = statistics.median(asyncio.run(bench_recovery(None, args.missed, args.rounds)))
    print(f"{'memory':>10} {memory * 1e3:>8.2f} ms  {memory / args.missed * 1e6:.2f} µs/message")
    if args.redis:
        from pachinko.backends.redis import RedisBackend

        async def from_redis(url: str) -> list[float]:
            backend = RedisBackend(url, prefix=f"benchrec{os.getpid()}")
            return await bench_recovery(backend, args.missed, args.rounds)

        redis_time = statistics.median(asyncio.run(with_redis(from_redis)))
        print(
            f"{'redis':>10} {redis_time * 1e3:>8.2f} ms  "
            f"{redis_time / args.missed * 1e6:.2f} µs/message"
        )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
