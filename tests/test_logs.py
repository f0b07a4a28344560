"""Connection-aware logging (pachinko.logs) through a real Falcon app."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from typing import Any

import falcon.asgi
import pytest

import pachinko
from pachinko import WebSocketResource, WebSocketRouter, handles_message
from pachinko.logs import ConnectionFilter, JsonFormatter
from pachinko.server import log_config
from tests.helpers import eventually, recv_json

app_logger = logging.getLogger("tests.app")


class Chat(WebSocketResource):
    async def on_connect(self, req: Any, ws: Any, room: str) -> bool:
        app_logger.info("connecting to %s", room)
        return True

    @handles_message("login")
    async def login(self, ws: Any, payload: Any) -> None:
        self.connection.user_id = payload["user"]
        app_logger.warning("logged in")
        await self.send({"type": "ok"})


def chat_app() -> falcon.asgi.App:
    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/rooms/{room}", Chat)
    pachinko.mount(app, "/ws", router)
    return app


@pytest.fixture
def captured() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(ConnectionFilter())
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.INFO)
    yield records
    app_logger.removeHandler(handler)


async def test_the_apps_own_log_lines_name_the_connection(
    conductor_for: Any, captured: list[logging.LogRecord]
) -> None:
    app = chat_app()
    conductor = await conductor_for(app)
    async with conductor.simulate_ws("/ws/rooms/lobby") as ws:
        await ws.send_text('{"type": "login", "user": "ada"}')
        assert await recv_json(ws) == {"type": "ok"}
        conn = next(iter(pachinko.runtime_of(app).manager._connections.values()))
    connecting, logged_in = captured
    assert (connecting.connection_id, connecting.route, connecting.user_id) == (  # type: ignore[attr-defined]
        conn.id,
        "/ws/rooms/{room}",
        None,
    )
    assert connecting.connection == f" [connection {conn.id} /ws/rooms/{{room}}]"  # type: ignore[attr-defined]
    assert (logged_in.connection_id, logged_in.user_id) == (conn.id, "ada")  # type: ignore[attr-defined]
    assert logged_in.connection == f" [connection {conn.id} /ws/rooms/{{room}} user=ada]"  # type: ignore[attr-defined]
    app_logger.info("outside")
    assert captured[-1].connection_id is None  # type: ignore[attr-defined]
    assert captured[-1].connection == ""  # type: ignore[attr-defined]


def test_json_lines_have_the_connection_fields() -> None:
    record = logging.LogRecord("tests.app", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    record.__dict__.update(
        connection_id="ab.1", route="/ws/x", user_id=None, connection=" [..]", order=7
    )
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry.pop("time").endswith("+00:00")
    assert entry == {
        "level": "INFO",
        "logger": "tests.app",
        "message": "hi there",
        "connection_id": "ab.1",
        "route": "/ws/x",
        "order": 7,
    }


def test_json_lines_carry_the_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exception"].startswith("Traceback")
    assert "ValueError: bad" in entry["exception"]


def test_serves_log_config_writes_json_lines_with_the_connection() -> None:
    config = log_config("info", "json")
    stream = io.StringIO()
    config["handlers"]["named"]["stream"] = stream
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logging.config.dictConfig(config)
        logging.getLogger("tests.json").info("hello %d", 1)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    entry = json.loads(stream.getvalue())
    assert (entry["level"], entry["logger"], entry["message"]) == ("INFO", "tests.json", "hello 1")


def test_the_text_format_appends_the_connection() -> None:
    config = log_config("info")
    assert config["formatters"]["named"]["fmt"].endswith("%(message)s%(connection)s")
    assert config["formatters"]["default"]["fmt"].endswith("%(message)s%(connection)s")
    assert all(h["filters"] == ["connection"] for h in config["handlers"].values())


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="fmt must be one of text, json, got 'xml'"):
        log_config("info", "xml")


async def test_a_slow_consumer_closed_by_a_broadcaster_is_named_in_the_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pachinko.testing import AppClient
    from tests.helpers import StalledClient

    class Room(WebSocketResource):
        async def after_connect(self, ws: Any) -> None:
            await self.join_room("r")

        @handles_message("pub")
        async def pub(self, ws: Any, payload: Any) -> None:
            for n in range(4):
                await self.broadcast_to_room("r", {"n": n})

    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/r", Room)
    settings = pachinko.Settings(send_queue_size=1, slow_consumer="close", send_timeout=30)
    pachinko.mount(app, "/ws", router, settings=settings)
    manager = pachinko.runtime_of(app).manager
    caplog.handler.addFilter(ConnectionFilter())
    async with (
        AppClient(app, timeout=5.0) as client,
        StalledClient(app, "/ws/r") as slow,
        client.websocket("/ws/r") as publisher,
    ):
        await eventually(lambda: len(manager._rooms.get("r", ())) == 2)
        # the stalled client joined first; the publisher's task logs the close
        slow_id, publisher_id = list(manager._rooms["r"])
        slow.stalled = True
        await publisher.send_json({"type": "pub"})
        await eventually(lambda: slow.close_code == 1013)
    lines = [r for r in caplog.records if r.getMessage().startswith("closing a slow consumer")]
    assert len(lines) == 1
    assert lines[0].connection_id == slow_id != publisher_id  # type: ignore[attr-defined]
