"""In-process fan-out: broadcast_to_room to N idle members vs a plain send loop.

Run:  python benchmarks/bench_fanout.py [--sizes 100,1000,10000] [--rounds 9]

Two real ``falcon.asgi.App`` instances run in one event loop, driven
in-process over ASGI by the same minimal driver (benchmarks/_asgi.py); each
has N idle connections (they send nothing; their ASGI ``send`` counts
frames):

- the hand-written app: an ``on_websocket`` responder that accepts, keeps
  the ``WebSocket`` in a list and waits in ``receive_text`` (Falcon
  ``max_receive_queue=0``, as pachinko sets it);
- the pachinko app: a resource that joins room ``lobby`` in
  ``after_connect``.

Measured from the publish to the last member's ``send``, in ``--rounds``
rounds, each running every kind in turn, then ``loop`` once more:

- ``loop``: encode once, then ``await ws.send_text(text)`` over the members
  one after the other: the cheapest fan-out there is, with no isolation (one
  stalled socket would delay every member after it);
- ``broadcast``: ``manager.broadcast_to_room("lobby", message)``;
- ``stalled``: the same broadcast while one member's socket has stopped
  reading (its ``send`` never completes): the time until the N-1 others got
  it (isolation; ``slow_consumer="drop"`` so that it stays registered);
- ``gather``: ``asyncio.gather`` over the N raw ``send_text`` coroutines (the
  naive concurrent fan-out: one task per send);
- ``policies``: ``broadcast`` on a second pachinko app whose other rooms
  have policies (presence and join authorization on ``game:*``): a room
  without presence pays nothing for them (the same figure as ``broadcast``).

Every figure is reported as a ratio against ``loop`` in the same run: the
median over the rounds of each round's time against the mean of that
round's two ``loop`` runs (this machine's speed drifts by tens of percent
within seconds; a ratio of neighbours holds where the medians of each do
not), with the median and best µs per member. The per-member cost should
stay flat as N grows (linear total time).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import falcon.asgi
from _asgi import Counter, IdleClient, Lifespan, Members

import pachinko
from pachinko.resource import encode_text

MESSAGE = {"type": "message", "room": "lobby", "name": "ann", "text": "hello, everyone"}
KINDS = ("loop", "broadcast", "stalled", "gather", "policies")


class Member(pachinko.WebSocketResource):
    async def after_connect(self, ws: Any) -> None:
        await self.join_room("lobby")


def policied() -> falcon.asgi.App:
    """The pachinko app again, with presence and authorization on other rooms."""
    app = falcon.asgi.App()
    router = pachinko.WebSocketRouter()
    router.add_route("/member", Member)
    settings = pachinko.Settings(slow_consumer="drop", send_timeout=3600)
    policy = pachinko.RoomPolicy(presence=True, authorize=lambda resource, room: True)
    pachinko.mount(app, "/ws", router, settings=settings, rooms={"game:*": policy})
    return app


def apps() -> tuple[falcon.asgi.App, Members, falcon.asgi.App]:
    raw = falcon.asgi.App()
    raw.ws_options.max_receive_queue = 0
    members = Members()
    raw.add_route("/ws/member", members)
    ours = falcon.asgi.App()
    router = pachinko.WebSocketRouter()
    router.add_route("/member", Member)
    settings = pachinko.Settings(slow_consumer="drop", send_timeout=3600)
    pachinko.mount(ours, "/ws", router, settings=settings)
    return raw, members, ours


async def bench(size: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Times of each kind (s), and each kind's ratio to its round's ``loop`` runs."""
    raw, members, ours = apps()
    other = policied()
    counter = Counter()
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    ratios: dict[str, list[float]] = {kind: [] for kind in KINDS}
    async with Lifespan(raw), Lifespan(ours), Lifespan(other):
        manager = pachinko.runtime_of(ours).manager
        other_manager = pachinko.runtime_of(other).manager
        raw_clients = [IdleClient(counter.hit) for _ in range(size)]
        our_clients = [IdleClient(counter.hit) for _ in range(size)]
        other_clients = [IdleClient(counter.hit) for _ in range(size)]
        for client in raw_clients:
            client.open(raw, "/ws/member")
        for client in our_clients:
            client.open(ours, "/ws/member")
        for client in other_clients:
            client.open(other, "/ws/member")
        await asyncio.wait_for(
            asyncio.gather(*(c.accepted.wait() for c in our_clients + other_clients)), 60
        )
        while (
            len(members.sockets) < size
            or len(await manager.members("lobby")) < size
            or len(await other_manager.members("lobby")) < size
        ):
            await asyncio.sleep(0.01)
        sockets = members.sockets
        stalled = our_clients[size // 2]

        async def run(kind: str) -> float:
            counter.expect(size - 1 if kind == "stalled" else size)
            if kind == "stalled":
                stalled.hang()
            gc.collect()
            start = time.perf_counter()
            if kind == "loop":
                text = encode_text(MESSAGE)
                for ws in sockets:
                    await ws.send_text(text)
            elif kind == "gather":
                text = encode_text(MESSAGE)
                await asyncio.gather(*(ws.send_text(text) for ws in sockets))
            elif kind == "policies":
                await other_manager.broadcast_to_room("lobby", MESSAGE)
            else:
                await manager.broadcast_to_room("lobby", MESSAGE)
            await counter.done.wait()
            elapsed = time.perf_counter() - start
            if kind == "stalled":
                counter.expect(1)
                stalled.release()
                await asyncio.wait_for(counter.done.wait(), 5)
            return elapsed

        for kind in KINDS:  # warm up
            await run(kind)
        for _ in range(rounds):
            this = {kind: await run(kind) for kind in KINDS}
            again = await run("loop")
            loop = (this["loop"] + again) / 2
            for kind in KINDS:
                times[kind].append(this[kind])
                ratios[kind].append(this[kind] / loop)
            times["loop"].append(again)
        expected = rounds + 1
        if (
            any(c.frames != expected * 2 + rounds for c in raw_clients)
            or any(c.frames != expected * 2 for c in our_clients)
            or any(c.frames != expected for c in other_clients)
        ):
            raise RuntimeError("a frame went missing")
        for client in raw_clients + our_clients + other_clients:
            await client.disconnect()
    return times, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(
        f"{args.rounds} rounds; µs per member: median (best); "
        "ratio: median of each round against its `loop` runs"
    )
    print(f"{'members':>8} {'kind':>10} {'µs/member':>17} {'ratio':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        times, ratios = asyncio.run(bench(size, args.rounds))
        for kind in KINDS:
            med, best = statistics.median(times[kind]), min(times[kind])
            print(
                f"{size:>8} {kind:>10} {med / size * 1e6:>8.3f} ({best / size * 1e6:6.3f}) "
                f"{statistics.median(ratios[kind]):>6.2f}"
            )


if __name__ == "__main__":
    main()
