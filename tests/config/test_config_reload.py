"""Hot reload over a real uvicorn server: edits are swapped in, open sockets keep working."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import falcon.asgi
import pytest

from pachinko.config import configure, load_config
from pachinko.config.reload import Reloader, describe_changes
from pachinko.testing import HandshakeRefused, LiveServer
from tests.helpers import eventually

RELOAD = 10.0  # seconds a reload may take to show (file watching, then a swap)

HANDLERS = """
async def ping(resource, ws, payload):
    await resource.send({"type": "pong", "v": payload.v, "label": resource.label})

def make():
    return object()

async def tick(manager, every):
    import asyncio
    while True:
        await asyncio.sleep(every)
"""

BASE = """
[app]
prefix = "/ws"

[types.Ping.fields]
v = "int"

[[routes]]
path = "/a"
kwargs = {{ label = "a" }}
handlers.ping = {{ handler = "hr_handlers:ping", payload = "Ping" }}
{extra}
"""

ROUTE_B = """
[[routes]]
path = "/b"
kwargs = { label = "b" }
handlers.ping = { handler = "hr_handlers:ping", payload = "Ping" }
"""


def edit(path: Path, text: str) -> None:
    """Write the file as an editor would (a quick synchronous write)."""
    path.write_text(text)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hr_handlers.py").write_text(HANDLERS)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "hr_handlers", raising=False)
    path = tmp_path / "routes.toml"
    edit(path, BASE.format(extra=""))
    return path


@pytest.fixture
async def served(project: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any]]:
    app = falcon.asgi.App()
    configured = configure(app, project, reload=True)
    assert configured.reloader is not None
    configured.reloader.force_polling = request.param == "polling"
    async with LiveServer(app, timeout=10.0) as server:
        yield server, configured


async def ping(ws: Any, value: Any) -> Any:
    await ws.send_json({"type": "ping", "v": value})
    return await ws.receive_json()


async def _not(check: Any) -> bool:
    return not await check


async def takes_str(server: Any) -> bool:
    async with server.websocket("/ws/a") as ws:
        return bool((await ping(ws, "x"))["type"] == "pong")


async def can_connect(server: Any, path: str) -> bool:
    try:
        async with server.websocket(path) as ws:
            reply = await ping(ws, 1)  # a pong, or a validation error once v is a str
            return bool(reply["type"] in ("pong", "error"))
    except HandshakeRefused:
        return False


@pytest.mark.live
@pytest.mark.parametrize("served", ["watchfiles", "polling"], indirect=True)
async def test_edits_are_swapped_in_while_a_client_stays_connected(
    served: tuple[Any, Any],
    project: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, configured = served
    reloader: Reloader = configured.reloader
    caplog.set_level(logging.INFO, logger="pachinko.config")
    async with server.websocket("/ws/a") as old:
        assert await ping(old, 1) == {"type": "pong", "v": 1, "label": "a"}
        assert not await can_connect(server, "/ws/b")

        # 1. add a route
        edit(project, BASE.format(extra=ROUTE_B))
        await eventually(lambda: can_connect(server, "/ws/b"), RELOAD, interval=0.05)
        assert await ping(old, 2) == {"type": "pong", "v": 2, "label": "a"}
        assert "routes +/b" in caplog.text

        # 2. change a schema: new connections get it, the open one keeps its own
        edit(project, BASE.format(extra=ROUTE_B).replace('v = "int"', 'v = "str"'))
        await eventually(lambda: takes_str(server), RELOAD, interval=0.05)
        async with server.websocket("/ws/a") as new:
            assert await ping(new, "x") == {"type": "pong", "v": "x", "label": "a"}
            assert (await ping(new, 3))["reason"] == "validation_error"
        assert await ping(old, 3) == {"type": "pong", "v": 3, "label": "a"}
        assert (await ping(old, "x"))["detail"] == "Expected `int`, got `str`"
        assert "types ~Ping" in caplog.text

        # 3. break the file: the previous version keeps serving, the error is logged
        edit(
            project,
            BASE.format(extra=ROUTE_B)
            .replace('v = "int"', 'v = "str"')
            .replace("handlers.ping", "handlerz.ping", 1),
        )
        # NOTE: wait for what can be observed, not for a count of reloads: one
        #   save may be seen as several changes.
        await eventually(
            lambda: "routes.toml:11: routes[0].handlerz: expected one of the keys" in caplog.text,
            RELOAD,
            interval=0.05,
        )
        assert reloader.failures >= 1
        async with server.websocket("/ws/a") as new:
            assert await ping(new, "y") == {"type": "pong", "v": "y", "label": "a"}
        assert await can_connect(server, "/ws/b")
        assert await ping(old, 4) == {"type": "pong", "v": 4, "label": "a"}

        # ... then fix it (and drop /b): the fixed version is served
        edit(project, BASE.format(extra=""))
        await eventually(lambda: reloader.reloads >= 3, RELOAD, interval=0.05)
        await eventually(lambda: _not(can_connect(server, "/ws/b")), RELOAD, interval=0.05)
        async with server.websocket("/ws/a") as new:
            assert await ping(new, 5) == {"type": "pong", "v": 5, "label": "a"}
        assert await ping(old, 6) == {"type": "pong", "v": 6, "label": "a"}
    assert "routes -/b" in caplog.text


async def test_a_changed_worker_is_restarted_and_others_keep_running(project: Path) -> None:
    workers = """
