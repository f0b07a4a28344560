"""Recovery is race-free: broadcasts during the replay are neither lost nor doubled.

Two apps in this process play two server processes (each its own manager and
backend; on Redis they share one Redis, as processes would). Hypothesis
draws interleavings of broadcasts, disconnects and reconnects-with-position;
a client that recovered must end with every broadcast exactly once, in order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pachinko.backends import ConnectionBackend, InProcessBackend
from pachinko.backends.redis import RedisBackend
from pachinko.testing import AppClient, RoomFollower
from tests.apps.history import build_app
from tests.redis_server import private_redis, unique_prefix

ROOM = "feed:race"


async def recovered(follower: RoomFollower, client: AppClient, room: str, since: str | None) -> Any:
    """Open a connection and join ``room`` from ``since``; return it (entered)."""
    cm = client.websocket("/ws/history")
    ws = await cm.__aenter__()
    request: dict[str, Any] = {"type": "join", "room": room}
    request["since" if since is not None else "last"] = since if since is not None else 0
    await ws.send_json(request)
    outcome = await follower.recovery(ws)
    assert outcome["recovered"], outcome
    return cm, ws


Factory = Callable[[], ConnectionBackend]


async def scenario(redis_url: str | None, steps: list[tuple[str, int]]) -> None:
    """Run ``steps``; check the follower got every broadcast exactly once, in order.

    ``redis_url``: two apps on that Redis (reconnects alternate between
    them), or ``None`` (one app, in-process).
    """
    backend: Factory | None = None
    if redis_url is not None:
        prefix = unique_prefix()
        url = redis_url

        def backend() -> ConnectionBackend:
            return RedisBackend(url, prefix=prefix)

    follower = RoomFollower(ROOM)
    sent = 0
    async with contextlib.AsyncExitStack() as stack:
        one = await stack.enter_async_context(
            AppClient(build_app(backend() if backend else InProcessBackend()))
        )
        two = await stack.enter_async_context(AppClient(build_app(backend()))) if backend else one
        sender = await stack.enter_async_context(two.websocket("/ws/history"))
        cm, ws = await recovered(follower, one, ROOM, None)
        for index, (action, arg) in enumerate(steps):
            if action == "burst":
                await sender.send_json({"type": "burst", "room": ROOM, "count": arg, "start": sent})
                sent += arg
                await sender.expect(type="burst_done")
            elif action == "read":
                # take some of what was sent (it all arrives: no wait can fail)
                await follower.follow(ws, min(arg, sent - len(follower.messages)))
            else:  # drop; reconnect (to either app) while a burst is under way
                await cm.__aexit__(None, None, None)
                await sender.send_json({"type": "burst", "room": ROOM, "count": arg, "start": sent})
                sent += arg
                target = (one, two)[index % 2]
                cm, ws = await recovered(follower, target, ROOM, follower.position)
                await sender.expect(type="burst_done")
        await follower.follow(ws, sent - len(follower.messages))
        await cm.__aexit__(None, None, None)
    follower.assert_exactly([{"type": "said", "room": ROOM, "n": n} for n in range(sent)])


STEPS = st.lists(
    st.tuples(st.sampled_from(["burst", "read", "reconnect"]), st.integers(0, 12)),
    min_size=1,
    max_size=8,
)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """``None`` (in-process), or the URL of a Redis (each example its own prefix)."""
    if request.param == "memory":
        yield None
        return
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    async with private_redis(tmp_path) as server:
        yield server.url


async def test_a_fixed_interleaving_recovers_exactly(backend: Any) -> None:
    await scenario(
        backend,
        [("burst", 5), ("read", 3), ("reconnect", 10), ("burst", 4), ("reconnect", 7)],
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
async def test_random_interleavings_never_give_a_gap_or_a_duplicate(
    backend: Any, steps: list[tuple[str, int]]
) -> None:
    await scenario(backend, steps)
