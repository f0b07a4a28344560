"""Handlers of the example chat app (``routes.example.toml``).

Plain async functions: each receives the per-connection resource, the
Falcon WebSocket and the validated payload. What the example keeps itself
is small; the rest is the library's:

- who is talking: the signed token checked at the handshake
  (:mod:`examples.chat.auth`), ``resource.user.info["name"]``;
- who is in a room: presence (``presence = true`` in ``[rooms."*"]``):
  pachinko announces joins and leaves (once per user, across processes)
  and lists the members;
- message history: every broadcast to a room carries its position, and a
  join with ``since`` (a page that reconnects) or ``last`` (a first join)
  gets the kept messages after a ``recovery`` message.

The ``chat`` service (one per app) only bounds the rooms a connection may
be in.
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
    "say",
    "typing",
    "typing_room",
]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ChatRooms:
    """The chat's one rule of its own: a connection is in ``rooms_per_member`` rooms at most.

    (The library bounds the rest: presence entries end with their
    connections, history keeps ``history`` messages per room for
    ``history_ttl`` seconds.)

    Args:
        rooms_per_member: Rooms a connection may be in at once.
    """

    def __init__(self, rooms_per_member: int = 10) -> None:
        self.rooms_per_member = rooms_per_member


def _name(resource: Any) -> str:
    name: str = resource.user.info["name"]
    return name


async def on_connect(resource: Any, req: Any, ws: Any, **params: Any) -> bool:
    """Accept every signed-in user; remember the rooms this connection joins."""
    resource.state["rooms"] = set()
    return True


def typing_room(room: str) -> str:
    """Where typing notices of ``room`` go: a room that keeps no history."""
    return f"typing:{room}"


async def join(resource: Any, ws: Any, payload: Any) -> None:
    """Join a room: ``joined`` (the members) to the joiner, then ``recovery`` and
    what it missed (with ``since``) or the last kept messages (with ``last``).

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
    present = await resource.presence(room)
    members = {user: info.get("name", user) for user, info in present.items()}
    members[resource.user.id] = _name(resource)
    await resource.send(
        {"type": "joined", "room": room, "name": _name(resource), "members": members}
    )
    if room in rooms:
        return  # joined already: the members again
    rooms.add(room)
    await resource.join_room(typing_room(room))
    # NOTE: with since or last, the connection gets a "recovery" message and
    #   the kept messages, then the live stream: nothing lost, nothing twice.
    await resource.join_room(
        room, since=payload.since, last=payload.last if payload.since is None else None
    )


async def leave(resource: Any, ws: Any, payload: Any) -> None:
    """Leave a room (pachinko announces it when the user's last connection leaves)."""
    rooms: set[str] = resource.state["rooms"]
    if payload.room in rooms:
        rooms.discard(payload.room)
        await resource.leave_room(payload.room)
        await resource.leave_room(typing_room(payload.room))


async def say(resource: Any, ws: Any, payload: Any) -> None:
    """Send a message to a room, the sender included (the room keeps it)."""
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
    message = {
        "type": "message",
        "room": payload.room,
        "name": _name(resource),
        "text": payload.text,
    }
    await resource.broadcast_to_room(payload.room, {**message, "at": _now()}, exclude_self=False)


async def typing(resource: Any, ws: Any, payload: Any) -> None:
    """Tell the others in a room that this member is (not) typing (not kept)."""
    if payload.room in resource.state["rooms"]:
        await resource.broadcast_to_room(
            typing_room(payload.room),
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
