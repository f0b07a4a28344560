"""Message dispatch through a real Falcon app: shapes, strictness, conventions."""

from __future__ import annotations

import subprocess
import textwrap
from typing import Any

import msgspec
import pytest

import pachinko
from pachinko import HandlerDefinitionError, WebSocketResource, handles_message
from tests.helpers import make_app, recv_json


class Join(msgspec.Struct, tag="join"):
    room: str


class Say(msgspec.Struct, tag="say"):
    room: str
    text: str


class Point(msgspec.Struct):
    x: int
    y: int


class Draw(msgspec.Struct, tag="draw"):
    points: list[Point]
    color: str = "black"


class Joined(msgspec.Struct, tag="joined"):
    room: str


class FlatChat(WebSocketResource):
    schema = Join | Say | Draw
    sends = (Joined,)

    @handles_message("join")
    async def join(self, ws: Any, payload: Join) -> None:
        await self.send(Joined(room=payload.room))

    async def on_say(self, ws: Any, payload: Say) -> None:
        await self.send({"type": "echo", "text": payload.text, "cls": type(payload).__name__})

    @handles_message("draw", strict=False)
    async def draw(self, ws: Any, payload: Draw) -> None:
        await self.send({"type": "drawn", "n": len(payload.points), "color": payload.color})


def chat_app(resource: type[WebSocketResource] = FlatChat) -> Any:
    router = pachinko.WebSocketRouter()
    router.add_route("/chat", resource)
    return make_app(router)


async def test_flat_decorator_and_convention(conductor_for: Any) -> None:
    conductor = await conductor_for(chat_app())
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "join", "room": "lobby"}')
        assert await recv_json(ws) == {"type": "joined", "room": "lobby"}
        await ws.send_text('{"type": "say", "room": "lobby", "text": "hi"}')
        assert await recv_json(ws) == {"type": "echo", "text": "hi", "cls": "Say"}


async def test_strict_rejects_unknown_fields_at_every_depth(conductor_for: Any) -> None:
    class Strict(WebSocketResource):
        schema = Draw

        async def on_draw(self, ws: Any, payload: Draw) -> None:
            await self.send({"type": "ok"})

    conductor = await conductor_for(chat_app(Strict))
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "draw", "points": [{"x": 1, "y": 2, "z": 3}]}')
        assert await recv_json(ws) == {
            "type": "error",
            "reason": "validation_error",
            "detail": "Object contains unknown field `z`",
            "path": "$.points[0]",
        }
        await ws.send_text('{"type": "draw", "points": [], "extra": true}')
        reply = await recv_json(ws)
        assert (reply["reason"], reply["path"]) == ("validation_error", "$")
        await ws.send_text('{"type": "draw", "points": [{"x": 1, "y": 2}]}')
        assert await recv_json(ws) == {"type": "ok"}


async def test_non_strict_allows_unknown_fields_at_every_depth(conductor_for: Any) -> None:
    conductor = await conductor_for(chat_app())
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "draw", "points": [{"x": 1, "y": 2, "z": 3}], "more": 1}')
        assert await recv_json(ws) == {"type": "drawn", "n": 1, "color": "black"}


async def test_wrong_types_reply_with_path(conductor_for: Any) -> None:
    conductor = await conductor_for(chat_app())
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "draw", "points": [{"x": 1, "y": "two"}]}')
        assert await recv_json(ws) == {
            "type": "error",
            "reason": "validation_error",
            "detail": "Expected `int`, got `str`",
            "path": "$.points[0].y",
        }
        await ws.send_text('{"type": "join"}')
        assert await recv_json(ws) == {
            "type": "error",
            "reason": "validation_error",
            "detail": "Object missing required field `room`",
            "path": "$.room",
        }


class Envelope(WebSocketResource):
    wire = "envelope"
    tag_field = "kind"

    @handles_message("move")
    async def move(self, ws: Any, payload: Point) -> None:
        await self.send({"kind": "moved", "sum": payload.x + payload.y})

    async def on_send_message(self, ws: Any, payload: Any) -> None:
        await self.send({"kind": "raw", "payload": payload})


