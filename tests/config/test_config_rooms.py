"""``[rooms."PATTERN"]`` and ``[app] position_field``: compiled, served, exported, reloaded."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import falcon.asgi
import pytest
import tomli_w

import pachinko
from pachinko import RoomPolicy
from pachinko.app import runtime_of
from pachinko.config import ConfigFileError, compile_text, configure, create_app, load_config
from pachinko.config.export import export_app, export_app_document
from pachinko.config.reload import Reloader, describe_changes
from pachinko.rooms import Position, RoomPolicies
from pachinko.testing import AppClient
from tests.apps import history

ROOT = Path(__file__).resolve().parent.parent.parent
HISTORY_TOML = ROOT / "tests" / "apps" / "history.toml"

ROUTE = """
[[routes]]
path = "/history"
resource = "tests.apps.history:History"
"""


def write(path: Path, text: str) -> None:
    """Write a file (sync: the async tests edit files as an editor would)."""
    path.write_text(text)


def test_the_tables_compile_into_room_policies() -> None:
    compiled = compile_text(
        '[app]\nposition_field = "at"\n\n'
        '[rooms."auction:*"]\nhistory = 100\nhistory_ttl = 600\n\n'
        "[rooms.lobby]\nhistory = 20\n\n"
        "[rooms.quiet]\n" + ROUTE
    )
    assert compiled.rooms == RoomPolicies(
        {
            "auction:*": RoomPolicy(history=100, history_ttl=600),
            "lobby": RoomPolicy(history=20),
            "quiet": RoomPolicy(),
        },
        position_field="at",
    )
    assert compiled.rooms.lookup("auction:7").history_ttl == 600


def test_without_rooms_no_room_keeps_history() -> None:
    compiled = compile_text(ROUTE)
    assert compiled.rooms == RoomPolicies()
    assert not compiled.rooms.any_history


def test_the_test_apps_file_declares_the_same_rooms_as_its_python_app() -> None:
    assert load_config(HISTORY_TOML).rooms == RoomPolicies(history.ROOMS)


def test_rooms_may_be_declared_in_an_included_file_but_once(tmp_path: Path) -> None:
    (tmp_path / "rooms.toml").write_text('[rooms."feed:*"]\nhistory = 7\n')
    root = tmp_path / "routes.toml"
    root.write_text('include = ["rooms.toml"]\n' + ROUTE)
    assert load_config(root).rooms == RoomPolicies({"feed:*": RoomPolicy(history=7)})
    root.write_text('include = ["rooms.toml"]\n[rooms."feed:*"]\nhistory = 8\n' + ROUTE)
    with pytest.raises(ConfigFileError) as info:
        load_config(root)
    assert str(info.value) == (
        f"1 error in {tmp_path / 'rooms.toml'}\n"
        f'  {tmp_path / "rooms.toml"}:1: rooms."feed:*": expected a room name used once, '
        f'found rooms."feed:*" declared already at {root}:2'
    )


def test_every_bad_room_table_is_reported_at_once() -> None:
    text = (
        '[app]\nposition_field = ""\n\n'
        '[rooms."*x"]\nhistory = 1\n\n'
        "[rooms.a]\nhistory = 1.5\n\n"
        "[rooms.b]\nhistory = 1\nhistory_ttl = 0\n" + ROUTE
    )
    with pytest.raises(ConfigFileError) as info:
        compile_text(text, "t.toml")
    assert [(i.path, i.line) for i in info.value.issues] == [
        ("app.position_field", 2),
        ('rooms."*x"', 4),
        ("rooms.a.history", 8),
        ("rooms.b.history_ttl", 12),
    ]


async def test_a_configured_app_keeps_history_for_the_declared_rooms() -> None:
    app = create_app(HISTORY_TOML, environ={"PACHINKO_BACKEND": "memory://"})
    assert runtime_of(app).manager.room_policies == RoomPolicies(history.ROOMS)
    async with AppClient(app) as client, client.websocket("/ws/history") as ws:
        await ws.send_json({"type": "join", "room": "feed:a"})
        await ws.expect(type="joined")
        await ws.send_json({"type": "join", "room": "plain"})
        await ws.expect(type="joined")
        for room, n in (("feed:a", 1), ("plain", 2), ("feed:a", 3)):
            await ws.send_json({"type": "say", "room": room, "n": n})
        one = await ws.expect(type="said", n=1)
        plain = await ws.expect(type="said", n=2)
        three = await ws.expect(type="said", n=3)
        assert "_pos" not in plain
        assert Position.parse(three["_pos"]).offset == Position.parse(one["_pos"]).offset + 1
        # a client back with its position gets what it missed
        async with client.websocket("/ws/history") as back:
            await back.send_json({"type": "join", "room": "feed:a", "since": one["_pos"]})
            recovery = await back.expect(type="recovery")
            assert (recovery["recovered"], recovery["missed"]) == (True, 1)
            assert (await back.expect(type="said"))["n"] == 3


async def test_position_field_renames_the_field(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    write(path, '[app]\nposition_field = "at"\n\n[rooms."*"]\nhistory = 5\n' + ROUTE)
    async with AppClient(create_app(path)) as client, client.websocket("/ws/history") as ws:
        await ws.send_json({"type": "join", "room": "any"})
        await ws.expect(type="joined")
        await ws.send_json({"type": "say", "room": "any", "n": 1})
        message = await ws.expect(type="said")
        assert "_pos" not in message
        assert Position.parse(message["at"]).offset == 1


# -- export -----------------------------------------------------------------------------


def test_export_of_a_configured_app_writes_its_rooms_back(tmp_path: Path) -> None:
    app = create_app(HISTORY_TOML, environ={"PACHINKO_BACKEND": "memory://"})
    document = export_app_document(app)
    assert document["rooms"] == {
        "feed:*": {"history": 1000},
        "short:*": {"history": 3},
        "brief:*": {"history": 100, "history_ttl": 0.5},
    }
    assert list(document)[:3] == ["app", "rooms", "routes"]
    again = tmp_path / "again.toml"
    again.write_text(export_app(app))
    assert load_config(again).rooms == RoomPolicies(history.ROOMS)


def test_export_of_a_python_app_writes_its_room_policies(tmp_path: Path) -> None:
    app = falcon.asgi.App()
    router = pachinko.WebSocketRouter()
    router.add_route("/history", history.History)
    policies = RoomPolicies(
        {"feed:*": RoomPolicy(history=50, history_ttl=30), "lobby": RoomPolicy()},
        position_field="at",
    )
    pachinko.mount(app, "/ws", router, rooms=policies)
    text = export_app(app)
    assert text.startswith('[app]\nprefix = "/ws"\nposition_field = "at"\n\n[rooms."feed:*"]\n')
    exported = tmp_path / "exported.toml"
    exported.write_text(text)
    assert load_config(exported).rooms == policies
    plain = falcon.asgi.App()
    pachinko.mount(plain, "/ws", router)
    assert "rooms" not in export_app_document(plain)
    assert "position_field" not in export_app_document(plain)["app"]


# -- hot reload -------------------------------------------------------------------------

BASE = '[app]\nprefix = "/ws"\n\n{rooms}\n' + ROUTE


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "routes.toml"
    path.write_text(BASE.format(rooms='[rooms."feed:*"]\nhistory = 10\n'))
    return path


def test_describe_changes_names_the_rooms_that_changed(project: Path) -> None:
    old = load_config(project)
    project.write_text(BASE.format(rooms='[rooms."feed:*"]\nhistory = 20\n[rooms.lobby]\n'))
    changes = describe_changes(old, load_config(project))
    assert changes["rooms"] == ["+lobby", "~feed:*"]
    assert changes["restart"] == []


async def test_a_reload_applies_rooms_to_the_next_broadcasts(
    project: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    app = falcon.asgi.App()
    configured = configure(app, project, reload=False)
    reloader = Reloader(configured)
    manager = configured.runtime.manager
    async with AppClient(app) as client, client.websocket("/ws/history") as ws:
        for room in ("feed:a", "news"):
            await ws.send_json({"type": "join", "room": room})
            await ws.expect(type="joined")

        async def said(room: str, n: int) -> dict[str, Any]:
            await ws.send_json({"type": "say", "room": room, "n": n})
            message: dict[str, Any] = await ws.expect(type="said", n=n)
            return message

        assert Position.parse((await said("feed:a", 1))["_pos"]).offset == 1
        assert "_pos" not in await said("news", 2)
        # history moves from feed:* to news:... and news itself
        write(project, BASE.format(rooms="[rooms.news]\nhistory = 10\n"))
        with caplog.at_level(logging.INFO, logger="pachinko.config"):
            assert await reloader.reload()
        assert "rooms +news -feed:*" in caplog.text
        assert "restart" not in caplog.text
        assert manager.room_policies == RoomPolicies({"news": RoomPolicy(history=10)})
        assert "_pos" not in await said("feed:a", 3)
        assert Position.parse((await said("news", 4))["_pos"]).offset == 1
        # a client coming back to feed:a is told the room keeps no history now
        async with client.websocket("/ws/history") as back:
            await back.send_json({"type": "join", "room": "feed:a", "since": "x:1"})
            recovery = await back.expect(type="recovery")
            assert (recovery["recovered"], recovery["reason"]) == (False, "no_history")


async def test_a_new_position_field_needs_a_restart(
    project: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    app = falcon.asgi.App()
    configured = configure(app, project, reload=False)
    write(
        project,
        BASE.format(rooms='[rooms."feed:*"]\nhistory = 5\n').replace(
            "[app]\n", '[app]\nposition_field = "at"\n'
        ),
    )
    with caplog.at_level(logging.INFO, logger="pachinko.config"):
        assert await Reloader(configured).reload()
    assert "[app] changed; restart the server to apply it" in caplog.text
    policies = configured.runtime.manager.room_policies
    assert policies.position_field == "_pos"  # kept until a restart
    assert policies.lookup("feed:x").history == 5  # the tables apply


def test_the_documents_round_trip_through_tomli_w() -> None:
    doc = {
        "rooms": {"auction:*": {"history": 100, "history_ttl": 600}},
        "routes": [{"path": "/history", "resource": "tests.apps.history:History"}],
    }
    compiled = compile_text(tomli_w.dumps(doc))
    assert compiled.rooms["auction:*"] == RoomPolicy(history=100, history_ttl=600)
