"""The chat page in a real browser: headless Debian chromium driven by playwright-core.

``pachinko serve routes.example.toml`` runs as a child process on a free
loopback port; ``chat.mjs`` opens the page in three tabs (two chat, the
third joins later for the history; then the first one's connection drops
while the second says three things, and it reconnects) and saves screenshots under
``tests/browser/artifacts/`` (git-ignored). Needs ``/usr/bin/chromium``,
``node`` and ``npm install`` in this directory: ``scripts/install-browser-deps.sh``
sets them up. Under ``CI=true`` a missing piece fails the test instead of
skipping it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pachinko.testing import ServerProcess
from tests.redis_server import unique_prefix

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ARTIFACTS = HERE / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = [pytest.mark.browser, pytest.mark.live]


def missing_tools() -> list[str]:
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"chromium ({CHROMIUM})")
    if shutil.which("node") is None:
        missing.append("node")
    if not (HERE / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append("playwright-core (npm install in tests/browser)")
    return missing


@pytest.fixture
def browser_tools() -> None:
    missing = missing_tools()
    if not missing:
        return
    reason = f"browser test needs {', '.join(missing)}: run scripts/install-browser-deps.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


SERVE = [sys.executable, "-m", "pachinko", "serve", "routes.example.toml", "--port", "0"]


async def drive(*base_urls: str, logs: str) -> dict[str, Any]:
    """Run chat.mjs against ``base_urls`` (bob's tab on the second, if given)."""
    for old in ARTIFACTS.glob("chat-*.png"):
        old.unlink()
    node = await asyncio.create_subprocess_exec(
        "node",
        str(HERE / "chat.mjs"),
        base_urls[0],
        str(ARTIFACTS),
        *base_urls[1:],
        cwd=HERE,
        env={**os.environ, "CHROMIUM": CHROMIUM},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(node.communicate(), 90)
    except TimeoutError:
        node.kill()
        await node.wait()
        raise
    assert node.returncode == 0, f"{err.decode()}\nserver log:\n{logs}"
    seen: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return seen


async def test_two_tabs_chat_through_pachinko_serve(browser_tools: None) -> None:
    async with ServerProcess(SERVE, cwd=ROOT, env={"PACHINKO_BACKEND": "memory://"}) as server:
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(server.http_url + "/", timeout=5).read().decode()
        )
        assert '<meta name="pachinko-ws-path" content="/ws/chat">' in page
        seen = await drive(server.http_url, logs=server.output)
    assert seen["members_alice"] == ["alice", "bob"]
    assert seen["members_bob"] == ["alice", "bob"]
    assert seen["typing_bob"] == "alice is typing…"
    assert seen["message_bob"].endswith("alicehello from alice")
    assert seen["history_carol"].endswith("alicehello from alice")
    assert seen["members_carol"] == ["alice", "bob", "carol"]
    # the reconnected tab shows what it missed exactly once, in order, then the live stream
    assert seen["messages_alice"] == [
        "hello from alice",
        "missed one",
        "missed two",
        "missed three",
        "live again",
    ]
    assert len(seen["reconnect_alice"]) == 1
    assert "missed update(s)" in seen["reconnect_alice"][0]
    assert seen["sockets_alice"] == 2  # it did reconnect (a second real socket)
    for name in ("alice", "bob", "carol", "typing", "reconnect"):
        shot = ARTIFACTS / f"chat-{name}.png"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot


@pytest.mark.redis
async def test_two_processes_show_the_same_members(browser_tools: None, redis_url: str) -> None:
    """Two users signed in on two ``pachinko serve`` processes sharing one Redis."""
    env = {"PACHINKO_BACKEND": f"{redis_url}?prefix={unique_prefix()}"}
    async with (
        ServerProcess(SERVE, cwd=ROOT, env=env) as one,
        ServerProcess(SERVE, cwd=ROOT, env=env) as two,
    ):
        seen = await drive(one.http_url, two.http_url, logs=one.output + two.output)
    # alice's tab is on process one, bob's on process two: the same members
    assert seen["members_alice"] == seen["members_bob"] == ["alice", "bob"]
    assert seen["message_bob"].endswith("alicehello from alice")  # across processes
    assert seen["members_carol"] == ["alice", "bob", "carol"]
