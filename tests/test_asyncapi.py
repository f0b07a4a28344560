"""AsyncAPI 3.0 documents from router trees, validated against the official schema.

The schema is ``schemas/3.0.0.json`` of the npm package ``@asyncapi/specs``
6.11.1 (``npm pack @asyncapi/specs@6.11.1``), vendored unchanged as
``tests/fixtures/asyncapi-3.0.0-schema.json`` (sha256 d4571a42...e626).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import falcon.asgi
import jsonschema
import msgspec
import pytest
import yaml

import pachinko
from pachinko import asyncapi

SCHEMA_FILE = Path(__file__).parent / "fixtures" / "asyncapi-3.0.0-schema.json"

Room = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern="^[A-Za-z0-9_-]+$")]


class Join(msgspec.Struct, tag="join", forbid_unknown_fields=True):
    room: Room
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class Say(msgspec.Struct, tag="say"):
    room: Room
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class Typing(msgspec.Struct, tag="typing"):
    room: Room
    active: bool


class HistoryItem(msgspec.Struct):
    name: str
    text: str
    at: Annotated[dt.datetime, msgspec.Meta(tz=True)]


class Joined(msgspec.Struct, tag="joined"):
    room: str
    name: str
    members: list[str]
    history: list[HistoryItem]


class Presence(msgspec.Struct, tag="presence"):
    room: str
    name: str
    event: Literal["join", "leave"]
    members: list[str]


class TypingOut(msgspec.Struct, tag="typing"):
    room: str
    name: str
    active: bool


class Point(msgspec.Struct):
    xy: tuple[int, int]
    shape: Join | Say


class Chat(pachinko.WebSocketResource):
    schema = Join | Say | Typing
    sends = (Joined, Presence, TypingOut)

    async def on_join(self, ws: Any, payload: Join) -> None: ...
    async def on_say(self, ws: Any, payload: Say) -> None: ...
    async def on_typing(self, ws: Any, payload: Typing) -> None: ...


class Board(pachinko.WebSocketResource):
    wire = "envelope"
    tag_field = "kind"

    @pachinko.handles_message("draw")
    async def draw(self, ws: Any, payload: Point) -> None: ...

    @pachinko.handles_message("ping", strict=False)
    async def ping(self, ws: Any, payload: Any) -> None: ...


class Untyped(pachinko.WebSocketResource):
    @pachinko.handles_message("hello")
    async def hello(self, ws: Any, payload: Point) -> None: ...


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return jsonschema.Draft7Validator(schema)


def chat_router() -> pachinko.WebSocketRouter:
    router = pachinko.WebSocketRouter()
    router.add_route("/chat", Chat, name="chat")
    router.add_route("/boards/{board:int}", Board, name="board")
    router.add_route("/hello", Untyped)
    return router


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in all_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in all_refs(v)]
    return []


def errors(validator: jsonschema.Draft7Validator, doc: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(doc)]


def test_document_of_a_python_router_is_valid_asyncapi_3(
    validator: jsonschema.Draft7Validator,
) -> None:
    doc = asyncapi.document(
        [("/ws", chat_router())], title="Chat", version="2.1.0", server="ws://localhost:8000"
    )
    assert errors(validator, doc) == []
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"] == {"title": "Chat", "version": "2.1.0"}
    assert doc["servers"] == {"default": {"host": "localhost:8000", "protocol": "ws"}}
    for ref in all_refs(doc):
        resolve(doc, ref)  # every reference points inside the document


def test_channels_come_from_routes_with_parameters() -> None:
    doc = asyncapi.document([("/ws", chat_router())])
    channels = doc["channels"]
    assert list(channels) == ["chat", "board", "ws_hello"]
    assert channels["chat"]["address"] == "/ws/chat"
    assert channels["board"]["address"] == "/ws/boards/{board}"
    assert list(channels["board"]["parameters"]) == ["board"]
    assert "parameters" not in channels["chat"]


def test_both_directions_are_operations() -> None:
    doc = asyncapi.document([("/ws", chat_router())])
    ops = doc["operations"]
    assert ops["chat.receive"]["action"] == "receive"
    assert ops["chat.send"]["action"] == "send"
    received = [resolve(doc, r["$ref"]) for r in ops["chat.receive"]["messages"]]
    sent = [resolve(doc, r["$ref"]) for r in ops["chat.send"]["messages"]]
    received_names = [resolve(doc, m["$ref"])["name"] for m in received]
    sent_names = [resolve(doc, m["$ref"])["name"] for m in sent]
    assert received_names == ["join", "say", "typing"]
    assert sent_names == ["joined", "presence", "typing"]  # "typing" both ways, two messages
    # a resource without `sends` has no send operation
    assert "board.send" not in ops


def test_payloads_are_msgspec_json_schema() -> None:
    doc = asyncapi.document([("/ws", chat_router())])
    join = doc["components"]["messages"]["Chat.receive.join"]
    schema = join["payload"]  # flat: inlined, with the tag and the handler's strictness
    assert schema["properties"]["type"] == {"type": "string", "const": "join"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["room"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[A-Za-z0-9_-]+$",
    }
    assert set(schema["required"]) == {"type", "room", "name"}
    joined = resolve(doc, doc["components"]["messages"]["Chat.send.joined"]["payload"]["$ref"])
    history = resolve(doc, joined["properties"]["history"]["items"]["$ref"])
    assert history["properties"]["at"]["format"] == "date-time"


def test_envelope_wire_and_custom_tag_field() -> None:
    doc = asyncapi.document([("/ws", chat_router())])
    draw = doc["components"]["messages"]["Board.receive.draw"]["payload"]
    assert draw["properties"]["kind"] == {"type": "string", "const": "draw"}
    assert draw["required"] == ["kind", "payload"]
    assert draw["additionalProperties"] is False
    point = resolve(doc, draw["properties"]["payload"]["$ref"])
    # msgspec's 2020-12 keywords rewritten to draft 07
    assert point["properties"]["xy"]["items"] == [{"type": "integer"}, {"type": "integer"}]
    assert point["properties"]["xy"]["additionalItems"] is False
    assert point["properties"]["shape"]["discriminator"] == "type"
    ping = doc["components"]["messages"]["Board.receive.ping"]["payload"]
    assert "additionalProperties" not in ping  # strict=False
    assert ping["required"] == ["kind"]


def test_untagged_struct_on_flat_wire_gets_the_tag() -> None:
    doc = asyncapi.document([("/ws", chat_router())])
    hello = doc["components"]["messages"]["Untyped.receive.hello"]["payload"]
    assert hello["title"] == "Point"
    assert list(hello["properties"]) == ["type", "xy", "shape"]
    assert hello["properties"]["type"] == {"type": "string", "const": "hello"}
    assert hello["required"] == ["type", "xy", "shape"]
    assert "&id" not in asyncapi.dumps(doc)  # no YAML anchors for shared parts


def message_validator(doc: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    """Validate instances against one message's payload, references resolved in ``doc``."""
    return jsonschema.Draft7Validator({**doc, "$ref": f"#/components/messages/{message}/payload"})