[workers.one]
target = "hr_handlers:tick"
kwargs = {{ every = {one} }}

[workers.two]
target = "hr_handlers:tick"
kwargs = {{ every = 1.0 }}
"""
    edit(project, BASE.format(extra=workers.format(one=1.0)))
    app = falcon.asgi.App()
    configured = configure(app, project, reload=False)
    old = configured.compiled
    edit(project, BASE.format(extra=workers.format(one=2.0)))
    new = load_config(project)
    changes = describe_changes(old, new)
    assert changes["workers"] == ["~one"]
    assert changes["routes"] == changes["types"] == changes["restart"] == []


async def test_new_services_are_refused_until_restart(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = falcon.asgi.App()
    configured = configure(app, project, reload=False)
    reloader = Reloader(configured)
    edit(project, BASE.format(extra='[services.x]\nfactory = "hr_handlers:make"\n'))
    assert await reloader.reload() is False
    assert "new services (x) are created at startup only; restart the server" in caplog.text
    assert configured.compiled.loaded.services == {}


STARTS: list[tuple[str, float]] = []


async def recorded(manager: Any, name: str, every: float) -> None:
    STARTS.append((name, every))
    await asyncio.Event().wait()  # run until cancelled


async def test_reload_restarts_a_changed_worker_with_its_new_declaration(
    project: Path, conductor_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    STARTS.clear()
    workers = """
[workers.one]
target = "test_config_reload:recorded"
kwargs = {{ name = "one", every = {one} }}

[workers.two]
target = "test_config_reload:recorded"
kwargs = {{ name = "two", every = 1.0 }}
"""
    edit(project, BASE.format(extra=workers.format(one=1.0)))
    app = falcon.asgi.App()
    configured = configure(app, project, reload=False)
    reloader = Reloader(configured)
    await conductor_for(app)  # runs the lifespan: workers start
    await eventually(lambda: len(STARTS) == 2, RELOAD, interval=0.05)
    assert sorted(STARTS) == [("one", 1.0), ("two", 1.0)]
    edit(project, BASE.format(extra=workers.format(one=2.0)))
    assert await reloader.reload()
    await eventually(lambda: ("one", 2.0) in STARTS, RELOAD, interval=0.05)
    controller = configured.runtime.workers
    if hasattr(controller, "stop_worker"):  # a controller that restarts one worker
        assert STARTS.count(("two", 1.0)) == 1


@pytest.mark.parametrize("polling", [False, True])
async def test_a_change_to_an_included_file_is_reloaded(
    project: Path, conductor_for: Any, polling: bool
) -> None:
    part = project.parent / "part.toml"
    edit(part, '[[routes]]\npath = "/p1"\nhandlers.ping = "hr_handlers:ping"\n')
    edit(project, 'include = ["part.toml"]\n' + BASE.format(extra=""))
    app = falcon.asgi.App()
    configured = configure(app, project, reload=True)
    assert configured.reloader is not None
    configured.reloader.force_polling = polling
    await conductor_for(app)  # the lifespan starts the watcher
    try:
        router = configured.mount.router
        assert router.match("/p1") is not None
        edit(part, '[[routes]]\npath = "/p2"\nhandlers.ping = "hr_handlers:ping"\n')
        await eventually(
            lambda: configured.mount.router.match("/p2") is not None, RELOAD, interval=0.05
        )
        assert configured.mount.router.match("/p1") is None
        assert [p.name for p in configured.reloader.files] == ["routes.toml", "part.toml"]
    finally:
        await configured.reloader.stop()