async def test_envelope_shape_with_custom_tag_field(conductor_for: Any) -> None:
    conductor = await conductor_for(chat_app(Envelope))
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"kind": "move", "payload": {"x": 2, "y": 3}}')
        assert await recv_json(ws) == {"kind": "moved", "sum": 5}
        # convention: sendMessage -> on_send_message, untyped payload passed as is
        await ws.send_text('{"kind": "sendMessage", "payload": [1, "a"]}')
        assert await recv_json(ws) == {"kind": "raw", "payload": [1, "a"]}


class Moved(msgspec.Struct, tag="moved"):
    x: int
    y: int


class EnvelopeReplies(WebSocketResource):
    wire = "envelope"
    tag_field = "kind"
    sends = (Moved,)

    async def after_connect(self, ws: Any) -> None:
        await self.join_room("board")

    @handles_message("move")
    async def move(self, ws: Any, payload: Point) -> None:
        await self.send(Moved(x=payload.x, y=payload.y))
        await self.broadcast_to_room("board", Moved(x=payload.x, y=payload.y))
        await self.send({"kind": "raw", "as": "given"})  # a dict is sent as written


async def test_envelope_resources_write_envelopes(conductor_for: Any) -> None:
    conductor = await conductor_for(chat_app(EnvelopeReplies))
    async with (
        conductor.simulate_ws("/ws/chat") as ws,
        conductor.simulate_ws("/ws/chat") as other,
    ):
        await ws.send_text('{"kind": "move", "payload": {"x": 1, "y": 2}}')
        moved = {"kind": "moved", "payload": {"x": 1, "y": 2}}
        assert await recv_json(ws) == moved
        assert await recv_json(other) == moved  # broadcasts too
        assert await recv_json(ws) == {"kind": "raw", "as": "given"}
        await ws.send_text('{"kind": "move", "payload": {"x": 1, "y": "a"}}')
        assert await recv_json(ws) == {
            "kind": "error",
            "payload": {
                "reason": "validation_error",
                "detail": "Expected `int`, got `str`",
                "path": "$.payload.y",
            },
        }
        await ws.send_text("{")
        reply = await recv_json(ws)
        assert (reply["kind"], reply["payload"]["reason"]) == ("error", "invalid_json")


@pytest.mark.parametrize(
    ("text", "path", "detail"),
    [
        ('{"kind": "move"}', "$.payload", "Object missing required field `payload`"),
        ('{"kind": "move", "payload": null}', "$.payload", "Expected `object`, got `null`"),
    ],
)
async def test_missing_or_null_payload_is_a_validation_error(
    conductor_for: Any, text: str, path: str, detail: str
) -> None:
    conductor = await conductor_for(chat_app(Envelope))
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text(text)
        # an envelope resource answers in envelopes too
        assert await recv_json(ws) == {
            "kind": "error",
            "payload": {"reason": "validation_error", "detail": detail, "path": path},
        }


async def test_untyped_convention_handlers_get_the_message(conductor_for: Any) -> None:
    class Loose(WebSocketResource):
        async def on_chat_message(self, ws: Any, payload: Any) -> None:
            await self.send({"type": "got", "message": payload})

        async def on_http_request(self, ws: Any, payload: Any) -> None:
            await self.send({"type": "http"})

    conductor = await conductor_for(chat_app(Loose))
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "chat.message", "text": "x"}')
        assert await recv_json(ws) == {
            "type": "got",
            "message": {"type": "chat.message", "text": "x"},
        }
        await ws.send_text('{"type": "HTTPRequest"}')
        assert await recv_json(ws) == {"type": "http"}
        await ws.send_text('{"type": "nothing"}')
        assert await recv_json(ws) == {
            "type": "error",
            "reason": "unknown_type",
            "detail": "Unknown message type 'nothing'",
            "path": "$.type",
        }


async def test_decorator_wins_over_convention(conductor_for: Any) -> None:
    class Both(WebSocketResource):
        async def on_ping(self, ws: Any, payload: Any) -> None:
            await self.send({"type": "convention"})

        @handles_message("ping")
        async def explicit(self, ws: Any, payload: Any) -> None:
            await self.send({"type": "decorator"})

    conductor = await conductor_for(chat_app(Both))
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "ping"}')
        assert await recv_json(ws) == {"type": "decorator"}