@pytest.mark.parametrize(
    ("message", "instance", "valid"),
    [
        ("Chat.receive.join", {"type": "join", "room": "a-1", "name": "ann"}, True),
        ("Chat.receive.join", {"type": "join", "room": "a b", "name": "ann"}, False),
        ("Chat.receive.join", {"type": "join", "room": "a", "name": "ann", "x": 1}, False),
        ("Chat.receive.join", {"type": "say", "room": "a", "name": "ann"}, False),
        ("Chat.receive.say", {"type": "say", "room": "a", "text": "hi"}, True),
        ("Chat.receive.say", {"type": "say", "room": "a"}, False),
        (
            "Chat.send.presence",
            {"type": "presence", "room": "a", "name": "b", "event": "join", "members": ["b"]},
            True,
        ),
        (
            "Chat.send.presence",
            {"type": "presence", "room": "a", "name": "b", "event": "wave", "members": ["b"]},
            False,
        ),
        (
            "Board.receive.draw",
            {
                "kind": "draw",
                "payload": {"xy": [1, 2], "shape": {"type": "say", "room": "r", "text": "t"}},
            },
            True,
        ),
        (
            "Board.receive.draw",
            {"kind": "draw", "payload": {"xy": [1, 2, 3], "shape": None}},
            False,
        ),
        ("Board.receive.ping", {"kind": "ping", "anything": True}, True),
        (
            "Untyped.receive.hello",
            {"type": "hello", "xy": [0, 0], "shape": {"type": "join", "room": "r", "name": "n"}},
            True,
        ),
    ],
)
def test_message_schemas_accept_what_the_dispatcher_accepts(
    message: str,
    instance: dict[str, Any],
    valid: bool,
) -> None:
    doc = json.loads(asyncapi.dumps(asyncapi.document([("/ws", chat_router())]), "json"))
    assert message_validator(doc, message).is_valid(instance) is valid


