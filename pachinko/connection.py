"""Connection: the framework-owned object behind every accepted WebSocket."""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from falcon.asgi import WebSocket

    from .manager import WebSocketConnectionManager
    from .resource import WebSocketResource

__all__ = ["Connection"]


class Connection:
    """One WebSocket connection, from handshake to close.

    Created by the serve loop for every handshake that matched a route; the
    manager registers it on accept and removes it on close. Users never
    construct one; they reach it as ``resource.connection``.

    Attributes:
        id: Identifier, unique across processes (a random UUID in hex).
        ws: The Falcon WebSocket.
        path: The request path below the mount prefix.
        params: Values of the route template's fields.
        resource: The resource that handles this connection's messages.
        user_id: The user this connection belongs to, if the app set one.
        rooms: Rooms this connection is a member of.
        manager: The app's connection manager.
        state: Connection-scoped state shared by the resource chain.
        outbox: The outgoing queue (owned by the manager).
    """

    __slots__ = (
        "id",
        "manager",
        "outbox",
        "params",
        "path",
        "resource",
        "rooms",
        "state",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        path: str,
        params: dict[str, Any],
        manager: WebSocketConnectionManager,
    ) -> None:
        self.id: str = uuid.uuid4().hex
        self.ws = ws
        self.path = path
        self.params = params
        self.manager = manager
        self.resource: WebSocketResource | None = None
        self.user_id: str | None = None
        self.rooms: set[str] = set()
        self.state: MutableMapping[str, Any] = {}
        self.outbox: Any = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} path={self.path!r} user={self.user_id!r}>"
