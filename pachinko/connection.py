"""Connection: the framework-owned object behind every accepted WebSocket."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

if TYPE_CHECKING:
    from falcon.asgi import WebSocket

__all__ = ["ENDED", "NO_ROOMS", "Connection", "ConnectionHost", "UrlBuilder", "User"]

#: The rooms of a connection that never joined one.
NO_ROOMS: frozenset[str] = frozenset()

#: Longest user id.
_MAX_ID: Final = 256


class User(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who a connection belongs to: an id and public info.

    ``info`` is what other members may see (a display name, an avatar URL):
    presence events and member lists carry it as given, so never put a
    secret in it. It must be JSON-encodable.

    Attributes:
        id: The user id (1 to 256 characters); all connections of one
            user share it, in every process.
        info: Public information about the user.
    """

    id: str
    info: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not 0 < len(self.id) <= _MAX_ID:
            raise ValueError(
                f"User.id must be a str of 1 to {_MAX_ID} characters (got {self.id!r})"
            )
        if not isinstance(self.info, dict):
            raise TypeError(f"User.info must be a dict (got {type(self.info).__name__})")


#: The join checks of a connection that has none.
NO_CHECKS: tuple[Callable[[str], Awaitable[Any]], ...] = ()


class _Ended:
    """``Connection.receiver`` once the connection's loop is over."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<ended>"


#: ``Connection.receiver`` once the connection's loop is over (its requests
#: to the client are refused with ``RequestAborted``).
ENDED: Final = _Ended()

# NOTE: the connection sits below the manager, the resource and the serve
#   loop, and imports none of them: what it needs of them is spelled out here.


class ConnectionHost(Protocol):
    """What a connection asks of the manager that registers it."""

    def new_connection_id(self) -> str:
        """Return a connection id unique across processes."""
        ...

    def _user_changed(self, conn: Connection, new: User | None) -> None:
        """Give ``conn``, registered already, the user ``new`` and re-index it.

        Raises if the change is not allowed (the identity came from the
        handshake, or the connection is in presence rooms); nothing changed then.
        """
        ...


class UrlBuilder(Protocol):
    """What a resource asks of the mount that served its handshake."""

    #: The path the router is mounted at.
    prefix: str

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
        resource: The resource that handles this connection's messages
            (``None`` once the connection has ended: see :meth:`ended`).
        user: The :class:`~pachinko.auth.User` this connection belongs to
            (set by the app's ``authenticate`` at the handshake, or by the
            app), else ``None``.
        user_id: ``user.id``, or ``None``.
        rooms: Rooms this connection is a member of (a set; before its first
            join a shared empty frozenset).
        manager: The app's connection manager (typed by what the connection
            needs of it; ``resource.manager`` has the full type).
        state: Connection-scoped state shared by the resource chain.
        outbox: The outgoing queue (owned by the manager).
        mount: The mount (what :func:`~pachinko.mount` returns) that served the handshake
            (``None`` in the in-memory test harness).
        authorizers: The connection's own join checks (its resources'
            ``authorize_join`` methods and the router's ``authorize_join``
            hooks), each called with the room; set at the handshake.
        receiver: The receive loop's dispatch (shared by the connections of
            a route without hooks); ``None`` until the connection is
            registered, :data:`ENDED` once it has ended.
        pending: The server's requests (``resource.request()``) awaiting the
            client's answer, by correlation id (``None`` before the first).
    """

    __slots__ = (
        "_params",
        "_path",
        "_state",
        "_user",
        "authorizers",
        "id",
        "manager",
        "mount",
        "outbox",
        "pending",
        "receiver",
        "resource",
        "rooms",
        "route",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        path: str,
        params: dict[str, Any] | None,
        manager: ConnectionHost,
        mount: UrlBuilder | None = None,
        route: str = "",
    ) -> None:
        """``path``: below the prefix, or with a ``mount``, the whole request path.

        ``params``: ``None`` stands for none (a dict is made when read).
        ``route``: the matched route's template, prefix included.
        """
        try:
            self.id: str = manager.new_connection_id()
        except AttributeError:  # a stand-in manager (tests): ids of its own
            self.id = uuid.uuid4().hex
        self.ws = ws
        # PERF: with a mount, the request's own path string (Falcon keeps it):
        #   the part below the prefix is cut when asked for, not kept (55 B
        #   per connection, bench_connect.py).
        self._path = path
        self.mount = mount
        # PERF: None for a route without fields until read (64 B, bench_connect.py).
        self._params = params
        self.route = route
        self.manager = manager
        # NOTE: Any: the resource is the app's own subclass (and this floor
        #   does not import the resource module).
        self.resource: Any = None
        self._user: User | None = None
        self.authorizers = NO_CHECKS
        # PERF: the shared empty frozenset until the first join (an empty set
        #   is 216 B per idle connection, bench_connect.py); the manager
        #   gives the connection its own set then.
        self.rooms: set[str] | frozenset[str] = NO_ROOMS
        # PERF: created on first use (64 B per idle connection, bench_connect.py).
        self._state: MutableMapping[str, Any] | None = None
        self.outbox: Any = None
        # NOTE: Any: the serve loop's Receiver (a floor above this one).
        self.receiver: Any = None
        # The server's requests awaiting the client's answer, by id (made on
        # the first request; the serve loop's shared empty dict once ended).
        self.pending: dict[str | int, Any] | None = None

    def ended(self) -> None:
        """Forget the resource, the dispatch and the join checks: the connection has ended.

        Called by the serve loop once ``on_disconnect`` ran and the
        connection is deregistered. PERF: the connection and its resource
        point at each other; without this, every ended connection (and its
        Falcon WebSocket) waited for the cyclic garbage collector: ~1 µs per
        connection (bench_connect.py, ``gc.get_stats()``). The resource
        keeps its ``connection``.
        """
        self.resource = None
        self.receiver = ENDED
        self.authorizers = NO_CHECKS

    @property
    def params(self) -> dict[str, Any]:
        """Values of the route template's fields."""
        params = self._params
        if params is None:
            params = self._params = {}
        return params

    @property
    def path(self) -> str:
        """The request path below the mount prefix."""
        path = self._path
        mount = self.mount
        if mount is None or mount.prefix == "/":
            return path
        return path[len(mount.prefix) :] or "/"

    @property
    def state(self) -> MutableMapping[str, Any]:
        """Connection-scoped state shared by the resource chain (a dict unless replaced)."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @state.setter
    def state(self, value: MutableMapping[str, Any]) -> None:
        self._state = value

    @property
    def user(self) -> User | None:
        """The user this connection belongs to (id and public info), if any."""
        return self._user

    @user.setter
    def user(self, value: User | None) -> None:
        if value is not None and not isinstance(value, User):
            raise TypeError(f"user must be a pachinko.User or None, got {type(value).__name__}")
        if value == self._user:
            return
        if self.outbox is not None:
            # NOTE: registered already: the manager checks the change,
            #   re-indexes (and tells the backend in the background); before
            #   registration the manager reads it in connect().
            self.manager._user_changed(self, value)
        else:
            self._user = value

    @property
    def user_id(self) -> str | None:
        """The id of the user this connection belongs to, if any."""
        user = self._user
        return None if user is None else user.id

    @user_id.setter
    def user_id(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"user_id must be a str or None, got {type(value).__name__}")
        if value != self.user_id:
            self.user = None if value is None else User(value)

    def __repr__(self) -> str:
        return f"<Connection {self.id} path={self.path!r} user={self.user_id!r}>"