def test_document_for_app_uses_the_mount_prefix(
    validator: jsonschema.Draft7Validator,
) -> None:
    app = falcon.asgi.App()
    pachinko.mount(app, "/api/ws", chat_router())
    doc = asyncapi.document_for_app(app, title="t")
    assert doc["channels"]["chat"]["address"] == "/api/ws/chat"
    assert errors(validator, doc) == []


def test_a_single_router_and_an_empty_router() -> None:
    doc = asyncapi.document(chat_router())
    assert doc["channels"]["chat"]["address"] == "/chat"
    empty = asyncapi.document(pachinko.WebSocketRouter())
    assert empty["channels"] == {}
    assert empty["operations"] == {}


def test_yaml_and_json_dumps_round_trip() -> None:
    doc = asyncapi.document([("/ws", chat_router())])
    assert yaml.safe_load(asyncapi.dumps(doc, "yaml")) == doc
    assert json.loads(asyncapi.dumps(doc, "json")) == doc
    with pytest.raises(ValueError, match="format must be 'yaml' or 'json', got 'xml'"):
        asyncapi.dumps(doc, "xml")  # type: ignore[arg-type]


def test_bad_server_url_is_refused() -> None:
    with pytest.raises(ValueError, match="server must be a ws:// or wss:// URL"):
        asyncapi.document(chat_router(), server="http://localhost")


def test_the_validator_rejects_broken_documents(validator: jsonschema.Draft7Validator) -> None:
    # guards the fixture: a validator that accepts anything would prove nothing
    doc = asyncapi.document([("/ws", chat_router())])
    doc["operations"]["chat.receive"]["action"] = "publish"  # AsyncAPI 2 vocabulary
    assert errors(validator, doc)
    doc = asyncapi.document([("/ws", chat_router())])
    doc["components"]["schemas"]["Join"]["properties"]["room"]["type"] = "text"
    assert errors(validator, doc)


def _made(tag: str, field: type) -> Any:
    """A new Struct class, with the same module and qualname every time."""
    return msgspec.defstruct("Made", [("value", field)], tag=tag, module=__name__)


def test_distinct_types_with_the_same_full_name(validator: jsonschema.Draft7Validator) -> None:
    class Twins(pachinko.WebSocketResource):
        sends = (_made("a", int), _made("b", str))

    router = pachinko.WebSocketRouter()
    router.add_route("/t", Twins, name="t")
    doc = asyncapi.document(router)
    assert errors(validator, doc) == []
    payloads = [
        resolve(doc, resolve(doc, m["$ref"])["payload"]["$ref"])
        for m in doc["channels"]["t"]["messages"].values()
    ]
    assert [p["properties"]["value"]["type"] for p in payloads] == ["integer", "string"]


