"""Prometheus metrics through a real Falcon app (pachinko.metrics)."""

from __future__ import annotations

import asyncio
import random
import string
from typing import Any

import falcon.asgi
import msgspec
import prometheus_client
import pytest
from falcon.errors import WebSocketDisconnected

import pachinko
from pachinko import Refuse, WebSocketResource, WebSocketRouter
from pachinko.errors import ConfigError
from pachinko.metrics import Metrics, close_code_label
from pachinko.observe import Observer, message_type
from pachinko.testing import AppClient
from tests.helpers import StalledClient, eventually, expect_close, recv_json

ROUTE = "/ws/rooms/{room}"


class Say(msgspec.Struct, tag="say"):
    text: str


class Boom(msgspec.Struct, tag="boom"):
    pass


class Room(WebSocketResource):
    schema = Say | Boom

    async def on_connect(self, req: Any, ws: Any, room: str) -> bool:
        if room == "closed":
            raise Refuse(4001, "closed room")
        return room != "private"

    async def after_connect(self, ws: Any) -> None:
        await self.manager.join_room(self.connection, "lobby")

    async def on_say(self, ws: Any, msg: Say) -> None:
        await self.manager.broadcast_to_room("lobby", {"type": "said", "text": msg.text})

    async def on_boom(self, ws: Any, msg: Boom) -> None:
        raise RuntimeError("boom")

    async def on_shout(self, ws: Any, payload: Any) -> None:
        """A convention handler whose tag is only known per message."""
        await self.send({"type": "shouted"})


def app_with(metrics: Metrics, **settings: Any) -> falcon.asgi.App:
    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/rooms/{room}", Room)
    pachinko.mount(app, "/ws", router, metrics=metrics, settings=pachinko.Settings(**settings))
    return app


def value(metrics: Metrics, name: str, **labels: str) -> float:
    metrics.sample()  # flush the message counts
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def series(metrics: Metrics) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in metrics.registry.collect()
        for s in family.samples
    }


async def test_connections_messages_errors_and_deliveries_are_counted(
    conductor_for: Any,
) -> None:
    metrics = Metrics(latency_every=1)
    conductor = await conductor_for(app_with(metrics))
    async with conductor.simulate_ws("/ws/rooms/a") as ws:
        await eventually(lambda: value(metrics, "pachinko_connections_open", route=ROUTE) == 1)
        for text in ("one", "two"):
            await ws.send_text(msgspec.json.encode(Say(text)).decode())
            assert await recv_json(ws) == {"type": "said", "text": text}
        await ws.send_text('{"type": "shout"}')
        assert await recv_json(ws) == {"type": "shouted"}
        await ws.send_text('{"type": "nope"}')
        assert (await recv_json(ws))["reason"] == "unknown_type"
        await ws.send_text("{not json")
        assert (await recv_json(ws))["reason"] == "invalid_json"
        await ws.send_text('{"type": "say", "text": 3}')
        assert (await recv_json(ws))["reason"] == "validation_error"
        await ws.close(4321)
    await eventually(lambda: value(metrics, "pachinko_connections_open", route=ROUTE) == 0)
    assert value(metrics, "pachinko_connections_opened_total", route=ROUTE) == 1
    assert value(metrics, "pachinko_connections_closed_total", route=ROUTE, code="4xxx") == 1
    assert value(metrics, "pachinko_messages_total", route=ROUTE, type="say") == 2
    assert value(metrics, "pachinko_messages_total", route=ROUTE, type="shout") == 1
    assert value(metrics, "pachinko_handler_seconds_count", route=ROUTE, type="say") == 2
    for reason in ("unknown_type", "invalid_json", "validation_error"):
        assert value(metrics, "pachinko_error_replies_total", route=ROUTE, reason=reason) == 1
    assert value(metrics, "pachinko_sends_total", origin="local") == 2
    assert value(metrics, "pachinko_deliveries_total", outcome="delivered") == 2


