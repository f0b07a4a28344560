"""Unit-test a resource without an app: an in-memory WebSocket and a harness.

:class:`WebSocketSimulator` stands in for Falcon's ``WebSocket`` (the same
methods a resource calls) and records what was sent. :class:`ResourceHarness`
binds a resource to a real :class:`~pachinko.Connection` and connection
manager, and feeds it messages the way the serve loop does (same decoding,
same error replies)::

    async with ResourceHarness(ChatResource) as chat:
        await chat.connect()
        await chat.receive({"type": "join", "room": "a", "name": "ann"})
        await chat.ws.expect(type="joined")

For what a room or a user received, :class:`Probe` registers an observer
connection with the manager.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any

import falcon
from falcon.errors import PayloadTypeError, WebSocketDisconnected

from ..connection import Connection
from ..resource import WebSocketResource
from ..settings import Settings
from ._stream import DEFAULT_TIMEOUT, MessageStream, WebSocketClosed

__all__ = ["Probe", "ResourceHarness", "WebSocketSimulator"]

_CLOSED = object()


class WebSocketSimulator(MessageStream):
    """An in-memory stand-in for ``falcon.asgi.WebSocket``.

    What the code under test sends (``send_text``, ``send_data``,
    ``send_media``) is received by the test with the :class:`MessageStream`
    methods (``expect``, ``receive_json`` ...) and listed in :attr:`sent`;
    what the test puts with :meth:`feed` is what ``receive_text`` returns.

    Args:
        subprotocols: Subprotocols the simulated client offers.
        timeout: Default receive timeout (test side).
    """

    def __init__(
        self, *, subprotocols: Iterable[str] = (), timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(timeout)
        self.label = "simulated websocket"
        self.subprotocols = tuple(subprotocols)
        self.subprotocol: str | None = None
        self.unaccepted = True
        self.closed = False
        self.sent: list[str | bytes] = []
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()

    # -- the Falcon WebSocket side (used by the code under test) ----------------

    @property
    def ready(self) -> bool:
        """Accepted and not closed."""
        return not self.unaccepted and not self.closed

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        """Accept the (simulated) handshake."""
        if not self.unaccepted:
            raise falcon.errors.OperationNotAllowed("accept() may only be called once")
        self.unaccepted = False
        self.subprotocol = subprotocol

    async def close(self, code: int | None = 1000, reason: str | None = None) -> None:
        """Close the connection (the test sees :class:`WebSocketClosed`)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = 1000 if code is None else code
        self.close_reason = reason or ""
        self._outbox.put_nowait(_CLOSED)
        self._inbox.put_nowait(_CLOSED)

    def _check_open(self) -> None:
        if self.closed:
            raise WebSocketDisconnected(self.close_code or 1000)

    async def send_text(self, payload: str) -> None:
        """Record a text frame sent to the client."""
        if not isinstance(payload, str):
            raise TypeError(f"send_text() payload must be a str, got {type(payload).__name__}")
        self._check_open()
        self.sent.append(payload)
        self._outbox.put_nowait(payload)

    async def send_data(self, payload: bytes | bytearray | memoryview) -> None:
        """Record a binary frame sent to the client."""
        self._check_open()
        data = bytes(payload)
        self.sent.append(data)
        self._outbox.put_nowait(data)

    async def send_media(self, media: Any) -> None:
        """Record ``media`` sent as JSON text (Falcon's default media handler)."""
        await self.send_text(json.dumps(media))

    async def receive_text(self, timeout: float | None = None) -> str:
        """Return the next text frame fed by the test (code-under-test side).

        NOTE: this is the Falcon ``WebSocket`` method. The test side reads
        what was sent with :meth:`expect`, :meth:`receive_json` or
        :meth:`next_sent`.
        """
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)
            raise WebSocketDisconnected(self.close_code or 1000)
        if isinstance(item, bytes):
            raise PayloadTypeError("Expected TEXT payload but got BINARY instead")
        return item  # type: ignore[no-any-return]

    async def receive_data(self) -> bytes:
        """Return the next binary frame fed by the test (code-under-test side)."""
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)
            raise WebSocketDisconnected(self.close_code or 1000)
        if isinstance(item, str):
            raise PayloadTypeError("Expected BINARY payload but got TEXT instead")
        return item  # type: ignore[no-any-return]

    async def receive_media(self) -> Any:
        """Return the next text frame fed by the test, decoded from JSON."""
        return json.loads(await self.receive_text())

    # -- the test side ------------------------------------------------------------

    def feed(self, message: Any) -> None:
        """Queue an inbound frame: a str or bytes as is, anything else as JSON."""
        if not isinstance(message, str | bytes):
            message = json.dumps(message)
        self._inbox.put_nowait(message)

    def client_close(self, code: int = 1000) -> None:
        """Simulate the client closing: pending and later receives raise."""
        if not self.closed:
            self.closed = True
            self.close_code = code
            self._inbox.put_nowait(_CLOSED)

    def sent_json(self) -> list[Any]:
        """Every text frame sent so far, decoded from JSON."""
        return [json.loads(m) for m in self.sent if isinstance(m, str)]

    async def next_sent(self, timeout: float | None = None) -> Any:
        """The next message the code under test sent (decoded from JSON)."""
        await self._frame(timeout, "message")
        return self.received[-1]

    async def _next_frame(self) -> str | bytes:
        item = await self._outbox.get()
        if item is _CLOSED:
            self._outbox.put_nowait(_CLOSED)
            raise WebSocketClosed(
                f"{self.label}: closed with code {self.close_code} {self.close_reason!r}",
                self.close_code,
                self.close_reason,
            )
        return item  # type: ignore[no-any-return]


