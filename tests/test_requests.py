"""Acknowledgements and request-response: correlation ids, replies, server requests.

Every test drives a real ``falcon.asgi.App`` in-process (``AppClient``); the
uvicorn proofs are in tests/test_requests_uvicorn.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest

import pachinko
from pachinko import (
    HandlerDefinitionError,
    PachinkoError,
    RequestAborted,
    RequestTimeout,
    WebSocketResource,
    WebSocketRouter,
    handles_message,
)
from pachinko.testing import AppClient, ResourceHarness
from tests.apps.auction import Bid, BidAccepted
from tests.helpers import INTERNAL_ERROR, eventually, make_app


class Say(msgspec.Struct, tag="say"):
    text: str


class Auction(WebSocketResource):
    schema = Bid | Say

    async def on_bid(self, ws: Any, bid: Bid) -> BidAccepted | None:
        if bid.amount < 0:
            raise ValueError("negative bid")
        if bid.amount == 0:
            return None
        return BidAccepted(lot=bid.lot, amount=bid.amount)

    async def on_say(self, ws: Any, say: Say) -> None:
        await self.send({"type": "said", "text": say.text})


def auction_app(resource: type[WebSocketResource] = Auction, **options: Any) -> Any:
    router = WebSocketRouter()
    router.add_route("/auction", resource)
    return make_app(router, **options)


# -- client → server requests ------------------------------------------------------


async def test_the_reply_carries_the_requests_id() -> None:
    async with AppClient(auction_app()) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "bid", "id": "7", "lot": "a", "amount": 5})
        assert await ws.receive_json() == {
            "id": "7",
            "type": "bid_accepted",
            "lot": "a",
            "amount": 5,
        }
        await ws.send_json({"type": "bid", "id": 8, "lot": "b", "amount": 6})
        assert await ws.receive_json() == {"id": 8, "type": "bid_accepted", "lot": "b", "amount": 6}


async def test_a_request_without_an_id_gets_its_reply_without_one() -> None:
    async with AppClient(auction_app()) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "bid", "lot": "a", "amount": 5})
        assert await ws.receive_json() == {"type": "bid_accepted", "lot": "a", "amount": 5}


async def test_returning_none_sends_nothing() -> None:
    async with AppClient(auction_app()) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "bid", "id": 1, "lot": "a", "amount": 0})
        await ws.send_json({"type": "bid", "id": 2, "lot": "a", "amount": 3})
        # handlers run in order: the first message received answers the second request
        assert await ws.receive_json() == {"id": 2, "type": "bid_accepted", "lot": "a", "amount": 3}


async def test_the_testing_request_helper() -> None:
    async with AppClient(auction_app()) as client, client.websocket("/ws/auction") as ws:
        first = await ws.request({"type": "bid", "lot": "a", "amount": 5})
        second = await ws.request({"type": "bid", "lot": "a", "amount": 6})
        assert (first["id"], second["id"]) == (1, 2)
        assert second == {"id": 2, "type": "bid_accepted", "lot": "a", "amount": 6}
        named = await ws.request({"type": "bid", "lot": "a", "amount": 7}, id="mine")
        assert named["id"] == "mine"


async def test_a_handler_that_raises_gives_an_error_reply_with_the_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    disconnects: list[int] = []

    class Tracked(Auction):
        async def on_disconnect(self, ws: Any, close_code: int) -> None:
            disconnects.append(close_code)

    async with AppClient(auction_app(Tracked)) as client, client.websocket("/ws/auction") as ws:
        with caplog.at_level(logging.ERROR, logger="pachinko"):
            reply = await ws.request({"type": "bid", "lot": "a", "amount": -1}, id="x1")
        assert reply == {
            "type": "error",
            "id": "x1",
            "reason": "handler_error",
            "detail": "The server failed to handle this message",
            "path": None,
        }
        # the traceback is logged, not sent; the connection stays open
        (record,) = [r for r in caplog.records if "handler_error" in r.getMessage()]
        assert "request 'x1'" in record.getMessage()
        assert record.exc_info is not None
        assert "negative bid" in str(record.exc_info[1])
        assert (await ws.request({"type": "bid", "lot": "a", "amount": 2}))["amount"] == 2
    await eventually(lambda: disconnects == [1000])


async def test_a_handler_that_raises_without_an_id_still_closes_1011() -> None:
    async with AppClient(auction_app()) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "bid", "lot": "a", "amount": -1})
        assert await ws.expect_close() == INTERNAL_ERROR


async def test_an_error_hook_that_handles_the_exception_takes_the_error_reply() -> None:
    seen: list[Exception] = []

    class Hooked(Auction):
        async def on_error(self, ws: Any, exc: Exception) -> bool:
            seen.append(exc)
            await self.send({"type": "sorry", "why": str(exc)})
            return True

    async with AppClient(auction_app(Hooked)) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "bid", "id": 3, "lot": "a", "amount": -1})
        assert await ws.receive_json() == {"type": "sorry", "why": "negative bid"}
        assert [str(e) for e in seen] == ["negative bid"]


async def test_a_backend_outage_in_a_request_is_an_unavailable_reply_with_the_id() -> None:
    class Outage(WebSocketResource):
        async def on_bid(self, ws: Any, bid: Bid) -> BidAccepted:
            raise pachinko.BackendUnavailable("redis down")

    async with AppClient(auction_app(Outage)) as client, client.websocket("/ws/auction") as ws:
        reply = await ws.request({"type": "bid", "lot": "a", "amount": 1}, id=4)
        assert (reply["type"], reply["id"], reply["reason"]) == ("error", 4, "unavailable")


async def test_error_replies_caused_by_a_request_carry_its_id() -> None:
    async with AppClient(auction_app()) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "bid", "id": "v", "lot": "a", "amount": "five"})
        assert await ws.receive_json() == {
            "type": "error",
            "id": "v",
            "reason": "validation_error",
            "detail": "Expected `int`, got `str`",
            "path": "$.amount",
        }
        await ws.send_json({"type": "nope", "id": 9})
        assert await ws.receive_json() == {
            "type": "error",
            "id": 9,
            "reason": "unknown_type",
            "detail": "Unknown message type 'nope'",
            "path": "$.type",
        }
        # a message type that declares no reply takes no id (strict: an unknown field),
        # and the error reply still carries it
        await ws.send_json({"type": "say", "id": 10, "text": "hi"})
        assert await ws.receive_json() == {
            "type": "error",
            "id": 10,
            "reason": "validation_error",
            "detail": "Object contains unknown field `id`",
            "path": "$",
        }


@pytest.mark.parametrize(
    ("raw", "found"),
    [
        ('{"type": "bid", "id": 1.5, "lot": "a", "amount": 1}', "`float`"),
        ('{"type": "bid", "id": true, "lot": "a", "amount": 1}', "`bool`"),
        ('{"type": "bid", "id": null, "lot": "a", "amount": 1}', "`null`"),
        ('{"type": "bid", "id": {"a": 1}, "lot": "a", "amount": 1}', "`object`"),
        ('{"type": "say", "id": [1], "text": "x"}', "`array`"),
        ('{"id": 2.5}', "`float`"),
    ],
)
async def test_an_id_that_is_not_a_str_or_int_is_a_bad_id(raw: str, found: str) -> None:
    async with AppClient(auction_app()) as client, client.websocket("/ws/auction") as ws:
        await ws.send_text(raw)
        assert await ws.receive_json() == {
            "type": "error",
            "reason": "bad_id",
            "detail": f"Expected `str | int`, got {found}",
            "path": "$.id",
        }
        # still open
        assert (await ws.request({"type": "bid", "lot": "a", "amount": 2}))["amount"] == 2


async def test_a_resource_without_replies_reads_no_id() -> None:
    class Plain(WebSocketResource):
        async def on_say(self, ws: Any, say: Say) -> None:
            await self.send({"type": "said"})

    assert not Plain.__pachinko_table__.requests
    async with AppClient(auction_app(Plain)) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "say", "id": 1, "text": "hi"})
        # as before acknowledgements existed: an unknown field, no id in the reply
        assert await ws.receive_json() == {
            "type": "error",
            "reason": "validation_error",
            "detail": "Object contains unknown field `id`",
            "path": "$",
        }


async def test_the_handler_never_sees_the_id_on_its_payload() -> None:
    seen: list[Any] = []

    class Echo(WebSocketResource):
        async def on_bid(self, ws: Any, bid: Bid) -> BidAccepted:
            seen.append(bid)
            await self.send(bid)  # re-encoding the payload must not carry the id on
            return BidAccepted(lot=bid.lot, amount=bid.amount)

    async with AppClient(auction_app(Echo)) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "bid", "id": "q", "lot": "a", "amount": 1})
        assert await ws.receive_json() == {"type": "bid", "lot": "a", "amount": 1}
        assert (await ws.receive_json())["id"] == "q"
    (bid,) = seen
    assert isinstance(bid, Bid)
    assert msgspec.to_builtins(bid) == {"type": "bid", "lot": "a", "amount": 1}


async def test_dict_replies_decorator_reply_and_untyped_handlers() -> None:
    class Mixed(WebSocketResource):
        @handles_message("ping", reply=dict)
        async def ping(self, ws: Any, payload: Any) -> Any:
            # an untyped handler gets the whole message, id included
            return {"type": "pong", "echo": payload}

        async def on_sum(self, ws: Any, payload: Any) -> dict[str, Any]:
            return {"type": "total", "total": sum(payload["values"])}

    assert Mixed.message_types()["ping"].reply_type is dict
    async with AppClient(auction_app(Mixed)) as client, client.websocket("/ws/auction") as ws:
        assert await ws.request({"type": "ping"}, id="p") == {
            "id": "p",
            "type": "pong",
            "echo": {"type": "ping", "id": "p"},
        }
        # a convention handler whose tag is known only per message (the slow path)
        assert await ws.request({"type": "sum", "values": [1, 2]}) == {
            "id": 1,
            "type": "total",
            "total": 3,
        }


async def test_a_reply_that_is_not_an_object_is_a_handler_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Bad(WebSocketResource):
        @handles_message("list", reply=list)
        async def listing(self, ws: Any, payload: Any) -> Any:
            return [1, 2]

        @handles_message("clash", reply=dict)
        async def clash(self, ws: Any, payload: Any) -> Any:
            return {"type": "x", "id": "other"}

    async with AppClient(auction_app(Bad)) as client, client.websocket("/ws/auction") as ws:
        with caplog.at_level(logging.ERROR, logger="pachinko"):
            assert (await ws.request({"type": "list"}))["reason"] == "handler_error"
            assert (await ws.request({"type": "clash"}))["reason"] == "handler_error"
        messages = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
        assert "must be a msgspec.Struct or a dict (a JSON object), got list" in messages[0]
        assert "cannot have a field 'id' of its own" in messages[1]
        # without an id the reply is sent as the handler returned it
        await ws.send_json({"type": "list"})
        assert await ws.receive_json() == [1, 2]


async def test_envelope_requests_and_replies() -> None:
    class Env(WebSocketResource):
        wire = "envelope"
        id_field = "rid"

        @handles_message("bid")
        async def bid(self, ws: Any, payload: Bid) -> BidAccepted:
            if payload.amount < 0:
                raise ValueError("negative")
            return BidAccepted(lot=payload.lot, amount=payload.amount)

    async with AppClient(auction_app(Env)) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "bid", "rid": 1, "payload": {"lot": "a", "amount": 2}})
        assert await ws.receive_json() == {
            "type": "bid_accepted",
            "rid": 1,
            "payload": {"lot": "a", "amount": 2},
        }
        await ws.send_json({"type": "bid", "rid": 2, "payload": {"lot": "a", "amount": -1}})
        assert await ws.receive_json() == {
            "type": "error",
            "rid": 2,
            "payload": {
                "reason": "handler_error",
                "detail": "The server failed to handle this message",
                "path": None,
            },
        }
        await ws.send_json({"type": "bid", "rid": 3, "payload": {"lot": "a"}})
        reply = await ws.receive_json()
        assert (reply["rid"], reply["payload"]["reason"]) == (3, "validation_error")
        await ws.send_json({"type": "bid", "rid": 4, "extra": 1, "payload": {}})
        reply = await ws.receive_json()
        assert reply["payload"]["detail"] == "Object contains unknown field `extra`"
        assert reply["rid"] == 4


async def test_definition_errors_name_the_fix() -> None:
    class WithId(msgspec.Struct, tag="claim"):
        id: str

    class Ok(msgspec.Struct, tag="ok"):
        pass

    with pytest.raises(HandlerDefinitionError) as info:

        class Clash(WebSocketResource):
            async def on_claim(self, ws: Any, claim: WithId) -> Ok:
                return Ok()

    assert str(info.value) == (
        "test_definition_errors_name_the_fix.<locals>.Clash.on_claim: 'claim' is a request "
        "(its handler declares a reply), and its payload type "
        "test_definition_errors_name_the_fix.<locals>.WithId has a field 'id', where the "
        "correlation id goes; rename the field (msgspec.field(name=...)) or set "
        "test_definition_errors_name_the_fix.<locals>.Clash.id_field"
    )

    # the same payload is fine with another id field, or without a reply
    class Renamed(WebSocketResource):
        id_field = "rid"

        async def on_claim(self, ws: Any, claim: WithId) -> Ok:
            return Ok()

    class NoReply(WebSocketResource):
        async def on_claim(self, ws: Any, claim: WithId) -> None:
            pass

    assert Renamed.message_types()["claim"].is_request
    assert not NoReply.message_types()["claim"].is_request

    class Reply(msgspec.Struct, tag="r"):
        id: int

    with pytest.raises(HandlerDefinitionError, match=r"the reply type .*Reply has a field 'id'"):

        class BadReply(WebSocketResource):
            async def on_bid(self, ws: Any, bid: Bid) -> Reply:
                return Reply(1)

    with pytest.raises(HandlerDefinitionError, match="id_field is 'type', a field the message"):

        class SameField(WebSocketResource):
            id_field = "type"

    with pytest.raises(HandlerDefinitionError, match="cannot resolve the return annotation"):

        class Unknown(WebSocketResource):
            async def on_bid(self, ws: Any, bid: Bid) -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
                return None


def test_return_annotations_that_declare_no_reply() -> None:
    class R(WebSocketResource):
        @handles_message("a")
        async def a(self, ws: Any, payload: Any) -> None:
            pass

        @handles_message("b")
        async def b(self, ws: Any, payload: Any) -> Any:
            pass

        @handles_message("c")
        async def c(self, ws: Any, payload: Any):  # type: ignore[no-untyped-def]
            pass

        @handles_message("d")
        async def d(self, ws: Any, payload: Any) -> BidAccepted | None:
            return None

        @handles_message("e", reply=BidAccepted)
        async def e(self, ws: Any, payload: Any) -> None:
            return None

    types = {tag: spec.reply_type for tag, spec in R.message_types().items()}
    assert types == {"a": None, "b": None, "c": None, "d": BidAccepted, "e": BidAccepted}
    assert R.__pachinko_table__.requests


# -- server → client requests ---------------------------------------------------------


class Confirm(msgspec.Struct, tag="confirm"):
    question: str


class Desk(WebSocketResource):
    """Asks the client a question from a task; reports the outcome."""

    outcomes: list[Any]

    async def on_ask(self, ws: Any, payload: Any) -> None:
        timeout = payload.get("timeout", 2.0)

        async def ask() -> None:
            try:
                answer = await self.request(Confirm(question="sure?"), timeout=timeout)
            except Exception as exc:  # recorded for the test
                Desk.outcomes.append(exc)
                return
            Desk.outcomes.append(answer)
            await self.send({"type": "got", "answer": answer})

        self.state["task"] = asyncio.create_task(ask())

    async def on_ask_inline(self, ws: Any, payload: Any) -> None:
        try:
            await self.request(Confirm(question="inline?"), timeout=1.0)
        except PachinkoError as exc:
            await self.send({"type": "refused", "why": str(exc)})

    async def on_late(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "late_dispatched", "id": payload.get("id")})


@pytest.fixture
def desk() -> Any:
    Desk.outcomes = []
    return auction_app(Desk)


async def test_the_server_asks_and_the_client_answers(desk: Any) -> None:
    hooks: list[str] = []

    class Watched(Desk):
        async def before_receive(self, ws: Any, text: str) -> None:
            hooks.append(text)

    async with AppClient(auction_app(Watched)) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "ask"})
        request = await ws.expect(type="confirm")
        assert request == {"id": "srv-" + request["id"][4:], "type": "confirm", "question": "sure?"}
        await ws.answer(request, {"type": "yes", "really": True})
        got = await ws.expect(type="got")
        assert got["answer"] == {"type": "yes", "really": True, "id": request["id"]}
    # the answer went to no handler and no hook ("yes" has no handler)
    assert [t for t in hooks if "yes" in t] == []
    assert Desk.outcomes == [got["answer"]]


async def test_ids_of_server_requests_are_unique_and_prefixed(desk: Any) -> None:
    async with AppClient(desk) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "ask"})
        await ws.send_json({"type": "ask"})
        first = await ws.expect(type="confirm")
        second = await ws.expect(type="confirm")
        assert first["id"] != second["id"]
        assert first["id"].startswith("srv-")
        assert second["id"].startswith("srv-")
        # answered out of order, each answer reaches its own request
        await ws.answer(second, {"type": "two"})
        await ws.answer(first, {"type": "one"})
        answers = [(await ws.expect(type="got"))["answer"]["type"] for _ in range(2)]
        assert answers == ["two", "one"]


async def test_a_request_the_client_never_answers_times_out(desk: Any) -> None:
    async with AppClient(desk) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "ask", "timeout": 0.05})
        request = await ws.expect(type="confirm")
        await eventually(lambda: len(Desk.outcomes) == 1)
        (outcome,) = Desk.outcomes
        assert isinstance(outcome, RequestTimeout)
        assert isinstance(outcome, TimeoutError)
        assert str(outcome) == (
            f"Desk.request() {request['id']!r}: no answer from the client within 0.05 s"
        )
        # a late answer is an ordinary message: its handler gets it
        await ws.answer(request, {"type": "late"})
        assert await ws.expect(type="late_dispatched") == {
            "type": "late_dispatched",
            "id": request["id"],
        }


async def test_a_request_pending_when_the_connection_closes_is_aborted(desk: Any) -> None:
    async with AppClient(desk) as client:
        async with client.websocket("/ws/auction") as ws:
            await ws.send_json({"type": "ask", "timeout": 30})
            request = await ws.expect(type="confirm")
            await ws.close()
        await eventually(lambda: len(Desk.outcomes) == 1)
    (outcome,) = Desk.outcomes
    assert isinstance(outcome, RequestAborted)
    assert isinstance(outcome, ConnectionError)
    assert str(outcome) == (
        f"Desk.request() {request['id']!r}: the connection closed (code 1000) before the "
        "client answered"
    )


async def test_a_request_from_the_connections_own_handler_is_refused(desk: Any) -> None:
    async with AppClient(desk) as client, client.websocket("/ws/auction") as ws:
        await ws.send_json({"type": "ask_inline"})
        refused = await ws.expect_next(type="refused")
        assert refused["why"].startswith(
            "Desk.request() awaited by a handler of the same connection"
        )


async def test_one_connection_asks_another() -> None:
    class Peer(WebSocketResource):
        async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
            self.user_id = req.get_param("user")
            return True

        async def on_poll(self, ws: Any, payload: Any) -> dict[str, Any]:
            async for conn in self.connections():
                if conn.user_id == payload["user"]:
                    answer = await conn.resource.request({"type": "vote?"}, timeout=2.0)
                    return {"type": "poll_result", "vote": answer["vote"]}
            return {"type": "poll_result", "vote": None}

    async with (
        AppClient(auction_app(Peer)) as client,
        client.websocket("/ws/auction", query_string="user=bob") as bob,
        client.websocket("/ws/auction", query_string="user=ann") as ann,
    ):
        await ann.send_json({"type": "poll", "user": "bob", "id": "p1"})
        question = await bob.expect(type="vote?")
        await bob.answer(question, {"type": "vote", "vote": "yes"})
        assert await ann.expect_next() == {"id": "p1", "type": "poll_result", "vote": "yes"}


async def test_a_request_to_a_closed_connection_is_aborted() -> None:
    async with ResourceHarness(Desk) as harness:
        await harness.connect()
        await harness.disconnect()
        with pytest.raises(RequestAborted, match=r"Desk.request\(\): the connection is closed"):
            await harness.resource.request({"type": "x"}, timeout=1.0)
        with pytest.raises(ValueError, match="timeout must be a number > 0, got 0"):
            await harness.resource.request({"type": "x"}, timeout=0)


async def test_the_harness_runs_requests_and_answers() -> None:
    async with ResourceHarness(Auction) as harness:
        await harness.connect()
        await harness.receive({"type": "bid", "id": 5, "lot": "a", "amount": 1})
        assert await harness.ws.expect_next() == {
            "id": 5,
            "type": "bid_accepted",
            "lot": "a",
            "amount": 1,
        }
        asking = asyncio.create_task(harness.resource.request({"type": "q"}, timeout=2.0))
        question = await harness.ws.expect(type="q")
        await harness.receive({"type": "a", "id": question["id"]})
        assert await asking == {"type": "a", "id": question["id"]}


async def test_a_frozen_payload_struct_is_a_request_too() -> None:
    class Frozen(msgspec.Struct, tag="freeze", frozen=True):
        n: int

    seen: list[Any] = []

    class Ice(WebSocketResource):
        async def on_freeze(self, ws: Any, payload: Frozen) -> BidAccepted:
            seen.append(msgspec.to_builtins(payload))
            return BidAccepted(lot="ice", amount=payload.n)

    async with AppClient(auction_app(Ice)) as client, client.websocket("/ws/auction") as ws:
        assert await ws.request({"type": "freeze", "n": 3}, id="f") == {
            "id": "f",
            "type": "bid_accepted",
            "lot": "ice",
            "amount": 3,
        }
    assert seen == [{"type": "freeze", "n": 3}]


# -- routes.toml: reply = "Type" per handler ---------------------------------------------


async def toml_bid(resource: Any, ws: Any, bid: Any) -> Any:
    if bid.amount < 0:
        raise ValueError("negative")
    return resource.types.BidAccepted(lot=bid.lot, amount=bid.amount)


async def toml_say(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send({"type": "said"})


TOML = """
[app]
prefix = "/ws"

