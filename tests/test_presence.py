"""Presence (SPEC §8) in one process: join/leave events once per user, member lists.

Across processes and with a process killed: tests/test_presence_redis.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import pachinko
from pachinko import RoomPolicy, Settings, User, WebSocketRouter, asyncapi
from tests.apps.presence import Presence
from tests.helpers import make_app, recv_json

USERS = {
    "ann": User("ann", {"name": "Ann"}),
    "bob": User("bob", {"name": "Bob"}),
}


class Room(Presence):
    """The presence test app's resource (join, leave, who), and a rename."""

    async def on_rename(self, ws: Any, payload: Any) -> None:
        try:
            await self.manager.set_user(self.connection, payload["to"])
        except pachinko.PachinkoError as ex:
            await self.send({"type": "refused", "detail": str(ex)})
        else:
            await self.send({"type": "renamed"})


def presence_app(linger: float = 0.0, authenticate: bool = True) -> Any:
    router = WebSocketRouter()
    router.add_route("/room", Room)

    def from_query(req: Any) -> User | None:
        return USERS.get(req.get_param("user") or "")

    return make_app(
        router,
        settings=Settings(presence_linger=linger),
        authenticate=from_query if authenticate else None,
        rooms={"lobby": RoomPolicy(presence=True), "game:*": RoomPolicy(presence=True)},
    )


def event(kind: str, user: str, room: str = "lobby") -> dict[str, Any]:
    return {
        "type": "presence",
        "event": kind,
        "room": room,
        "user": user,
        "info": USERS[user].info,
    }


async def send(ws: Any, message: str) -> None:
    await ws.send_text(message)


async def join(ws: Any, room: str = "lobby") -> None:
    await ws.send_text(f'{{"type": "join", "room": "{room}"}}')


async def who(ws: Any, room: str = "lobby") -> dict[str, Any]:
    await ws.send_text(f'{{"type": "who", "room": "{room}"}}')
    reply = await recv_json(ws)
    assert reply["type"] == "who", reply
    members: dict[str, Any] = reply["members"]
    return members


async def test_one_join_and_one_leave_per_user_however_many_tabs(conductor_for: Any) -> None:
    conductor = await conductor_for(presence_app())
    async with conductor.simulate_ws("/ws/room", query_string="user=bob") as bob:
        await join(bob)
        assert await recv_json(bob) == event("join", "bob")  # its own arrival
        assert await recv_json(bob) == {"type": "joined", "room": "lobby"}
        async with conductor.simulate_ws("/ws/room", query_string="user=ann") as tab1:
            await join(tab1)
            assert await recv_json(bob) == event("join", "ann")
            async with conductor.simulate_ws("/ws/room", query_string="user=ann") as tab2:
                await join(tab2)
                assert await recv_json(tab2) == {"type": "joined", "room": "lobby"}
                assert await who(bob) == {"ann": {"name": "Ann"}, "bob": {"name": "Bob"}}
            # the second tab closed: ann is still there, nothing was announced
            assert await who(bob) == {"ann": {"name": "Ann"}, "bob": {"name": "Bob"}}
        # the last tab closed: one leave (the who reply shows nothing came between)
        assert await recv_json(bob) == event("leave", "ann")
        assert await who(bob) == {"bob": {"name": "Bob"}}


async def test_leaving_the_room_announces_the_leave(conductor_for: Any) -> None:
    conductor = await conductor_for(presence_app())
    async with (
        conductor.simulate_ws("/ws/room", query_string="user=bob") as bob,
        conductor.simulate_ws("/ws/room", query_string="user=ann") as ann,
    ):
        await join(bob)
        await recv_json(bob)
        await recv_json(bob)
        await join(ann, "game:1")  # another presence room: bob hears nothing of it
        await join(ann)
        assert await recv_json(bob) == event("join", "ann")
        await ann.send_text('{"type": "leave", "room": "lobby"}')
        assert await recv_json(bob) == event("leave", "ann")
        assert await who(bob, "game:1") == {"ann": {"name": "Ann"}}


async def test_a_room_without_presence_sends_no_event(conductor_for: Any) -> None:
    conductor = await conductor_for(presence_app())
    async with (
        conductor.simulate_ws("/ws/room", query_string="user=bob") as bob,
        conductor.simulate_ws("/ws/room", query_string="user=ann") as ann,
    ):
        await join(bob, "plain")
        assert await recv_json(bob) == {"type": "joined", "room": "plain"}
        await join(ann, "plain")
        await recv_json(ann)
        assert await who(bob, "plain") == {}
        # the next message bob gets is its own reply: no presence event came first
        await join(bob, "plain2")
        assert await recv_json(bob) == {"type": "joined", "room": "plain2"}