async def test_typed_handler_without_schema(conductor_for: Any) -> None:
    class Typed(WebSocketResource):
        @handles_message("point")
        async def point(self, ws: Any, payload: Point) -> None:
            await self.send({"type": "p", "x": payload.x, "is_point": isinstance(payload, Point)})

    assert Typed.message_types()["point"].payload_type is Point
    conductor = await conductor_for(chat_app(Typed))
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "point", "x": 1, "y": 2}')
        assert await recv_json(ws) == {"type": "p", "x": 1, "is_point": True}
        await ws.send_text('{"type": "point", "x": 1}')
        assert (await recv_json(ws))["path"] == "$.y"


class RoomBody(msgspec.Struct):
    room: str


class ByName(WebSocketResource):
    """Convention handlers annotated with untagged Structs (no schema)."""

    async def on_join(self, ws: Any, payload: RoomBody) -> None:
        await self.send({"type": "joined", "room": payload.room, "cls": type(payload).__name__})

    async def on_send_message(self, ws: Any, payload: RoomBody) -> None:
        await self.send({"type": "sent", "room": payload.room})


def test_untagged_convention_handlers_take_the_fast_decoder() -> None:
    # the tag is known from the method name, so the one decoder of the class
    # decodes these messages (no second, per-tag decode on a slow path)
    table = ByName.__pachinko_table__
    assert {tag: (s.method_name, s.payload_type) for tag, s in ByName.message_types().items()} == {
        "join": ("on_join", RoomBody),
        "send_message": ("on_send_message", RoomBody),
    }
    assert table.decoder is not None
    decoded = table.decoder.decode('{"type": "join", "room": "a"}')
    assert isinstance(decoded, RoomBody)
    assert table.by_type[type(decoded)][0] is ByName.on_join


async def test_untagged_convention_handlers_through_the_app(conductor_for: Any) -> None:
    conductor = await conductor_for(chat_app(ByName))
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "join", "room": "lobby"}')
        assert await recv_json(ws) == {"type": "joined", "room": "lobby", "cls": "RoomBody"}
        # other spellings of the same name still reach the handler (slow path)
        await ws.send_text('{"type": "sendMessage", "room": "x"}')
        assert await recv_json(ws) == {"type": "sent", "room": "x"}
        await ws.send_text('{"type": "send_message", "room": "y"}')
        assert await recv_json(ws) == {"type": "sent", "room": "y"}
        await ws.send_text('{"type": "join", "room": 1}')
        assert await recv_json(ws) == {
            "type": "error",
            "reason": "validation_error",
            "detail": "Expected `str`, got `int`",
            "path": "$.room",
        }
        await ws.send_text('{"type": "join", "room": "a", "extra": 1}')
        assert await recv_json(ws) == {
            "type": "error",
            "reason": "validation_error",
            "detail": "Object contains unknown field `extra`",
            "path": "$",
        }


async def test_untagged_struct_with_the_tag_field_keeps_working(conductor_for: Any) -> None:
    class Tagged(msgspec.Struct):
        type: str
        n: int

    class ReadsTag(WebSocketResource):
        async def on_count(self, ws: Any, payload: Tagged) -> None:
            await self.send({"type": "counted", "tag": payload.type, "n": payload.n})

    conductor = await conductor_for(chat_app(ReadsTag))
    async with conductor.simulate_ws("/ws/chat") as ws:
        await ws.send_text('{"type": "count", "n": 2}')
        assert await recv_json(ws) == {"type": "counted", "tag": "count", "n": 2}


def test_message_types_lists_handlers() -> None:
    specs = FlatChat.message_types()
    assert {tag: (s.method_name, s.payload_type, s.strict) for tag, s in specs.items()} == {
        "join": ("join", Join, True),
        "say": ("on_say", Say, True),
        "draw": ("draw", Draw, False),
    }


# -- definition errors: raised at class creation, identical on 3.11-3.13 ---------

