"""Presence across real processes sharing one Redis (tests/apps/presence.py).

One user with tabs on two processes joins once and leaves once; the members
of a SIGKILLed process leave after the presence TTL, announced exactly once
by the survivors; Redis down while presence is written: loud, retried,
right in the end.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

import pachinko
from pachinko import RoomPolicy, Settings, User
from pachinko.auth import sign_token
from pachinko.backends.redis import RedisBackend
from pachinko.testing import ServerProcess
from tests.apps.presence import SECRET, Presence
from tests.helpers import make_app, recv_json
from tests.redis_server import RedisServer, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
LISTEN = ("--host", "127.0.0.1", "--port", "0")
TTL = 1.5  # presence_ttl; the heartbeat (and the reaper) runs every TTL / 3

pytestmark = [pytest.mark.redis, pytest.mark.live]


def serve(backend: str, linger: float = 0.0) -> ServerProcess:
    return ServerProcess(
        [sys.executable, "-m", "uvicorn", "tests.apps.presence:app", *LISTEN],
        cwd=ROOT,
        env={"PACHINKO_BACKEND": backend, "PRESENCE_LINGER": str(linger)},
    )


def path(user: str, **info: Any) -> str:
    return "/ws/presence?token=" + sign_token(SECRET, user, ttl=60, info=info)


async def join(ws: Any, room: str = "lobby") -> None:
    await ws.send_json({"type": "join", "room": room})
    await ws.expect(type="joined", room=room)


async def who(ws: Any, room: str = "lobby") -> Any:
    await ws.send_json({"type": "who", "room": room})
    return (await ws.expect(type="who"))["members"]


def events(ws: Any) -> list[tuple[str, str]]:
    """The presence events ``ws`` received so far: (event, user)."""
    return [(m["event"], m["user"]) for m in ws.received if m.get("type") == "presence"]


def presence(event: str, user: str, room: str = "lobby", **info: Any) -> dict[str, Any]:
    return {"type": "presence", "event": event, "room": room, "user": user, "info": info}


async def test_a_user_with_tabs_on_two_processes_joins_once_and_leaves_once(
    redis_url: str,
) -> None:
    backend = f"{redis_url}?presence_ttl={TTL}&prefix={unique_prefix()}"
    async with (
        serve(backend) as one,
        serve(backend) as two,
        one.websocket(path("bob", name="Bob")) as bob,
        two.websocket(path("eve", name="Eve")) as eve,
    ):
        await join(bob)
        await join(eve)
        await bob.expect(presence("join", "eve", name="Eve"))  # across processes
        async with one.websocket(path("ann", name="Ann")) as tab1:
            await join(tab1)
            async with two.websocket(path("ann", name="Ann")) as tab2:
                await join(tab2)
                both = {"ann": {"name": "Ann"}, "bob": {"name": "Bob"}, "eve": {"name": "Eve"}}
                # both processes list the same members
                assert await who(bob) == both
                assert await who(eve) == both
            # one tab left (on process two): ann is still there, for both
            assert await who(eve) == both
            assert await who(bob) == both
        # the last tab closed: one leave, seen in both processes
        for ws in (bob, eve):
            await ws.expect(presence("leave", "ann", name="Ann"))
            # the who reply comes after everything announced before it
            assert await who(ws) == {"bob": {"name": "Bob"}, "eve": {"name": "Eve"}}
        assert events(bob) == [("join", "bob"), ("join", "eve"), ("join", "ann"), ("leave", "ann")]
        assert events(eve) == [("join", "eve"), ("join", "ann"), ("leave", "ann")]


async def test_members_of_a_killed_process_leave_after_the_ttl_once(redis_url: str) -> None:
    backend = f"{redis_url}?presence_ttl={TTL}&prefix={unique_prefix()}"
    async with (
        serve(backend) as one,
        serve(backend) as two,
        serve(backend) as three,
        two.websocket(path("bob")) as bob,
        three.websocket(path("eve")) as eve,
    ):
        await join(bob)
        await join(eve)
        async with (
            one.websocket(path("ann", name="Ann")) as ann,
            one.websocket(path("carl")) as carl,
            two.websocket(path("carl")) as carl2,
        ):
            for ws in (ann, carl, carl2):
                await join(ws)
            assert await who(bob) == {"ann": {"name": "Ann"}, "bob": {}, "carl": {}, "eve": {}}
            loop = asyncio.get_running_loop()
            one.send_signal(signal.SIGKILL)
            killed = loop.time()
            # ann was only on the dead process: she leaves; carl is still on two
            for ws in (bob, eve):
                await ws.expect(presence("leave", "ann", name="Ann"), timeout=TTL * 3)
            elapsed = loop.time() - killed
            assert elapsed < TTL + TTL / 3 + 1.0, elapsed  # the TTL, one heartbeat, slack
            # NOTE: every survivor runs the reaper each heartbeat (TTL / 3): a
            #   second announcement would come within two more heartbeats.
            await asyncio.sleep(2 * TTL / 3 + 0.3)
            for ws in (bob, eve):
                assert await who(ws) == {"bob": {}, "carl": {}, "eve": {}}
                assert [e for e in events(ws) if e[0] == "leave"] == [("leave", "ann")]
        await one.wait(5)


async def test_redis_down_while_presence_is_written(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Loud, retried, and right in the end: the held-back join is announced."""
    caplog.set_level(logging.WARNING, "pachinko")
    prefix = unique_prefix()
    users = {"ann": User("ann", {"name": "Ann"}), "bob": User("bob")}

    def app() -> Any:
        router = pachinko.WebSocketRouter()
        router.add_route("/presence", Presence)
        return make_app(
            router,
            settings=Settings(presence_linger=0.0),
            backend=RedisBackend(redis_server.url, prefix=prefix, reconnect_min=0.05),
            authenticate=lambda req: users[req.get_param("user")],
            rooms={"lobby": RoomPolicy(presence=True)},
        )

    async with (
        falcon.testing.ASGIConductor(app()) as one,
        falcon.testing.ASGIConductor(app()) as two,
        two.simulate_ws("/ws/presence", query_string="user=bob") as bob,
    ):
        await bob.send_text('{"type": "join", "room": "lobby"}')
        assert (await recv_json(bob))["event"] == "join"
        await recv_json(bob)
        redis_server.stop()
        async with one.simulate_ws("/ws/presence", query_string="user=ann") as ann:
            await ann.send_text('{"type": "join", "room": "lobby"}')
            assert await recv_json(ann) == {"type": "joined", "room": "lobby"}
            assert any(
                "presence of user 'ann' in room 'lobby' not recorded" in r.message
                for r in caplog.records
            )
            await redis_server.start()
            # on reconnection the entry is written and the join announced, once
            assert await recv_json(bob, timeout=10) == presence("join", "ann", name="Ann")
            await bob.send_text('{"type": "who", "room": "lobby"}')
            reply = await recv_json(bob)
            assert reply["members"] == {"ann": {"name": "Ann"}, "bob": {}}
