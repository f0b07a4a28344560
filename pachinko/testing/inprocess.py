"""Drive the real Falcon app in-process: no server, no socket, the ASGI lifespan runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import falcon.asgi
import falcon.testing
from falcon.errors import PayloadTypeError, WebSocketDisconnected

from ._stream import DEFAULT_TIMEOUT, HandshakeRefused, MessageStream

__all__ = ["AppClient", "InProcessWebSocket"]


class InProcessWebSocket(MessageStream):
    """A WebSocket connected to the app in-process (over Falcon's ASGI simulator).

    Attributes:
        ws: Falcon's :class:`falcon.testing.ASGIWebSocketSimulator`.
        path: The path it connected to.
    """

    def __init__(
        self, ws: falcon.testing.ASGIWebSocketSimulator, path: str, timeout: float
    ) -> None:
        super().__init__(timeout)
        self.ws = ws
        self.path = path
        self.label = f"websocket {path}"

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the app accepted, if any."""
        return self.ws.subprotocol

    async def _next_frame(self) -> str | bytes:
        try:
            # NOTE: Falcon's simulator has no public "next frame, text or
            #   binary": receive_text() consumes a binary event before it
            #   raises, so read the event itself once.
            event = await self.ws._receive()
            text = event.get("text")
            if text is not None:
                return text  # type: ignore[no-any-return]
            data = event.get("bytes")
            if data is None:
                raise PayloadTypeError("frame without a text or binary payload")
            return data  # type: ignore[no-any-return]
        except WebSocketDisconnected as ex:
            code = self.ws.close_code if self.ws.close_code is not None else ex.code
            raise self._closed(code, self.ws.close_reason or "") from None

    async def send_text(self, text: str) -> None:
        """Send one text frame."""
        await self.ws.send_text(text)

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame."""
        await self.ws.send_data(data)

    async def close(self, code: int = 1000) -> None:
        """Close the connection from the client side."""
        await self.ws.close(code)

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return bool(self.ws.closed)


class AppClient:
    """Test client for a Falcon app, in-process, with the ASGI lifespan.

    Use as an async context manager: entering runs the app's startup
    (backend, services, workers), leaving closes open WebSockets and runs its
    shutdown::

        async with AppClient(app) as client:
            async with client.websocket("/ws/chat") as ws:
                await ws.send_json({"type": "join", "room": "a", "name": "ann"})
                await ws.expect(type="joined")

    Args:
        app: The Falcon ASGI app.
        timeout: Default seconds every receive (and the handshake) waits.
    """

    def __init__(self, app: falcon.asgi.App[Any, Any], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.app = app
        self.timeout = timeout
        self._conductor: falcon.testing.ASGIConductor | None = None

    @property
    def conductor(self) -> falcon.testing.ASGIConductor:
        """Falcon's conductor, for HTTP requests (``simulate_get`` ...)."""
        if self._conductor is None:
            raise RuntimeError("AppClient is not started: use 'async with AppClient(app)'")
        return self._conductor

    async def __aenter__(self) -> AppClient:
        conductor = falcon.testing.ASGIConductor(self.app)
        await conductor.__aenter__()
        self._conductor = conductor
        return self

    async def __aexit__(self, *exc: object) -> None:
        conductor, self._conductor = self._conductor, None
        if conductor is not None:
            await conductor.__aexit__(None, None, None)

    async def get(self, path: str, **kwargs: Any) -> falcon.testing.Result:
        """Simulate an HTTP GET (e.g. for a page the app serves)."""
        return await self.conductor.simulate_get(path, **kwargs)

    @contextlib.asynccontextmanager
    async def websocket(
        self,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        subprotocols: Iterable[str] | None = None,
        timeout: float | None = None,
        **scope: Any,
    ) -> AsyncIterator[InProcessWebSocket]:
        """Open a WebSocket to ``path``; close it on exit.

        Raises:
            HandshakeRefused: The app refused the handshake (``.code``).
        """
        wait = self.timeout if timeout is None else timeout
        if subprotocols is not None:
            scope["subprotocols"] = list(subprotocols)
        manager = self.conductor.simulate_ws(
            path, timeout=wait, headers=dict(headers or {}), **scope
        )
        try:
            ws = await manager.__aenter__()
        except WebSocketDisconnected as ex:
            # NOTE: Falcon's context manager cleans up itself when entering fails.
            raise HandshakeRefused(path, ex.code) from None
        client = InProcessWebSocket(ws, path, wait)
        try:
            yield client
        finally:
            await manager.__aexit__(None, None, None)

    async def refused(self, path: str, **kwargs: Any) -> int | None:
        """Open a WebSocket that must be refused; return the close code.

        Raises:
            AssertionError: The handshake was accepted.
        """
        try:
            async with self.websocket(path, **kwargs):
                pass
        except HandshakeRefused as refused:
            return refused.code
        raise AssertionError(f"expected the handshake for {path} to be refused, it was accepted")