def _new_manager(settings: Settings) -> Any:
    from ..manager import WebSocketConnectionManager

    return WebSocketConnectionManager(settings, None)


class ResourceHarness:
    """Run one resource against a :class:`WebSocketSimulator`, without an app.

    The resource is bound to a real :class:`~pachinko.Connection` registered
    with a connection manager (a fresh in-process one unless ``manager`` is
    given), so ``send``, ``join_room``, ``broadcast_to_room`` and
    ``self.state`` work as in production.

    Args:
        resource: A resource class (built with ``*args, **kwargs``) or an
            instance.
        manager: A started connection manager to use (e.g. ``runtime_of(app)
            .manager`` or another harness's), or ``None`` for a new one.
        settings: Settings of the new manager (and of error replies).
        path: The connection's path.
        params: The route template's values, passed to ``on_connect``.
        user_id: The user id, set before the connection registers.
    """

    def __init__(
        self,
        resource: type[WebSocketResource] | WebSocketResource,
        *args: Any,
        manager: Any = None,
        settings: Settings | None = None,
        path: str = "/",
        params: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        self.resource: WebSocketResource = (
            resource(*args, **kwargs) if isinstance(resource, type) else resource
        )
        self.settings = settings or Settings()
        self.ws = WebSocketSimulator(timeout=timeout)
        self._own_manager = manager is None
        self.manager: Any = manager if manager is not None else _new_manager(self.settings)
        self.connection = Connection(self.ws, path, dict(params or {}), self.manager)  # type: ignore[arg-type]
        self.connection.user_id = user_id
        self.connection.resource = self.resource
        self.resource._pachinko_connection = self.connection  # type: ignore[attr-defined]
        self.resource.state = self.connection.state
        self.registered = False

    async def __aenter__(self) -> ResourceHarness:
        if self._own_manager:
            await self.manager.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.registered:
                await self.disconnect()
        finally:
            if self._own_manager:
                await self.manager.close()

    async def connect(self, req: Any = None, **params: Any) -> bool:
        """Run ``on_connect`` and, if it accepts, register and accept the connection.

        Returns:
            Whether the resource accepted.
        """
        values = {**self.connection.params, **params}
        accepted = await self.resource.on_connect(req, self.ws, **values)  # type: ignore[arg-type]
        if not accepted or self.ws.closed:
            return False
        await self.manager.connect(self.connection)
        if self.ws.unaccepted:
            await self.ws.accept()
        self.manager.opened(self.connection)
        self.registered = True
        return True

    async def receive(self, message: Any) -> None:
        """Dispatch one inbound message as the serve loop does.

        A str is the raw frame; anything else is sent as JSON. A message that
        cannot be dispatched goes to ``on_unhandled`` (by default an error
        reply on :attr:`ws`).
        """
        raw = message if isinstance(message, str) else json.dumps(message)
        table = type(self.resource).__pachinko_table__
        outcome = table.dispatch_slow(raw)
        if isinstance(outcome, tuple):
            handler, payload = outcome
            await handler(self.resource, self.ws, payload)
        elif self.settings.error_replies:
            await self.resource.on_unhandled(self.ws, outcome)  # type: ignore[arg-type]

    async def disconnect(self, close_code: int = 1000) -> None:
        """Run ``on_disconnect`` and deregister the connection (once)."""
        if not self.registered:
            return
        self.registered = False
        try:
            await self.resource.on_disconnect(self.ws, close_code)  # type: ignore[arg-type]
        finally:
            await self.manager.disconnect(self.connection)


class Probe(WebSocketSimulator):
    """An observer connection: receives what a room or a user receives.

    Registered with the manager like a client connection (it is counted in
    the room's members), so broadcasts reach it through the real delivery
    path, across processes with a Redis backend::

        async with Probe(runtime_of(app).manager, rooms=["lobby"]) as lobby:
            ...  # clients talk
            await lobby.expect(type="message", text="hi")

    Args:
        manager: The app's (started) connection manager.
        rooms: Rooms to join.
        user_id: Receive what is sent to this user.
    """

    def __init__(
        self,
        manager: Any,
        *,
        rooms: Iterable[str] = (),
        user_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(timeout=timeout)
        self.rooms = tuple(rooms)
        self.label = f"probe rooms={list(self.rooms)} user={user_id!r}"
        self.manager = manager
        self.connection = Connection(self, "/", {}, manager)  # type: ignore[arg-type]
        self.connection.user_id = user_id

    async def __aenter__(self) -> Probe:
        await self.manager.connect(self.connection)
        await self.accept()
        self.manager.opened(self.connection)
        for room in self.rooms:
            await self.manager.join_room(self.connection, room)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.disconnect(self.connection)
