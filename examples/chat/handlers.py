"""Handlers of the example chat app (``routes.example.toml``).

Plain async functions: each receives the per-connection resource, the
Falcon WebSocket and the validated payload. Who is talking comes from the
signed token checked at the handshake (:mod:`examples.chat.auth`):
``resource.user.info["name"]``. Who is in a room is pachinko's presence
(``[rooms."*"] presence = true``): the library announces joins and leaves
(once per user, across processes) and lists the members, so the example
keeps no member list of its own.

The ``chat`` service (one per app, created at startup) keeps the last N
messages of each room while it has members in this process.

NOTE: the history lives in the process: with several server processes (a
Redis backend) each keeps its own. Members, presence and broadcasts cross
processes.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import deque
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
]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ChatRooms:
    """Message history per room, while the room has members in this process.

    Memory is bounded: a room's history is forgotten when its last local
    member leaves (a client joining ever new rooms cannot grow the server),
    and a connection is a member of ``rooms_per_member`` rooms at most.

    Args:
        history: Messages kept per room.
        rooms_per_member: Rooms a connection may be in at once.
    """

    def __init__(self, history: int = 50, rooms_per_member: int = 10) -> None:
        self.history_size = history
        self.rooms_per_member = rooms_per_member
        self.members: dict[str, set[str]] = {}
        self.history: dict[str, deque[dict[str, Any]]] = {}

    def add(self, room: str, conn_id: str) -> None:
        """Count a local member of ``room``."""
        self.members.setdefault(room, set()).add(conn_id)

    def remove(self, room: str, conn_id: str) -> None:
        """Forget a local member; the room's history ends with its last one."""
        members = self.members.get(room, set())
        members.discard(conn_id)
        if not members:
            self.members.pop(room, None)
            self.history.pop(room, None)

    def record(self, room: str, entry: dict[str, Any]) -> None:
        """Keep ``entry`` in the history of a room with members (the last N only)."""
        if room in self.members:
            self.history.setdefault(room, deque(maxlen=self.history_size)).append(entry)

    def recent(self, room: str) -> list[dict[str, Any]]:
        """The room's history, oldest first."""
        return list(self.history.get(room, ()))


def _name(resource: Any) -> str:
    name: str = resource.user.info["name"]
    return name


async def on_connect(resource: Any, req: Any, ws: Any, **params: Any) -> bool:
    """Accept every signed-in user; remember the rooms this connection joins."""
    resource.state["rooms"] = set()
    return True


async def on_disconnect(resource: Any, ws: Any, close_code: int) -> None:
    """Forget this connection's rooms (pachinko announces the leaves)."""
    for room in resource.state.get("rooms", ()):
        resource.chat.remove(room, resource.connection.id)


async def join(resource: Any, ws: Any, payload: Any) -> None:
    """Join a room: ``joined`` (members and history) to the joiner.

    pachinko sends the ``presence`` join event to the room (the joiner
    included) when this is the user's first connection in it.
    """
    rooms: set[str] = resource.state["rooms"]
    room = payload.room
    if room not in rooms and len(rooms) >= resource.chat.rooms_per_member:
        await resource.send(
            {
                "type": "error",
                "reason": "too_many_rooms",
                "detail": f"leave a room first (at most {resource.chat.rooms_per_member})",
                "path": "$.room",
            }
        )
        return
    await resource.join_room(room)
    rooms.add(room)
    resource.chat.add(room, resource.connection.id)
    present = await resource.presence(room)
    await resource.send(
        {
            "type": "joined",
            "room": room,
            "name": _name(resource),
            "members": {user: info.get("name", user) for user, info in present.items()},
            "history": resource.chat.recent(room),
        }
    )


async def leave(resource: Any, ws: Any, payload: Any) -> None:
    """Leave a room (pachinko announces it when the user's last connection leaves)."""
    rooms: set[str] = resource.state["rooms"]
    if payload.room in rooms:
        rooms.discard(payload.room)
        resource.chat.remove(payload.room, resource.connection.id)
        await resource.leave_room(payload.room)


async def say(resource: Any, ws: Any, payload: Any) -> None:
    """Send a message to a room, the sender included; keep it in the history."""
    if payload.room not in resource.state["rooms"]:
        await resource.send(
            {
                "type": "error",
                "reason": "not_joined",
                "detail": f"join room {payload.room!r} first",
                "path": "$.room",
            }
        )
        return
    entry = {"name": _name(resource), "text": payload.text, "at": _now()}
    resource.chat.record(payload.room, entry)
    await resource.broadcast_to_room(
        payload.room, {"type": "message", "room": payload.room, **entry}, exclude_self=False
    )


async def typing(resource: Any, ws: Any, payload: Any) -> None:
    """Tell the others in a room that this member is (not) typing."""
    if payload.room in resource.state["rooms"]:
        await resource.broadcast_to_room(
            payload.room,
            {
                "type": "typing",
                "room": payload.room,
                "name": _name(resource),
                "active": payload.active,
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
