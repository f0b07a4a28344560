"""InProcessBackend: one process, nothing to carry (the embedded default)."""

from __future__ import annotations

from collections.abc import Collection

from ..errors import PachinkoError
from .base import BackendHost, ConnectionBackend

__all__ = ["InProcessBackend"]


class InProcessBackend(ConnectionBackend):
    """Rooms, users and broadcasts within this process only.

    Membership is the manager's local index; nothing leaves the process.
    Use :class:`~pachinko.backends.redis.RedisBackend` to serve with several
    worker processes.
    """

    def __init__(self) -> None:
        self._host: BackendHost | None = None

    @property
    def host(self) -> BackendHost:
        if self._host is None:
            raise PachinkoError("InProcessBackend is not started: the manager starts it")
        return self._host

    async def start(self, host: BackendHost) -> None:
        self._host = host

    async def close(self) -> None:
        self._host = None

    async def add_connection(self, conn_id: str, user_id: str | None, first: bool) -> None:
        pass

    async def remove_connection(self, conn_id: str, user_id: str | None, last: bool) -> None:
        pass

    async def join(self, room: str, conn_id: str, first: bool) -> None:
        pass

    async def leave(self, room: str, conn_id: str, last: bool) -> None:
        pass

    async def members(self, room: str) -> set[str]:
        return set(self.host.local_rooms().get(room, ()))

    async def rooms(self, prefix: str) -> list[str]:
        return sorted(
            r for r, ids in self.host.local_rooms().items() if ids and r.startswith(prefix)
        )

    async def user_connections(self, user_id: str) -> set[str]:
        return set(self.host.local_users().get(user_id, ()))

    async def publish_room(self, room: str, text: str | bytes, exclude: Collection[str]) -> int:
        return 0

    async def publish_user(self, user_id: str, text: str | bytes) -> int:
        return 0

    async def publish_connection(self, conn_id: str, text: str | bytes) -> int:
        return 0

    async def publish_all(self, text: str | bytes, exclude: Collection[str]) -> int:
        return 0