def test_nested_types_with_the_same_full_name_are_told_apart(
    validator: jsonschema.Draft7Validator,
) -> None:
    both = msgspec.defstruct("Both", [("a", _made("a", int)), ("b", _made("b", str))], tag="both")

    class Odd(pachinko.WebSocketResource):
        sends = (both, _made("c", int))

    router = pachinko.WebSocketRouter()
    router.add_route("/o", Odd, name="o")
    doc = asyncapi.document(router)
    assert errors(validator, doc) == []
    described = [
        resolve(doc, resolve(doc, m["$ref"])["payload"]["$ref"])
        for m in doc["channels"]["o"]["messages"].values()
    ]
    nested = described[0]["properties"]
    assert resolve(doc, nested["a"]["$ref"])["properties"]["value"]["type"] == "integer"
    assert resolve(doc, nested["b"]["$ref"])["properties"]["value"]["type"] == "string"
    assert nested["a"]["$ref"] != nested["b"]["$ref"]
    assert described[1]["properties"]["value"]["type"] == "integer"


async def test_envelope_sends_are_described_as_sent() -> None:
    """What an envelope resource really sends validates against its AsyncAPI message."""
    from pachinko.testing import ResourceHarness

    class Placed(msgspec.Struct, tag="placed"):
        x: int
        label: str = ""

    class Placer(pachinko.WebSocketResource):
        wire = "envelope"
        tag_field = "kind"
        sends = (Placed,)

        @pachinko.handles_message("place")
        async def place(self, ws: Any, payload: Any) -> None:
            await self.send(Placed(x=payload["x"]))

    router = pachinko.WebSocketRouter()
    router.add_route("/place", Placer)
    doc = asyncapi.document([("/ws", router)])
    async with ResourceHarness(Placer, timeout=2.0) as harness:
        assert await harness.connect()
        await harness.receive({"kind": "place", "payload": {"x": 3}})
        sent = await harness.ws.receive_json()
    assert sent == {"kind": "placed", "payload": {"x": 3, "label": ""}}
    key = next(k for k in doc["components"]["messages"] if k.endswith("Placer.send.placed"))
    validator = message_validator(doc, key)
    assert list(validator.iter_errors(sent)) == []
    flat = {"kind": "placed", "x": 3, "label": ""}  # what send() wrote before
    assert not validator.is_valid(flat)


class Bid(msgspec.Struct, tag="bid", forbid_unknown_fields=True):
    lot: str
    amount: int


class BidAccepted(msgspec.Struct, tag="bid_accepted", forbid_unknown_fields=True):
    lot: str
    amount: int


class Auction(pachinko.WebSocketResource):
    async def on_bid(self, ws: Any, bid: Bid) -> BidAccepted:
        return BidAccepted(lot=bid.lot, amount=bid.amount)

    async def on_say(self, ws: Any, payload: Say) -> None:
        pass


class BidBody(msgspec.Struct, forbid_unknown_fields=True):
    lot: str
    amount: int


class EnvelopeAuction(pachinko.WebSocketResource):
    wire = "envelope"
    id_field = "rid"

    @pachinko.handles_message("bid")
    async def bid(self, ws: Any, bid: BidBody) -> BidAccepted:
        return BidAccepted(lot=bid.lot, amount=bid.amount)

    @pachinko.handles_message("stats", reply=dict)
    async def stats(self, ws: Any, payload: Any) -> Any:
        return {"type": "stats", "count": 1}


def auction_router() -> pachinko.WebSocketRouter:
    router = pachinko.WebSocketRouter()
    router.add_route("/auction", Auction, name="auction")
    router.add_route("/env", EnvelopeAuction, name="env")
    return router


