"""WebSocketResource: one instance per connection, typed message handlers."""

from __future__ import annotations

import sys
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Iterable,
    Mapping,
    MutableMapping,
)
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ._dispatch import DispatchTable, HandlerSpec, MessageError, handles_message
from ._dispatch_build import build_table
from ._wire import encode, encode_envelope, encode_text
from .connection import ENDED
from .errors import PachinkoError, RequestAborted, RouteError

if TYPE_CHECKING:
    from types import FrameType

    from falcon.asgi import Request, WebSocket

    from .connection import Connection, User
    from .manager import Delivery, WebSocketConnectionManager
    from .rooms import Recovery

__all__ = ["MessageError", "WebSocketResource", "handles_message"]


def _defining_locals(cls: type) -> Mapping[str, Any] | None:
    """The local names of the code running ``cls``'s class statement, if any.

    A class defined in a function (``f.<locals>.R``) may annotate handlers
    with Structs local to that function. The frame running the class
    statement is found by its code's qualified name (``f``), not by its
    distance from here: base classes with their own ``__init_subclass__``
    and metaclasses add frames in between. ``None`` for a module-level class
    (its module's globals are used) or when no such frame is running.
    """
    outer = cls.__qualname__.rpartition(".")[0]
    if not outer:
        return None
    outer = outer.removesuffix(".<locals>")
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_qualname == outer and frame.f_globals.get("__name__") == cls.__module__:
            return frame.f_locals
        frame = frame.f_back
    return None


