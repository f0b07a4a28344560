"""``pachinko serve`` as a real process: uvicorn on a free loopback port, real clients."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from pachinko.testing import ServerProcess
from tests.helpers import chat_login

ROOT = Path(__file__).resolve().parent.parent
TOO_BIG = 1009
GOING_AWAY = 1001
HTTP_FORBIDDEN = 403
PYTHON = sys.executable

pytestmark = pytest.mark.live


@pytest.fixture
def starter(tmp_path: Path) -> Path:
    """An empty directory after `pachinko init` (a real process)."""
    done = subprocess.run(
        [PYTHON, "-m", "pachinko", "init", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["handlers.py", "routes.toml"]
    return tmp_path


def serve(*args: str) -> list[str]:
    return [PYTHON, "-m", "pachinko", "serve", *args, "--port", "0"]


def test_python_dash_m_pachinko() -> None:
    done = subprocess.run(
        [PYTHON, "-m", "pachinko", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: pachinko [OPTIONS] COMMAND [ARGS]...")
    done = subprocess.run(
        [PYTHON, "-m", "pachinko", "check", "nope.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == "Error: configuration file nope.toml does not exist\n"


async def test_serve_the_example_chat() -> None:
    async with ServerProcess(
        serve("routes.example.toml"), cwd=ROOT, env={"PACHINKO_BACKEND": "memory://"}
    ) as server:
        assert "pachinko: serving routes.example.toml: 1 route below /ws" in server.output
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(server.http_url + "/", timeout=5).read().decode()
        )
        assert "<title>pachinko chat</title>" in page
        async with (
            server.websocket("/ws/chat", **chat_login("ann")) as ann,
            server.websocket("/ws/chat", **chat_login("bob")) as bob,
        ):
            await ann.send_json({"type": "join", "room": "lobby"})
            joined = await ann.expect(type="joined")
            assert joined["members"] == {"ann": "ann"}
            await ann.expect(type="presence", event="join", user="ann")  # she is listed now
            await bob.send_json({"type": "join", "room": "lobby"})
            await bob.expect(type="joined", members={"ann": "ann", "bob": "bob"})
            await ann.expect(type="presence", event="join", user="bob")
            await bob.send_json({"type": "say", "room": "lobby", "text": "hi ann"})
            said = await ann.expect(type="message")
            assert (said["name"], said["text"]) == ("bob", "hi ann")
            await bob.expect(type="message", text="hi ann")  # the sender gets it too
            # the TOML's max_message_size (16384) is the server's limit
            await ann.send_json({"type": "say", "room": "lobby", "text": "x" * 20000})
            assert await ann.expect_close() == TOO_BIG
            await bob.expect(type="presence", event="leave", user="ann")
            # SIGTERM: a graceful shutdown, open sockets closed with 1001 "going away"
            server.send_signal(signal.SIGTERM)
            assert await bob.expect_close() == GOING_AWAY
            # uvicorn re-raises the signal once it is done
            assert await server.wait() in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in server.output


async def test_init_then_serve_then_a_round_trip(starter: Path) -> None:
    async with ServerProcess(serve(), cwd=starter) as server, server.websocket("/ws/echo") as ws:
        await ws.send_json({"type": "join", "room": "lobby"})
        assert await ws.expect_next() == {"type": "joined", "room": "lobby"}
        await ws.send_json({"type": "say", "room": "lobby", "text": "hello"})
        assert await ws.expect_next() == {"type": "said", "room": "lobby", "text": "hello"}
        await ws.send_json({"type": "say", "room": "lobby"})
        error = await ws.expect_next(type="error")
        assert error["reason"] == "validation_error"


async def test_serve_with_reload_builds_the_app_in_the_reloaders_child(starter: Path) -> None:
    async with (
        ServerProcess(serve("--reload"), cwd=starter) as server,
        server.websocket("/ws/echo") as ws,
    ):
        await ws.send_json({"type": "join", "room": "r"})
        assert await ws.expect_next() == {"type": "joined", "room": "r"}
    assert "Will watch for changes" in server.output


async def test_a_server_that_cannot_start_reports_why(tmp_path: Path) -> None:
    (tmp_path / "routes.toml").write_text('[app]\nprefix = "/ws"\nsetup = ["nowhere_xyz:f"]\n')
    with pytest.raises(RuntimeError, match="server process exited") as caught:
        async with ServerProcess(serve(), cwd=tmp_path, timeout=30):
            pass
    assert "nowhere_xyz" in str(caught.value)


async def test_sigint_stops_the_server_gracefully(starter: Path) -> None:
    async with ServerProcess(serve(), cwd=starter) as server:
        server.send_signal(signal.SIGINT)
        assert await server.wait() == 0
    assert "Application shutdown complete." in server.output


async def test_serve_reload_swaps_toml_edits_in_without_dropping_sockets(starter: Path) -> None:
    config = starter / "routes.toml"
    async with (
        ServerProcess(serve("--reload"), cwd=starter) as server,
        server.websocket("/ws/echo") as old,
    ):
        assert await server.refused("/ws/shout") == HTTP_FORBIDDEN
        text = config.read_text()
        config.write_text(
            text
            + textwrap.dedent("""
            [[routes]]
            path = "/shout"
            name = "shout"
            handlers.join = { handler = "handlers:join", payload = "Join" }
        """)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while await server.refused_status("/ws/shout") is not None:
            assert loop.time() < deadline, f"the new route never appeared:\n{server.output}"
            await asyncio.sleep(0.1)
        async with server.websocket("/ws/shout") as new:
            await new.send_json({"type": "join", "room": "r"})
            assert await new.expect_next() == {"type": "joined", "room": "r"}
        # the socket opened before the edit still works: no process restart
        await old.send_json({"type": "join", "room": "r"})
        assert await old.expect_next() == {"type": "joined", "room": "r"}
    assert "Reloading" not in server.output
