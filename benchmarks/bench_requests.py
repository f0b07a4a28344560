"""Request/response round trip vs a plain message, over uvicorn on 127.0.0.1.

Run:  python benchmarks/bench_requests.py [--messages 2000] [--rounds 7]

One connection, one message at a time (send, then wait for the answer), the
same app serving both: ``plain`` is a handler that answers with ``await
self.send(...)``; ``request`` carries a correlation id and its handler
returns the reply, which pachinko sends with the id; ``server request`` is
``resource.request()`` from a task, answered by the client. The figure is
the round trip in µs (best round) and its ratio to the plain message's,
rounds interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import falcon.asgi
import msgspec

import pachinko
from pachinko import WebSocketResource, WebSocketRouter
from pachinko.testing import LiveServer


class Bid(msgspec.Struct, tag="bid"):
    lot: str
    amount: int


class Say(msgspec.Struct, tag="say"):
    lot: str
    amount: int


class BidAccepted(msgspec.Struct, tag="bid_accepted"):
    lot: str
    amount: int


class Auction(WebSocketResource):
    schema = Bid | Say

    async def on_bid(self, ws: Any, bid: Bid) -> BidAccepted:
        return BidAccepted(bid.lot, bid.amount)

    async def on_say(self, ws: Any, say: Say) -> None:
        await self.send(BidAccepted(say.lot, say.amount))

    @pachinko.handles_message("ask")
    async def ask(self, ws: Any, payload: Any) -> None:
        async def run() -> None:
            for _ in range(payload["n"]):
                await self.request({"type": "confirm"}, timeout=5.0)
            await self.send({"type": "done"})

        self.state["task"] = asyncio.create_task(run())


def app() -> falcon.asgi.App:
    application = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/auction", Auction)
    pachinko.mount(application, "/ws", router, settings=pachinko.Settings(rate_limit=None))
    return application


async def round_trips(ws: Any, frame: str, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await ws.send_text(frame)
        await ws.receive_text()
    return (time.perf_counter() - started) / n * 1e6


async def server_requests(ws: Any, n: int) -> float:
    started = time.perf_counter()
    await ws.send_json({"type": "ask", "n": n})
    for _ in range(n):
        question = await ws.receive_json()
        await ws.answer(question, {"type": "yes"})
    await ws.expect(type="done")
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    plain = '{"type": "say", "lot": "a", "amount": 5}'
    request = '{"type": "bid", "id": 17, "lot": "a", "amount": 5}'
    results: dict[str, list[float]] = {"plain": [], "request": [], "server request": []}
    async with LiveServer(app()) as server, server.websocket("/ws/auction") as ws:
        await round_trips(ws, plain, 200)  # warm up
        await round_trips(ws, request, 200)
        for _ in range(args.rounds):
            results["plain"].append(await round_trips(ws, plain, args.messages))
            results["request"].append(await round_trips(ws, request, args.messages))
            results["server request"].append(await server_requests(ws, args.messages))
    base = min(results["plain"])
    print(f"{args.messages} round trips x {args.rounds} rounds (interleaved), best round")
    print(f"{'':>15} {'µs':>8} {'ratio':>6}")
    for name, times in results.items():
        print(f"{name:>15} {min(times):>8.1f} {min(times) / base:>6.3f}")


if __name__ == "__main__":
    asyncio.run(main())
