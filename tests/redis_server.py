"""A real Redis for tests: $REDIS_URL, or a private redis-server on a free port.

The ``redis_server`` and ``redis_url`` fixtures (``tests/conftest.py``) are
built on :func:`private_redis`; a test module may also use it directly.
Without $REDIS_URL and without a ``redis-server`` binary the tests that need
Redis are skipped with the reason, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import free_port

__all__ = ["RedisServer", "private_redis", "unique_prefix"]

MISSING = "redis-server not found: install it (apt-get install redis-server) or set REDIS_URL"


def _missing() -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(MISSING)
    pytest.skip(MISSING)


async def ping(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a Redis answers PING on ``host:port`` (raw protocol, no client)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 2)) == b"+PONG\r\n"
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class RedisServer:
    """A private ``redis-server`` (no persistence) that can be stopped and restarted.

    Restarting keeps the port, so clients reconnect to the same URL.
    """

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        # NOTE: redis-server cannot report a port it picked (``--port 0``
        #   turns TCP off), so it gets one that is free now.
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server and wait (at most 10 s) until it answers PING."""
        self.process = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not await ping(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if loop.time() > deadline:
                raise RuntimeError("redis-server did not answer PING within 10 s")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def private_redis(directory: Path) -> AsyncIterator[RedisServer]:
    """Run a private redis-server for the duration of the block (skip if missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing()
        raise AssertionError("unreachable")
    server = RedisServer(binary, directory)
    await server.start()
    try:
        yield server
    finally:
        server.stop()


def unique_prefix() -> str:
    """A key prefix no other test uses (tests may share $REDIS_URL)."""
    return f"pachinko-test-{uuid.uuid4().hex[:12]}"
