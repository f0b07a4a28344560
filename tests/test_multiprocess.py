"""Two uvicorn processes sharing one real Redis (tests/apps/rooms.py)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from pachinko.testing import ServerProcess
from tests.helpers import TRY_AGAIN_LATER, attempt, eventually
from tests.redis_server import unique_prefix

ROOT = Path(__file__).resolve().parent.parent
TTL = 1.5

pytestmark = [pytest.mark.redis, pytest.mark.live]


def serve(backend: str, app: str = "tests.apps.rooms:app") -> ServerProcess:
    return ServerProcess(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        cwd=ROOT,
        env={"PACHINKO_BACKEND": backend},
    )


async def ask(ws: Any, request: dict[str, Any], reply: str) -> Any:
    await ws.send_json(request)
    return await ws.expect(type=reply)


async def test_rooms_users_and_presence_span_two_processes(redis_url: str) -> None:
    prefix = unique_prefix()
    backend = f"{redis_url}?presence_ttl={TTL}&prefix={prefix}"
    async with (
        serve(backend) as one,
        serve(backend) as two,
        one.websocket("/ws/rooms?user=ann") as ann,
        two.websocket("/ws/rooms?user=bob") as bob,
        two.websocket("/ws/rooms?user=ann") as ann2,
        redis.asyncio.Redis.from_url(redis_url) as client,
    ):
        me = [await ask(ws, {"type": "whoami"}, "me") for ws in (ann, bob, ann2)]
        ann_id, bob_id, ann2_id = (m["id"] for m in me)
        assert me[0]["node"] != me[1]["node"] == me[2]["node"]
        for ws in (ann, bob, ann2):
            await ask(ws, {"type": "join", "room": "lobby"}, "joined")
        await ask(bob, {"type": "join", "room": "only-two"}, "joined")
        await ask(ann, {"type": "join", "room": "only-one"}, "joined")

        # a process subscribes to the rooms it has local members of, only
        numsub = dict(
            await client.pubsub_numsub(f"{prefix}:ch:room:lobby", f"{prefix}:ch:room:only-two")
        )
        assert numsub == {
            f"{prefix}:ch:room:lobby".encode(): 2,
            f"{prefix}:ch:room:only-two".encode(): 1,
        }

        # a room broadcast from one process reaches the members on both
        sent = await ask(ann, {"type": "say", "room": "lobby", "text": "hi", "ack": True}, "sent")
        assert (sent["local"], sent["remote"]) == (0, 1)  # ann excluded; one other process
        assert (await bob.expect(type="said"))["text"] == "hi"
        assert (await ann2.expect(type="said"))["text"] == "hi"
        await ann.expect_silence(within=0.05)
        await bob.send_json({"type": "say", "room": "lobby", "text": "hello"})
        assert (await ann.expect(type="said"))["text"] == "hello"
        assert (await ann2.expect(type="said"))["text"] == "hello"

        # send_to_user and send_to_connection cross processes
        await bob.send_json({"type": "dm", "to": "ann", "text": "psst"})
        assert (await ann.expect(type="dm"))["text"] == "psst"
        assert (await ann2.expect(type="dm"))["text"] == "psst"
        await bob.expect_silence(within=0.05)
        await bob.send_json({"type": "direct", "to": ann_id, "text": "just you"})
        assert (await ann.expect(type="direct"))["text"] == "just you"
        await ann2.expect_silence(within=0.05)

        # the same members and rooms from both processes
        everyone = sorted([ann_id, bob_id, ann2_id])
        for ws in (ann, bob):
            members = await ask(ws, {"type": "members", "room": "lobby"}, "members")
            assert members["ids"] == everyone
            rooms = await ask(ws, {"type": "rooms"}, "rooms")
            assert rooms["rooms"] == ["lobby", "only-one", "only-two"]

        # a process that dies (no clean shutdown): its members vanish within the TTL
        one.send_signal(signal.SIGKILL)
        await one.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        while True:
            members = await ask(bob, {"type": "members", "room": "lobby"}, "members")
            if members["ids"] == sorted([bob_id, ann2_id]):
                break
            assert members["ids"] == everyone
            assert loop.time() - killed < TTL + 2.0, "members of the dead process remain"
            await asyncio.sleep(0.1)
        assert loop.time() - killed <= TTL + 1.0
        rooms = await ask(bob, {"type": "rooms"}, "rooms")
        assert rooms["rooms"] == ["lobby", "only-two"]


async def test_the_per_user_limit_holds_for_concurrent_handshakes_on_two_processes(
    redis_url: str,
) -> None:
    """Sixteen handshakes of one user at once, half on each process, limit 3: 3 pass.

    Before, each process counted then recorded in separate round trips: 6 to
    10 passed.
    """
    backend = f"{redis_url}?presence_ttl={TTL}&prefix={unique_prefix()}"
    outcomes: list[int | str] = []
    release = asyncio.Event()
    async with (
        serve(backend, "tests.apps.limited:app") as one,
        serve(backend, "tests.apps.limited:app") as two,
    ):
        attempts = [
            asyncio.ensure_future(
                attempt(lambda s=server: s.websocket("/ws/rooms?user=ann"), outcomes, release)
            )
            for server in (one, two) * 8
        ]
        await eventually(lambda: len(outcomes) == 16, timeout=20)
        assert sorted(outcomes, key=str) == [TRY_AGAIN_LATER] * 13 + ["open"] * 3
        release.set()
        await asyncio.gather(*attempts)
