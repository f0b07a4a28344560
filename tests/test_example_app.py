"""The example chat app: routes.example.toml and the same app in Python answer identically."""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path
from typing import Any

import falcon.asgi
import pytest

from examples.chat import app_python
from pachinko.config import create_app
from pachinko.rooms import Position
from tests.helpers import chat_login, eventually, recv_json

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "routes.example.toml"

# (client, message to send or "<close>", {client: messages it receives after this step})
# A join gets the joiner "joined", then pachinko's presence event (its first
# connection in the room, to the whole room: it is a broadcast, kept with a
# position like the messages); the others get the presence event.
SCRIPT: list[tuple[str, Any, dict[str, int]]] = [
    ("ann", {"type": "join", "room": "lobby"}, {"ann": 2}),
    ("bob", {"type": "join", "room": "lobby"}, {"bob": 2, "ann": 1}),
    ("ann", {"type": "typing", "room": "lobby", "active": True}, {"bob": 1}),
    ("ann", {"type": "say", "room": "lobby", "text": "hello"}, {"ann": 1, "bob": 1}),
    ("bob", {"type": "say", "room": "lobby", "text": ""}, {"bob": 1}),
    ("bob", {"type": "join", "room": "bad room!"}, {"bob": 1}),
    # the name comes from the signed token; a message cannot choose it
    ("bob", {"type": "join", "room": "lobby", "name": "Mallory"}, {"bob": 1}),
    ("ann", {"type": "shout", "room": "lobby"}, {"ann": 1}),
    ("ann", "not json", {"ann": 1}),
    ("ann", {"type": "say", "room": "lobby", "text": "hi", "extra": 1}, {"ann": 1}),
    ("ann", {"type": "say", "room": "elsewhere", "text": "hi"}, {"ann": 1}),
    ("ann", {"type": "typing", "room": "lobby"}, {"ann": 1}),
    # a late joiner asks for the kept messages: joined, recovery, 3 kept (two
    # joins, hello), then its own arrival
    ("cat", {"type": "join", "room": "lobby", "last": 50}, {"cat": 6, "ann": 1, "bob": 1}),
    ("bob", "<close>", {"ann": 1, "cat": 1}),
    ("ann", {"type": "leave", "room": "lobby"}, {"cat": 1}),
    ("cat", {"type": "say", "room": "lobby", "text": "alone"}, {"cat": 1}),
]


def _normalize(message: Any) -> Any:
    """Replace timestamps (checked to be RFC 3339) and positions by placeholders."""
    if isinstance(message, dict):
        out = {}
        for key, value in message.items():
            if key == "at":
                datetime.datetime.fromisoformat(value)
                out[key] = "<at>"
            elif key in ("_pos", "position") and value is not None:
                out[key] = f"<epoch>:{Position.parse(value).offset}"
            else:
                out[key] = _normalize(value)
        return out
    if isinstance(message, list):
        return [_normalize(v) for v in message]
    return message


async def converse(app: falcon.asgi.App, conductor_for: Any) -> list[Any]:
    """Run SCRIPT against ``app``; return everything each client received, in order."""
    conductor = await conductor_for(app)
    transcript: list[Any] = []
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Any] = {}
        for name in ("ann", "bob", "cat"):
            clients[name] = await stack.enter_async_context(
                conductor.simulate_ws("/ws/chat", **chat_login(name.title()))
            )
        for sender, message, expect in SCRIPT:
            ws = clients[sender]
            if message == "<close>":
                await ws.close(1000)
            elif isinstance(message, str):
                await ws.send_text(message)
            else:
                await ws.send_text(json.dumps(message))
            for name in sorted(expect):
                for _ in range(expect[name]):
                    transcript.append((name, _normalize(await recv_json(clients[name]))))
        # nothing else is pending for anyone still connected: an undecodable
        # message is answered to its sender only, and frames keep their order
        # (this in-process client never makes a send wait), so the answer is
        # the next message unless something else was sent before it
        for name in ("ann", "cat"):
            await clients[name].send_text("not json")
            reply = await recv_json(clients[name])
            assert reply.get("reason") == "invalid_json", f"{name} got {reply!r} first"
    return transcript


