"""Shared fixtures: build real Falcon apps and talk to them in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import falcon.asgi
import falcon.testing
import pytest
from falcon.errors import WebSocketDisconnected

import pachinko

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


def make_app(
    router: pachinko.WebSocketRouter, prefix: str = "/ws", **install_options: Any
) -> falcon.asgi.App:
    """A plain Falcon app with ``router`` mounted under ``prefix``."""
    app = falcon.asgi.App()
    pachinko.mount(app, prefix, router, **install_options)
    return app


@pytest.fixture
async def conductor_for() -> AsyncIterator[Callable[[falcon.asgi.App], Any]]:
    """Open ASGIConductors (lifespan included) and close them after the test."""
    opened: list[falcon.testing.ASGIConductor] = []

    async def open_(app: falcon.asgi.App) -> falcon.testing.ASGIConductor:
        conductor = falcon.testing.ASGIConductor(app)
        await conductor.__aenter__()
        opened.append(conductor)
        return conductor

    yield open_
    for conductor in reversed(opened):
        await conductor.__aexit__(None, None, None)


async def recv_json(ws: Any, timeout: float = RECEIVE_TIMEOUT) -> Any:
    """Receive one text message and decode it, or fail after ``timeout``."""
    return json.loads(await asyncio.wait_for(ws.receive_text(), timeout))


async def expect_close(ws: Any, timeout: float = RECEIVE_TIMEOUT) -> int | None:
    """Wait until the server closes ``ws``; return the close code."""

    async def wait() -> int | None:
        while True:
            try:
                message = await ws.receive_text()
            except WebSocketDisconnected:
                return ws.close_code  # type: ignore[no-any-return]
            raise AssertionError(f"expected a close, got a message: {message!r}")

    return await asyncio.wait_for(wait(), timeout)


async def eventually(check: Callable[[], bool], timeout: float = RECEIVE_TIMEOUT) -> None:
    """Poll ``check`` until it is true, or fail after ``timeout``."""

    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)
