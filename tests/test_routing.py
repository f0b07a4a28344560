"""Routing through a real Falcon app: trailing slashes, mounts and url_for."""

from __future__ import annotations

from typing import Any

import pytest
from falcon.errors import WebSocketDisconnected

from pachinko import WebSocketResource, WebSocketRouter
from tests.conftest import NOT_FOUND, make_app, recv_json


class Where(WebSocketResource):
    def __init__(self, label: str) -> None:
        self.label = label

    async def on_where(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "here", "label": self.label, "params": self.connection.params})


async def test_a_trailing_slash_is_its_own_route(conductor_for: Any) -> None:
    router = WebSocketRouter()
    router.add_route("/a", Where, "no slash")
    router.add_route("/a/", Where, "slash")  # used to raise "route '/a' conflicts with '/a'"
    router.add_route("/b", Where, "b")
    router.add_route("/", Where, "root")
    conductor = await conductor_for(make_app(router))
    cases = [("/ws/a", "no slash"), ("/ws/a/", "slash"), ("/ws", "root"), ("/ws/", "root")]
    for path, label in cases:
        async with conductor.simulate_ws(path) as ws:
            await ws.send_text('{"type": "where"}')
            assert (await recv_json(ws))["label"] == label, path
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws("/ws/b/"):
            pass
    assert info.value.code == NOT_FOUND
