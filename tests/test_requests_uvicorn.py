"""Request/response over a real socket: uvicorn on 127.0.0.1 and websockets clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pachinko import WebSocketResource, WebSocketRouter
from tests.apps.auction import Bid, BidAccepted
from tests.helpers import make_app

pytestmark = pytest.mark.live

CONNECTIONS = 10
PER_CONNECTION = 100


class Auction(WebSocketResource):
    schema = Bid

    async def on_bid(self, ws: Any, bid: Bid) -> BidAccepted:
        if bid.amount < 0:
            raise ValueError("negative bid")
        # NOTE: a yield to the loop, so the other connections' requests interleave
        await asyncio.sleep(0)
        return BidAccepted(lot=bid.lot, amount=bid.amount)

    async def on_ask(self, ws: Any, payload: Any) -> None:
        async def ask() -> None:
            answer = await self.request({"type": "confirm"}, timeout=5.0)
            await self.send({"type": "confirmed", "answer": answer})

        self.state["task"] = asyncio.create_task(ask())


def auction_app() -> Any:
    router = WebSocketRouter()
    router.add_route("/auction", Auction)
    return make_app(router)


async def test_1000_concurrent_requests_on_10_connections(pachinko_live: Any) -> None:
    server = await pachinko_live(auction_app())

    async def client(n: int) -> dict[Any, Any]:
        async with server.websocket("/ws/auction") as ws:
            # every request sent before any reply is read: all in flight at once
            ids: list[Any] = [
                f"c{n}-{i}" if i % 2 else n * PER_CONNECTION + i for i in range(PER_CONNECTION)
            ]
            await asyncio.gather(
                *(
                    ws.send_json(
                        {"type": "bid", "id": rid, "lot": f"lot{n}", "amount": n * 1000 + i}
                    )
                    for i, rid in enumerate(ids)
                )
            )
            replies = [await ws.receive_json() for _ in ids]
            by_id = {r["id"]: r for r in replies}
            assert sorted(map(str, by_id)) == sorted(map(str, ids))
            return {rid: (by_id[rid], i) for i, rid in enumerate(ids)}

    results = await asyncio.gather(*(client(n) for n in range(CONNECTIONS)))
    total = 0
    for n, matched in enumerate(results):
        for rid, (reply, i) in matched.items():
            assert reply == {
                "id": rid,
                "type": "bid_accepted",
                "lot": f"lot{n}",
                "amount": n * 1000 + i,
            }
            total += 1
    assert total == CONNECTIONS * PER_CONNECTION


async def test_a_handler_that_raises_gives_an_error_reply_with_the_id(pachinko_live: Any) -> None:
    server = await pachinko_live(auction_app())
    async with server.websocket("/ws/auction") as ws:
        assert await ws.request({"type": "bid", "lot": "a", "amount": -1}, id="r1") == {
            "type": "error",
            "id": "r1",
            "reason": "handler_error",
            "detail": "The server failed to handle this message",
            "path": None,
        }
        assert await ws.request({"type": "bid", "lot": "a", "amount": 3}, id="r2") == {
            "id": "r2",
            "type": "bid_accepted",
            "lot": "a",
            "amount": 3,
        }


async def test_the_server_asks_a_client_over_a_real_socket(pachinko_live: Any) -> None:
    server = await pachinko_live(auction_app())
    async with server.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "ask"})
        question = await ws.expect(type="confirm")
        await ws.answer(question, {"type": "ok", "value": 42})
        confirmed = await ws.expect(type="confirmed")
        assert confirmed["answer"] == {"type": "ok", "value": 42, "id": question["id"]}
