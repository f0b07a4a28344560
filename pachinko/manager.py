"""WebSocketConnectionManager (interim in-process version; see issue 3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from .errors import ConnectionLimitExceeded
from .resource import encode_text

if TYPE_CHECKING:
    from .backends import ConnectionBackend
    from .connection import Connection
    from .settings import Settings

__all__ = ["WebSocketConnectionManager"]


class WebSocketConnectionManager:
    """Registry of this process's connections, rooms and users."""

    def __init__(self, settings: Settings, backend: ConnectionBackend | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self._connections: dict[str, Connection] = {}
        self._rooms: dict[str, set[str]] = {}
        self._users: dict[str, set[str]] = {}

    async def start(self) -> None:
        """Start the backend."""

    async def close(self) -> None:
        """Close the backend."""

    async def connect(self, conn: Connection) -> None:
        """Register ``conn`` before accept; enforce connection limits."""
        limit = self.settings.max_connections
        if limit is not None and len(self._connections) >= limit:
            raise ConnectionLimitExceeded(f"Connection limit reached ({limit})")
        per_user = self.settings.max_connections_per_user
        if (
            per_user is not None
            and conn.user_id is not None
            and len(self._users.get(conn.user_id, ())) >= per_user
        ):
            raise ConnectionLimitExceeded(f"Connection limit per user reached ({per_user})")
        self._connections[conn.id] = conn
        if conn.user_id is not None:
            self._users.setdefault(conn.user_id, set()).add(conn.id)

    def opened(self, conn: Connection) -> None:
        """Mark ``conn`` as accepted."""

    async def disconnect(self, conn: Connection) -> None:
        """Deregister ``conn`` and remove it from its rooms."""
        for room in list(conn.rooms):
            await self.leave_room(conn, room)
        self._connections.pop(conn.id, None)
        if conn.user_id is not None:
            self._users.get(conn.user_id, set()).discard(conn.id)

    async def close_all(self, code: int = 1001, reason: str = "Server shutting down") -> None:
        """Close every local connection."""
        await asyncio.gather(
            *(c.ws.close(code, reason) for c in list(self._connections.values())),
            return_exceptions=True,
        )

    def _conn(self, conn: Connection | str) -> Connection:
        return self._connections[conn] if isinstance(conn, str) else conn

    async def join_room(self, conn: Connection | str, room: str) -> None:
        c = self._conn(conn)
        c.rooms.add(room)
        self._rooms.setdefault(room, set()).add(c.id)

    async def leave_room(self, conn: Connection | str, room: str) -> None:
        c = self._conn(conn)
        c.rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None:
            members.discard(c.id)
            if not members:
                del self._rooms[room]

    async def members(self, room: str) -> set[str]:
        return set(self._rooms.get(room, ()))

    async def rooms(self, prefix: str = "") -> list[str]:
        return sorted(r for r in self._rooms if r.startswith(prefix))

    async def set_user(self, conn: Connection, user_id: str | None) -> None:
        if conn.user_id is not None:
            self._users.get(conn.user_id, set()).discard(conn.id)
        conn.user_id = user_id
        if user_id is not None:
            self._users.setdefault(user_id, set()).add(conn.id)

    async def _send(self, ids: Iterable[str], message: Any, timeout: float | None) -> int:
        text = encode_text(message)
        targets = [self._connections[i] for i in ids if i in self._connections]
        await asyncio.wait_for(
            asyncio.gather(*(t.ws.send_text(text) for t in targets), return_exceptions=True),
            timeout,
        )
        return len(targets)

    async def send_to_connection(self, conn_id: str, message: Any) -> int:
        return await self._send([conn_id], message, None)

    async def send_to_user(self, user_id: str, message: Any) -> int:
        return await self._send(list(self._users.get(user_id, ())), message, None)

    async def broadcast_to_room(
        self, room: str, message: Any, *, exclude: Iterable[str] = (), timeout: float | None = None
    ) -> int:
        excluded = set(exclude)
        ids = [i for i in self._rooms.get(room, ()) if i not in excluded]
        return await self._send(ids, message, timeout)

    async def broadcast_to_all(
        self, message: Any, *, exclude: Iterable[str] = (), timeout: float | None = None
    ) -> int:
        excluded = set(exclude)
        return await self._send(
            [i for i in self._connections if i not in excluded], message, timeout
        )

    async def connections(self, room: str | None = None) -> AsyncIterator[Connection]:
        ids = list(self._rooms.get(room, ())) if room is not None else list(self._connections)
        for i in ids:
            conn = self._connections.get(i)
            if conn is not None:
                yield conn

    def get(self, conn_id: str) -> Connection | None:
        return self._connections.get(conn_id)
