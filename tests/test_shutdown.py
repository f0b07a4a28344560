"""Graceful shutdown over a real uvicorn server, and a crashed worker stopping it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import falcon.asgi
import pytest
import uvicorn
import websockets
from websockets.exceptions import ConnectionClosed

import pachinko
from pachinko import WebSocketResource, WebSocketRouter
from pachinko.server import Server
from tests.helpers import eventually

pytestmark = pytest.mark.live

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parents[1]


async def test_shutdown_closes_sockets_with_1001_and_runs_on_disconnect() -> None:
    order: list[str] = []

    class Room(WebSocketResource):
        async def on_hello(self, ws: Any, payload: Any) -> None:
            await self.send({"type": "hi"})

        async def on_disconnect(self, ws: Any, close_code: int) -> None:
            order.append(f"on_disconnect {close_code}")

    async def ticker() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            order.append("worker cancelled")
            raise

    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/room", Room)
    pachinko.mount(app, "/ws", router, workers=[ticker])
    server = Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="websockets-sansio")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, TIMEOUT)
    port = server.servers[0].sockets[0].getsockname()[1]
    clients = [await websockets.connect(f"ws://127.0.0.1:{port}/ws/room") for _ in range(3)]
    for ws in clients:
        await ws.send('{"type": "hello"}')
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == '{"type":"hi"}'
    server.should_exit = True
    codes = []
    for ws in clients:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        codes.append(ws.close_code)
    async with asyncio.timeout(TIMEOUT):
        await task
    assert codes == [1001, 1001, 1001]
    # every on_disconnect ran before the workers were stopped
    assert order == ["on_disconnect 1001"] * 3 + ["worker cancelled"]


def test_a_worker_crash_after_startup_shuts_plain_uvicorn_down() -> None:
    env = {**os.environ, "PACHINKO_CRASH_AFTER": "0.5"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.apps.workers_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--lifespan",
            "on",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Application startup complete" in output
    assert "worker 'ticker' crashed; shutting the server down (SIGTERM)" in output
    assert "RuntimeError: the feed went away" in output
    assert "Application shutdown complete" in output
