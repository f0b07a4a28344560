"""Per-room join authorization (SPEC §8): every way of joining passes the checks.

A refused join is an error reply with reason ``forbidden``: never a silent
no-op, never a close.
"""

from __future__ import annotations

from typing import Any

import pytest

import pachinko
from pachinko import JoinRefused, RoomPolicy, User, WebSocketResource, WebSocketRouter
from tests.helpers import make_app, recv_json

CALLS: list[tuple[str, str, str | None]] = []


async def is_member(resource: Any, room: str) -> bool:
    """The TOML-style policy check: ``team:<name>`` needs the user in that team."""
    CALLS.append(("policy", room, resource.user_id))
    user = resource.connection.user
    return user is not None and room.removeprefix("team:") in user.info.get("teams", ())


class Rooms(WebSocketResource):
    async def after_connect(self, ws: Any) -> None:
        auto = self.connection.params.get("auto")
        if auto:
            await self.join_room(auto)  # a join from a hook
            await self.send({"type": "auto-joined", "room": auto})

    def authorize_join(self, room: str) -> Any:
        return self._check(room)

    async def _check(self, room: str) -> bool:
        CALLS.append(("resource", room, self.user_id))
        if room == "vip":
            raise JoinRefused(room, "members only")
        return not room.startswith("secret")

    async def on_join(self, ws: Any, payload: Any) -> None:
        await self.join_room(payload["room"])
        await self.send({"type": "joined", "room": payload["room"]})

    async def on_rooms(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "rooms", "rooms": sorted(self.connection.rooms)})


def authorize_app(**install: Any) -> Any:
    CALLS.clear()
    router = WebSocketRouter()
    router.add_route("/rooms", Rooms)
    router.add_route("/rooms/{auto}", Rooms)

    async def no_banned(resource: Any, room: str) -> bool:
        CALLS.append(("router", room, resource.user_id))
        return resource.user_id != "banned"

    router.add_hook("authorize_join", no_banned)
    users = {
        "ann": User("ann", {"teams": ["blue"]}),
        "banned": User("banned", {"teams": ["blue"]}),
    }
    return make_app(
        router,
        authenticate=lambda req: users.get(req.get_param("user") or "ann"),
        rooms={"team:*": RoomPolicy(authorize=is_member)},
        **install,
    )


def forbidden(room: str, reason: str = "not allowed") -> dict[str, Any]:
    return {
        "type": "error",
        "reason": "forbidden",
        "detail": f"join of room {room!r} refused: {reason}",
        "path": None,
    }


async def join(ws: Any, room: str) -> Any:
    await ws.send_text(f'{{"type": "join", "room": "{room}"}}')
    return await recv_json(ws)


async def test_every_check_runs_for_a_join_from_a_handler(conductor_for: Any) -> None:
    conductor = await conductor_for(authorize_app())
    async with conductor.simulate_ws("/ws/rooms") as ws:
        assert await join(ws, "team:blue") == {"type": "joined", "room": "team:blue"}
        # the room's policy, then the router's hook, then the resource's method
        assert CALLS == [
            ("policy", "team:blue", "ann"),
            ("router", "team:blue", "ann"),
            ("resource", "team:blue", "ann"),
        ]
        assert await join(ws, "team:red") == forbidden("team:red")
        assert await join(ws, "secret-plans") == forbidden("secret-plans")
        assert await join(ws, "vip") == forbidden("vip", "members only")
        # refused joins changed nothing, and the connection is still open
        await ws.send_text('{"type": "rooms"}')
        assert await recv_json(ws) == {"type": "rooms", "rooms": ["team:blue"]}


async def test_a_room_no_policy_names_is_open_to_every_check_that_passes(
    conductor_for: Any,
) -> None:
    conductor = await conductor_for(authorize_app())
    async with conductor.simulate_ws("/ws/rooms") as ws:
        assert await join(ws, "lobby") == {"type": "joined", "room": "lobby"}
        assert [c[0] for c in CALLS] == ["router", "resource"]  # no policy for "lobby"
    async with conductor.simulate_ws("/ws/rooms", query_string="user=banned") as ws:
        assert await join(ws, "lobby") == forbidden("lobby")


