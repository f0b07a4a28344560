"""Room history and recovery through a real Falcon app, over both backends.

Every test runs with the in-process backend and with a RedisBackend on a real
Redis (a private redis-server). The app is tests/apps/history.py.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import pachinko
from pachinko import RoomPolicy, Settings, WebSocketResource
from pachinko.rooms import Position, RoomPolicies
from pachinko.testing import AppClient, RoomFollower
from tests.apps.history import build_app
from tests.helpers import BackendFactory, eventually


def ws_of(client: AppClient) -> Any:
    return client.websocket("/ws/history")


async def say(ws: Any, room: str, n: int) -> None:
    await ws.send_json({"type": "say", "room": room, "n": n})


async def burst(ws: Any, room: str, count: int, start: int = 0) -> None:
    await ws.send_json({"type": "burst", "room": room, "count": count, "start": start})
    await ws.expect(type="burst_done", room=room)


async def join(ws: Any, room: str, **recovery: Any) -> dict[str, Any] | None:
    await ws.send_json({"type": "join", "room": room, **recovery})
    if recovery:
        message: dict[str, Any] = await ws.expect(type="recovery", room=room)
        return message
    await ws.expect(type="joined", room=room)
    return None


def said(numbers: Any, room: str) -> list[dict[str, Any]]:
    return [{"type": "said", "room": room, "n": n} for n in numbers]


async def test_each_broadcast_to_a_history_room_carries_its_position(
    backend: BackendFactory,
) -> None:
    async with AppClient(build_app(backend())) as client, ws_of(client) as ws:
        await join(ws, "feed:a")
        await join(ws, "plain")
        await say(ws, "feed:a", 1)
        await say(ws, "plain", 2)
        await say(ws, "feed:a", 3)
        first = await ws.expect(type="said", n=1)
        plain = await ws.expect(type="said", n=2)
        third = await ws.expect(type="said", n=3)
        assert "_pos" not in plain  # a room without history sends what it got
        one, three = Position.parse(first["_pos"]), Position.parse(third["_pos"])
        assert (one.offset, three.offset) == (1, 2)
        assert one.epoch == three.epoch


async def test_a_reconnecting_client_gets_exactly_what_it_missed_then_the_live_stream(
    backend: BackendFactory,
) -> None:
    follower = RoomFollower("feed:r")
    async with AppClient(build_app(backend())) as client, ws_of(client) as sender:
        async with ws_of(client) as phone:
            await join(phone, "feed:r")
            await burst(sender, "feed:r", 5)
            await follower.follow(phone, 5)
        # the phone dropped: 10 broadcasts it misses
        await burst(sender, "feed:r", 10, start=5)
        async with ws_of(client) as phone:
            outcome = await join(phone, "feed:r", since=follower.position)
            assert outcome is not None
            assert (outcome["recovered"], outcome["missed"], outcome["reason"]) == (True, 10, None)
            assert Position.parse(outcome["position"]).offset == 15
            await follower.follow(phone, 10)
            await say(sender, "feed:r", 15)
            await follower.follow(phone, 1)
        follower.assert_exactly(said(range(16), "feed:r"))
        assert follower.offsets == list(range(1, 17))


async def test_a_late_joiner_may_ask_for_the_last_n(backend: BackendFactory) -> None:
    async with AppClient(build_app(backend())) as client, ws_of(client) as sender:
        await burst(sender, "feed:late", 8)
        async with ws_of(client) as late:
            outcome = await join(late, "feed:late", last=3)
            assert outcome is not None
            assert (outcome["recovered"], outcome["missed"]) == (True, 3)
            follower = RoomFollower("feed:late")
            await follower.follow(late, 3)
            follower.assert_exactly(said(range(5, 8), "feed:late"))
            # more than kept: what is kept
            outcome = await join(late, "short:x", last=50)
            assert outcome is not None
            assert outcome["missed"] == 0


@pytest.mark.parametrize(
    ("since", "reason"),
    [
        ("garbage", "malformed"),
        ("x:-1", "malformed"),
        (":3", "malformed"),
        ("a:b:3", "malformed"),
        ("e:" + "9" * 40, "malformed"),
        ("e" * 70 + ":1", "malformed"),
        ("0000dead:1", "epoch"),
    ],
)
async def test_a_bad_position_is_told_recovered_false_and_the_client_still_joins(
    backend: BackendFactory, since: Any, reason: str
) -> None:
    async with AppClient(build_app(backend())) as client, ws_of(client) as ws:
        await say(ws, "feed:b", 0)  # the room has a history (an epoch)
        outcome = await join(ws, "feed:b", since=since)
        assert outcome is not None
        assert (outcome["recovered"], outcome["missed"], outcome["reason"]) == (False, 0, reason)
        await say(ws, "feed:b", 1)
        live = await ws.expect(type="said", n=1)
        assert Position.parse(live["_pos"]).offset == 2


async def test_an_offset_from_the_future_and_a_trimmed_history_are_refused(
    backend: BackendFactory,
) -> None:
    async with AppClient(build_app(backend())) as client, ws_of(client) as ws:
        await join(ws, "short:t")
        await say(ws, "short:t", 0)
        first = await ws.expect(type="said", n=0)
        epoch = Position.parse(first["_pos"]).epoch
        async with ws_of(client) as other:
            outcome = await join(other, "short:t", since=f"{epoch}:5")
            assert outcome is not None
            assert outcome["reason"] == "future"
        await burst(ws, "short:t", 5, start=1)  # keeps 3: offsets 4..6
        async with ws_of(client) as other:
            outcome = await join(other, "short:t", since=f"{epoch}:2")
            assert outcome is not None
            assert (outcome["recovered"], outcome["reason"]) == (False, "trimmed")
            assert outcome["position"] == f"{epoch}:6"
        async with ws_of(client) as other:
            outcome = await join(other, "short:t", since=f"{epoch}:3")
            assert outcome is not None
            assert (outcome["recovered"], outcome["missed"]) == (True, 3)
        async with ws_of(client) as other:  # up to date: nothing missed
            outcome = await join(other, "short:t", since=f"{epoch}:6")
            assert outcome is not None
            assert (outcome["recovered"], outcome["missed"]) == (True, 0)


async def test_expired_history_is_not_replayed(backend: BackendFactory) -> None:
    async with AppClient(build_app(backend())) as client, ws_of(client) as ws:
        await join(ws, "brief:e")
        await say(ws, "brief:e", 0)
        epoch = Position.parse((await ws.expect(type="said", n=0))["_pos"]).epoch
        await burst(ws, "brief:e", 2, start=1)
        await ws.expect(type="said", n=2)
        import asyncio

        await asyncio.sleep(0.7)  # NOTE: past the room's 0.5 s TTL (what is tested)
        async with ws_of(client) as other:
            outcome = await join(other, "brief:e", since=f"{epoch}:1")
            assert outcome is not None
            assert (outcome["recovered"], outcome["reason"]) == (False, "trimmed")
        async with ws_of(client) as other:
            outcome = await join(other, "brief:e", since=f"{epoch}:3")
            assert outcome is not None
            assert outcome["recovered"] is True


async def test_recovery_in_a_room_without_history_or_twice(backend: BackendFactory) -> None:
    async with AppClient(build_app(backend())) as client, ws_of(client) as ws:
        outcome = await join(ws, "plain", since="x:1")
        assert outcome is not None
        assert outcome["reason"] == "no_history"
        outcome = await join(ws, "plain", last=3)
        assert outcome is not None
        assert outcome["reason"] == "member"
        await say(ws, "plain", 1)
        assert "_pos" not in await ws.expect(type="said", n=1)


class Send(msgspec.Struct, tag="send"):
    room: str
    what: str


class Reserved(msgspec.Struct, tag="reserved"):
    _pos: int = 0


class Refusals(WebSocketResource):
    schema = Send

    async def on_send(self, ws: Any, payload: Send) -> None:
        messages: dict[str, Any] = {
            "list": [1, 2],
            "bytes": b"x",
            "str": "not json",
            "str-array": "[1]",
            "dict": {"_pos": 1},
            "str-object": '{"_pos": 1}',
            "struct-array": Array(1),
        }
        try:
            await self.broadcast_to_room(payload.room, messages[payload.what])
        except (TypeError, ValueError) as ex:
            await self.send({"type": "refused", "error": type(ex).__name__, "detail": str(ex)})


class Array(msgspec.Struct, array_like=True):
    x: int


@pytest.mark.parametrize(
    ("what", "error", "detail"),
    [
        ("list", "TypeError", "its messages must be JSON objects"),
        ("bytes", "TypeError", "its messages must be JSON objects"),
        ("str", "TypeError", "got a str that is not one: 'not json'"),
        ("str-array", "TypeError", "got a str that is not one"),
        ("struct-array", "TypeError", "encoded as an array"),
        ("dict", "ValueError", "may not have a field '_pos'"),
        ("str-object", "ValueError", "may not have a field '_pos'"),
    ],
)
async def test_a_history_room_refuses_what_cannot_carry_a_position(
    backend: BackendFactory, what: str, error: str, detail: str
) -> None:
    router = pachinko.WebSocketRouter()
    router.add_route("/r", Refusals)
    app = build_app_with(router, backend())
    async with AppClient(app) as client, client.websocket("/ws/r") as ws:
        await ws.send_json({"type": "send", "room": "h", "what": what})
        refused = await ws.expect(type="refused")
        assert refused["error"] == error
        assert detail in refused["detail"]
        assert "broadcast_to_room('h'): room 'h' keeps history" in refused["detail"]


def build_app_with(router: pachinko.WebSocketRouter, backend: Any, **rooms: Any) -> Any:
    import falcon.asgi

    app = falcon.asgi.App()
    pachinko.mount(
        app,
        "/ws",
        router,
        settings=Settings(),
        backend=backend,
        rooms=RoomPolicies({"h": RoomPolicy(history=5)}, **rooms),
    )
    return app


class Envelope(WebSocketResource):
    wire = "envelope"

    class Join(msgspec.Struct, tag="join"):
        room: str
        since: str | None = None

    class Note(msgspec.Struct, tag="note"):
        text: str

    schema = Join

    async def on_join(self, ws: Any, payload: Any) -> None:
        await self.join_room(payload.room, since=payload.since)
        await self.broadcast_to_room(payload.room, Envelope.Note(text="hi"), exclude_self=False)


async def test_the_envelope_shape_carries_the_position_beside_type_and_payload(
    backend: BackendFactory,
) -> None:
    router = pachinko.WebSocketRouter()
    router.add_route("/e", Envelope)
    app = build_app_with(router, backend(), position_field="at")
    async with AppClient(app) as client, client.websocket("/ws/e") as ws:
        await ws.send_json({"type": "join", "payload": {"room": "h", "since": "nope:0"}})
        recovery = await ws.expect(type="recovery")
        position = recovery["payload"].pop("position")
        assert recovery["payload"] == {
            "room": "h",
            "recovered": False,
            "missed": 0,
            "reason": "epoch",
        }
        assert Position.parse(position).offset == 0  # the room's history starts now
        note = await ws.expect(type="note")
        assert note["payload"] == {"text": "hi"}
        assert Position.parse(note["at"]).offset == 1
        assert list(note) == ["type", "payload", "at"]


@pytest.mark.redis
async def test_redis_down_a_broadcast_to_a_history_room_raises_and_writes_nothing(
    redis_server: Any,
) -> None:
    import redis.asyncio

    from pachinko.backends.redis import RedisBackend

    prefix = "hist-down"
    backend = RedisBackend(redis_server.url, prefix=prefix)
    async with AppClient(build_app(backend)) as client, ws_of(client) as ws:
        await join(ws, "feed:d")
        await say(ws, "feed:d", 1)
        old = Position.parse((await ws.expect(type="said", n=1))["_pos"])
        redis_server.stop()
        await say(ws, "feed:d", 2)
        assert (await ws.expect(type="error"))["reason"] == "unavailable"
        await redis_server.start()  # a new, empty Redis (no persistence)
        await eventually(lambda: backend.available)
        await say(ws, "feed:d", 3)
        fresh = Position.parse((await ws.expect(type="said", n=3))["_pos"])
        assert fresh.epoch != old.epoch
        assert fresh.offset == 1
        async with redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True) as r:
            entries = await r.xrange(f"{prefix}:stream:feed:d")
            assert [e[0] for e in entries] == ["0-1"]
            assert '"n":3' in entries[0][1]["f"]
        async with ws_of(client) as other:
            outcome = await join(other, "feed:d", since=str(old))
            assert outcome is not None
            assert (outcome["recovered"], outcome["reason"]) == (False, "epoch")
