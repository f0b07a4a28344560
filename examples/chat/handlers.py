"""Handlers of the example chat app (``routes.example.toml``).

Plain async functions: each receives the per-connection resource, the
Falcon WebSocket and the validated payload. The ``chat`` service (one per
app, created at startup) keeps room members; the resource gets it as
``resource.chat``. Message history is the library's (``[rooms."*"]`` in
routes.example.toml): every broadcast to a room carries its position, and a
join with ``since`` (a page that reconnects) or ``last`` (a first join)
gets the kept messages after a ``recovery`` message.

NOTE: members live in the process: with several server processes (a Redis
backend) each keeps its own. Broadcasts and history cross processes.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

__all__ = [
    "ChatRooms",
    "heartbeat",
    "join",
    "leave",
    "on_connect",
    "on_disconnect",
    "say",
    "typing",
    "typing_room",
]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ChatRooms:
    """Room members (connection id → name).

    Memory is bounded: a room is forgotten when its last member leaves (a
    client joining ever new rooms cannot grow the server), and a connection
    is a member of ``rooms_per_member`` rooms at most. (The library bounds
    the rooms' history: ``history`` messages per room, forgotten
    ``history_ttl`` seconds after the last one.)

    Args:
        rooms_per_member: Rooms a connection may be in at once.
    """

    def __init__(self, rooms_per_member: int = 10) -> None:
        self.rooms_per_member = rooms_per_member
        self.members: dict[str, dict[str, str]] = {}

    def add(self, room: str, conn_id: str, name: str) -> list[str]:
        """Add a member; return the room's member names."""
        self.members.setdefault(room, {})[conn_id] = name
        return self.names(room)

    def remove(self, room: str, conn_id: str) -> str | None:
        """Remove a member; return its name (``None`` if it was not there)."""
        members = self.members.get(room, {})
        name = members.pop(conn_id, None)
        if not members:
            self.members.pop(room, None)  # the room ends with its last member
        return name

    def names(self, room: str) -> list[str]:
        """Member names of ``room``, sorted."""
        return sorted(self.members.get(room, {}).values())


async def on_connect(resource: Any, req: Any, ws: Any, **params: Any) -> bool:
    """Accept everyone; remember the rooms this connection joins."""
    resource.state["rooms"] = {}
    return True


async def on_disconnect(resource: Any, ws: Any, close_code: int) -> None:
    """Leave every room (presence ``leave`` to the others)."""
    for room in list(resource.state.get("rooms", {})):
        await _leave(resource, room)


def typing_room(room: str) -> str:
    """Where typing notices of ``room`` go: a room that keeps no history."""
    return f"typing:{room}"


async def join(resource: Any, ws: Any, payload: Any) -> None:
    """Join a room: ``joined`` to the joiner, then ``recovery`` and what it
    missed (with ``since``) or the last kept messages (with ``last``), and
    ``presence`` to the others."""
    rooms: dict[str, str] = resource.state["rooms"]
    room, name = payload.room, payload.name
    if room in rooms:
        await _leave(resource, room)
    elif len(rooms) >= resource.chat.rooms_per_member:
        await resource.send(
            {
                "type": "error",
                "reason": "too_many_rooms",
                "detail": f"leave a room first (at most {resource.chat.rooms_per_member})",
                "path": "$.room",
            }
        )
        return
    rooms[room] = name
    members = resource.chat.add(room, resource.connection.id, name)
    await resource.send({"type": "joined", "room": room, "name": name, "members": members})
    await resource.join_room(typing_room(room))
    # NOTE: with since or last, the connection gets a "recovery" message and
    #   the kept messages, then the live stream: nothing lost, nothing twice.
    await resource.join_room(
        room, since=payload.since, last=payload.last if payload.since is None else None
    )
    await resource.broadcast_to_room(
        room,
        {
            "type": "presence",
            "room": room,
            "name": name,
            "event": "join",
            "members": members,
        },
    )


async def leave(resource: Any, ws: Any, payload: Any) -> None:
    """Leave a room (``presence`` to the others)."""
    if payload.room in resource.state["rooms"]:
        await _leave(resource, payload.room)


async def say(resource: Any, ws: Any, payload: Any) -> None:
    """Send a message to a room, the sender included (the room keeps it)."""
    name = resource.state["rooms"].get(payload.room)
    if name is None:
        await resource.send(
            {
                "type": "error",
                "reason": "not_joined",
                "detail": f"join room {payload.room!r} first",
                "path": "$.room",
            }
        )
        return
    message = {"type": "message", "room": payload.room, "name": name, "text": payload.text}
    await resource.broadcast_to_room(payload.room, {**message, "at": _now()}, exclude_self=False)


async def typing(resource: Any, ws: Any, payload: Any) -> None:
    """Tell the others in a room that this member is (not) typing (not kept)."""
    name = resource.state["rooms"].get(payload.room)
    if name is not None:
        await resource.broadcast_to_room(
            typing_room(payload.room),
            {
                "type": "typing",
                "room": payload.room,
                "name": name,
                "active": payload.active,
            },
        )


async def _leave(resource: Any, room: str) -> None:
    name = resource.state["rooms"].pop(room, None)
    resource.chat.remove(room, resource.connection.id)
    await resource.leave_room(room)
    await resource.leave_room(typing_room(room))
    if name is not None:
        await resource.broadcast_to_room(
            room,
            {
                "type": "presence",
                "room": room,
                "name": name,
                "event": "leave",
                "members": resource.chat.names(room),
            },
        )


async def heartbeat(manager: Any, interval: float = 10.0) -> None:
    """Every ``interval`` seconds, tell every client the time and connection count.

    Each server process runs this worker and counts its own connections, so
    it sends to its own clients only (``local=True``): with several processes
    behind Redis a client still gets one heartbeat per interval.
    """
    while True:
        await asyncio.sleep(interval)
        count = 0
        async for _ in manager.connections():
            count += 1
        await manager.broadcast_to_all(
            {"type": "heartbeat", "at": _now(), "connections": count}, local=True
        )
