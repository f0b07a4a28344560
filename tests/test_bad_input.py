"""Bad input never crashes the loop: each case has a documented outcome."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pachinko
from pachinko import MessageError, Settings, WebSocketResource
from tests.helpers import (
    FORBIDDEN,
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    TOO_BIG,
    UNSUPPORTED_DATA,
    expect_close,
    make_app,
    recv_json,
)


class Say(msgspec.Struct, tag="say"):
    text: str


class Echo(WebSocketResource):
    schema = Say

    async def on_say(self, ws: Any, payload: Say) -> None:
        if payload.text == "explode!":
            raise RuntimeError("handler exploded")
        await self.send({"type": "said", "text": payload.text})


def echo_app(**settings: Any) -> Any:
    router = pachinko.WebSocketRouter()
    router.add_route("/echo", Echo)
    return make_app(router, settings=Settings(**settings))


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("{not json", {"reason": "invalid_json", "path": None}),
        (
            "[1, 2]",
            {
                "reason": "invalid_message",
                "path": "$",
                "detail": "Expected a JSON object, got `array`",
            },
        ),
        ('"text"', {"reason": "invalid_message", "path": "$"}),
        (
            "{}",
            {
                "reason": "invalid_message",
                "path": "$.type",
                "detail": "Object missing required field `type`",
            },
        ),
        (
            '{"type": 7}',
            {"reason": "invalid_message", "path": "$.type", "detail": "Expected `str`, got `int`"},
        ),
        (
            '{"type": "nope"}',
            {"reason": "unknown_type", "path": "$.type", "detail": "Unknown message type 'nope'"},
        ),
        (
            '{"type": "say", "text": 5}',
            {"reason": "validation_error", "path": "$.text", "detail": "Expected `str`, got `int`"},
        ),
    ],
)
async def test_error_replies_keep_the_connection(
    conductor_for: Any, frame: str, expected: dict[str, Any]
) -> None:
    conductor = await conductor_for(echo_app())
    async with conductor.simulate_ws("/ws/echo") as ws:
        await ws.send_text(frame)
        reply = await recv_json(ws)
        assert reply["type"] == "error"
        assert {k: reply[k] for k in expected} == expected
        await ws.send_text('{"type": "say", "text": "still here"}')
        assert await recv_json(ws) == {"type": "said", "text": "still here"}


class AnyValue(msgspec.Struct):
    value: Any = None


class Nested(WebSocketResource):
    """Every decode path: typed (an `Any` field too), lenient, raw, convention."""

    schema = Say

    async def on_say(self, ws: Any, payload: Say) -> None:
        await self.send({"type": "said", "text": payload.text})

    @pachinko.handles_message("anything")
    async def anything(self, ws: Any, payload: AnyValue) -> None:
        await self.send({"type": "got"})

    @pachinko.handles_message("lenient", strict=False)
    async def lenient(self, ws: Any, payload: AnyValue) -> None:
        await self.send({"type": "got"})

    @pachinko.handles_message("raw")
    async def raw(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "got"})


class RawOnly(WebSocketResource):
    """No type known ahead: every message takes the slow path."""

    async def on_raw(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "got"})


class NestedEnvelope(Nested):
    wire = "envelope"


# NOTE: msgspec raises RecursionError past ~1000 levels on 3.11, a few thousand
#   on 3.12, ~10000 on 3.13: 20000 levels (40 KB) are too deep everywhere.
DEEP = "[" * 20000 + "]" * 20000


def deep(template: str) -> str:
    """``template`` with ``@`` replaced by 20000 nested arrays."""
    return template.replace("@", DEEP)


@pytest.mark.parametrize(
    ("resource", "frame"),
    [
        (Nested, DEEP),  # not an object: the slow path's generic decode
        (Nested, deep('{"type": "say", "text": @}')),  # typed field, wrong type
        (Nested, deep('{"type": "anything", "value": @}')),  # typed `Any` field
        (Nested, deep('{"type": "nope", "x": @}')),  # unknown tag
        (Nested, deep('{"type": "say", "text": "a", "extra": @}')),  # extra field, strict
        (Nested, deep('{"type": "lenient", "extra": @}')),  # extra field, skipped
        (Nested, deep('{"type": "raw", "x": @}')),  # raw-dict handler
        (Nested, deep('{"x": @, "type": "say"}')),  # before the tag
        (RawOnly, deep('{"type": "raw", "x": @}')),  # no fast decoder at all
        (RawOnly, DEEP),
        (NestedEnvelope, deep('{"type": "anything", "payload": {"value": @}}')),
        (NestedEnvelope, deep('{"type": "raw", "payload": @}')),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else v[:40],
)
async def test_deep_nesting_is_an_error_reply(
    conductor_for: Any, caplog: pytest.LogCaptureFixture, resource: type, frame: str
) -> None:
    router = pachinko.WebSocketRouter()
    router.add_route("/deep", resource)
    conductor = await conductor_for(make_app(router))
    ok = '{"type": "raw", "payload": 1}' if resource.wire == "envelope" else '{"type": "raw"}'
    with caplog.at_level(logging.DEBUG, logger="pachinko"):
        async with conductor.simulate_ws("/ws/deep") as ws:
            await ws.send_text(frame)
            reply = await recv_json(ws)
            await ws.send_text(ok)
            assert await recv_json(ws) == {"type": "got"}  # the connection is kept
    payload = reply.get("payload", reply)
    assert (reply["type"], payload["reason"], payload["path"]) == ("error", "invalid_json", None)
    assert payload["detail"] == "JSON nested too deeply"
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_a_thousand_levels_keep_the_connection(
    conductor_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # the reported input: an error reply on every Python (invalid_json where
    # msgspec gives up at this depth, 3.11; invalid_message where it decodes)
    conductor = await conductor_for(echo_app())
    with caplog.at_level(logging.DEBUG, logger="pachinko"):
        async with conductor.simulate_ws("/ws/echo") as ws:
            await ws.send_text("[" * 1000 + "]" * 1000)
            reply = await recv_json(ws)
            await ws.send_text('{"type": "say", "text": "still here"}')
            assert await recv_json(ws) == {"type": "said", "text": "still here"}
    assert (reply["type"], reply["reason"]) in {
        ("error", "invalid_json"),
        ("error", "invalid_message"),
    }
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_on_unhandled_is_overridable(conductor_for: Any) -> None:
    seen: list[MessageError] = []

    class Quiet(Echo):
        async def on_unhandled(self, ws: Any, error: MessageError) -> None:
            seen.append(error)

    router = pachinko.WebSocketRouter()
    router.add_route("/echo", Quiet)
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/echo") as ws:
        await ws.send_text('{"type": "nope"}')
        await ws.send_text('{"type": "say", "text": "x"}')
        assert await recv_json(ws) == {"type": "said", "text": "x"}
    assert [(e.reason, e.raw) for e in seen] == [("unknown_type", '{"type": "nope"}')]


async def test_error_replies_can_be_turned_off(conductor_for: Any) -> None:
    conductor = await conductor_for(echo_app(error_replies=False))
    async with conductor.simulate_ws("/ws/echo") as ws:
        await ws.send_text("{bad")
        await ws.send_text('{"type": "say", "text": "after"}')
        assert await recv_json(ws) == {"type": "said", "text": "after"}


async def test_binary_frame_closes_1003(conductor_for: Any) -> None:
    conductor = await conductor_for(echo_app())
    async with conductor.simulate_ws("/ws/echo") as ws:
        await ws.send_data(b'{"type": "say", "text": "x"}')
        assert await expect_close(ws) == UNSUPPORTED_DATA


@pytest.mark.parametrize(
    ("text", "closes"), [("a" * 100, False), ("a" * 101, True), ("é" * 50, False), ("é" * 51, True)]
)
async def test_oversize_message_closes_1009(conductor_for: Any, text: str, closes: bool) -> None:
    # the limit counts UTF-8 bytes: "é" is two bytes
    frame = '{"type":"say","text":"' + text + '"}'
    limit = len(frame.encode()) - (1 if closes else 0)
    conductor = await conductor_for(echo_app(max_message_size=limit))
    async with conductor.simulate_ws("/ws/echo") as ws:
        await ws.send_text(frame)
        if closes:
            assert await expect_close(ws) == TOO_BIG
        else:
            assert (await recv_json(ws))["text"] == text


async def test_handler_exception_closes_1011_and_logs(
    conductor_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conductor = await conductor_for(echo_app())
    async with conductor.simulate_ws("/ws/echo") as other, conductor.simulate_ws("/ws/echo") as ws:
        with caplog.at_level(logging.ERROR, logger="pachinko"):
            await ws.send_text('{"type": "say", "text": "explode!"}')
            assert await expect_close(ws) == INTERNAL_ERROR
        records = [r for r in caplog.records if r.exc_info]
        assert records, "the traceback must be logged"
        assert "handler exploded" in str(records[0].exc_info[1])
        # other connections are unaffected
        await other.send_text('{"type": "say", "text": "fine"}')
        assert await recv_json(other) == {"type": "said", "text": "fine"}


async def test_error_hook_can_handle_an_exception(conductor_for: Any) -> None:
    class Forgiving(Echo):
        async def on_error(self, ws: Any, exc: Exception) -> bool:
            await self.send({"type": "oops", "error": str(exc)})
            return True

    router = pachinko.WebSocketRouter()
    router.add_route("/echo", Forgiving)
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/echo") as ws:
        await ws.send_text('{"type": "say", "text": "explode!"}')
        assert await recv_json(ws) == {"type": "oops", "error": "handler exploded"}
        await ws.send_text('{"type": "say", "text": "again"}')
        assert await recv_json(ws) == {"type": "said", "text": "again"}


async def test_rate_limit_closes_1008(conductor_for: Any) -> None:
    conductor = await conductor_for(echo_app(rate_limit=0.001, rate_burst=3))
    async with conductor.simulate_ws("/ws/echo") as ws:
        for i in range(3):
            await ws.send_text(f'{{"type": "say", "text": "{i}"}}')
            assert (await recv_json(ws))["text"] == str(i)
        await ws.send_text('{"type": "say", "text": "too many"}')
        assert await expect_close(ws) == POLICY_VIOLATION


@pytest.mark.parametrize(
    ("allowed", "origin", "scheme", "host", "accepted"),
    [
        (None, None, "ws", "example.com", True),  # non-browser client
        (None, "https://example.com", "wss", "example.com", True),  # same origin
        (None, "http://example.com", "ws", "example.com", True),
        (None, "https://evil.test", "wss", "example.com", False),
        # the scheme counts: an https page is not the origin of a ws:// server
        (None, "https://example.com", "ws", "example.com", False),
        (None, "http://example.com", "wss", "example.com", False),
        # default ports are the scheme's; other ports differ
        (None, "https://example.com", "wss", "example.com:443", True),
        (None, "http://example.com:80", "ws", "example.com", True),
        (None, "http://example.com:8080", "ws", "example.com", False),
        (None, "http://example.com:8080", "ws", "example.com:8080", True),
        (None, "HTTP://Example.COM", "ws", "example.com", True),
        (None, "null", "ws", "example.com", False),
        (None, "http://example.com:99999", "ws", "example.com", False),
        (("https://app.test",), "https://app.test", "ws", "api.test", True),
        (("https://app.test",), "https://evil.test", "ws", "api.test", False),
        (("*",), "https://evil.test", "ws", "api.test", True),
    ],
)
async def test_origin_allow_list(
    conductor_for: Any,
    allowed: Any,
    origin: str | None,
    scheme: str,
    host: str,
    accepted: bool,
) -> None:
    from falcon.errors import WebSocketDisconnected

    conductor = await conductor_for(echo_app(allowed_origins=allowed))
    name, _, port = host.partition(":")
    options: dict[str, Any] = {"host": name, "scheme": scheme}
    if port:
        options["port"] = int(port)
    if origin:
        options["headers"] = {"Origin": origin}
    if accepted:
        async with conductor.simulate_ws("/ws/echo", **options) as ws:
            await ws.send_text('{"type": "say", "text": "ok"}')
            assert (await recv_json(ws))["text"] == "ok"
    else:
        with pytest.raises(WebSocketDisconnected) as info:
            async with conductor.simulate_ws("/ws/echo", **options):
                pass
        assert info.value.code == FORBIDDEN


frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(lambda t: '{"type": "say", "text": ' + t + "}", st.text(max_size=20)),
    st.dictionaries(
        st.text(max_size=5), st.none() | st.integers() | st.text(max_size=5), max_size=4
    ).map(lambda d: msgspec.json.encode(d).decode()),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(frames, min_size=1, max_size=5))
async def test_arbitrary_frames_never_crash_the_loop(batch: list[str | bytes]) -> None:
    import falcon.testing
    from falcon.errors import WebSocketDisconnected

    app = echo_app(max_message_size=150)
    async with falcon.testing.ASGIConductor(app) as conductor:
        async with conductor.simulate_ws("/ws/echo") as ws:
            try:
                for frame in batch:
                    if isinstance(frame, bytes):
                        await ws.send_data(frame)
                    else:
                        await ws.send_text(frame)
                # the connection either answers a valid message or closed with a
                # documented code, never 1011
                await ws.send_text('{"type": "say", "text": "probe"}')
            except WebSocketDisconnected:
                pass  # the server closed on an earlier frame: checked below
            while True:
                try:
                    reply = await recv_json(ws)
                except Exception:
                    assert ws.closed
                    assert ws.close_code in (UNSUPPORTED_DATA, TOO_BIG)
                    break
                if reply.get("text") == "probe":
                    break
        await asyncio.sleep(0)
