"""How long after a Redis restart broadcasts cross processes again.

Run:  python benchmarks/bench_redis_recovery.py [--runs 3] [--outage 8] [-v]

Starts a private ``redis-server`` and two uvicorn processes serving
``tests/apps/rooms.py`` with a RedisBackend (default reconnection options).
A client on process one and one on process two join a room. Redis is
stopped for ``--outage`` seconds (long enough for the reconnection backoff
to reach its longest delay), then started again on the same port, empty.
From the moment it answers PING, the client on process one broadcasts every
10 ms until the client on process two receives one: that delay is the
recovery time (both processes must have reconnected, resubscribed and
rewritten their memberships). Redis restarts ``--runs`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pachinko.testing import ServerProcess  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


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


async def until_delivered(sender: Any, receiver: Any, text: str) -> None:
    """Broadcast ``text`` every 10 ms until ``receiver`` gets it."""

    async def receive() -> None:
        while True:
            message = json.loads(await receiver.recv())
            if message.get("type") == "said" and message.get("text") == text:
                return

    got = asyncio.ensure_future(receive())
    try:
        while not got.done():
            await sender.send(json.dumps({"type": "say", "room": "r", "text": text}))
            await asyncio.wait([got], timeout=0.01)
        got.result()
    finally:
        got.cancel()


async def main(runs: int, outage: float, verbose: bool) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(binary, Path(directory))
        await redis.start()
        try:
            async with (
                server(redis.url) as one,
                server(redis.url) as two,
                one.websocket("/ws/rooms") as ann,
                two.websocket("/ws/rooms") as bob,
            ):
                for ws in (ann, bob):
                    await ws.send_json({"type": "join", "room": "r"})
                    await ws.expect(type="joined")
                await until_delivered(ann.connection, bob.connection, "before")
                figures = []
                for run in range(runs):
                    redis.stop()
                    await asyncio.sleep(outage)
                    await redis.start()  # returns once it answers PING
                    back = time.perf_counter()
                    await asyncio.wait_for(
                        until_delivered(ann.connection, bob.connection, f"after {run}"), 30
                    )
                    figures.append(time.perf_counter() - back)
                    print(f"restart {run + 1}: delivery resumed {figures[-1]:.2f} s after PING")
                if verbose:
                    print(one.output, two.output)
                print(f"max {max(figures):.2f} s over {runs} restarts (outage {outage:g} s)")
        finally:
            with contextlib.suppress(Exception):
                redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--outage", type=float, default=8.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="print the servers' logs")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.outage, args.verbose))
