"""Hot reload when the routes file is deleted, then written again."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import falcon.asgi
import pytest

from pachinko.config import configure
from pachinko.testing import HandshakeRefused, LiveServer
from tests.helpers import eventually

RELOAD = 10.0  # seconds a reload may take to show (file watching, then a swap)

HANDLERS = """
async def ping(resource, ws, payload):
    await resource.send({"type": "pong", "v": payload.v})
"""

FILE = """
[app]
prefix = "/ws"

[types.Ping.fields]
v = "int"

[[routes]]
path = "{path}"
handlers.ping = {{ handler = "hd_handlers:ping", payload = "Ping" }}
"""


def remove(path: Path) -> None:
    path.unlink()


def write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hd_handlers.py").write_text(HANDLERS)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "hd_handlers", raising=False)
    path = tmp_path / "routes.toml"
    path.write_text(FILE.format(path="/a"))
    return path


async def serves(server: Any, path: str) -> bool:
    try:
        async with server.websocket(path) as ws:
            await ws.send_json({"type": "ping", "v": 1})
            return bool(await ws.receive_json() == {"type": "pong", "v": 1})
    except HandshakeRefused:
        return False


async def test_reload_of_a_deleted_file_fails_in_one_message(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configured = configure(falcon.asgi.App(), project, reload=True)
    assert configured.reloader is not None
    remove(project)
    with caplog.at_level(logging.INFO, logger="pachinko.config"):
        assert await configured.reloader.reload() is False
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is None  # a message, not a traceback
    assert record.getMessage() == (
        f"reload of {project} failed, still serving the previous version:\n"
        f"1 error in {project}\n"
        f"  {project}: expected a readable UTF-8 TOML file '{project}', "
        "found No such file or directory"
    )
    # the deleted file is still watched
    assert configured.reloader.files == [project]


@pytest.mark.live
@pytest.mark.parametrize("watcher", ["watchfiles", "polling"])
async def test_a_deleted_file_keeps_serving_and_is_reloaded_once_written_again(
    project: Path, watcher: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pachinko.config")
    app = falcon.asgi.App()
    configured = configure(app, project, reload=True)
    reloader = configured.reloader
    assert reloader is not None
    reloader.force_polling = watcher == "polling"
    async with LiveServer(app, timeout=10.0) as server:
        assert await serves(server, "/ws/a")
        remove(project)
        await eventually(lambda: reloader.failures >= 1, RELOAD, interval=0.05)
        assert "still serving the previous version" in caplog.text
        assert "IndexError" not in caplog.text
        assert not [r for r in caplog.records if r.exc_info]
        assert await serves(server, "/ws/a")  # the previous version keeps serving
        write(project, FILE.format(path="/b"))
        await eventually(lambda: serves(server, "/ws/b"), RELOAD, interval=0.05)
        assert not await serves(server, "/ws/a")
    assert "routes +/b -/a" in caplog.text
