"""Fixtures shared by the test modules (helpers live in ``tests/helpers.py``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import falcon.asgi
import falcon.testing
import pytest

from pachinko.backends import InProcessBackend
from pachinko.backends.redis import RedisBackend
from tests.helpers import BackendFactory
from tests.redis_server import RedisServer, private_redis, unique_prefix


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


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private redis-server the test may stop and restart (skipped if missing)."""
    async with private_redis(tmp_path) as server:
        yield server


@pytest.fixture
async def redis_url(tmp_path: Path) -> AsyncIterator[str]:
    """$REDIS_URL if set, else the URL of a private redis-server."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    async with private_redis(tmp_path) as server:
        yield server.url


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BackendFactory]:
    """A factory of fresh backends: in-process, or Redis (one prefix per test).

    The test runs once with each; a module that needs another shape defines
    its own ``backend`` fixture (it takes precedence).
    """
    if request.param == "memory":
        yield InProcessBackend
        return
    prefix = unique_prefix()
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        yield lambda: RedisBackend(url, prefix=prefix, presence_ttl=2.0)
        return
    async with private_redis(tmp_path) as server:
        yield lambda: RedisBackend(server.url, prefix=prefix, presence_ttl=2.0)