async def test_a_flapping_client_makes_no_event_storm(conductor_for: Any) -> None:
    # with a linger, a user that comes back before its leave is confirmed
    # announces neither the leave nor the join again
    conductor = await conductor_for(presence_app(linger=0.5))
    async with conductor.simulate_ws("/ws/room", query_string="user=bob") as bob:
        await join(bob)
        await recv_json(bob)
        await recv_json(bob)
        for _ in range(50):
            async with conductor.simulate_ws("/ws/room", query_string="user=ann") as ann:
                await join(ann)
                await recv_json(ann)  # the first message only; the rest is dropped
        # the first connection announced ann; the 49 others nothing; the leave
        # comes once, after the linger
        assert await recv_json(bob) == event("join", "ann")
        assert await recv_json(bob) == event("leave", "ann")
        assert await who(bob) == {"bob": {"name": "Bob"}}


async def test_shutdown_confirms_lingering_leaves(conductor_for: Any) -> None:
    app = presence_app(linger=60.0)
    conductor = await conductor_for(app)
    manager = pachinko.runtime_of(app).manager
    async with conductor.simulate_ws("/ws/room", query_string="user=ann") as ann:
        await join(ann)
        await recv_json(ann)
    assert await manager.presence("lobby") == {"ann": {"name": "Ann"}}  # lingering
    await manager.close()
    assert await manager.backend.presence_members("lobby") == {}


async def test_the_user_cannot_change_while_in_a_presence_room(conductor_for: Any) -> None:
    conductor = await conductor_for(presence_app(authenticate=False))
    async with conductor.simulate_ws("/ws/room") as ws:
        await send(ws, '{"type": "rename", "to": "carol"}')
        assert await recv_json(ws) == {"type": "renamed"}
        await join(ws)
        assert (await recv_json(ws))["user"] == "carol"
        await recv_json(ws)
        await send(ws, '{"type": "rename", "to": "dave"}')
        refused = await recv_json(ws)
        assert refused["type"] == "refused"
        assert "in a presence room (lobby); leave them first" in refused["detail"]
        assert await who(ws) == {"carol": {}}


async def test_connections_without_a_user_are_not_listed(conductor_for: Any) -> None:
    conductor = await conductor_for(presence_app(authenticate=False))
    async with conductor.simulate_ws("/ws/room") as ws:
        await join(ws)
        assert await recv_json(ws) == {"type": "joined", "room": "lobby"}
        assert await who(ws) == {}


@pytest.mark.parametrize("linger", [0.0, 0.2])
async def test_many_users_join_and_leave_once_each(conductor_for: Any, linger: float) -> None:
    for name in ("u1", "u2", "u3"):
        USERS[name] = User(name, {"name": name.upper()})
    conductor = await conductor_for(presence_app(linger=linger))
    async with conductor.simulate_ws("/ws/room", query_string="user=bob") as bob:
        await join(bob)
        await recv_json(bob)
        await recv_json(bob)

        async def visit(name: str) -> None:
            async with conductor.simulate_ws("/ws/room", query_string=f"user={name}") as ws:
                await join(ws)
                while (await recv_json(ws))["type"] != "joined":
                    pass

        await asyncio.gather(*(visit(n) for n in ("u1", "u2", "u3")))
        seen: list[tuple[str, str]] = []
        while len(seen) < 6:
            message = await recv_json(bob)
            seen.append((message["event"], message["user"]))
        assert sorted(seen) == sorted(
            [("join", u) for u in ("u1", "u2", "u3")] + [("leave", u) for u in ("u1", "u2", "u3")]
        )
        assert await who(bob) == {"bob": {"name": "Bob"}}


SCHEMA_FILE = Path(__file__).parent / "fixtures" / "asyncapi-3.0.0-schema.json"


def test_the_presence_event_is_in_the_asyncapi_document() -> None:
    app = presence_app()
    doc = asyncapi.document_for_app(app)
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    assert [e.message for e in validator.iter_errors(doc)] == []
    channel = next(iter(doc["channels"].values()))
    assert channel["messages"]["send.presence"] == {"$ref": "#/components/messages/presence"}
    payload = jsonschema.Draft7Validator({**doc, "$ref": "#/components/messages/presence/payload"})
    sent = {"type": "presence", "event": "join", "room": "lobby", "user": "ann", "info": {}}
    assert payload.is_valid(sent)
    assert not payload.is_valid({**sent, "event": "wave"})
    assert not payload.is_valid({k: v for k, v in sent.items() if k != "user"})
    # an app without presence rooms does not describe it
    plain = asyncapi.document_for_app(make_app(WebSocketRouter()))
    assert "presence" not in plain["components"]["messages"]


async def test_a_leave_ends_the_presence_its_join_started_after_a_policy_change(
    conductor_for: Any,
) -> None:
    # a reload may turn presence off: members who joined with it still leave with it
    app = presence_app()
    conductor = await conductor_for(app)
    manager = pachinko.runtime_of(app).manager
    async with conductor.simulate_ws("/ws/room", query_string="user=bob") as bob:
        await join(bob)
        await recv_json(bob)
        await recv_json(bob)
        async with conductor.simulate_ws("/ws/room", query_string="user=ann") as ann:
            await join(ann)
            assert await recv_json(bob) == event("join", "ann")
            manager.set_room_policies({})
        assert await recv_json(bob) == event("leave", "ann")
        assert await manager.backend.presence_members("lobby") == {"bob": '{"name":"Bob"}'}
