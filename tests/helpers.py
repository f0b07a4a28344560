"""Helpers shared by the test modules (fixtures live in ``conftest.py``).

Where things are:

- ``pachinko.testing``: what users get too (``AppClient``, ``LiveServer``,
  ``ServerProcess``, ``Probe``, ``ResourceHarness``); tests use it wherever
  it fits, not a copy.
- this module: small helpers only the tests need (close codes, polling,
  Falcon's own WebSocket simulator, a client that stops reading);
- ``tests/redis_server.py`` (a private redis-server) and ``tests/raw_client.py``
  (a WebSocket client on a raw socket): one larger test double each, a module
  of its own;
- ``tests/apps/``: apps several modules serve (also run as processes).

A test module never imports from another test module or from ``conftest``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import falcon.asgi
import falcon.testing
from falcon.errors import WebSocketDisconnected
from websockets.exceptions import ConnectionClosed

import pachinko
from pachinko.backends import ConnectionBackend
from pachinko.testing import HandshakeRefused, WebSocketClosed

__all__ = [
    "FORBIDDEN",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "NORMAL",
    "NOT_FOUND",
    "POLICY_VIOLATION",
    "RECEIVE_TIMEOUT",
    "TOO_BIG",
    "TRY_AGAIN_LATER",
    "UNSUPPORTED_DATA",
    "BackendFactory",
    "StalledClient",
    "attempt",
    "eventually",
    "expect_close",
    "free_port",
    "make_app",
    "recv_json",
]

_T = TypeVar("_T")

# Close codes, spelled out: the tests check that the right value is used.
NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013
FORBIDDEN = 3403
NOT_FOUND = 3404

RECEIVE_TIMEOUT = 5.0

#: What the ``backend`` fixture gives: a factory of fresh backends.
BackendFactory = Callable[[], ConnectionBackend]


def make_app(
    router: pachinko.WebSocketRouter, prefix: str = "/ws", **install_options: Any
) -> falcon.asgi.App:
    """A plain Falcon app with ``router`` mounted under ``prefix``."""
    app = falcon.asgi.App()
    pachinko.mount(app, prefix, router, **install_options)
    return app


async def recv_json(ws: Any, timeout: float = RECEIVE_TIMEOUT) -> Any:
    """Receive one text message from Falcon's simulator and decode it, bounded."""
    return json.loads(await asyncio.wait_for(ws.receive_text(), timeout))


async def expect_close(ws: Any, timeout: float = RECEIVE_TIMEOUT) -> int | None:
    """Wait until the server closes Falcon's simulated ``ws``; return the code."""

    async def wait() -> int | None:
        while True:
            try:
                message = await ws.receive_text()
            except WebSocketDisconnected:
                return ws.close_code  # type: ignore[no-any-return]
            raise AssertionError(f"expected a close, got a message: {message!r}")

    return await asyncio.wait_for(wait(), timeout)


async def eventually(
    check: Callable[[], _T | Awaitable[_T]],
    timeout: float = RECEIVE_TIMEOUT,
    *,
    interval: float = 0.005,
    detail: Callable[[], object] | None = None,
) -> _T:
    """Poll ``check`` (sync or async) until it returns a true value; return it.

    A positive condition only: something that must happen. For something
    that must *not* happen, wait for a later positive signal instead.

    Raises:
        AssertionError: Not true within ``timeout`` seconds (with
            ``detail()`` in the message, e.g. a server's output).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            where = getattr(check, "__qualname__", repr(check))
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"not true within {timeout:g} s: {where}{extra}")
        await asyncio.sleep(interval)


def free_port() -> int:
    """A loopback port free right now, for a server that cannot bind port 0.

    NOTE: another process may take it before the server binds it; prefer
    port 0 and asking the server (``LiveServer``, ``ServerProcess`` do).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StalledClient:
    """A raw ASGI WebSocket client of the real app that stops reading when told to.

    Its ``send`` callable blocks on every frame while ``stalled`` (until
    ``release`` is set), exactly what a socket whose peer stopped reading
    does to the server; with ``broken`` it raises as a reset socket does.

    Attributes:
        received: Text frames the server sent that got through.
        close_code: The server's close code, once it closed.
        blocked: Set when a send is blocked on the stall (a send under way).
    """

    def __init__(self, app: falcon.asgi.App, path: str) -> None:
        self.app = app
        self.path = path
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received: list[str] = []
        self.stalled = False
        self.broken = False
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()
        self.close_code: int | None = None
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def _send(self, event: dict[str, Any]) -> None:
        if event["type"] == "websocket.send":
            if self.broken:  # ASGI 2.4: send raises OSError once the peer is gone
                raise ConnectionResetError("connection reset by peer")
            if self.stalled:
                self.blocked.set()
                await self.release.wait()
            self.received.append(event["text"])
            self.replies.put_nowait(event["text"])
        elif event["type"] == "websocket.close":
            self.close_code = event.get("code", 1000)

    async def __aenter__(self) -> StalledClient:
        self.inbox.put_nowait({"type": "websocket.connect"})
        scope = falcon.testing.create_scope_ws(self.path)
        self.task = asyncio.get_running_loop().create_task(
            self.app(scope, self._receive, self._send)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def join(self, room: str) -> None:
        """Join ``room`` (the ticker app's ``join``) and wait for ``joined``."""
        text = f'{{"type": "join", "room": "{room}"}}'
        self.inbox.put_nowait({"type": "websocket.receive", "text": text})
        assert await asyncio.wait_for(self.replies.get(), 5) == '{"type":"joined"}'


async def attempt(
    open_: Callable[[], Any], outcomes: list[int | str], release: asyncio.Event
) -> None:
    """Open a connection; record "open" (and hold it until ``release``) or its close code.

    ``open_`` returns a ``pachinko.testing`` client's ``websocket(...)``
    context; the app must answer ``whoami`` with ``me``.
    """
    try:
        async with open_() as ws:
            await ws.send_json({"type": "whoami"})
            await ws.expect(type="me")
            outcomes.append("open")
            await release.wait()
    except HandshakeRefused as refused:
        outcomes.append(refused.code if refused.code is not None else refused.status or 0)
    except WebSocketClosed as closed:
        outcomes.append(closed.code or 0)
    except ConnectionClosed as closed:  # a live client sending on a closed socket
        outcomes.append(closed.rcvd.code if closed.rcvd is not None else 0)
    except WebSocketDisconnected as closed:  # an in-process client sending on a closed socket
        outcomes.append(closed.code or 0)