async def test_a_handler_that_raises_is_timed_and_the_close_counted(conductor_for: Any) -> None:
    metrics = Metrics(latency_every=1)
    conductor = await conductor_for(app_with(metrics))
    async with conductor.simulate_ws("/ws/rooms/a") as ws:
        await ws.send_text('{"type": "boom"}')
        assert await expect_close(ws) == 1011
    await eventually(
        lambda: value(metrics, "pachinko_connections_closed_total", route=ROUTE, code="1011") == 1
    )
    assert value(metrics, "pachinko_handler_seconds_count", route=ROUTE, type="boom") == 1
    assert value(metrics, "pachinko_messages_total", route=ROUTE, type="boom") == 1


async def test_refused_handshakes_are_counted_by_cause(conductor_for: Any) -> None:
    metrics = Metrics()
    conductor = await conductor_for(
        app_with(metrics, allowed_origins=("https://good.example",), max_connections=1)
    )
    cases = [
        ("/ws/nowhere", {}, "not_found"),
        ("/ws/rooms/a", {"Origin": "https://evil.example"}, "origin"),
        ("/ws/rooms/private", {}, "refused"),
        ("/ws/rooms/closed", {}, "refused"),
    ]
    for path, headers, _ in cases:
        with pytest.raises(WebSocketDisconnected):
            async with conductor.simulate_ws(path, headers=headers) as ws:
                await ws.receive_text()
    async with conductor.simulate_ws("/ws/rooms/a"):
        with pytest.raises(WebSocketDisconnected):
            async with conductor.simulate_ws("/ws/rooms/b") as second:
                await second.receive_text()
    assert value(metrics, "pachinko_handshakes_refused_total", cause="not_found") == 1
    assert value(metrics, "pachinko_handshakes_refused_total", cause="origin") == 1
    assert value(metrics, "pachinko_handshakes_refused_total", cause="refused") == 2
    assert value(metrics, "pachinko_handshakes_refused_total", cause="limit") == 1


async def test_the_endpoint_serves_the_text_format(conductor_for: Any) -> None:
    metrics = Metrics("/internal/metrics")
    conductor = await conductor_for(app_with(metrics))
    async with conductor.simulate_ws("/ws/rooms/a") as ws:
        await ws.send_text('{"type": "say", "text": "x"}')
        await recv_json(ws)
        result = await conductor.simulate_get("/internal/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain; version=")
    assert f'pachinko_messages_total{{route="{ROUTE}",type="say"}} 1.0' in result.text
    assert f'pachinko_connections_open{{route="{ROUTE}"}} 1.0' in result.text


async def test_ten_thousand_unknown_tags_create_no_series(conductor_for: Any) -> None:
    metrics = Metrics()
    conductor = await conductor_for(app_with(metrics, rate_limit=None))
    rng = random.Random(14)
    async with conductor.simulate_ws("/ws/rooms/a") as ws:
        await ws.send_text('{"type": "unheard-of"}')
        await recv_json(ws)
        before = series(metrics)
        tags = set()
        for _ in range(10_000):
            tag = "".join(rng.choices(string.ascii_letters + string.digits + "_-.", k=12))
            tags.add(tag)
            await ws.send_text(msgspec.json.encode({"type": tag}).decode())
        for _ in range(10_000):
            assert (await recv_json(ws))["reason"] == "unknown_type"
        after = series(metrics)
    assert len(tags) == 10_000
    assert after == before
    assert value(metrics, "pachinko_error_replies_total", route=ROUTE, reason="unknown_type") == (
        10_001
    )


async def test_one_message_in_latency_every_is_timed_and_every_one_counted(
    conductor_for: Any,
) -> None:
    metrics = Metrics(latency_every=4)
    conductor = await conductor_for(app_with(metrics))
    async with conductor.simulate_ws("/ws/rooms/a") as ws:
        for _ in range(9):
            await ws.send_text('{"type": "shout"}')
            await recv_json(ws)
    assert value(metrics, "pachinko_messages_total", route=ROUTE, type="shout") == 9
    assert value(metrics, "pachinko_handler_seconds_count", route=ROUTE, type="shout") == 2


def test_latency_every_must_be_a_positive_int() -> None:
    with pytest.raises(ConfigError, match="latency_every must be an int >= 1, got 0"):
        Metrics(latency_every=0)


