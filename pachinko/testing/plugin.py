"""pytest plugin (entry point ``pachinko``): fixtures of :mod:`pachinko.testing`.

Fixtures:
    pachinko_timeout: Default receive timeout in seconds
        (``--pachinko-timeout``, default 5).
    pachinko_client: ``await pachinko_client(app)`` returns a started
        :class:`~pachinko.testing.AppClient`; it is shut down after the test.
    pachinko_live: ``await pachinko_live(app, **uvicorn_options)`` returns a
        started :class:`~pachinko.testing.LiveServer` on a free loopback
        port; it is stopped after the test.

The async fixtures need pytest-asyncio (or another plugin running async
fixtures).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from ._stream import DEFAULT_TIMEOUT
from .inprocess import AppClient
from .live import LiveServer

_F = TypeVar("_F", bound=Callable[..., Any])

try:  # pragma: no branch
    import pytest_asyncio

    _fixture: Any = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - async fixtures then need another plugin
    _fixture = pytest.fixture


def _async_fixture(fn: _F) -> _F:
    return cast(_F, _fixture(fn))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pachinko")
    group.addoption(
        "--pachinko-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"default receive timeout of pachinko test clients (default {DEFAULT_TIMEOUT:g})",
    )


@pytest.fixture
def pachinko_timeout(request: pytest.FixtureRequest) -> float:
    """Default seconds a pachinko test client waits for a message."""
    value = request.config.getoption("--pachinko-timeout")
    return DEFAULT_TIMEOUT if value is None else float(value)


@_async_fixture
async def pachinko_client(
    pachinko_timeout: float,
) -> AsyncIterator[Callable[..., Awaitable[AppClient]]]:
    """Open in-process clients of Falcon apps; shut them down after the test."""
    opened: list[AppClient] = []

    async def open_(app: Any, *, timeout: float | None = None) -> AppClient:
        client = AppClient(app, timeout=pachinko_timeout if timeout is None else timeout)
        await client.__aenter__()
        opened.append(client)
        return client

    yield open_
    for client in reversed(opened):
        await client.__aexit__(None, None, None)


@_async_fixture
async def pachinko_live(
    pachinko_timeout: float,
) -> AsyncIterator[Callable[..., Awaitable[LiveServer]]]:
    """Serve Falcon apps with uvicorn on free loopback ports; stop them after the test."""
    started: list[LiveServer] = []

    async def start(app: Any, **uvicorn_options: Any) -> LiveServer:
        uvicorn_options.setdefault("timeout", pachinko_timeout)
        server = LiveServer(app, **uvicorn_options)
        await server.__aenter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.__aexit__(None, None, None)
