"""A minimal in-process ASGI driver shared by the benchmarks (not a test client).

Every benchmark that compares pachinko with a hand-written Falcon loop drives
both real ``falcon.asgi.App`` instances through this same driver, so its own
cost is in both columns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import falcon.asgi
from falcon.errors import WebSocketDisconnected


def ws_scope(path: str) -> dict[str, Any]:
    """An ASGI WebSocket scope for ``path`` (what uvicorn would pass)."""
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
    }


class Lifespan:
    """Run the app's ASGI lifespan in the background: startup on enter, shutdown on exit."""

    def __init__(self, app: falcon.asgi.App) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> None:
        self.task = asyncio.create_task(
            self.app(
                {"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self.outbox.put
            )
        )
        await self._step("startup")

    async def __aexit__(self, *exc: object) -> None:
        await self._step("shutdown")
        await self.task

    async def _step(self, phase: str) -> None:
        await self.inbox.put({"type": f"lifespan.{phase}"})
        event = await self.outbox.get()
        if event["type"] != f"lifespan.{phase}.complete":
            raise RuntimeError(f"lifespan {phase} failed: {event}")


class IdleClient:
    """One in-process connection that sends nothing and counts what it gets.

    ``on_frame`` is called for every ``websocket.send`` event; ``hang()``
    makes every later send block until ``release()`` (a peer that stopped
    reading).
    """

    __slots__ = ("_gone", "_stall", "accepted", "closed", "frames", "on_frame", "task")

    def __init__(self, on_frame: Callable[[], None]) -> None:
        self.on_frame = on_frame
        self.frames = 0
        self.accepted = asyncio.Event()
        self.closed: int | None = None
        self._gone = asyncio.get_running_loop().create_future()
        self._stall: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def open(self, app: falcon.asgi.App, path: str) -> None:
        self.task = asyncio.create_task(app(ws_scope(path), self._receive(), self._send))

    def _receive(self) -> Callable[[], Any]:
        sent_connect = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_connect
            if not sent_connect:
                sent_connect = True
                return {"type": "websocket.connect"}
            code: int = await self._gone
            return {"type": "websocket.disconnect", "code": code}

        return receive

    async def _send(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "websocket.send":
            if self._stall is not None:
                await self._stall
            self.frames += 1
            self.on_frame()
        elif kind == "websocket.accept":
            self.accepted.set()
        elif kind == "websocket.close":
            self.closed = event.get("code", 1000)

    def hang(self) -> None:
        self._stall = asyncio.get_running_loop().create_future()

    def release(self) -> None:
        if self._stall is not None and not self._stall.done():
            self._stall.set_result(None)
        self._stall = None

    async def disconnect(self) -> None:
        self.release()
        if not self._gone.done():
            self._gone.set_result(1000)
        if self.task is not None:
            await asyncio.wait([self.task], timeout=5)


class Counter:
    """Counts frames across all clients; sets ``done`` at the expected count."""

    __slots__ = ("done", "left")

    def __init__(self) -> None:
        self.left = 0
        self.done = asyncio.Event()

    def expect(self, count: int) -> None:
        self.left = count
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


class Members:
    """The hand-written app: accept, keep the socket, idle in receive."""

    def __init__(self) -> None:
        self.sockets: list[Any] = []

    async def on_websocket(self, req: Any, ws: Any) -> None:
        await ws.accept()
        self.sockets.append(ws)
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnected:
            self.sockets.remove(ws)