async def test_toml_app_and_python_app_answer_identically(conductor_for: Any) -> None:
    from_toml = await converse(create_app(EXAMPLE), conductor_for)
    from_python = await converse(app_python.create_app(), conductor_for)
    assert from_toml == from_python
    by_step = dict.fromkeys(range(len(from_toml)))
    assert len(by_step) == sum(sum(e.values()) for _, _, e in SCRIPT)
    assert from_toml[:5] == [
        ("ann", {"type": "joined", "room": "lobby", "name": "Ann", "members": {"Ann": "Ann"}}),
        ("ann", presence("join", "Ann", 1)),
        ("ann", presence("join", "Bob", 2)),
        (
            "bob",
            {
                "type": "joined",
                "room": "lobby",
                "name": "Bob",
                "members": {"Ann": "Ann", "Bob": "Bob"},
            },
        ),
        ("bob", presence("join", "Bob", 2)),
    ]
    assert from_toml[8] == (
        "bob",
        {
            "type": "error",
            "reason": "validation_error",
            "detail": "Expected `str` of length >= 1",
            "path": "$.text",
        },
    )
    assert (
        "ann",
        {
            "type": "error",
            "reason": "unknown_type",
            "detail": "Unknown message type 'shout'",
            "path": "$.type",
        },
    ) in from_toml
    cat = [m for n, m in from_toml if n == "cat"]
    assert [m["type"] for m in cat[:6]] == [
        "joined",
        "recovery",
        "presence",
        "presence",
        "message",
        "presence",
    ]
    assert cat[1] == {
        "type": "recovery",
        "room": "lobby",
        "recovered": True,
        "missed": 3,
        "position": "<epoch>:3",
        "reason": None,
    }
    assert cat[4] == {
        "type": "message",
        "room": "lobby",
        "name": "Ann",
        "text": "hello",
        "at": "<at>",
        "_pos": "<epoch>:3",
    }
    assert cat[5] == presence("join", "Cat", 4)
    assert ("ann", presence("leave", "Bob", 5)) in from_toml
    assert ("cat", presence("leave", "Ann", 6)) in from_toml
    assert (
        "bob",
        {
            "type": "error",
            "reason": "validation_error",
            "detail": "Object contains unknown field `name`",
            "path": "$",
        },
    ) in from_toml
    # typing notices go to a room that keeps nothing: no position
    assert ("bob", {"type": "typing", "room": "lobby", "name": "Ann", "active": True}) in from_toml


def presence(event: str, user: str, pos: int) -> dict[str, Any]:
    """pachinko's presence event, as a client of the example gets it (normalized)."""
    return {
        "type": "presence",
        "event": event,
        "room": "lobby",
        "user": user,
        "info": {"name": user},
        "_pos": f"<epoch>:{pos}",
    }


