"""An app for process tests of workers and graceful shutdown.

Environment:
    PACHINKO_EVENTS: file to which the app appends what happens, one line each
        ("worker started", "on_disconnect 1001", "worker cancelled", "backend closed").
    PACHINKO_CRASH_AFTER: if set, the worker crashes after that many seconds,
        or, if it is "hello", once a client has said hello.

Run: ``python -m tests.apps.workers_app PORT [pachinko|uvicorn]`` (pachinko's
Server, or plain uvicorn), or ``uvicorn tests.apps.workers_app:app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

import falcon.asgi
import uvicorn

import pachinko
from pachinko import WebSocketResource, WebSocketRouter
from pachinko.server import run


def record(event: str) -> None:
    path = os.environ.get("PACHINKO_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(event + "\n")


HELLO = asyncio.Event()


class Room(WebSocketResource):
    async def on_hello(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "hi"})
        HELLO.set()

    async def on_disconnect(self, ws: Any, close_code: int) -> None:
        record(f"on_disconnect {close_code}")


async def ticker(manager: Any) -> None:
    record("worker started")
    crash_after = os.environ.get("PACHINKO_CRASH_AFTER")
    try:
        if crash_after == "hello":
            await HELLO.wait()
            raise RuntimeError("the feed went away")
        if crash_after is not None:
            await asyncio.sleep(float(crash_after))
            raise RuntimeError("the feed went away")
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        record("worker cancelled")
        raise


app = falcon.asgi.App()
router = WebSocketRouter()
router.add_route("/room", Room)
pachinko.mount(app, "/ws", router, workers=[ticker])

_runtime = pachinko.runtime_of(app)
_close_backend = _runtime.manager.close


async def _close_and_record() -> None:
    record("backend closed")
    await _close_backend()


_runtime.manager.close = _close_and_record  # type: ignore[method-assign]


if __name__ == "__main__":
    port = int(sys.argv[1])
    serve = run if sys.argv[2:] == ["pachinko"] else uvicorn.run
    with contextlib.suppress(KeyboardInterrupt):
        serve(app, host="127.0.0.1", port=port, log_level="info")
