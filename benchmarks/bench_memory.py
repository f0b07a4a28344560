"""Memory per idle connection: pachinko (registered in the manager) vs raw Falcon.

Run:  python benchmarks/bench_memory.py [--connections 1000]

Each variant runs in a fresh interpreter. A real ``falcon.asgi.App`` is
driven in-process over ASGI by a minimal driver: every connection is
accepted and then idles in ``receive`` (nothing arrives). Reported: the RSS
growth (``/proc/self/statm``) from opening ``--connections`` connections,
per connection, after a warm-up of 50 connections and a ``gc.collect()``.
The ASGI driver's own per-connection objects (a task, a queue) are in both
variants, so the difference is what pachinko adds: the resource, the
Connection and its outbox, the manager's index entries.

Variants: ``raw`` (an ``on_websocket`` responder that accepts and loops on
``receive_text``), ``pachinko`` (a mounted resource; the connection is
registered in the manager), ``pachinko-room`` (the same, each connection
also a member of one room).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
from typing import Any

import falcon.asgi
import falcon.testing

VARIANTS = ("raw", "pachinko", "pachinko-room")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Raw:
    async def on_websocket(self, req: Any, ws: Any) -> None:
        await ws.accept()
        while True:
            await ws.receive_text()


def build(variant: str) -> falcon.asgi.App:
    app = falcon.asgi.App()
    if variant == "raw":
        app.add_route("/ws/idle", Raw())
        return app
    import pachinko

    join = variant == "pachinko-room"

    class Idle(pachinko.WebSocketResource):
        async def after_connect(self, ws: Any) -> None:
            if join:
                await self.join_room("lobby")

        @pachinko.handles_message("ping")
        async def ping(self, ws: Any, payload: Any) -> None:
            await self.send({"type": "pong"})

    router = pachinko.WebSocketRouter()
    router.add_route("/idle", Idle)
    pachinko.mount(app, "/ws", router)
    return app


async def measure(variant: str, count: int) -> None:
    app = build(variant)
    accepted = 0
    all_accepted = asyncio.Event()
    target = 0
    tasks = []

    async def open_one() -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        queue.put_nowait({"type": "websocket.connect"})

        async def send(event: dict[str, Any]) -> None:
            nonlocal accepted
            if event["type"] == "websocket.accept":
                accepted += 1
                if accepted == target:
                    all_accepted.set()

        scope = falcon.testing.create_scope_ws("/ws/idle")
        await app(scope, queue.get, send)

    conductor = falcon.testing.ASGIConductor(app)  # runs the lifespan (manager.start)
    async with conductor:
        for batch in (50, count):
            target += batch
            all_accepted.clear()
            tasks += [asyncio.create_task(open_one()) for _ in range(batch)]
            await asyncio.wait_for(all_accepted.wait(), 60)
            await asyncio.sleep(0.05)
            gc.collect()
            if batch == 50:
                before = rss()
        after = rss()
        if variant != "raw":
            import pachinko

            manager = pachinko.runtime_of(app).manager
            assert len(manager) == count + 50, len(manager)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(f"{variant:>14}: {(after - before) / count / 1024:6.2f} KiB per idle connection")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        asyncio.run(measure(args.variant, args.connections))
        return
    print(f"RSS growth for {args.connections} idle connections (fresh interpreter each)")
    for variant in VARIANTS:
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--connections",
                str(args.connections),
            ],
            check=True,
        )


if __name__ == "__main__":
    main()
