"""Per connection: connect + first message + close, and the bytes an idle one holds.

Run:  python benchmarks/bench_connect.py [--connections 300] [--rounds 40] [--idle 1000]

Two real ``falcon.asgi.App`` instances driven in-process over ASGI by the
same minimal driver (benchmarks/_asgi.py), both with Falcon's
``max_receive_queue=0`` (pachinko's default):

- the hand-written app: an ``on_websocket`` responder that accepts, then
  receives, decodes (a msgspec Struct) and answers each message until the
  client leaves;
- the pachinko app: a mounted resource with one ``on_{tag}`` handler that
  answers the same message (the connection is registered in the manager);
- the same pachinko app with ``authenticate=`` (a signed token in the
  ``Authorization`` header, checked by ``pachinko.auth.token_authenticator``):
  the cost of identity at the handshake, as a ratio against the app without.

``connect``: the time for one connection to be accepted, send one message,
get the answer and close, connections one after the other, in short rounds
of ``--connections``: hand-written, pachinko, pachinko with
``authenticate``, hand-written again. The ratio is the median over the
rounds of each round's time against the mean of the two hand-written
rounds around it: this machine's speed drifts by tens of percent within
seconds, and a ratio of neighbours holds where the medians of each do
not. Median and best µs are given too. ``idle``: the memory one more idle,
accepted connection holds (``tracemalloc``, Python allocations, averaged
over N connections: the app's share plus the driver's, which is the same
for both). Dicts and sets grow by doubling, so one N can land just after a
table grew (or just before): the figure is the median over five N from
``--idle`` to ``3 * --idle``, each app measured at each N. Each figure is
also given as a ratio against the hand-written app in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc
from typing import Any

import falcon.asgi
import msgspec
from _asgi import IdleClient, Lifespan, ws_scope
from falcon.errors import WebSocketDisconnected

import pachinko
from pachinko.auth import sign_token, token_authenticator

SECRET = "bench-secret-0123456789abcdef"
TOKEN = sign_token(SECRET, "ada", ttl=3600, info={"name": "Ada"})


class Hello(msgspec.Struct, tag="hello"):
    name: str


class Welcome(msgspec.Struct, tag="welcome"):
    name: str


FIRST = '{"type": "hello", "name": "ada"}'


class HandWritten:
    decoder = msgspec.json.Decoder(Hello)
    encoder = msgspec.json.Encoder()

    async def on_websocket(self, req: Any, ws: Any) -> None:
        await ws.accept()
        while True:
            try:
                text = await ws.receive_text()
            except WebSocketDisconnected:
                return
            msg = self.decoder.decode(text)
            await ws.send_text(self.encoder.encode(Welcome(msg.name)).decode())


class Greeter(pachinko.WebSocketResource):
    schema = Hello

    async def on_hello(self, ws: Any, msg: Hello) -> None:
        await self.send(Welcome(msg.name))


def handwritten_app() -> falcon.asgi.App:
    app = falcon.asgi.App()
    app.ws_options.max_receive_queue = 0
    app.add_route("/ws/greet", HandWritten())
    return app


def pachinko_app(authenticate: bool = False) -> falcon.asgi.App:
    app = falcon.asgi.App()
    router = pachinko.WebSocketRouter()
    router.add_route("/greet", Greeter)
    # NOTE: the rate limiter is off: the hand-written loop has none.
    pachinko.mount(
        app,
        "/ws",
        router,
        settings=pachinko.Settings(rate_limit=None),
        authenticate=token_authenticator(SECRET) if authenticate else None,
    )
    return app


def scope() -> dict[str, Any]:
    found = ws_scope("/ws/greet")
    found["headers"] = [*found["headers"], (b"authorization", f"Bearer {TOKEN}".encode())]
    return found


async def one_connection(app: falcon.asgi.App) -> None:
    """Connect, send FIRST, wait for the answer, disconnect."""
    step = 0
    answered = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, Any]:
        nonlocal step
        step += 1
        if step == 1:
            return {"type": "websocket.connect"}
        if step == 2:
            return {"type": "websocket.receive", "text": FIRST}
        await answered
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "websocket.send" and not answered.done():
            answered.set_result(None)

    await app(scope(), receive, send)
    if not answered.done():
        raise RuntimeError("no answer to the first message")


async def connect_round(app: falcon.asgi.App, count: int) -> float:
    gc.collect()
    start = time.perf_counter()
    for _ in range(count):
        await one_connection(app)
    return (time.perf_counter() - start) / count


async def idle_bytes(app: falcon.asgi.App, count: int) -> float:
    """Python bytes held per idle accepted connection (tracemalloc)."""
    warm = [IdleClient(lambda: None) for _ in range(50)]
    for client in warm:
        client.open(app, "/ws/greet")
    await asyncio.gather(*(c.accepted.wait() for c in warm))
    await asyncio.sleep(0.05)
    clients = [IdleClient(lambda: None) for _ in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for client in clients:
            client.open(app, "/ws/greet")
        await asyncio.wait_for(asyncio.gather(*(c.accepted.wait() for c in clients)), 60)
        await asyncio.sleep(0.05)  # every connection reached its receive
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    for client in warm + clients:
        await client.disconnect()
    return (after - before) / count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    hand_app, our_app, auth_app = handwritten_app(), pachinko_app(), pachinko_app(True)
    hand: list[float] = []
    ours: list[float] = []
    authed: list[float] = []
    our_ratios: list[float] = []
    auth_ratios: list[float] = []
    async with Lifespan(hand_app), Lifespan(our_app), Lifespan(auth_app):
        await connect_round(hand_app, 200)  # warm up
        await connect_round(our_app, 200)
        await connect_round(auth_app, 200)
        for _ in range(args.rounds):
            before = await connect_round(hand_app, args.connections)
            ours.append(await connect_round(our_app, args.connections))
            authed.append(await connect_round(auth_app, args.connections))
            after = await connect_round(hand_app, args.connections)
            hand += [before, after]
            our_ratios.append(ours[-1] / ((before + after) / 2))
            auth_ratios.append(authed[-1] / ((before + after) / 2))
        sizes = [args.idle * k // 2 for k in range(2, 7)]
        hand_sizes: list[float] = []
        our_sizes: list[float] = []
        for size in sizes:
            hand_sizes.append(await idle_bytes(hand_app, size))
            our_sizes.append(await idle_bytes(our_app, size))
        hand_idle = statistics.median(hand_sizes)
        our_idle = statistics.median(our_sizes)
        extra_idle = statistics.median(o - h for o, h in zip(our_sizes, hand_sizes, strict=True))
        manager = pachinko.runtime_of(our_app).manager
        if len(manager):
            raise RuntimeError(f"{len(manager)} connections still registered")
    hm, om, am = statistics.median(hand), statistics.median(ours), statistics.median(authed)
    hb, ob, ab = min(hand), min(ours), min(authed)
    our_ratio, auth_ratio = statistics.median(our_ratios), statistics.median(auth_ratios)
    print(f"connect + first message + close ({args.rounds} rounds of {args.connections})")
    print(f"{'':>14} {'median µs':>10} {'best µs':>8} {'ratio to hand':>14}")
    print(f"{'hand-written':>14} {hm * 1e6:>10.1f} {hb * 1e6:>8.1f}")
    print(f"{'pachinko':>14} {om * 1e6:>10.1f} {ob * 1e6:>8.1f} {our_ratio:>13.2f}x")
    print(f"{'+authenticate':>14} {am * 1e6:>10.1f} {ab * 1e6:>8.1f} {auth_ratio:>13.2f}x")
    print(f"{'auth / ours':>14} {auth_ratio / our_ratio:>10.2f}x")
    counts = ", ".join(str(size) for size in sizes)
    print(f"idle accepted connection, tracemalloc (median over {counts} connections)")
    print(f"{'hand-written':>14} {hand_idle / 1024:>8.2f} KiB")
    extra = extra_idle / 1024
    print(f"{'pachinko':>14} {our_idle / 1024:>8.2f} KiB  (+{extra:.2f} KiB)")


if __name__ == "__main__":
    asyncio.run(main())
