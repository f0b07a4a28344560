"""AsyncAPI for history rooms: the position field, the ``recovery`` message, the policies.

The document stays valid AsyncAPI 3.0 (the official schema, as in
tests/test_asyncapi.py), and what a real app sends to a client that recovers
(a ``recovery`` message, positioned broadcasts) validates against the
messages the document describes, in the flat and the envelope wire shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon.asgi
import jsonschema
import msgspec
import pytest
from click.testing import CliRunner

import pachinko
from pachinko import RoomPolicy, asyncapi
from pachinko.cli import main
from pachinko.rooms import RoomPolicies
from pachinko.testing import AppClient
from tests.test_asyncapi import errors, message_validator, validator

__all__ = ["validator"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = {"feed:*": RoomPolicy(history=100, history_ttl=600), "lobby": RoomPolicy(history=20)}


class Said(msgspec.Struct, tag="said", forbid_unknown_fields=True):
    room: str
    n: int


class Note(msgspec.Struct, tag="note", forbid_unknown_fields=True):
    text: str


class Join(msgspec.Struct, tag="join"):
    room: str
    since: str | None = None


class Say(msgspec.Struct, tag="say"):
    room: str
    n: int


class Flat(pachinko.WebSocketResource):
    schema = Join | Say
    sends = (Said, Note)

    async def on_join(self, ws: Any, payload: Join) -> None:
        await self.join_room(payload.room, since=payload.since or None)

    async def on_say(self, ws: Any, payload: Say) -> None:
        said = Said(payload.room, payload.n)
        await self.broadcast_to_room(payload.room, said, exclude_self=False)


class Enveloped(Flat):
    wire = "envelope"
    tag_field = "kind"
    schema = None  # the handlers below, payloads in an envelope

    @pachinko.handles_message("join")
    async def join(self, ws: Any, payload: Join) -> None:
        await self.join_room(payload.room, since=payload.since or None)

    @pachinko.handles_message("say")
    async def say(self, ws: Any, payload: Say) -> None:
        await self.broadcast_to_room(payload.room, Note(f"n={payload.n}"), exclude_self=False)


def router() -> pachinko.WebSocketRouter:
    made = pachinko.WebSocketRouter()
    made.add_route("/flat", Flat, name="flat")
    made.add_route("/env", Enveloped, name="env")
    return made


def app_with(rooms: Any) -> falcon.asgi.App:
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router(), rooms=rooms)
    return app


def sent_keys(doc: dict[str, Any], channel: str) -> list[str]:
    operation = doc["operations"][f"{channel}.send"]
    return [
        doc["channels"][channel]["messages"][ref["$ref"].rsplit("/", 1)[1]]["$ref"].rsplit("/")[-1]
        for ref in operation["messages"]
    ]


def test_the_document_is_valid_asyncapi_3_with_history_rooms(
    validator: jsonschema.Draft7Validator,
) -> None:
    doc = asyncapi.document_for_app(app_with(ROOMS))
    assert errors(validator, json.loads(asyncapi.dumps(doc, "json"))) == []
    assert doc["x-pachinko-rooms"] == {
        "positionField": "_pos",
        "history": {"feed:*": {"history": 100, "historyTtl": 600}, "lobby": {"history": 20}},
    }
    assert sent_keys(doc, "flat") == [
        "Flat.send.said",
        "Flat.send.note",
        "pachinko.recovery",
    ]
    assert sent_keys(doc, "env")[-1] == "pachinko.recovery.envelope.kind"
    said = doc["components"]["messages"]["Flat.send.said"]["payload"]
    position = said["properties"]["_pos"]
    assert "_pos" not in said["required"]
    assert "`feed:*` (last 100 for 600 s), `lobby` (last 20)" in position["description"]
    assert "&id" not in asyncapi.dumps(doc)  # no YAML anchors for shared parts


def test_without_history_the_document_is_as_before() -> None:
    plain = asyncapi.document([("/ws", router())])
    assert asyncapi.document_for_app(app_with(None)) == plain
    no_history = asyncapi.document_for_app(app_with({"lobby": RoomPolicy()}))
    assert no_history == plain
    assert "x-pachinko-rooms" not in plain
    assert not any("recovery" in key for key in plain["components"]["messages"])


def test_a_renamed_position_field_is_the_one_described() -> None:
    doc = asyncapi.document([("/ws", router())], rooms=RoomPolicies(ROOMS, position_field="at"))
    said = doc["components"]["messages"]["Flat.send.said"]["payload"]
    assert "at" in said["properties"]
    assert "_pos" not in said["properties"]
    assert doc["x-pachinko-rooms"]["positionField"] == "at"


@pytest.mark.parametrize(
    ("path", "said_key", "recovery_key", "tag"),
    [
        ("/ws/flat", "Flat.send.said", "pachinko.recovery", "type"),
        ("/ws/env", "Enveloped.send.note", "pachinko.recovery.envelope.kind", "kind"),
    ],
)
async def test_what_a_recovering_client_gets_is_described(
    path: str, said_key: str, recovery_key: str, tag: str
) -> None:
    app = app_with(ROOMS)
    doc = json.loads(asyncapi.dumps(asyncapi.document_for_app(app), "json"))
    positioned = message_validator(doc, said_key)
    recovery = message_validator(doc, recovery_key)
    envelope = tag == "kind"

    def message(kind: str, **body: Any) -> dict[str, Any]:
        return {tag: kind, "payload": body} if envelope else {tag: kind, **body}

    async with AppClient(app) as client:
        async with client.websocket(path) as ws:
            await ws.send_json(message("join", room="feed:1", since="x:0"))
            refused = await ws.expect(**{tag: "recovery"})
            await ws.send_json(message("say", room="feed:1", n=1))
            first = await ws.expect(**{tag: "note" if envelope else "said"})
        async with client.websocket(path) as other:
            await other.send_json(message("say", room="feed:1", n=2))
            await other.send_json(message("say", room="lobby", n=3))  # not a member: no echo
        async with client.websocket(path) as ws:
            await ws.send_json(message("join", room="feed:1", since=first["_pos"]))
            recovered = await ws.expect(**{tag: "recovery"})
            missed = await ws.expect(**{tag: "note" if envelope else "said"})
    body = recovered["payload"] if envelope else recovered
    assert (body["recovered"], body["missed"]) == (True, 1)
    refused_body = refused["payload"] if envelope else refused
    assert (refused_body["recovered"], refused_body["reason"]) == (False, "epoch")
    for instance in (refused, recovered):
        assert list(recovery.iter_errors(instance)) == []
    for instance in (first, missed):
        assert "_pos" in instance
        assert list(positioned.iter_errors(instance)) == []
    assert not positioned.is_valid({**missed, "_pos": "no position"})
    assert not recovery.is_valid({**recovered, "extra": 1})


def test_pachinko_asyncapi_describes_the_files_rooms() -> None:
    result = CliRunner().invoke(
        main,
        ["asyncapi", str(ROOT / "tests" / "apps" / "history.toml"), "--format", "json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["x-pachinko-rooms"]["history"]["brief:*"] == {"history": 100, "historyTtl": 0.5}
    assert sent_keys(doc, "ws_history") == ["pachinko.recovery"]