async def test_a_join_from_a_hook_is_checked_and_answered(conductor_for: Any) -> None:
    conductor = await conductor_for(authorize_app())
    async with conductor.simulate_ws("/ws/rooms/team:red") as ws:
        assert await recv_json(ws) == forbidden("team:red")
        await ws.send_text('{"type": "rooms"}')
        assert await recv_json(ws) == {"type": "rooms", "rooms": []}
    async with conductor.simulate_ws("/ws/rooms/team:blue") as ws:
        assert await recv_json(ws) == {"type": "auto-joined", "room": "team:blue"}


async def test_a_join_through_the_manager_is_checked(conductor_for: Any) -> None:
    app = authorize_app()
    conductor = await conductor_for(app)
    manager = pachinko.runtime_of(app).manager
    async with conductor.simulate_ws("/ws/rooms") as ws:
        await ws.send_text('{"type": "rooms"}')
        await recv_json(ws)
        (conn_id,) = [c.id async for c in manager.connections()]
        with pytest.raises(JoinRefused) as info:
            await manager.join_room(conn_id, "team:green")
        assert (info.value.room, info.value.reason) == ("team:green", "not allowed")
        assert isinstance(info.value, PermissionError)
        await manager.join_room(conn_id, "team:blue")
        await ws.send_text('{"type": "rooms"}')
        assert await recv_json(ws) == {"type": "rooms", "rooms": ["team:blue"]}


async def test_an_envelope_resource_gets_the_envelope_error(conductor_for: Any) -> None:
    class Env(WebSocketResource):
        wire = "envelope"

        async def authorize_join(self, room: str) -> bool:
            return False

        async def on_join(self, ws: Any, payload: Any) -> None:
            await self.join_room(payload["room"])

    router = WebSocketRouter()
    router.add_route("/env", Env)
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/env") as ws:
        await ws.send_text('{"type": "join", "payload": {"room": "x"}}')
        assert await recv_json(ws) == {
            "type": "error",
            "payload": {
                "reason": "forbidden",
                "detail": "join of room 'x' refused: not allowed",
                "path": None,
            },
        }


async def test_joins_without_any_check_pay_no_lookup(conductor_for: Any) -> None:
    class Plain(WebSocketResource):
        async def on_join(self, ws: Any, payload: Any) -> None:
            await self.join_room(payload["room"])
            await self.send({"type": "joined"})

    router = WebSocketRouter()
    router.add_route("/plain", Plain)
    app = make_app(router)
    conductor = await conductor_for(app)
    manager = pachinko.runtime_of(app).manager
    assert not manager._authorize_rooms
    async with conductor.simulate_ws("/ws/plain") as ws:
        await ws.send_text('{"type": "join", "room": "r"}')
        assert await recv_json(ws) == {"type": "joined"}
        conn = next(iter(manager._connections.values()))
        assert conn.authorizers == ()


async def test_a_refused_join_in_a_request_is_an_error_reply_with_its_id(
    conductor_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Asking(WebSocketResource):
        async def authorize_join(self, room: str) -> bool:
            return room != "closed"

        @pachinko.handles_message("enter", reply=dict)
        async def enter(self, ws: Any, payload: Any) -> Any:
            await self.join_room(payload["room"])
            return {"type": "entered", "room": payload["room"]}

    router = WebSocketRouter()
    router.add_route("/ask", Asking)
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/ask") as ws:
        await ws.send_text('{"type": "enter", "room": "closed", "id": 7}')
        reply = await recv_json(ws)
        assert (reply["type"], reply["reason"], reply["id"]) == ("error", "forbidden", 7)
        assert reply["detail"] == "join of room 'closed' refused: not allowed"
        await ws.send_text('{"type": "enter", "room": "open", "id": 8}')
        assert await recv_json(ws) == {"id": 8, "type": "entered", "room": "open"}
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # a refusal, not a crash