async def test_heartbeat_worker_reaches_every_client(conductor_for: Any, tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("interval = 10.0", "interval = 0.05")
    assert "interval = 0.05" in text
    config = tmp_path / "routes.toml"
    config.write_text(text)
    conductor = await conductor_for(create_app(config))
    async with conductor.simulate_ws("/ws/chat", **chat_login("ann")) as ws:
        beat = await recv_json(ws)
    assert beat["type"] == "heartbeat"
    assert beat["connections"] == 1


async def test_the_page_is_served_next_to_the_websocket_routes(conductor_for: Any) -> None:
    conductor = await conductor_for(create_app(EXAMPLE))
    page = await conductor.simulate_get("/")
    assert page.status_code == 200
    assert "/ws/chat" in page.text


async def test_the_python_app_exported_to_toml_answers_identically(
    conductor_for: Any, tmp_path: Path
) -> None:
    from pachinko import runtime_of
    from pachinko.config import export_toml

    python_app = app_python.create_app(page=False)
    runtime = runtime_of(python_app)
    text = export_toml(runtime.mounts[0].router, prefix="/ws", settings=runtime.settings)
    assert 'base = "examples.chat.app_python:ChatResource"' in text
    assert 'handler = "examples.chat.app_python:ChatResource.join"' in text
    assert "[types.Join.fields.room]" in text
    # The router does not know the app's services, authentication and rooms: declare them.
    config = tmp_path / "routes.toml"
    config.write_text(
        text.replace(
            'prefix = "/ws"', 'prefix = "/ws"\nauthenticate = "examples.chat.auth:authenticate"'
        )
        + '\n[services.chat]\nfactory = "examples.chat.handlers:ChatRooms"\n'
        + '\n[rooms."*"]\nhistory = 50\nhistory_ttl = 600\npresence = true\n'
        + '\n[rooms."typing:*"]\n'
    )
    from_export = await converse(create_app(config), conductor_for)
    assert from_export == await converse(app_python.create_app(page=False), conductor_for)


def _both_apps() -> list[falcon.asgi.App]:
    return [create_app(EXAMPLE), app_python.create_app(page=False)]


@pytest.mark.parametrize("which", ["toml", "python"])
async def test_a_room_ends_with_its_last_member_and_its_history_with_its_ttl(
    conductor_for: Any, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Joining ever new rooms does not grow the server: presence goes with the last
    member, the kept messages (50 per room) 600 s after the room's last broadcast."""
    from pachinko import runtime_of

    now = [1000.0]
    monkeypatch.setattr("pachinko.backends.inprocess.monotonic", lambda: now[0])
    app = _both_apps()[which == "python"]
    conductor = await conductor_for(app)
    runtime = runtime_of(app)
    async with (
        conductor.simulate_ws("/ws/chat", **chat_login("Ann")) as ann,
        conductor.simulate_ws("/ws/chat", **chat_login("Bob")) as bob,
    ):
        for n in range(12):  # 37 messages: within the example's rate burst of 40
            room = f"room-{n}"
            await ann.send_text(json.dumps({"type": "join", "room": room}))
            assert (await recv_json(ann))["type"] == "joined"
            assert (await recv_json(ann))["type"] == "presence"
            await ann.send_text(json.dumps({"type": "say", "room": room, "text": "x" * 1000}))
            assert (await recv_json(ann))["type"] == "message"
            await ann.send_text(json.dumps({"type": "leave", "room": room}))
        # one connection's messages are handled in order: this answer comes
        # after every leave was handled
        await ann.send_text(json.dumps({"type": "say", "room": "room-11", "text": "?"}))
        assert (await recv_json(ann))["reason"] == "not_joined"
        backend = runtime.manager.backend
        # presence ends with the rooms' last member (once the leaves linger no more)
        await eventually(lambda: not backend._info)  # type: ignore[attr-defined]
        kept = backend._kept  # type: ignore[attr-defined]
        assert len(kept) == 12  # within their TTL, the rooms keep their messages
        await bob.send_text(json.dumps({"type": "join", "room": "room-0"}))
        assert (await recv_json(bob))["members"] == {"Bob": "Bob"}
        assert (await recv_json(bob))["type"] == "presence"
        now[0] += 601
        await bob.send_text(json.dumps({"type": "say", "room": "room-0", "text": "later"}))
        # room-0's 5th broadcast (ann joined, said, left; bob joined): the same history
        assert (await recv_json(bob))["_pos"].endswith(":5")
        assert sorted(kept) == ["room-0"]  # the others were forgotten


@pytest.mark.parametrize("which", ["toml", "python"])
async def test_a_member_is_in_ten_rooms_at_most(conductor_for: Any, which: str) -> None:
    conductor = await conductor_for(_both_apps()[which == "python"])
    async with conductor.simulate_ws("/ws/chat", **chat_login("Ann")) as ann:
        for n in range(10):
            await ann.send_text(json.dumps({"type": "join", "room": f"r{n}"}))
            assert (await recv_json(ann))["type"] == "joined"
            assert (await recv_json(ann))["type"] == "presence"
        await ann.send_text(json.dumps({"type": "join", "room": "r10"}))
        assert await recv_json(ann) == {
            "type": "error",
            "reason": "too_many_rooms",
            "detail": "leave a room first (at most 10)",
            "path": "$.room",
        }
        # joining a room again is not a new room (the members again)
        await ann.send_text(json.dumps({"type": "join", "room": "r3"}))
        assert await recv_json(ann) == {
            "type": "joined",
            "room": "r3",
            "name": "Ann",
            "members": {"Ann": "Ann"},
        }
        await ann.send_text(json.dumps({"type": "leave", "room": "r0"}))
        await ann.send_text(json.dumps({"type": "join", "room": "r10"}))
        assert (await recv_json(ann))["room"] == "r10"