[types.Bid]
tag = "bid"
fields = { lot = "str", amount = "int" }

[types.BidAccepted]
tag = "bid_accepted"
fields = { lot = "str", amount = "int" }

[[routes]]
path = "/auction"
handlers.bid = { handler = "tests.test_requests:toml_bid", payload = "Bid", reply = "BidAccepted" }
handlers.say = "tests.test_requests:toml_say"
"""


async def test_toml_declares_the_reply_per_message_type(tmp_path: Any) -> None:
    from pachinko import asyncapi
    from pachinko.config import create_app

    path = tmp_path / "routes.toml"
    path.write_text(TOML)
    app = create_app(path)
    async with AppClient(app) as client, client.websocket("/ws/auction") as ws:
        assert await ws.request({"type": "bid", "lot": "a", "amount": 4}, id="t1") == {
            "id": "t1",
            "type": "bid_accepted",
            "lot": "a",
            "amount": 4,
        }
        reply = await ws.request({"type": "bid", "lot": "a", "amount": -4}, id="t2")
        assert (reply["type"], reply["id"], reply["reason"]) == ("error", "t2", "handler_error")
        # "say" declares no reply (and takes the raw message): the id is ignored
        await ws.send_json({"type": "say", "id": "t3"})
        assert await ws.receive_json() == {"type": "said"}
    doc = asyncapi.document_for_app(app)
    request = next(op for key, op in doc["operations"].items() if key.endswith("request.bid"))
    assert request["reply"]["messages"][0]["$ref"].endswith("/reply.bid")


async def test_toml_reply_names_an_unknown_type(tmp_path: Any) -> None:
    from pachinko.config import ConfigFileError, create_app

    path = tmp_path / "routes.toml"
    path.write_text(TOML.replace('reply = "BidAccepted"', 'reply = "Nope"'))
    with pytest.raises(ConfigFileError) as info:
        create_app(path)
    message = str(info.value)
    assert "handlers.bid.reply" in message
    assert "'Nope'" in message
