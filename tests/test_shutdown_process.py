"""Graceful shutdown of a real server process on SIGTERM / SIGINT, seen by real clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.test_e2e_uvicorn import free_port

pytestmark = pytest.mark.live

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parents[1]
# Close codes spelled out (RFC 6455 §7.4.1 and the IANA registry).
GOING_AWAY = 1001
SERVICE_RESTART = 1012


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    return tmp_path / "events.txt"


Start = Callable[..., tuple["subprocess.Popen[str]", int]]


def events(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def start_server(events_file: Path) -> Iterator[Start]:
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str, **env: str) -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.workers_app", str(port), mode],
            cwd=ROOT,
            env={**os.environ, "PACHINKO_EVENTS": str(events_file), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return proc, port

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


async def connect(port: int) -> ClientConnection:
    """Connect once the server listens (bounded retries)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws/room")
            except OSError:
                await asyncio.sleep(0.05)
                continue
            await ws.send('{"type": "hello"}')
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == '{"type":"hi"}'
            return ws


async def close_code_seen(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    return ws.close_code


async def wait_exit(proc: subprocess.Popen[str]) -> str:
    output, _ = await asyncio.to_thread(proc.communicate, timeout=TIMEOUT)
    return output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_closes_sockets_with_1001_then_stops_workers_then_the_backend(
    start_server: Start, events_file: Path, sig: signal.Signals
) -> None:
    proc, port = start_server("pachinko")
    clients = [await connect(port), await connect(port)]
    proc.send_signal(sig)
    codes = [await close_code_seen(ws) for ws in clients]
    output = await wait_exit(proc)
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
    proc, port = start_server("uvicorn")
    ws = await connect(port)
    proc.send_signal(signal.SIGTERM)
    code = await close_code_seen(ws)
    output = await wait_exit(proc)
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
    proc, port = start_server("pachinko", PACHINKO_CRASH_AFTER="hello")
    ws = await connect(port)
    code = await close_code_seen(ws)  # nobody sent a signal: the crash did
    output = await wait_exit(proc)
    assert code == GOING_AWAY, output
    assert "worker 'ticker' crashed; shutting the server down (SIGTERM)" in output
    assert "RuntimeError: the feed went away" in output  # the traceback
    assert events(events_file) == [
        "worker started",
        "on_disconnect 1001",
        "backend closed",
    ], output
    assert "Application shutdown complete" in output


async def test_a_worker_crash_during_startup_fails_the_server_start(
    start_server: Start, events_file: Path
) -> None:
    proc, _ = start_server("uvicorn", PACHINKO_CRASH_AFTER="0")
    output = await wait_exit(proc)
    assert proc.returncode != 0
    assert "worker 'ticker' crashed during startup" in output
    assert "RuntimeError: the feed went away" in output
    assert "Application startup failed. Exiting." in output
