"""Connection: the framework-owned object behind every accepted WebSocket."""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from falcon.asgi import WebSocket

__all__ = ["NO_ROOMS", "Connection", "ConnectionHost", "UrlBuilder"]

#: The rooms of a connection that never joined one.
NO_ROOMS: frozenset[str] = frozenset()

# NOTE: the connection sits below the manager, the resource and the serve
#   loop, and imports none of them: what it needs of them is spelled out here.


class ConnectionHost(Protocol):
    """What a connection asks of the manager that registers it."""

    def new_connection_id(self) -> str:
        """Return a connection id unique across processes."""
        ...

    def _user_changed(self, conn: Connection, old: str | None) -> None:
        """Re-index ``conn``, registered already, under its new user id."""
        ...


class UrlBuilder(Protocol):
    """What a resource asks of the mount that served its handshake."""

    def url_for(self, name: str, /, **params: Any) -> str:
        """Build the URL path of the route called ``name``, prefix included."""
        ...


class Connection:
    """One WebSocket connection, from handshake to close.

    Created by the serve loop for every handshake that matched a route; the
    manager registers it on accept and removes it on close. Users never
    construct one; they reach it as ``resource.connection``.

    Attributes:
        id: Identifier, unique across processes: the manager's node id, a dot
            and a counter (``"9f2c41d0e8a7b3c6.1a"``).
        ws: The Falcon WebSocket.
        path: The request path below the mount prefix.
        route: The matched route's template, mount prefix included
            (``"/ws/rooms/{room}"``): what metrics and logs name it by.
        params: Values of the route template's fields.
        resource: The resource that handles this connection's messages.
        user_id: The user this connection belongs to, if the app set one.
        rooms: Rooms this connection is a member of (a set; before its first
            join a shared empty frozenset).
        manager: The app's connection manager (typed by what the connection
            needs of it; ``resource.manager`` has the full type).
        state: Connection-scoped state shared by the resource chain.
        outbox: The outgoing queue (owned by the manager).
        mount: The mount (what :func:`~pachinko.mount` returns) that served the handshake
            (``None`` in the in-memory test harness).
        receiver: The receive loop's dispatch (it keeps the server's requests
            awaiting an answer); ``None`` until the connection is accepted.
    """

    __slots__ = (
        "_user_id",
        "id",
        "manager",
        "mount",
        "outbox",
        "params",
        "path",
        "receiver",
        "resource",
        "rooms",
        "route",
        "state",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        path: str,
        params: dict[str, Any],
        manager: ConnectionHost,
    ) -> None:
        new_id = getattr(manager, "new_connection_id", None)
        self.id: str = new_id() if new_id is not None else uuid.uuid4().hex
        self.ws = ws
        self.path = path
        self.params = params
        self.route = ""
        self.manager = manager
        # NOTE: Any: the resource is the app's own subclass (and this floor
        #   does not import the resource module).
        self.resource: Any = None
        self._user_id: str | None = None
        # PERF: the shared empty frozenset until the first join (an empty set
        #   is 216 B per idle connection, bench_connect.py); the manager
        #   gives the connection its own set then.
        self.rooms: set[str] | frozenset[str] = NO_ROOMS
        self.state: MutableMapping[str, Any] = {}
        self.outbox: Any = None
        self.mount: UrlBuilder | None = None
        # NOTE: Any: the serve loop's Receiver (a floor above this one).
        self.receiver: Any = None

    @property
    def user_id(self) -> str | None:
        """The user this connection belongs to, if the app set one."""
        return self._user_id

    @user_id.setter
    def user_id(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"user_id must be a str or None, got {type(value).__name__}")
        old, self._user_id = self._user_id, value
        if old != value and self.outbox is not None:
            # NOTE: registered already: the manager re-indexes it (and tells
            #   the backend in the background); before registration the
            #   manager reads it in connect().
            self.manager._user_changed(self, old)

    def __repr__(self) -> str:
        return f"<Connection {self.id} path={self.path!r} user={self.user_id!r}>"
