"""Unit-test a resource without an app: an in-memory WebSocket and a harness.

:class:`WebSocketSimulator` is the test's end of an in-memory WebSocket (a
client, like the in-process and live ones); its :attr:`~WebSocketSimulator.socket`
is the other end, a stand-in for Falcon's ``WebSocket`` that the code under
test gets. :class:`ResourceHarness` binds a resource to a real
:class:`~pachinko.Connection` and connection manager, and runs the serve
loop's own dispatch step on each message (hooks, decoding, error replies,
error handling)::

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

from .._serve import OutageLog, Receiver, hook_list, receive_loop, run_disconnect
from ..connection import Connection
from ..resource import WebSocketResource
from ..settings import Settings
from ._stream import DEFAULT_TIMEOUT, MessageStream, ReceiveTimeout, WebSocketClosed

__all__ = ["Probe", "ResourceHarness", "SimulatedSocket", "WebSocketSimulator"]

_CLOSED = object()


class SimulatedSocket:
    """The server end of a :class:`WebSocketSimulator`: a Falcon ``WebSocket`` stand-in.

    The code under test gets this object as ``ws``. As on Falcon's
    ``WebSocket``, ``send_*`` send to the client and ``receive_*`` return
    what the client sent; unlike Falcon's, every receive waits at most
    ``timeout`` seconds (the simulator's by default) and then raises
    :class:`~pachinko.testing.ReceiveTimeout`, so a test never hangs.

    Attributes:
        subprotocols: Subprotocols the simulated client offers.
        subprotocol: The subprotocol accepted, if any.
        unaccepted: The handshake has not been accepted yet.
        closed: The connection is closed (by either end).
        close_code: The close code once closed.
        sent: Every frame sent to the client, in order.
    """

    def __init__(self, client: WebSocketSimulator, subprotocols: Iterable[str]) -> None:
        self._client = client
        self.subprotocols = tuple(subprotocols)
        self.subprotocol: str | None = None
        self.unaccepted = True
        self.closed = False
        self.close_code: int | None = None
        self.sent: list[str | bytes] = []
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

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
        """Close the connection (the test's end sees the close)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = 1000 if code is None else code
        self._client._server_closed(self.close_code, reason or "")
        self.inbox.put_nowait(_CLOSED)

    def _check_open(self) -> None:
        if self.closed:
            raise WebSocketDisconnected(self.close_code or 1000)

    async def send_text(self, payload: str) -> None:
        """Send a text frame to the client."""
        if not isinstance(payload, str):
            raise TypeError(f"send_text() payload must be a str, got {type(payload).__name__}")
        self._check_open()
        self.sent.append(payload)
        self._client._outbox.put_nowait(payload)

    async def send_data(self, payload: bytes | bytearray | memoryview) -> None:
        """Send a binary frame to the client."""
        self._check_open()
        data = bytes(payload)
        self.sent.append(data)
        self._client._outbox.put_nowait(data)

    async def send_media(self, media: Any) -> None:
        """Send ``media`` as JSON text (Falcon's default media handler)."""
        await self.send_text(json.dumps(media))

    async def _receive(self, timeout: float | None) -> str | bytes:
        wait = self._client.timeout if timeout is None else timeout
        try:
            item = await asyncio.wait_for(self.inbox.get(), wait)
        except TimeoutError:
            raise ReceiveTimeout(
                f"{self._client.label}: the code under test waited {wait:g} s for a client "
                "message; the test sent none (send_json() it first)"
            ) from None
        return self._frame(item)

    def _frame(self, item: Any) -> str | bytes:
        if item is _CLOSED:
            self.inbox.put_nowait(_CLOSED)
            raise WebSocketDisconnected(self.close_code or 1000)
        return item  # type: ignore[no-any-return]

    def next_nowait(self) -> str | bytes | None:
        """The next frame the client sent, or ``None`` if there is none yet."""
        try:
            return self._frame(self.inbox.get_nowait())
        except asyncio.QueueEmpty:
            return None

    async def receive_text(self, timeout: float | None = None) -> str:
        """Return the next text frame the client sent (at most ``timeout`` s)."""
        item = await self._receive(timeout)
        if isinstance(item, bytes):
            raise PayloadTypeError("Expected TEXT payload but got BINARY instead")
        return item

    async def receive_data(self, timeout: float | None = None) -> bytes:
        """Return the next binary frame the client sent (at most ``timeout`` s)."""
        item = await self._receive(timeout)
        if isinstance(item, str):
            raise PayloadTypeError("Expected BINARY payload but got TEXT instead")
        return item

    async def receive_media(self, timeout: float | None = None) -> Any:
        """Return the next text frame the client sent, decoded from JSON."""
        return json.loads(await self.receive_text(timeout))


class WebSocketSimulator(MessageStream):
    """The test's end of an in-memory WebSocket; :attr:`socket` is the server's.

    Like every pachinko test client, ``send_*`` send to the server (what the
    code under test receives) and ``receive_*``/``expect*`` return what the
    server sent, each waiting at most ``timeout`` seconds. Hand
    :attr:`socket` to the code under test as its Falcon ``WebSocket``.

    Args:
        subprotocols: Subprotocols the simulated client offers.
        timeout: Default seconds every receive waits (both ends).
    """

    def __init__(
        self, *, subprotocols: Iterable[str] = (), timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(timeout)
        self.label = "simulated websocket"
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.socket = SimulatedSocket(self, subprotocols)

    # -- state of the connection ------------------------------------------------

    @property
    def sent(self) -> list[str | bytes]:
        """Every frame the server sent so far (received or not)."""
        return self.socket.sent

    @property
    def closed(self) -> bool:
        """The connection is closed (by either end)."""
        return self.socket.closed

    def sent_json(self) -> list[Any]:
        """Every text frame the server sent so far, decoded from JSON."""
        return [json.loads(m) for m in self.sent if isinstance(m, str)]

    # -- the client's side ----------------------------------------------------------

    def feed(self, message: Any) -> None:
        """Send a frame to the server at once: a str or bytes as is, else JSON."""
        if not isinstance(message, str | bytes):
            message = json.dumps(message)
        self.socket.inbox.put_nowait(message)

    async def send_text(self, text: str) -> None:
        """Send one text frame to the server."""
        self.feed(text)

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame to the server."""
        self.feed(bytes(data))

    async def close(self, code: int = 1000) -> None:
        """Close the connection from the client's side."""
        self.client_close(code)

    def client_close(self, code: int = 1000) -> None:
        """Simulate the client closing: the server's pending and later receives raise."""
        socket = self.socket
        if not socket.closed:
            socket.closed = True
            socket.close_code = code
            socket.inbox.put_nowait(_CLOSED)

    async def next_sent(self, timeout: float | None = None) -> Any:
        """The next message the server sent (decoded from JSON)."""
        await self._frame(timeout, "message")
        return self.received[-1]

    def _server_closed(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        self._outbox.put_nowait(_CLOSED)

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
    ``self.state`` work as in production. Messages go through the serve
    loop's own dispatch step: the resource's hooks, the same decoders, the
    same error replies and ``on_unhandled``, error hooks, and the same
    closes (1011 when a handler raises and no error hook handles it, 1009,
    1003 ...), after which ``on_disconnect`` runs as it would.

    Args:
        resource: A resource class (built with ``*args, **kwargs``) or an
            instance.
        manager: A started connection manager to use (e.g. ``runtime_of(app)
            .manager`` or another harness's), or ``None`` for a new one.
        settings: Settings of the new manager, and of the dispatch (limits,
            ``error_replies``).
        path: The connection's path.
        params: The route template's values, passed to ``on_connect``.
        user_id: The user id, set before the connection registers.
        timeout: Default seconds every receive of :attr:`ws` waits.
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
        socket: Any = self.ws.socket
        self._own_manager = manager is None
        self.manager: Any = manager if manager is not None else _new_manager(self.settings)
        self.connection = Connection(socket, path, dict(params or {}), self.manager)
        self.connection.user_id = user_id
        self.connection.resource = self.resource
        self.resource._pachinko_bind(self.connection)
        self.registered = False
        self._receiver: Receiver | None = None
        self._outages = OutageLog()

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
        """Run ``before_connect`` and ``on_connect``; if accepted, register and accept.

        Then the resource's ``after_connect`` hook runs, as in production.

        Returns:
            Whether the resource accepted.
        """
        socket: Any = self.ws.socket
        values = {**self.connection.params, **params}
        own = getattr(self.resource, "before_connect", None)
        if own is not None:
            await own(req, socket, values)
        accepted = await self.resource.on_connect(req, socket, **values)
        if not accepted or socket.closed:
            return False
        await self.manager.connect(self.connection)
        if socket.unaccepted:
            await socket.accept()
        self.manager.opened(self.connection)
        self.registered = True
        for hook in hook_list(None, (self.resource,), self.resource, "after_connect", reverse=True):
            await hook(socket)
        self._receiver = Receiver(
            type(self.resource),
            self.settings,
            self.manager,
            self._outages,
            levels=(self.resource,),
            conn=self.connection,
        )
        self.connection.receiver = self._receiver
        return True

    async def receive(self, message: Any) -> None:
        """Send one message and run the serve loop's dispatch step on it.

        A str or bytes is the raw frame; anything else is sent as JSON. A
        message that cannot be dispatched goes to ``on_unhandled`` (by
        default an error reply on :attr:`ws`). If the step closes the
        connection (a handler raised, a limit), ``on_disconnect`` runs with
        that code, as in production.

        Raises:
            RuntimeError: :meth:`connect` was not called or did not accept.
            WebSocketClosed: The connection is already closed.
        """
        rx = self._receiver
        socket = self.ws.socket
        if socket.closed:
            raise WebSocketClosed(
                f"ResourceHarness.receive(): the connection is closed (code {socket.close_code})",
                socket.close_code,
            )
        if rx is None:
            raise RuntimeError(
                "ResourceHarness.receive(): the connection is not open; "
                "call (and await) connect() first"
            )
        self.ws.feed(message)

        async def next_frame(_: object) -> str | None:
            frame = socket.next_nowait()
            if isinstance(frame, bytes):
                raise PayloadTypeError("Expected TEXT payload but got BINARY instead")
            return frame

        try:
            code = await receive_loop(self.connection, self.settings, socket, next_frame)  # type: ignore[arg-type]
        except WebSocketDisconnected as ex:
            code = ex.code or 1005
        if code is None and socket.closed:
            code = socket.close_code  # the resource closed the connection itself
        if code is not None:
            await self.disconnect(code)

    async def disconnect(self, close_code: int = 1000) -> None:
        """Run ``before_disconnect`` and ``on_disconnect``, deregister (once)."""
        if not self.registered:
            return
        self.registered = False
        if self._receiver is not None:
            self._receiver.abort_requests(self.connection, close_code)
        self._receiver = None
        resource = self.resource
        try:
            await run_disconnect(
                None,
                (resource,),
                resource,
                self.ws.socket,  # type: ignore[arg-type]
                close_code,
                self._outages,
                self.manager,
            )
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
        self.connection = Connection(self.socket, "/", {}, manager)  # type: ignore[arg-type]
        self.connection.user_id = user_id

    async def __aenter__(self) -> Probe:
        await self.manager.connect(self.connection)
        await self.socket.accept()
        self.manager.opened(self.connection)
        for room in self.rooms:
            await self.manager.join_room(self.connection, room)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.disconnect(self.connection)