def test_close_codes_are_grouped_beyond_the_known_ones() -> None:
    assert [close_code_label(c) for c in (1000, 1013, 3403, 3999, 4001, 4999, 2000, 65535)] == [
        "1000",
        "1013",
        "3403",
        "3xxx",
        "4xxx",
        "4xxx",
        "other",
        "other",
    ]


async def test_two_apps_in_one_process_have_their_own_registries(conductor_for: Any) -> None:
    first, second = Metrics(), Metrics()
    one = await conductor_for(app_with(first))
    await conductor_for(app_with(second))
    async with one.simulate_ws("/ws/rooms/a") as ws:
        await ws.send_text('{"type": "say", "text": "x"}')
        await recv_json(ws)
    assert value(first, "pachinko_messages_total", route=ROUTE, type="say") == 1
    assert value(second, "pachinko_messages_total", route=ROUTE, type="say") == 0


async def test_one_metrics_on_two_apps_sums_them(conductor_for: Any) -> None:
    metrics = Metrics()
    apps = [await conductor_for(app_with(metrics)) for _ in range(2)]
    for conductor in apps:
        async with conductor.simulate_ws("/ws/rooms/a") as ws:
            await ws.send_text('{"type": "say", "text": "x"}')
            await recv_json(ws)
    assert value(metrics, "pachinko_messages_total", route=ROUTE, type="say") == 2


def test_a_second_metrics_on_a_shared_registry_is_a_config_error() -> None:
    registry = prometheus_client.CollectorRegistry()
    Metrics(registry=registry)
    with pytest.raises(ConfigError, match="install that one object on every app"):
        Metrics(registry=registry)
    Metrics(registry=registry, namespace="other")  # another namespace is fine


def test_installing_metrics_twice_on_one_app_is_refused() -> None:
    app = app_with(Metrics())
    with pytest.raises(ConfigError, match="metrics and tracing to the first install"):
        pachinko.install(app, metrics=Metrics())


def test_a_bad_path_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"must be a str starting with '/', got 'metrics'"):
        Metrics("metrics")


async def test_drops_outbox_depth_and_slow_consumer_closes_are_counted() -> None:
    metrics = Metrics()
    app = app_with(metrics, send_queue_size=2, slow_consumer="drop", send_timeout=30)
    manager = pachinko.runtime_of(app).manager
    async with AppClient(app, timeout=5.0), StalledClient(app, "/ws/rooms/a") as slow:
        await eventually(lambda: len(manager._rooms.get("lobby", ())) == 1)
        slow.stalled = True
        results = [await manager.broadcast_to_room("lobby", {"n": n}) for n in range(5)]
        # one frame in flight, two queued, two dropped
        assert [r.dropped for r in results] == [0, 0, 0, 1, 1]
        metrics.sample()
        assert value(metrics, "pachinko_outbox_busy") == 1
        assert value(metrics, "pachinko_outbox_queued") == 2
        assert value(metrics, "pachinko_deliveries_total", outcome="dropped") == 2
        assert value(metrics, "pachinko_deliveries_total", outcome="delivered") == 3
        assert value(metrics, "pachinko_slow_consumer_closes_total") == 0
        slow.release.set()
        await eventually(lambda: len(slow.received) == 3)
        metrics.sample()
        assert value(metrics, "pachinko_outbox_queued") == 0

    metrics = Metrics()
    app = app_with(metrics, send_queue_size=1, slow_consumer="close", send_timeout=30)
    manager = pachinko.runtime_of(app).manager
    async with AppClient(app, timeout=5.0), StalledClient(app, "/ws/rooms/a") as slow:
        await eventually(lambda: len(manager._rooms.get("lobby", ())) == 1)
        slow.stalled = True
        for n in range(3):
            await manager.broadcast_to_room("lobby", {"n": n})
        await eventually(lambda: slow.close_code == 1013)
    assert value(metrics, "pachinko_slow_consumer_closes_total") == 1
    assert value(metrics, "pachinko_connections_closed_total", route=ROUTE, code="1013") == 1


