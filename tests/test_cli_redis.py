"""``pachinko serve`` scaled out: processes sharing a real Redis (deployment.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pachinko.testing import ServerProcess
from tests.helpers import chat_login

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

pytestmark = [pytest.mark.redis, pytest.mark.live]


def serve(*args: str) -> list[str]:
    return [PYTHON, "-m", "pachinko", "serve", "routes.example.toml", *args, "--port", "0"]


async def test_two_servers_share_rooms_through_redis(redis_url: str) -> None:
    env = {"PACHINKO_BACKEND": redis_url}
    async with (
        ServerProcess(serve(), cwd=ROOT, env=env) as one,
        ServerProcess(serve(), cwd=ROOT, env=env) as two,
        one.websocket("/ws/chat", **chat_login("ann")) as ann,
        two.websocket("/ws/chat", **chat_login("bob")) as bob,
    ):
        assert "backend redis://" in one.output
        await ann.send_json({"type": "join", "room": "lobby"})
        await ann.expect(type="joined")
        await ann.expect(type="presence", event="join", user="ann")  # written: she is there
        await bob.send_json({"type": "join", "room": "lobby"})
        joined = await bob.expect(type="joined")
        assert joined["members"] == {"ann": "ann", "bob": "bob"}  # presence across processes
        await ann.expect(type="presence", event="join", user="bob")  # across processes
        await bob.send_json({"type": "say", "room": "lobby", "text": "from the other process"})
        message = await ann.expect(type="message")
        assert (message["name"], message["text"]) == ("bob", "from the other process")


async def test_serve_with_workers_and_redis(redis_url: str) -> None:
    async with (
        ServerProcess(
            serve("--workers", "2"), cwd=ROOT, env={"PACHINKO_BACKEND": redis_url}
        ) as server,
        server.websocket("/ws/chat", **chat_login("n")) as ws,
    ):
        await ws.send_json({"type": "join", "room": "r"})
        await ws.expect(type="joined", room="r")
    assert "Started parent process" in server.output