DEFINITION_ERRORS = {
    "not async": (
        """
        class R(WebSocketResource):
            @handles_message("x")
            def x(self, ws, payload): ...
        """,
        "@handles_message('x') on R.x: handler must be an async function, got a regular function",
    ),
    "bad signature": (
        """
        class R(WebSocketResource):
            async def on_x(self, ws): ...
        """,
        "R.on_x: handler must accept (self, ws, payload), its signature is (self, ws)",
    ),
    "duplicate tag": (
        """
        class R(WebSocketResource):
            @handles_message("x")
            async def a(self, ws, payload): ...
            @handles_message("x")
            async def b(self, ws, payload): ...
        """,
        "R: message type 'x' has two handlers: a and b",
    ),
    "schema without handler": (
        """
        class J(msgspec.Struct, tag="join"):
            room: str
        class R(WebSocketResource):
            schema = J
        """,
        "R.schema declares message type 'join' (J) but R has no handler for it: "
        "expected @handles_message('join') or async def on_join(self, ws, payload)",
    ),
    "untagged schema": (
        """
        class J(msgspec.Struct):
            room: str
        class R(WebSocketResource):
            schema = J
        """,
        "R.schema: J needs a str tag (class J(msgspec.Struct, tag='...')), found None",
    ),
    "lifecycle as handler": (
        """
        class R(WebSocketResource):
            @handles_message("x")
            async def on_disconnect(self, ws, payload): ...
        """,
        "R.on_disconnect is a lifecycle method and cannot handle message type 'x'",
    ),
    "wrong tag field": (
        """
        class J(msgspec.Struct, tag="join", tag_field="kind"):
            room: str
        class R(WebSocketResource):
            schema = J
            async def on_join(self, ws, payload): ...
        """,
        "R.schema: J is tagged on field 'kind', but R.tag_field is 'type'",
    ),
    "unresolvable payload annotation": (
        """
        from __future__ import annotations
        class R(WebSocketResource):
            async def on_x(self, ws, payload: Q): ...
        """,
        "R.on_x: cannot resolve the payload annotation 'Q': name 'Q' is not defined; "
        "define it before the class, at module level or in the function that defines the class",
    ),
}


@pytest.mark.parametrize("case", sorted(DEFINITION_ERRORS))
def test_definition_errors_at_class_creation(case: str) -> None:
    source, message = DEFINITION_ERRORS[case]
    namespace = {
        "WebSocketResource": WebSocketResource,
        "handles_message": handles_message,
        "msgspec": msgspec,
    }
    with pytest.raises(HandlerDefinitionError) as info:
        exec(textwrap.dedent(source), namespace)
    assert str(info.value) == message


def test_definition_errors_identical_across_pythons() -> None:
    """The same class definitions fail with the same message on every Python.

    ``PACHINKO_PYTHONS`` lists interpreters (os.pathsep-separated) that have
    pachinko installed; .ci/run makes venvs for 3.11, 3.12 and 3.13.
    """
    import json
    import os

    pythons = [p for p in os.environ.get("PACHINKO_PYTHONS", "").split(os.pathsep) if p]
    if len(pythons) < 2:
        if os.environ.get("CI") == "true":
            pytest.fail("PACHINKO_PYTHONS must list the 3.11/3.12/3.13 interpreters under CI")
        pytest.skip("set PACHINKO_PYTHONS to interpreters with pachinko installed")
    script = textwrap.dedent(
        """
        import sys, textwrap, json, msgspec
        from pachinko import WebSocketResource, handles_message, HandlerDefinitionError
        out = {"version": list(sys.version_info[:2])}
        for name, source in json.loads(sys.stdin.read()).items():
            ns = {"WebSocketResource": WebSocketResource, "handles_message": handles_message,
                  "msgspec": msgspec}
            try:
                exec(textwrap.dedent(source), ns)
                out[name] = "no error"
            except HandlerDefinitionError as ex:
                out[name] = str(ex)
        print(json.dumps(out))
        """
    )
    cases = {name: src for name, (src, _) in DEFINITION_ERRORS.items()}
    expected = {name: msg for name, (_, msg) in DEFINITION_ERRORS.items()}
    versions = set()
    for python in pythons:
        done = subprocess.run(
            [python, "-c", script],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        versions.add(tuple(got.pop("version")))
        assert got == expected, python
    assert len(versions) == len(pythons), f"interpreters are not distinct versions: {versions}"
