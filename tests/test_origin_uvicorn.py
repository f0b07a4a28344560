"""Same-origin checks over a real socket: uvicorn, a real client sending Origin."""

from __future__ import annotations

from typing import Any

import pytest

from pachinko import WebSocketResource, WebSocketRouter
from pachinko.testing import HandshakeRefused, LiveServer
from tests.helpers import make_app

FORBIDDEN_STATUS = 403  # uvicorn's answer to a handshake closed before accept


class Echo(WebSocketResource):
    async def on_say(self, ws: Any, payload: Any) -> None:
        await self.send({"type": "said", "text": payload["text"]})


def echo_app() -> Any:
    router = WebSocketRouter()
    router.add_route("/echo", Echo)
    return make_app(router)  # allowed_origins unset: same origin only


async def accepted(server: LiveServer, headers: dict[str, str]) -> bool:
    try:
        async with server.websocket("/ws/echo", headers=headers) as ws:
            await ws.send_json({"type": "say", "text": "hi"})
            assert (await ws.receive_json())["text"] == "hi"
            return True
    except HandshakeRefused as refused:
        status = refused.status
    assert status == FORBIDDEN_STATUS
    return False


async def test_same_origin_compares_the_scheme() -> None:
    async with LiveServer(echo_app()) as server:
        here = f"127.0.0.1:{server.port}"
        assert await accepted(server, {"Origin": f"http://{here}"})
        # used to be accepted: only host:port was compared with Host
        assert not await accepted(server, {"Origin": f"https://{here}"})
        assert not await accepted(server, {"Origin": "http://127.0.0.1:1"})
        assert await accepted(server, {})  # no Origin: not a browser


@pytest.mark.parametrize(
    ("trusted", "https_page_allowed"),
    [
        ("127.0.0.1", True),  # uvicorn's default: the proxy on the loopback is trusted
        ("10.0.0.5", False),  # the header comes from an untrusted peer: ignored
    ],
)
async def test_a_trusted_proxys_forwarded_scheme_counts(
    trusted: str, https_page_allowed: bool
) -> None:
    async with LiveServer(echo_app(), forwarded_allow_ips=trusted) as server:
        here = f"127.0.0.1:{server.port}"
        proxied = {"X-Forwarded-Proto": "https"}
        assert (
            await accepted(server, {**proxied, "Origin": f"https://{here}"})
        ) is https_page_allowed
        assert (
            await accepted(server, {**proxied, "Origin": f"http://{here}"})
        ) is not https_page_allowed
