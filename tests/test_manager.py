"""The connection manager through a real Falcon app, over both backends.

Every test here runs twice: with the in-process backend and with a
RedisBackend on a real Redis (a private redis-server, or $REDIS_URL): the
``backend`` fixture of conftest.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import falcon.asgi
import pytest

import pachinko
from pachinko import Settings, WebSocketResource, handles_message, runtime_of
from pachinko.backends import ConnectionBackend, InProcessBackend
from pachinko.backends.redis import RedisBackend
from pachinko.manager import Delivery, WebSocketConnectionManager
from pachinko.testing import AppClient, HandshakeRefused, Probe
from tests.helpers import (
    GOING_AWAY,
    TRY_AGAIN_LATER,
    BackendFactory,
    attempt,
    eventually,
    free_port,
)


class Room(WebSocketResource):
    """Joins, leaves and broadcasts on request; reports what the manager says."""

    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        user = req.get_param("user")
        if user:
            self.user_id = user
        return True

    @handles_message("whoami")
    async def whoami(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "me", "id": self.connection.id, "user": self.user_id})

    @handles_message("login")
    async def login(self, ws: Any, payload: Any) -> None:
        self.user_id = payload["user"]
        await self.send({"type": "logged-in"})

    @handles_message("join")
    async def join(self, ws: Any, payload: Any) -> None:
        await self.join_room(payload["room"])
        await self.send({"type": "joined", "room": payload["room"]})

    @handles_message("leave")
    async def leave(self, ws: Any, payload: Any) -> None:
        await self.leave_room(payload["room"])
        await self.send({"type": "left", "room": payload["room"]})

    @handles_message("say")
    async def say(self, ws: Any, payload: Any) -> None:
        result = await self.broadcast_to_room(
            payload["room"],
            {"type": "said", "text": payload["text"]},
            exclude_self=payload.get("exclude_self", True),
            timeout=payload.get("timeout"),
        )
        await self.send({"type": "result", **_counts(result)})


def _counts(result: Delivery) -> dict[str, int]:
    return {
        "recipients": result.recipients,
        "delivered": result.delivered,
        "pending": result.pending,
        "dropped": result.dropped,
        "failed": result.failed,
    }


def room_app(backend: ConnectionBackend, **settings: Any) -> falcon.asgi.App:
    router = pachinko.WebSocketRouter()
    router.add_route("/room", Room)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router, settings=Settings(**settings), backend=backend)
    return app


def open_ws(client: AppClient, user: str | None = None) -> Any:
    return client.websocket("/ws/room", query_string=f"user={user}" if user else "")


async def whoami(ws: Any) -> str:
    await ws.send_json({"type": "whoami"})
    me: dict[str, str] = await ws.expect(type="me")
    return me["id"]


async def join(ws: Any, room: str) -> None:
    await ws.send_json({"type": "join", "room": room})
    await ws.expect(type="joined", room=room)


async def test_connections_register_on_accept_and_deregister_on_close(
    backend: BackendFactory,
) -> None:
    app = room_app(backend())
    manager = runtime_of(app).manager
    async with AppClient(app, timeout=2.0) as client:
        assert len(manager) == 0
        async with open_ws(client) as one, open_ws(client) as two:
            ids = {await whoami(one), await whoami(two)}
            assert len(ids) == 2
            assert all(cid.startswith(manager.node_id + ".") for cid in ids)
            assert {c.id async for c in manager.connections()} == ids
            assert all(manager.get(cid) is not None for cid in ids)
        await eventually(lambda: len(manager) == 0)
        assert [c async for c in manager.connections()] == []


async def test_rooms_members_and_prefix_listing(backend: BackendFactory) -> None:
    app = room_app(backend())
    manager = runtime_of(app).manager
    async with AppClient(app, timeout=2.0) as client:
        async with open_ws(client) as ann, open_ws(client) as bob:
            ann_id, bob_id = await whoami(ann), await whoami(bob)
            await join(ann, "game-1")
            await join(bob, "game-1")
            await join(bob, "game-2")
            await join(bob, "chat")
            assert await manager.members("game-1") == {ann_id, bob_id}
            assert await manager.rooms() == ["chat", "game-1", "game-2"]
            assert await manager.rooms("game-") == ["game-1", "game-2"]
            assert await manager.rooms("nothing") == []
            await bob.send_json({"type": "leave", "room": "game-2"})
            await bob.expect(type="left")
            assert await manager.rooms("game-") == ["game-1"]
            assert await manager.members("game-2") == set()
        # closing leaves every room, whatever closed the connection
        await eventually(lambda: len(manager) == 0)
        assert await manager.members("game-1") == set()
        assert await manager.rooms() == []


async def test_room_broadcast_reaches_members_only(backend: BackendFactory) -> None:
    app = room_app(backend())
    async with (
        AppClient(app, timeout=2.0) as client,
        open_ws(client) as ann,
        open_ws(client) as bob,
        open_ws(client) as eve,
    ):
        await join(ann, "lobby")
        await join(bob, "lobby")
        await join(eve, "elsewhere")
        await ann.send_json({"type": "say", "room": "lobby", "text": "hi"})
        assert await bob.expect(type="said") == {"type": "said", "text": "hi"}
        result = await ann.expect(type="result")
        assert (result["recipients"], result["dropped"], result["failed"]) == (1, 0, 0)
        await ann.send_json(
            {"type": "say", "room": "lobby", "text": "me too", "exclude_self": False}
        )
        assert (await ann.expect(type="said"))["text"] == "me too"
        assert (await bob.expect(type="said"))["text"] == "me too"
        await eve.expect_silence(within=0.1)


async def test_a_timeout_waits_for_the_sends_and_counts_them(backend: BackendFactory) -> None:
    app = room_app(backend())
    async with (
        AppClient(app, timeout=2.0) as client,
        open_ws(client) as ann,
        open_ws(client) as bob,
    ):
        await join(ann, "r")
        await join(bob, "r")
        await ann.send_json(
            {"type": "say", "room": "r", "text": "x", "exclude_self": False, "timeout": 2.0}
        )
        await ann.expect(type="said")
        result = await ann.expect(type="result")
        assert result == {
            "type": "result",
            "recipients": 2,
            "delivered": 2,
            "pending": 0,
            "dropped": 0,
            "failed": 0,
        }
        await ann.send_json({"type": "say", "room": "r", "text": "y"})
        result = await ann.expect(type="result")
        assert (result["recipients"], result["delivered"], result["pending"]) == (1, 0, 1)


async def test_users_connections_and_everyone(backend: BackendFactory) -> None:
    app = room_app(backend())
    manager = runtime_of(app).manager
    async with (
        AppClient(app, timeout=2.0) as client,
        open_ws(client, "ann") as phone,
        open_ws(client, "ann") as laptop,
        open_ws(client, "bob") as bob,
        open_ws(client) as anonymous,
    ):
        phone_id, laptop_id = await whoami(phone), await whoami(laptop)
        assert await manager.user_connections("ann") == {phone_id, laptop_id}
        result = await manager.send_to_user("ann", {"type": "dm", "text": "for ann"})
        assert (result.recipients, result.pending) == (2, 2)
        assert (await phone.expect(type="dm"))["text"] == "for ann"
        assert (await laptop.expect(type="dm"))["text"] == "for ann"
        await manager.send_to_connection(phone_id, "plain text, as is")
        assert await phone.receive_text() == "plain text, as is"
        await bob.expect_silence(within=0.05)
        await manager.broadcast_to_all({"type": "all"}, exclude=[laptop_id])
        for ws in (phone, bob, anonymous):
            await ws.expect(type="all")
        await laptop.expect_silence(within=0.05)
        result = await manager.broadcast_to_all({"type": "all"}, exclude=laptop_id)  # one id
        assert result.recipients == 3
        # a user id set after the handshake is indexed too
        await anonymous.send_json({"type": "login", "user": "bob"})
        await anonymous.expect(type="logged-in")
        await manager.send_to_user("bob", {"type": "dm", "text": "for bob"})
        await bob.expect(type="dm")
        await anonymous.expect(type="dm")
        unknown = await manager.send_to_connection(manager.node_id + ".ffff", {"x": 1})
        assert (unknown.recipients, unknown.remote) == (0, 0)


async def refusal(client: AppClient, user: str | None = None) -> int | None:
    """The close code refusing a handshake (accepted and closed at once, or denied)."""
    try:
        async with open_ws(client, user) as ws:
            code: int | None = await ws.expect_close()
            return code
    except HandshakeRefused as refused:
        return refused.code


async def test_connection_limits_are_enforced_at_the_handshake(backend: BackendFactory) -> None:
    app = room_app(backend(), max_connections=3, max_connections_per_user=2)
    manager = runtime_of(app).manager
    async with AppClient(app, timeout=2.0) as client:
        async with open_ws(client, "ann") as one, open_ws(client, "ann") as two:
            await whoami(one)
            await whoami(two)
            assert await refusal(client, "ann") == TRY_AGAIN_LATER
            async with open_ws(client, "bob") as bob:
                await whoami(bob)
                assert await refusal(client) == TRY_AGAIN_LATER
                assert len(manager) == 3
        # the slots are free again once those closed
        await eventually(lambda: len(manager) == 0)
        async with open_ws(client, "ann") as ws:
            await whoami(ws)


async def test_the_per_user_limit_holds_for_concurrent_handshakes(
    backend: BackendFactory,
) -> None:
    """Sixteen handshakes of one user at once against a limit of 3: exactly 3 pass.

    Before, the count and the record were two Redis round trips apart: 7 of 16
    passed on one process.
    """
    app = room_app(backend(), max_connections_per_user=3)
    manager = runtime_of(app).manager
    outcomes: list[int | str] = []
    release = asyncio.Event()
    async with AppClient(app, timeout=5.0) as client:
        attempts = [
            asyncio.ensure_future(attempt(lambda: open_ws(client, "ann"), outcomes, release))
            for _ in range(16)
        ]
        await eventually(lambda: len(outcomes) == 16)
        assert sorted(outcomes, key=str) == [TRY_AGAIN_LATER] * 13 + ["open"] * 3
        assert len(await manager.user_connections("ann")) == 3
        release.set()
        await asyncio.gather(*attempts)
        # the refused ones left nothing behind: three new ones pass once those closed
        await eventually(lambda: len(manager) == 0)
        assert await manager.user_connections("ann") == set()
        outcomes.clear()
        release.clear()
        attempts = [
            asyncio.ensure_future(attempt(lambda: open_ws(client, "ann"), outcomes, release))
            for _ in range(3)
        ]
        await eventually(lambda: len(outcomes) == 3)
        assert outcomes == ["open"] * 3
        release.set()
        await asyncio.gather(*attempts)


async def test_shutdown_closes_every_socket_with_1001(backend: BackendFactory) -> None:
    app = room_app(backend())
    manager = runtime_of(app).manager
    client = AppClient(app, timeout=2.0)
    async with client, open_ws(client) as ws:
        await join(ws, "r")
        await runtime_of(app).close_connections()
        assert await ws.expect_close() == GOING_AWAY
    assert len(manager) == 0


async def test_probe_and_harness_register_with_the_manager(backend: BackendFactory) -> None:
    manager = WebSocketConnectionManager(Settings(), backend())
    await manager.start()
    try:
        async with Probe(manager, rooms=["r"], user_id="u") as probe:
            assert await manager.members("r") == {probe.connection.id}
            await manager.broadcast_to_room("r", {"type": "hello"})
            await probe.expect(type="hello")
            cid = probe.connection.id
            assert await manager.user_connections("u") == {cid}
            await manager.set_user(cid, "v")
            assert await manager.user_connections("u") == set()
            assert await manager.user_connections("v") == {cid}
            assert (await manager.send_to_user("u", {"type": "x"})).recipients == 0
            assert (await manager.send_to_user("v", {"type": "to-v"})).recipients == 1
            await probe.expect(type="to-v")
            await manager.set_user(probe.connection, None)
            assert await manager.user_connections("v") == set()
        assert await manager.members("r") == set()
    finally:
        await manager.close()


async def test_rooms_cannot_be_joined_before_the_handshake_is_accepted(
    backend: BackendFactory,
) -> None:
    manager = WebSocketConnectionManager(Settings(), backend())
    await manager.start()
    try:
        probe = Probe(manager)
        with pytest.raises(pachinko.PachinkoError, match="is not registered"):
            await manager.join_room(probe.connection, "r")
        with pytest.raises(ValueError, match="room must be a non-empty str"):
            await manager.join_room(probe.connection, "")
        with pytest.raises(pachinko.PachinkoError, match="no open connection 'nope'"):
            await manager.leave_room("nope", "r")
    finally:
        await manager.close()


def test_backend_urls() -> None:
    assert isinstance(WebSocketConnectionManager(Settings()).backend, InProcessBackend)
    redis = WebSocketConnectionManager(
        Settings(backend="redis://127.0.0.1:1/0?presence_ttl=3&prefix=app1")
    ).backend
    assert isinstance(redis, RedisBackend)
    assert (redis.url, redis.prefix, redis.presence_ttl, redis.heartbeat) == (
        "redis://127.0.0.1:1/0",
        "app1",
        3.0,
        1.0,
    )
    with pytest.raises(pachinko.ConfigError) as caught:
        WebSocketConnectionManager(Settings(backend="amqp://x"))
    assert str(caught.value) == (
        "settings.backend: expected 'memory://' or a Redis URL (redis://host:6379/0), "
        "got 'amqp://x'"
    )
    with pytest.raises(pachinko.ConfigError, match="presence_ttl must be a float, got 'soon'"):
        WebSocketConnectionManager(Settings(backend="redis://h/0?presence_ttl=soon"))


async def test_an_unreachable_redis_fails_startup_loudly() -> None:
    unused_port = free_port()
    manager = WebSocketConnectionManager(Settings(backend=f"redis://127.0.0.1:{unused_port}/0"))
    with pytest.raises(pachinko.BackendUnavailable, match=f"127.0.0.1:{unused_port}"):
        await manager.start()


async def test_concurrent_joins_and_leaves_keep_the_index_consistent(
    backend: BackendFactory,
) -> None:
    manager = WebSocketConnectionManager(Settings(), backend())
    await manager.start()
    try:
        probes = [Probe(manager) for _ in range(20)]
        for probe in probes:
            await probe.__aenter__()
        await asyncio.gather(*(manager.join_room(p.connection, "r") for p in probes))
        await asyncio.gather(*(manager.leave_room(p.connection, "r") for p in probes[::2]))
        expected = {p.connection.id for p in probes[1::2]}
        assert await manager.members("r") == expected
        for probe in probes:
            await probe.__aexit__(None, None, None)
        assert await manager.members("r") == set()
        assert await manager.rooms() == []
    finally:
        await manager.close()


async def test_hooks_and_workers_reach_the_manager(backend: BackendFactory) -> None:
    async def newsroom(resource: Any, ws: Any) -> None:  # an after_connect hook
        await resource.manager.join_room(resource.connection, "news")

    async def announcer(manager: WebSocketConnectionManager) -> None:  # a worker
        n = 0
        while True:
            await manager.broadcast_to_room("news", {"type": "news", "n": n})
            n += 1
            await asyncio.sleep(0.01)

    router = pachinko.WebSocketRouter()
    router.add_route("/room", Room)
    router.add_hook("after_connect", newsroom)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router, backend=backend(), workers=[announcer])
    async with AppClient(app, timeout=2.0) as client, open_ws(client) as ws:
        first = await ws.expect(type="news")
        assert (await ws.expect(type="news"))["n"] > first["n"]


async def test_bytes_are_sent_as_binary_frames(backend: BackendFactory) -> None:
    # NOTE: through Probes (the manager's real delivery path): the in-process
    #   client of pachinko.testing drops a binary frame when it tries to read
    #   it as text first (Falcon's simulator consumes the event, then raises).
    manager = WebSocketConnectionManager(Settings(), backend())
    await manager.start()
    try:
        async with (
            Probe(manager, rooms=["r"], user_id="ann") as ann,
            Probe(manager, rooms=["r"]) as bob,
        ):
            await manager.broadcast_to_room("r", b"\x00\x01binary")
            assert await ann.receive_bytes() == b"\x00\x01binary"
            assert await bob.receive_bytes() == b"\x00\x01binary"
            await manager.send_to_user("ann", bytearray(b"\xff"))
            assert await ann.receive_bytes() == b"\xff"
            await manager.broadcast_to_room("r", "text as is")
            assert await bob.next_sent() == "text as is"  # (receive_text is the app side)
    finally:
        await manager.close()