class WebSocketResource:
    """Base class of WebSocket resources: one instance per connection.

    Subclasses handle messages with methods decorated by
    :func:`handles_message` or named ``on_{snake_case(tag)}``; each is called
    as ``await handler(self, ws, payload)``. The dispatch table and decoder
    are built once, when the class is created; definition errors are raised
    then, as :class:`~pachinko.errors.HandlerDefinitionError`.

    Class attributes:
        schema: Optional union of tagged :class:`msgspec.Struct` types, one
            per message type; each needs a handler.
        wire: ``"flat"`` (``{"type": "join", "room": "a"}``) or
            ``"envelope"`` (``{"type": "join", "payload": {"room": "a"}}``).
        tag_field: Name of the field holding the message type.
        id_field: Name of the field holding a correlation id (requests,
            their replies and error replies, and :meth:`request`).
        sends: Server-to-client message types (documentation, AsyncAPI).
    """

    schema: ClassVar[Any] = None
    wire: ClassVar[str] = "flat"
    tag_field: ClassVar[str] = "type"
    id_field: ClassVar[str] = "id"
    sends: ClassVar[tuple[type, ...]] = ()
    __pachinko_table__: ClassVar[DispatchTable]
    # Set by _pachinko_bind() when the router builds the resource for a handshake.
    _pachinko_connection: Connection
    # None: the connection's state (an explicit mapping only when one was given).
    _pachinko_state: MutableMapping[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # NOTE: validation happens here, not in __set_name__: Python 3.11 wraps
        #   exceptions raised from __set_name__ in RuntimeError, 3.12+ does not.
        cls.__pachinko_table__ = build_table(cls, _defining_locals(cls))

    @classmethod
    def message_types(cls) -> dict[str, HandlerSpec]:
        """Message types this class declares ahead, by tag."""
        return dict(cls.__pachinko_table__.specs)

    # -- lifecycle (override) ------------------------------------------------

    async def on_connect(self, req: Request, ws: WebSocket, **params: Any) -> bool:
        """Decide whether to accept the connection (default: accept).

        Return ``False`` to refuse with close code 3403, or raise
        :class:`~pachinko.errors.Refuse` to choose the code and reason. To
        pick a subprotocol, ``await ws.accept(subprotocol=...)`` here.
        """
        return True

    async def on_disconnect(self, ws: WebSocket, close_code: int) -> None:
        """Run once when an accepted connection ends, whatever ended it."""

    async def on_unhandled(self, ws: WebSocket, error: MessageError) -> None:
        """Handle a message that could not be dispatched.

        The default sends the error reply ``{"type": "error", "reason": ...,
        "detail": ..., "path": ...}`` (for ``wire = "envelope"``: ``{"type":
        "error", "payload": {"reason": ...}}``), with the message's correlation
        id (``error.id``) if it carried one, unless ``Settings.error_replies``
        is off. Override to log, count or answer differently.
        """
        await ws.send_text(encode_text(error.to_message(self.tag_field, self.wire, self.id_field)))

    def get_child_context(self) -> dict[str, Any]:
        """Return keyword arguments for the nested child resource.

        Called after this resource's ``on_connect`` accepted. A ``state`` key
        replaces the connection state handed to the child.
        """
        return {}

    # -- per-connection helpers ---------------------------------------------

    def _pachinko_bind(
        self, connection: Connection, state: MutableMapping[str, Any] | None = None
    ) -> None:
        """Bind this resource to ``connection`` (the serve loop and the test harness do).

        ``state`` is the mapping the resource sees as :attr:`state`
        (default: the connection's).

        Raises:
            TypeError: ``state`` is not a MutableMapping.
        """
        # PERF: nothing else is kept per resource: a bound send_text and the
        #   state dict were 64 B each per connection (bench_connect.py).
        self._pachinko_connection = connection
        if state is not None:
            self.state = state

    @property
    def connection(self) -> Connection:
        """The :class:`~pachinko.Connection` this resource serves."""
        try:
            conn = self._pachinko_connection
        except AttributeError:
            raise PachinkoError(
                f"{type(self).__qualname__} is not bound to a connection: resources get one "
                "when the router builds them for a handshake"
            ) from None
        return conn

    def url_for(self, name: str, /, **params: Any) -> str:
        """Build the URL path of the route called ``name``, this app's prefix included.

        The route is looked up in the router mounted where this connection
        came in, so a router mounted on several apps gives each its own URLs.

        Raises:
            RouteError: No such route, a field value is missing, or the
                resource was not built by a mounted router (test harness).
        """
        mount = self.connection.mount
        if mount is None:
            raise RouteError(
                f"{type(self).__qualname__}.url_for({name!r}): this connection did not come "
                "through a mounted router; use the router's or the app's url_for()"
            )
        return mount.url_for(name, **params)

    @property
    def manager(self) -> WebSocketConnectionManager:
        """The app's connection manager (rooms, users, broadcasts)."""
        # NOTE: the connection types its manager by what it needs of it (it
        #   does not import the manager); the one that registers it is this.
        return cast("WebSocketConnectionManager", self.connection.manager)

    @property
    def state(self) -> MutableMapping[str, Any]:
        """Connection-scoped state, shared with nested resources."""
        state = self._pachinko_state
        if state is None:
            conn: Connection | None = getattr(self, "_pachinko_connection", None)
            if conn is not None:
                return conn.state
            state = self._pachinko_state = {}
        return state

    @state.setter
    def state(self, mapping: MutableMapping[str, Any]) -> None:
        # PERF: a plain dict skips the ABC check (a few µs per handshake).
        #   Plain attributes, not ``self.__dict__``: reading an instance's
        #   __dict__ builds a dict object for it (64 B per connection).
        if type(mapping) is not dict and not isinstance(mapping, MutableMapping):
            raise TypeError(f"state must be a MutableMapping, got {type(mapping).__name__}")
        self._pachinko_state = mapping

    @property
    def user(self) -> User | None:
        """The user of this connection (from the app's ``authenticate``), if any."""
        return self.connection.user

    @property
    def user_id(self) -> str | None:
        """The user this connection belongs to (set it in ``on_connect``)."""
        return self.connection.user_id

    @user_id.setter
    def user_id(self, value: str | None) -> None:
        self.connection.user_id = value

    def send(self, message: Any) -> Awaitable[None]:
        """Send a Struct, dict or list as one JSON text frame (a str as is).

        Await the result: ``await self.send(Joined(room=room))``. The message
        is encoded once with msgspec. With ``wire = "envelope"`` a tagged
        Struct is sent as ``{"type": tag, "payload": {...fields}}``; a dict,
        list or str is sent as given.
        """
        # PERF: a plain function returning Falcon's send coroutine saves a
        #   coroutine frame per reply (bench_dispatch.py: ~0.2 µs of ~2.5).
        if isinstance(message, str):
            text = message
        elif self.wire == "flat":
            text = encode(message).decode()
        else:
            text = encode_envelope(message, self.tag_field)
        try:
            conn = self._pachinko_connection
        except AttributeError:
            conn = self.connection  # raises the "not bound" error
        return conn.ws.send_text(text)

    async def request(self, message: Any, *, timeout: float = 10.0) -> Any:
        """Send ``message`` to this connection's client and return its answer.

        The message (a Struct or a dict, in this resource's wire shape) gets
        a correlation id chosen by the server (``"srv-1"``, ``"srv-2"`` ...)
        in :attr:`id_field`; the client's next message carrying that id is
        the answer, returned decoded from JSON (a dict). It goes to no
        handler and no hook.

        Await it from anywhere but a handler of this same connection (whose
        receive loop is busy with that handler and would never read the
        answer): another connection's handler, a worker, or a task.

        Args:
            message: The request, a :class:`msgspec.Struct` or a dict.
            timeout: Seconds to wait for the answer.

        Raises:
            RequestTimeout: No answer within ``timeout`` seconds.
            RequestAborted: The connection closed before the answer came.
            PachinkoError: Awaited by a handler of this same connection, or
                the connection has no receive loop (a test probe).
            TypeError: ``message`` is not a Struct or a dict, or has a field
                named :attr:`id_field` itself.
        """
        receiver = self.connection.receiver
        if receiver is ENDED:
            raise RequestAborted(f"{type(self).__qualname__}.request(): the connection is closed")
        if receiver is None:
            raise PachinkoError(
                f"{type(self).__qualname__}.request(): this connection has no receive loop "
                "to read the answer (it is not accepted yet, or it is a test probe)"
            )
        return await receiver.request(self.connection, message, timeout)

    async def join_room(
        self, room: str, *, since: str | None = None, last: int | None = None
    ) -> Recovery | None:
        """Add this connection to ``room``.

        ``since``: the position (``"epoch:offset"``) of the last message the
        client got from this history room: it first gets what it missed,
        then the live stream. ``last``: the last N kept messages first.
        Either way a ``recovery`` message (in this resource's wire shape)
        tells the client the outcome first, and it is returned (see
        :meth:`WebSocketConnectionManager.join_room`); ``None`` for a plain
        join.

        Raises:
            JoinRefused: The room's authorization refused (in a handler, the
                client gets an error reply with reason ``forbidden``).
        """
        return await self.manager.join_room(self.connection, room, since=since, last=last)

    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        """Users present in ``room`` in every process: user id → public info."""
        return await self.manager.presence(room)

    async def leave_room(self, room: str) -> None:
        """Remove this connection from ``room``."""
        await self.manager.leave_room(self.connection, room)

    async def broadcast_to_room(
        self,
        room: str,
        message: Any,
        *,
        exclude_self: bool = True,
        exclude: Iterable[str] = (),
        timeout: float | None = None,
    ) -> Delivery:
        """Send ``message`` to every member of ``room`` (by default not to this one).

        In this resource's wire shape, as :meth:`send` does.
        """
        excluded = {*exclude, self.connection.id} if exclude_self else set(exclude)
        if self.wire != "flat" and not isinstance(message, str | bytes):
            message = encode_envelope(message, self.tag_field)
        return await self.manager.broadcast_to_room(
            room, message, exclude=excluded, timeout=timeout
        )

    def connections(self, room: str | None = None) -> AsyncIterator[Connection]:
        """Iterate over a snapshot of this process's connections (of ``room``)."""
        connections: AsyncIterator[Connection] = self.manager.connections(room)
        return connections


# The base class itself has no handlers; give it an empty table.
WebSocketResource.__pachinko_table__ = build_table(WebSocketResource, None)
