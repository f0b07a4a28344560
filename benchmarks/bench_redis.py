"""Across processes over Redis: delivered messages/s, p50/p99 latency, PUBLISH count.

Run:  python benchmarks/bench_redis.py [--messages 2000] [--receivers 50]

Starts a private ``redis-server`` (or uses $REDIS_URL) and two uvicorn
processes serving ``tests/apps/rooms.py`` with a RedisBackend. The receivers
connect to process two and join a room; one sender on process one sends
``--messages`` room broadcasts as fast as the server takes them. Every
receiver records the latency of every message (send time to receive time,
one clock: all clients live in this process). Redis ``INFO commandstats``
gives the number of PUBLISH calls, which must equal the number of
broadcasts whatever the number of receivers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from pachinko.testing import ServerProcess  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


async def publishes(url: str) -> int:
    async with redis.asyncio.Redis.from_url(url) as client:
        stats = await client.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


def server(backend: str) -> ServerProcess:
    return ServerProcess(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.apps.rooms:app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        cwd=ROOT,
        env={"PACHINKO_BACKEND": backend},
    )


async def receive(ws: Any, count: int, latencies: list[float], total: list[int]) -> int:
    got = 0
    with contextlib.suppress(TimeoutError, ConnectionClosed):
        while got < count:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message.get("type") == "said":
                latencies.append(time.perf_counter() - message["at"])
                got += 1
                total[0] += 1
    return got


async def run(url: str, messages: int, receivers: int, window: int) -> None:
    backend = f"{url}?prefix=bench{os.getpid()}"
    async with server(backend) as one, server(backend) as two, contextlib.AsyncExitStack() as stack:
        sender = await stack.enter_async_context(connect(one.url + "/ws/rooms", compression=None))
        sockets = [
            await stack.enter_async_context(connect(two.url + "/ws/rooms", compression=None))
            for _ in range(receivers)
        ]
        for ws in sockets:
            await ws.send('{"type": "join", "room": "bench"}')
            assert json.loads(await ws.recv())["type"] == "joined"
        latencies: list[float] = []
        before = await publishes(url)
        total = [0]
        readers = [asyncio.create_task(receive(ws, messages, latencies, total)) for ws in sockets]
        start = time.perf_counter()
        for n in range(messages):
            # NOTE: flow control: at most `window` broadcasts in flight, below the
            #   outgoing queue size (256), so the benchmark measures delivery, not
            #   the slow-consumer policy (all clients share this one process).
            while total[0] < (n - window) * receivers and not all(r.done() for r in readers):
                await asyncio.sleep(0.0005)
            await sender.send(
                json.dumps(
                    {"type": "say", "room": "bench", "text": f"m{n}", "at": time.perf_counter()}
                )
            )
        received = sum(await asyncio.gather(*readers))
        elapsed = time.perf_counter() - start
        published = await publishes(url) - before
    latencies.sort()
    expected = messages * receivers
    print(
        f"{messages} broadcasts x {receivers} receivers in another process "
        f"(at most {window} broadcasts in flight)"
    )
    print(
        f"  delivered     {received}/{expected} in {elapsed:.2f} s "
        f"= {received / elapsed:,.0f} messages/s"
    )
    print(
        f"  latency       p50 {statistics.median(latencies) * 1e3:.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1e3:.2f} ms"
    )
    print(f"  PUBLISH calls {published} (broadcasts: {messages})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--receivers", type=int, default=50)
    parser.add_argument("--window", type=int, default=100, help="broadcasts in flight")
    args = parser.parse_args()
    if os.environ.get("REDIS_URL"):
        await run(os.environ["REDIS_URL"], args.messages, args.receivers, args.window)
        return
    with tempfile.TemporaryDirectory() as directory:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: install it or set REDIS_URL")
        redis_server = RedisServer(binary, Path(directory))
        await redis_server.start()
        try:
            await run(redis_server.url, args.messages, args.receivers, args.window)
        finally:
            redis_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