async def test_worker_crashes_and_restarts_are_counted(conductor_for: Any) -> None:
    runs = 0
    done = asyncio.Event()

    @pachinko.worker(restart=pachinko.RestartPolicy(max_restarts=1, backoff=0))
    async def flaky() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        if runs <= 2:
            raise RuntimeError("flaky")
        done.set()

    crashes: list[str] = []
    metrics = Metrics()
    app = falcon.asgi.App()
    pachinko.install(
        app, workers=[flaky], metrics=metrics, on_worker_crash=lambda n, e: crashes.append(n)
    )
    await conductor_for(app)
    await eventually(lambda: crashes == ["flaky"])
    assert value(metrics, "pachinko_worker_crashes_total", worker="flaky") == 2
    assert value(metrics, "pachinko_worker_restarts_total", worker="flaky") == 1


def test_message_types_are_the_declared_ones() -> None:
    assert message_type(Room, Say) == "say"
    assert message_type(Room, Room.on_shout) == "shout"


async def test_without_an_observer_nothing_is_called(conductor_for: Any) -> None:
    app = app_with(None)  # type: ignore[arg-type]
    conductor = await conductor_for(app)
    assert pachinko.runtime_of(app).manager.observer is None
    async with conductor.simulate_ws("/ws/rooms/a") as ws:
        await ws.send_text('{"type": "say", "text": "x"}')
        assert await recv_json(ws) == {"type": "said", "text": "x"}


def test_the_observer_base_class_does_nothing() -> None:
    obs = Observer()
    assert obs.connection(None, Room) is None  # type: ignore[arg-type]
    assert obs.carrier() is None


def test_the_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
    panels = json.loads(dashboard.read_text())["panels"]
    used = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"\bpachinko_\w+", target["expr"])
    }
    metrics = Metrics(None)
    app = falcon.asgi.App()
    pachinko.install(app, metrics=metrics)
    defined = set()
    for family in metrics.registry.collect():
        kinds = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        defined.update(family.name + suffix for suffix in kinds.get(family.type, ("",)))
    assert len(panels) == 12
    assert used <= defined, used - defined


async def test_recovery_hits_and_misses_are_counted() -> None:
    from tests.apps.history import ROOMS, History

    metrics = Metrics(None)
    router = WebSocketRouter()
    router.add_route("/history", History)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router, rooms=ROOMS, metrics=metrics)
    route = "/ws/history"
    async with AppClient(app, timeout=5.0) as client, client.websocket(route) as ws:
        await ws.send_json({"type": "join", "room": "feed:r"})
        await ws.expect(type="joined", room="feed:r")
        await ws.send_json({"type": "say", "room": "feed:r", "n": 1})
        position = (await ws.expect(type="said", n=1))["_pos"]
        async with client.websocket(route) as phone:
            await phone.send_json({"type": "join", "room": "feed:r", "since": position})
            assert (await phone.expect(type="recovery"))["recovered"] is True
        async with client.websocket(route) as phone:
            await phone.send_json({"type": "join", "room": "feed:r", "since": "nonsense"})
            assert (await phone.expect(type="recovery"))["recovered"] is False
    assert value(metrics, "pachinko_recoveries_total", route=route, result="hit") == 1
    assert value(metrics, "pachinko_recoveries_total", route=route, result="miss") == 1


async def test_a_request_handlers_reply_goes_through_the_counting_wrapper(
    conductor_for: Any,
) -> None:
    class Ping(msgspec.Struct, tag="ping"):
        n: int

    class Pong(msgspec.Struct, tag="pong"):
        n: int

    class Replying(WebSocketResource):
        schema = Ping

        async def on_ping(self, ws: Any, msg: Ping) -> Pong:
            return Pong(msg.n)

    metrics = Metrics(latency_every=1)  # every call through the timing coroutine too
    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/ping", Replying)
    pachinko.mount(app, "/ws", router, metrics=metrics)
    conductor = await conductor_for(app)
    async with conductor.simulate_ws("/ws/ping") as ws:
        await ws.send_text('{"type": "ping", "n": 7, "id": 1}')
        reply = await recv_json(ws)
    assert reply["n"] == 7
    assert value(metrics, "pachinko_messages_total", route="/ws/ping", type="ping") == 1
