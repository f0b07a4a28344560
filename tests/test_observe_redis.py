"""Tracing and metrics across processes: two apps, each with its own RedisBackend node.

Two apps in one event loop talk only through a private redis-server, exactly
as two server processes do (each is a node of its own with its own
subscriptions); each has its own TracerProvider and in-memory exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import falcon.asgi
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import pachinko
from pachinko import Settings, WebSocketResource, handles_message
from pachinko.backends.redis import RedisBackend
from pachinko.metrics import Metrics
from pachinko.testing import AppClient
from pachinko.tracing import Tracing
from tests.helpers import eventually
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.redis

ROUTE = "/ws/rooms"
handler_spans = []


class Rooms(WebSocketResource):
    @handles_message("join")
    async def join(self, ws: Any, payload: Any) -> None:
        await self.join_room(payload["room"])
        await self.send({"type": "joined"})

    @handles_message("say")
    async def say(self, ws: Any, payload: Any) -> None:
        from opentelemetry import trace

        # the handler's own span nests inside pachinko's message span
        with trace.get_tracer("tests.app").start_as_current_span("app.say") as span:
            handler_spans.append(span)
            await self.broadcast_to_room(payload["room"], {"type": "said", "text": payload["text"]})


def traced_app(url: str, prefix: str, **observers: Any) -> falcon.asgi.App:
    router = pachinko.WebSocketRouter()
    router.add_route("/rooms", Rooms)
    app = falcon.asgi.App()
    backend = RedisBackend(url, prefix=prefix, reconnect_min=0.05, reconnect_max=0.2)
    pachinko.mount(
        app, "/ws", router, settings=Settings(rate_limit=None), backend=backend, **observers
    )
    return app


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


async def test_a_broadcast_delivered_on_another_node_continues_the_publishers_trace(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique_prefix()
    provider_one, spans_one = provider()
    provider_two, spans_two = provider()
    # the handler's own tracer: the global provider is the publishing node's
    monkeypatch.setattr("opentelemetry.trace._TRACER_PROVIDER", provider_one)
    one = traced_app(redis_server.url, prefix, tracing=Tracing(provider_one))
    two = traced_app(redis_server.url, prefix, tracing=Tracing(provider_two))
    async with (
        AppClient(one) as a,
        AppClient(two) as b,
        a.websocket("/ws/rooms") as ann,
        b.websocket("/ws/rooms") as bob,
    ):
        for ws in (ann, bob):
            await ws.send_json({"type": "join", "room": "lobby"})
            await ws.expect(type="joined")
        await ann.send_json({"type": "say", "room": "lobby", "text": "hi"})
        assert (await bob.expect(type="said"))["text"] == "hi"
    published = {s.name: s for s in spans_one.get_finished_spans()}
    delivered = {s.name: s for s in spans_two.get_finished_spans()}

    handshake = published["WebSocket /ws/rooms"]
    message = published["/ws/rooms say"]
    nested = published["app.say"]
    deliver = delivered["deliver room:lobby"]
    assert handshake.kind == message.kind == SpanKind.SERVER
    assert handshake.attributes["pachinko.route"] == "/ws/rooms"
    assert dict(message.attributes) == {
        "pachinko.route": "/ws/rooms",
        "pachinko.message.type": "say",
        "pachinko.connection.id": handshake.attributes["pachinko.connection.id"],
    }
    # the message is a trace of its own, linked to its connection's handshake
    assert message.parent is None
    assert [link.context.span_id for link in message.links] == [handshake.context.span_id]
    # the handler's span is the message span's child
    assert nested.parent.span_id == message.context.span_id
    assert nested.context.trace_id == message.context.trace_id
    # on the other node, the delivery continues the trace of the publishing span
    assert deliver.kind == SpanKind.CONSUMER
    assert deliver.context.trace_id == message.context.trace_id
    assert deliver.parent.span_id == nested.context.span_id
    assert deliver.parent.is_remote
    # the publishing node delivered its own members without a span of its own
    assert "deliver room:lobby" not in published


async def test_without_tracing_the_frame_carries_no_trace_context(
    redis_server: RedisServer,
) -> None:
    import redis.asyncio

    prefix = unique_prefix()
    one = traced_app(redis_server.url, prefix, metrics=Metrics(None))
    async with (
        AppClient(one) as a,
        a.websocket("/ws/rooms") as ann,
        redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True) as client,
        client.pubsub() as pubsub,
    ):
        await pubsub.subscribe(f"{prefix}:ch:room:lobby")
        await ann.send_json({"type": "join", "room": "lobby"})
        await ann.expect(type="joined")
        await ann.send_json({"type": "say", "room": "lobby", "text": "hi"})
        message = None
        async with asyncio.timeout(5):
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        origin = message["data"].split("\n", 1)[0]
        assert origin == pachinko.runtime_of(one).manager.node_id


async def test_a_redis_outage_is_counted(redis_server: RedisServer) -> None:
    metrics = Metrics(None)
    app = traced_app(redis_server.url, unique_prefix(), metrics=metrics)
    registry = metrics.registry

    def value(name: str) -> float:
        metrics.sample()
        return registry.get_sample_value(name) or 0.0

    async with AppClient(app), contextlib.AsyncExitStack():
        assert value("pachinko_backend_up") == 1
        redis_server.stop()
        await eventually(lambda: value("pachinko_backend_outages_total") == 1)
        assert value("pachinko_backend_up") == 0
        await redis_server.start()
        await eventually(lambda: value("pachinko_backend_reconnects_total") == 1, timeout=10)
        assert value("pachinko_backend_up") == 1
        assert value("pachinko_backend_down_seconds_total") > 0
        assert value("pachinko_backend_outages_total") == 1
