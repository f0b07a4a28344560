"""In-process fan-out: broadcast_to_room to N members vs the raw sends.

Run:  python benchmarks/bench_fanout.py [--sizes 100,1000,10000] [--rounds 7]

N simulated sockets (``send_text`` appends to a list and, for the last
expected frame, wakes the benchmark) are registered with a real
``WebSocketConnectionManager`` (in-process backend) and joined to a room.
Measured, best of ``--rounds``:

- ``broadcast``: from calling ``broadcast_to_room`` until the last member's
  socket got the frame (encode once, queue N times, N writer tasks);
- ``gather``: the naive raw fan-out, ``asyncio.gather`` over N
  ``send_text`` coroutines of an already encoded frame;
- ``loop``: the cheapest raw fan-out, awaiting N sends one after the other
  (no concurrency: one stalled socket would delay all the others).

The per-member cost should stay flat as N grows (linear total time).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any

from pachinko import Settings
from pachinko.connection import Connection
from pachinko.manager import WebSocketConnectionManager
from pachinko.resource import encode_text

MESSAGE = {"type": "message", "room": "lobby", "name": "ann", "text": "hello, everyone"}


class SimSocket:
    """The part of Falcon's WebSocket the outbox uses; counts frames."""

    __slots__ = ("frames", "shared")

    def __init__(self, shared: dict[str, Any]) -> None:
        self.frames = 0
        self.shared = shared

    async def send_text(self, text: str) -> None:
        self.frames += 1
        shared = self.shared
        shared["left"] -= 1
        if shared["left"] == 0:
            shared["done"].set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def bench(size: int, rounds: int) -> dict[str, float]:
    manager = WebSocketConnectionManager(Settings(send_queue_size=64))
    await manager.start()
    shared: dict[str, Any] = {"left": 0, "done": asyncio.Event()}
    sockets = [SimSocket(shared) for _ in range(size)]
    for ws in sockets:
        conn = Connection(ws, "/", {}, manager)  # type: ignore[arg-type]
        await manager.connect(conn)
        manager.opened(conn)
        await manager.join_room(conn, "lobby")
    text = encode_text(MESSAGE)
    best = {"broadcast": float("inf"), "gather": float("inf"), "loop": float("inf")}

    async def run(kind: str) -> float:
        shared["left"] = size
        shared["done"] = asyncio.Event()
        gc.collect()
        start = time.perf_counter()
        if kind == "broadcast":
            await manager.broadcast_to_room("lobby", MESSAGE)
            await shared["done"].wait()
        elif kind == "gather":
            await asyncio.gather(*(ws.send_text(text) for ws in sockets))
        else:
            for ws in sockets:
                await ws.send_text(text)
        return time.perf_counter() - start

    for _ in range(rounds):
        for kind in best:
            best[kind] = min(best[kind], await run(kind))
    assert all(ws.frames == 3 * rounds for ws in sockets), "a frame went missing"
    await manager.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"{'members':>8} {'broadcast':>12} {'gather':>12} {'loop':>12}   per member (µs)")
    for size in (int(s) for s in args.sizes.split(",")):
        best = asyncio.run(bench(size, args.rounds))
        per = {k: v / size * 1e6 for k, v in best.items()}
        print(
            f"{size:>8} {best['broadcast'] * 1e3:>10.2f}ms {best['gather'] * 1e3:>10.2f}ms "
            f"{best['loop'] * 1e3:>10.2f}ms   {per['broadcast']:.2f} / {per['gather']:.2f} "
            f"/ {per['loop']:.2f}"
        )


if __name__ == "__main__":
    main()
