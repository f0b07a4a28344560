"""Per-message cost: pachinko vs a hand-written Falcon ``on_websocket`` loop.

Run:  python benchmarks/bench_dispatch.py [--messages 20000] [--rounds 9]

Both apps are real ``falcon.asgi.App`` instances driven in-process over ASGI
by the same minimal driver (a ``receive`` that returns prepared events and a
``send`` that counts), so the figures are the apps' own CPU cost per message:
receive, decode a msgspec tagged union, dispatch, encode and send a reply.
Each configuration runs ``--rounds`` times; the best round is reported.
Falcon's buffered receiver (``ws_options.max_receive_queue``, default 4) is
measured on and off for both apps. The ``on_{tag}`` row serves the same
messages with convention handlers annotated with untagged Structs (no
schema). The ``replies`` row measures acknowledgements on: every message
carries a correlation id and each handler returns its reply (``-> Ack``),
which pachinko sends with the id; the hand-written loop decodes the same id
into its Structs and encodes it into the same reply. The ``metrics``,
``tracing`` and ``both`` rows observe the pachinko app: with
``pachinko.metrics.Metrics`` (prometheus-client), with
``pachinko.tracing.Tracing`` on an OpenTelemetry SDK ``TracerProvider``
without exporter (a recorded span per message; exporting is the exporter's
own cost), and with the two.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any

import falcon.asgi
import msgspec
from _asgi import Lifespan
from falcon.errors import WebSocketDisconnected

import pachinko
from pachinko import WebSocketResource, WebSocketRouter


class Join(msgspec.Struct, tag="join", forbid_unknown_fields=True):
    room: str
    name: str


class Say(msgspec.Struct, tag="say", forbid_unknown_fields=True):
    room: str
    text: str


class Typing(msgspec.Struct, tag="typing", forbid_unknown_fields=True):
    room: str
    active: bool


class Ack(msgspec.Struct, tag="ack"):
    room: str
    n: int


Message = Join | Say | Typing
FRAMES = [
    '{"type": "join", "room": "lobby", "name": "ada"}',
    '{"type": "say", "room": "lobby", "text": "hello there, how are you?"}',
    '{"type": "typing", "room": "lobby", "active": true}',
]
#: The same messages as requests, with a correlation id each.
REQUEST_FRAMES = [
    '{"type": "join", "id": 17, "room": "lobby", "name": "ada"}',
    '{"type": "say", "id": 18, "room": "lobby", "text": "hello there, how are you?"}',
    '{"type": "typing", "id": 19, "room": "lobby", "active": true}',
]


# -- (a) hand-written Falcon loop ----------------------------------------------


class HandWritten:
    decoder = msgspec.json.Decoder(Message)
    encoder = msgspec.json.Encoder()

    async def on_websocket(self, req: Any, ws: Any) -> None:
        await ws.accept()
        decode = self.decoder.decode
        encode = self.encoder.encode
        while True:
            try:
                text = await ws.receive_text()
            except WebSocketDisconnected:
                return
            msg = decode(text)
            match msg:
                case Join(room=room):
                    await ws.send_text(encode(Ack(room, 1)).decode())
                case Say(room=room):
                    await ws.send_text(encode(Ack(room, 2)).decode())
                case Typing(room=room):
                    await ws.send_text(encode(Ack(room, 3)).decode())


def handwritten_app(queue: int, replies: bool = False) -> falcon.asgi.App:
    app = falcon.asgi.App()
    app.ws_options.max_receive_queue = queue
    app.add_route("/ws/chat", HandWrittenReplies() if replies else HandWritten())
    return app


class JoinR(msgspec.Struct, tag="join", forbid_unknown_fields=True):
    room: str
    name: str
    id: int | str | None = None


class SayR(msgspec.Struct, tag="say", forbid_unknown_fields=True):
    room: str
    text: str
    id: int | str | None = None


class TypingR(msgspec.Struct, tag="typing", forbid_unknown_fields=True):
    room: str
    active: bool
    id: int | str | None = None


class AckR(msgspec.Struct, tag="ack", omit_defaults=True):
    room: str
    n: int
    id: int | str | None = None


class HandWrittenReplies:
    """The hand-written loop with correlation ids: read from the message, echoed in the reply."""

    decoder = msgspec.json.Decoder(JoinR | SayR | TypingR)
    encoder = msgspec.json.Encoder()

    async def on_websocket(self, req: Any, ws: Any) -> None:
        await ws.accept()
        decode = self.decoder.decode
        encode = self.encoder.encode
        while True:
            try:
                text = await ws.receive_text()
            except WebSocketDisconnected:
                return
            msg = decode(text)
            match msg:
                case JoinR(room=room, id=rid):
                    await ws.send_text(encode(AckR(room, 1, rid)).decode())
                case SayR(room=room, id=rid):
                    await ws.send_text(encode(AckR(room, 2, rid)).decode())
                case TypingR(room=room, id=rid):
                    await ws.send_text(encode(AckR(room, 3, rid)).decode())


# -- (b) the same app with pachinko ----------------------------------------------


class Chat(WebSocketResource):
    schema = Message

    async def on_join(self, ws: Any, msg: Join) -> None:
        await self.send(Ack(msg.room, 1))

    async def on_say(self, ws: Any, msg: Say) -> None:
        await self.send(Ack(msg.room, 2))

    async def on_typing(self, ws: Any, msg: Typing) -> None:
        await self.send(Ack(msg.room, 3))


class ChatReplies(WebSocketResource):
    """The same handlers declaring their reply: the return value is sent with the id."""

    schema = Message

    async def on_join(self, ws: Any, msg: Join) -> Ack:
        return Ack(msg.room, 1)

    async def on_say(self, ws: Any, msg: Say) -> Ack:
        return Ack(msg.room, 2)

    async def on_typing(self, ws: Any, msg: Typing) -> Ack:
        return Ack(msg.room, 3)


class JoinBody(msgspec.Struct, forbid_unknown_fields=True):
    room: str
    name: str


class SayBody(msgspec.Struct, forbid_unknown_fields=True):
    room: str
    text: str


class TypingBody(msgspec.Struct, forbid_unknown_fields=True):
    room: str
    active: bool


class ChatByName(WebSocketResource):
    """The same handlers by convention only: untagged Structs, tags from the names."""

    async def on_join(self, ws: Any, msg: JoinBody) -> None:
        await self.send(Ack(msg.room, 1))

    async def on_say(self, ws: Any, msg: SayBody) -> None:
        await self.send(Ack(msg.room, 2))

    async def on_typing(self, ws: Any, msg: TypingBody) -> None:
        await self.send(Ack(msg.room, 3))


def observers(observe: str) -> dict[str, Any]:
    """``install()`` options for ``observe``: "", "metrics", "tracing" or "both"."""
    options: dict[str, Any] = {}
    if observe in ("metrics", "both"):
        from pachinko.metrics import Metrics

        options["metrics"] = Metrics()
    if observe in ("tracing", "both"):
        from opentelemetry.sdk.trace import TracerProvider

        from pachinko.tracing import Tracing

        options["tracing"] = Tracing(TracerProvider())
    return options


def pachinko_app(
    queue: int,
    rate_limited: bool = False,
    resource: type[WebSocketResource] = Chat,
    observe: str = "",
) -> falcon.asgi.App:
    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/chat", resource)
    # NOTE: the per-connection rate limit is on by default (100/s); the main
    #   figure turns it off (the hand-written loop has none), the last row
    #   measures its cost with a rate high enough never to trigger.
    settings = pachinko.Settings(receive_queue=queue, rate_limit=1e12 if rate_limited else None)
    pachinko.mount(app, "/ws", router, settings=settings, **observers(observe))
    return app


# -- driver ----------------------------------------------------------------------

SCOPE = {
    "type": "websocket",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "scheme": "ws",
    "path": "/ws/chat",
    "raw_path": b"/ws/chat",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"localhost")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
    "subprotocols": [],
}


async def drive(app: falcon.asgi.App, messages: int, frames: list[str] = FRAMES) -> float:
    """Run one connection of ``messages`` messages; return seconds."""
    events: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    events += [{"type": "websocket.receive", "text": frames[i % 3]} for i in range(messages)]
    feed = iter(events)
    sent = 0
    replied = asyncio.Event()

    async def receive() -> dict[str, Any]:
        event = next(feed, None)
        if event is None:
            # NOTE: disconnect only once every reply went out: with Falcon's
            #   buffered receiver a disconnect seen early fails the last sends.
            await replied.wait()
            return {"type": "websocket.disconnect", "code": 1000}
        return event

    async def send(event: dict[str, Any]) -> None:
        nonlocal sent
        sent += 1
        if sent == messages + 1:
            replied.set()

    started = time.perf_counter()
    await app(dict(SCOPE), receive, send)
    elapsed = time.perf_counter() - started
    # accept + one reply per message (+ close)
    if sent < messages + 1:
        raise RuntimeError(f"only {sent} events sent for {messages} messages")
    return elapsed


async def measure(
    queue: int,
    messages: int,
    rounds: int,
    rate_limited: bool = False,
    resource: type[WebSocketResource] = Chat,
    replies: bool = False,
    observe: str = "",
) -> tuple[float, float]:
    """Best µs/message of (hand-written, pachinko), rounds interleaved A/B.

    NOTE: interleaving cancels drift from other load on the machine; the
    best round is the least disturbed one.
    """
    hand_app = handwritten_app(queue, replies)
    our_app = pachinko_app(queue, rate_limited, resource, observe)
    frames = REQUEST_FRAMES if replies else FRAMES
    hand: list[float] = []
    ours: list[float] = []
    async with Lifespan(hand_app), Lifespan(our_app):
        await drive(hand_app, 2000, frames)  # warm up
        await drive(our_app, 2000, frames)
        for _ in range(rounds):
            gc.collect()
            hand.append(await drive(hand_app, messages, frames) / messages * 1e6)
            gc.collect()
            ours.append(await drive(our_app, messages, frames) / messages * 1e6)
    return min(hand), min(ours)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--observe-only", action="store_true", help="Only the rows of metrics and tracing."
    )
    args = parser.parse_args()
    print(f"{args.messages} messages x {args.rounds} rounds (interleaved), best round, µs/message")
    print(f"{'receive queue':>14} {'hand-written':>13} {'pachinko':>9} {'ratio':>6}")
    results = {}
    for queue in (4, 0):
        if args.observe_only and queue == 4:
            continue
        hand, ours = await measure(queue, args.messages, args.rounds)
        results[queue] = (hand, ours)
        print(f"{queue:>14} {hand:>13.2f} {ours:>9.2f} {ours / hand:>6.3f}")
    off = results[0][1] / results[0][0]
    for observe in ("metrics", "tracing", "both"):
        hand, ours = await measure(0, args.messages, args.rounds, observe=observe)
        ratio = ours / hand
        print(
            f"{'0 + ' + observe:>14} {hand:>13.2f} {ours:>9.2f} {ratio:>6.3f}"
            f"   ({ratio / off - 1:+.1%} vs off)"
        )
    if args.observe_only:
        return
    hand, ours = await measure(0, args.messages, args.rounds, rate_limited=True)
    print(f"{'0 + rate limit':>14} {hand:>13.2f} {ours:>9.2f} {ours / hand:>6.3f}")
    hand, ours = await measure(0, args.messages, args.rounds, resource=ChatByName)
    print(f"{'0 + on_{tag}':>14} {hand:>13.2f} {ours:>9.2f} {ours / hand:>6.3f}")
    hand, ours = await measure(0, args.messages, args.rounds, resource=ChatReplies, replies=True)
    print(f"{'0 + replies':>14} {hand:>13.2f} {ours:>9.2f} {ours / hand:>6.3f}")
    print(
        f"pachinko default (queue 0) vs a hand-written loop on Falcon's default (queue 4): "
        f"{results[0][1] / results[4][0]:.3f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