def test_requests_are_operations_with_a_reply(validator: jsonschema.Draft7Validator) -> None:
    doc = json.loads(asyncapi.dumps(asyncapi.document([("/ws", auction_router())]), "json"))
    assert errors(validator, doc) == []
    ops = doc["operations"]
    request = ops["auction.request.bid"]
    assert request["action"] == "receive"
    assert request["messages"] == [{"$ref": "#/channels/auction/messages/receive.bid"}]
    assert request["reply"] == {
        "channel": {"$ref": "#/channels/auction"},
        "messages": [{"$ref": "#/channels/auction/messages/reply.bid"}],
    }
    # the request is not also a plain message; the others stay in the receive operation
    received = [resolve(doc, r["$ref"]) for r in ops["auction.receive"]["messages"]]
    assert [resolve(doc, m["$ref"])["name"] for m in received] == ["say"]
    bid = resolve(doc, "#/channels/auction/messages/receive.bid")
    bid = resolve(doc, bid["$ref"])
    assert bid["correlationId"] == {
        "description": "The correlation id: the request's `id`, echoed by its reply.",
        "location": "$message.payload#/id",
    }
    reply = resolve(doc, resolve(doc, "#/channels/auction/messages/reply.bid")["$ref"])
    assert reply["name"] == "bid_accepted"
    assert reply["correlationId"]["location"] == "$message.payload#/id"
    env = ops["env.request.stats"]["reply"]["messages"]
    assert env == [{"$ref": "#/channels/env/messages/reply.stats"}]
    for ref in all_refs(doc):
        resolve(doc, ref)


@pytest.mark.parametrize(
    ("message", "instance", "valid"),
    [
        ("Auction.receive.bid", {"type": "bid", "id": 7, "lot": "a", "amount": 1}, True),
        ("Auction.receive.bid", {"type": "bid", "id": "x", "lot": "a", "amount": 1}, True),
        ("Auction.receive.bid", {"type": "bid", "lot": "a", "amount": 1}, True),
        ("Auction.receive.bid", {"type": "bid", "id": 1.5, "lot": "a", "amount": 1}, False),
        ("Auction.receive.say", {"type": "say", "id": 1, "room": "a", "text": "x"}, False),
        (
            "Auction.reply.bid",
            {"id": 7, "type": "bid_accepted", "lot": "a", "amount": 1},
            True,
        ),
        ("Auction.reply.bid", {"type": "bid_accepted", "lot": "a", "amount": 1}, True),
        ("Auction.reply.bid", {"id": 7, "type": "bid", "lot": "a", "amount": 1}, False),
        (
            "EnvelopeAuction.receive.bid",
            {"type": "bid", "rid": 1, "payload": {"lot": "a", "amount": 1}},
            True,
        ),
        (
            "EnvelopeAuction.reply.bid",
            {"type": "bid_accepted", "rid": 1, "payload": {"lot": "a", "amount": 1}},
            True,
        ),
        ("EnvelopeAuction.reply.stats", {"type": "stats", "rid": 1, "count": 1}, True),
    ],
)
def test_request_and_reply_schemas_accept_what_is_sent(
    message: str, instance: dict[str, Any], valid: bool
) -> None:
    doc = json.loads(asyncapi.dumps(asyncapi.document([("/ws", auction_router())]), "json"))
    key = next(k for k in doc["components"]["messages"] if k.endswith(message))
    assert message_validator(doc, key).is_valid(instance) is valid


async def test_replies_really_sent_validate_against_the_document() -> None:
    from pachinko.testing import ResourceHarness

    doc = json.loads(asyncapi.dumps(asyncapi.document([("/ws", auction_router())]), "json"))
    for resource, request, key in (
        (Auction, {"type": "bid", "id": 3, "lot": "a", "amount": 2}, "Auction.reply.bid"),
        (
            EnvelopeAuction,
            {"type": "bid", "rid": "q", "payload": {"lot": "a", "amount": 2}},
            "EnvelopeAuction.reply.bid",
        ),
    ):
        async with ResourceHarness(resource, timeout=2.0) as harness:
            assert await harness.connect()
            await harness.receive(request)
            sent = await harness.ws.receive_json()
        full = next(k for k in doc["components"]["messages"] if k.endswith(key))
        assert list(message_validator(doc, full).iter_errors(sent)) == [], sent
