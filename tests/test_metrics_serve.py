"""``pachinko serve --metrics``: scrape a real server after a scripted client run.

One worker (in-process registry) and ``--workers 2`` with Redis
(prometheus-client's multiprocess directory, managed by ``serve``): the
counters must be exact whichever process answers the scrape.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pachinko.testing import ServerProcess
from tests.helpers import chat_login

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ROUTE = "/ws/chat"

pytestmark = pytest.mark.live


def serve(*args: str) -> list[str]:
    return [PYTHON, "-m", "pachinko", "serve", "routes.example.toml", *args, "--port", "0"]


async def scrape(server: ServerProcess, path: str = "/metrics") -> dict[tuple[str, Any], float]:
    def get() -> tuple[str, str]:
        with urllib.request.urlopen(server.http_url + path, timeout=5) as response:
            return response.headers["content-type"], response.read().decode()

    content_type, text = await asyncio.to_thread(get)
    assert content_type.startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: dict[tuple[str, Any], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scripted_run(server: ServerProcess) -> None:
    """Two clients: joins, three messages, an unknown type, invalid JSON; then both leave."""
    async with (
        server.websocket(ROUTE, **chat_login("ann")) as ann,
        server.websocket(ROUTE, **chat_login("bob")) as bob,
    ):
        for ws, user in ((ann, "ann"), (bob, "bob")):
            await ws.send_json({"type": "join", "room": "lobby"})
            await ws.expect(type="joined")
            # NOTE: the example answers "joined" before it joins; its own presence
            #   event comes through the room once the membership is written (with
            #   two workers: once this worker is subscribed), so m0 cannot be missed.
            await ws.expect(type="presence", event="join", user=user)
        for n in range(3):
            await ann.send_json({"type": "say", "room": "lobby", "text": f"m{n}"})
            await bob.expect(type="message", text=f"m{n}")
        await ann.send_json({"type": "shout", "text": "?"})
        assert (await ann.expect(type="error"))["reason"] == "unknown_type"
        await bob.send_text("{not json")
        assert (await bob.expect(type="error"))["reason"] == "invalid_json"


EXPECTED = {
    ("pachinko_connections_opened_total", (("route", ROUTE),)): 2.0,
    ("pachinko_connections_closed_total", (("code", "1000"), ("route", ROUTE))): 2.0,
    ("pachinko_connections_open", (("route", ROUTE),)): 0.0,
    ("pachinko_messages_total", (("route", ROUTE), ("type", "join"))): 2.0,
    ("pachinko_messages_total", (("route", ROUTE), ("type", "say"))): 3.0,
    ("pachinko_error_replies_total", (("reason", "unknown_type"), ("route", ROUTE))): 1.0,
    ("pachinko_error_replies_total", (("reason", "invalid_json"), ("route", ROUTE))): 1.0,
}


async def until_exact(server: ServerProcess) -> dict[tuple[str, Any], float]:
    """Scrape until the counts are in (other processes flush theirs every second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        found = await scrape(server)
        seen = {key: found.get(key) for key in EXPECTED}
        if seen == EXPECTED or loop.time() > deadline:
            assert seen == EXPECTED
            return found
        await asyncio.sleep(0.2)


async def test_one_worker_counts_a_scripted_run_exactly() -> None:
    async with ServerProcess(serve("--metrics"), cwd=ROOT) as server:
        before = await scrape(server)
        assert sample(before, "pachinko_connections_opened_total", route=ROUTE) == 0
        await scripted_run(server)
        found = await until_exact(server)
    assert "pachinko: metrics at /metrics" in server.output
    # the example broadcasts each message to the room: 2 joins' presence + 3 says
    assert sample(found, "pachinko_sends_total", origin="local") >= 5
    assert not [name for name, _ in found if name.startswith("pachinko_handshakes_refused")]


@pytest.mark.redis
async def test_two_workers_with_redis_count_a_scripted_run_exactly(
    redis_url: str, tmp_path: Path
) -> None:
    stale = tmp_path / "prom"
    stale.mkdir()
    # a previous run's file: serve empties the directory before the workers start
    (stale / "counter_999999.db").write_bytes(b"\0" * 16)
    env = {"PACHINKO_BACKEND": redis_url, "PROMETHEUS_MULTIPROC_DIR": str(stale)}
    async with ServerProcess(serve("--workers", "2", "--metrics"), cwd=ROOT, env=env) as server:
        await scripted_run(server)
        await until_exact(server)
        files = sorted(p.name for p in stale.iterdir())
    assert "counter_999999.db" not in files
    assert any(name.startswith("counter_") for name in files)


async def test_toml_metrics_and_json_log_lines_naming_the_connection(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pachinko.cli import main

    assert CliRunner().invoke(main, ["init", str(tmp_path)]).exit_code == 0
    config = tmp_path / "routes.toml"
    config.write_text(
        config.read_text().replace('prefix = "/ws"', 'prefix = "/ws"\nmetrics = "/m"', 1)
    )
    handlers = tmp_path / "handlers.py"
    handlers.write_text(
        handlers.read_text().replace(
            "    await resource.join_room(payload.room)\n",
            "    __import__('logging').getLogger('app').warning('joining %s', payload.room)\n"
            "    await resource.join_room(payload.room)\n",
        )
    )
    cmd = [PYTHON, "-m", "pachinko", "serve", "--log-format", "json", "--port", "0"]
    async with (
        ServerProcess(cmd, cwd=tmp_path) as server,
        server.websocket("/ws/echo") as ws,
    ):
        await ws.send_json({"type": "join", "room": "lobby"})
        await ws.expect(type="joined")
        found = await scrape(server, "/m")
        assert sample(found, "pachinko_messages_total", route="/ws/echo", type="join") == 1
    entries = [json.loads(line) for line in server.output.splitlines() if line.startswith("{")]
    startup = [e for e in entries if e["message"] == "Application startup complete."]
    assert startup[0]["logger"] == "uvicorn.error"
    assert {"time", "level", "logger", "message"} <= set(startup[0])
    joining = [e for e in entries if e["message"] == "joining lobby"]
    assert len(joining) == 1
    assert joining[0]["logger"] == "app"
    assert joining[0]["route"] == "/ws/echo"
    assert joining[0]["connection_id"].count(".") == 1
    assert "user_id" not in joining[0]


def test_serve_refuses_a_metrics_path_without_a_slash() -> None:
    import subprocess

    done = subprocess.run(
        serve("--metrics=metrics"), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Error: --metrics expects a path starting with '/', got 'metrics'" in done.stderr
