"""Graceful shutdown of a real server process on SIGTERM / SIGINT, seen by real clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from pachinko.testing import ServerProcess

pytestmark = pytest.mark.live

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parents[1]
# Close codes spelled out (RFC 6455 §7.4.1 and the IANA registry).
GOING_AWAY = 1001
SERVICE_RESTART = 1012


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    return tmp_path / "events.txt"


Start = Callable[..., Awaitable[ServerProcess]]


def events(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def command(mode: str) -> list[str]:
    """``python -m tests.apps.workers_app 0 MODE``: port 0, read from uvicorn's log."""
    return [sys.executable, "-m", "tests.apps.workers_app", "0", mode]


@pytest.fixture
async def start_server(events_file: Path) -> AsyncIterator[Start]:
    servers: list[ServerProcess] = []

    async def start(mode: str, **env: str) -> ServerProcess:
        server = ServerProcess(
            command(mode),
            cwd=ROOT,
            env={"PACHINKO_EVENTS": str(events_file), **env},
            timeout=TIMEOUT,
        )
        await server.__aenter__()  # started and accepting connections
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def connect(server: ServerProcess) -> ClientConnection:
    ws = await websockets.connect(server.url + "/ws/room", open_timeout=TIMEOUT)
    await ws.send('{"type": "hello"}')
    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == '{"type":"hi"}'
    return ws


async def close_code_seen(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    return ws.close_code


async def wait_exit(server: ServerProcess) -> str:
    """Wait (bounded) until the process exits; return all it wrote."""
    await server.wait()
    await server.stop()  # reads the rest of its output
    return server.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_closes_sockets_with_1001_then_stops_workers_then_the_backend(
    start_server: Start, events_file: Path, sig: signal.Signals
) -> None:
    server = await start_server("pachinko")
    clients = [await connect(server), await connect(server)]
    server.send_signal(sig)
    codes = [await close_code_seen(ws) for ws in clients]
    output = await wait_exit(server)
    assert codes == [GOING_AWAY, GOING_AWAY], output
    assert events(events_file) == [
        "worker started",
        "on_disconnect 1001",
        "on_disconnect 1001",
        "worker cancelled",
        "backend closed",
    ], output
    assert "Application shutdown complete" in output


async def test_plain_uvicorn_closes_with_1012_and_on_disconnect_still_runs(
    start_server: Start, events_file: Path
) -> None:
    # What docs/workers.md says about serving with plain uvicorn.
    server = await start_server("uvicorn")
    ws = await connect(server)
    server.send_signal(signal.SIGTERM)
    code = await close_code_seen(ws)
    output = await wait_exit(server)
    assert code == SERVICE_RESTART, output
    assert events(events_file) == [
        "worker started",
        "on_disconnect 1012",
        "worker cancelled",
        "backend closed",
    ], output


async def test_a_worker_crash_after_startup_shuts_the_server_down_gracefully(
    start_server: Start, events_file: Path
) -> None:
    server = await start_server("pachinko", PACHINKO_CRASH_AFTER="hello")
    ws = await connect(server)
    code = await close_code_seen(ws)  # nobody sent a signal: the crash did
    output = await wait_exit(server)
    assert code == GOING_AWAY, output
    assert "worker 'ticker' crashed; shutting the server down (SIGTERM)" in output
    assert "RuntimeError: the feed went away" in output  # the traceback
    assert events(events_file) == [
        "worker started",
        "on_disconnect 1001",
        "backend closed",
    ], output
    assert "Application shutdown complete" in output


async def test_a_worker_crash_during_startup_fails_the_server_start(events_file: Path) -> None:
    # never starts, so not a ServerProcess (which would fail its start)
    proc = await asyncio.to_thread(
        subprocess.run,
        command("uvicorn"),
        cwd=ROOT,
        env={**os.environ, "PACHINKO_EVENTS": str(events_file), "PACHINKO_CRASH_AFTER": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
    )
    output = proc.stdout
    assert proc.returncode != 0
    assert "worker 'ticker' crashed during startup" in output
    assert "RuntimeError: the feed went away" in output
    assert "Application startup failed. Exiting." in output
