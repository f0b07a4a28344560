"""Every refusal path over uvicorn, as a real client sees it (SPEC §8).

Authentication refusals are HTTP 401 responses to the handshake (with
``WWW-Authenticate: Bearer`` and the reason as the body); a ``Refuse``
from authenticate is a 403; a refused join is an error reply on an open
connection.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon.asgi
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import pachinko
from pachinko import Refuse, User, WebSocketResource, WebSocketRouter
from pachinko.auth import sign_token
from tests.apps.presence import SECRET, create_app

pytestmark = pytest.mark.live

NOW = 1_000_000_000.0  # 2001: a token made then has expired


async def denial(url: str, **kwargs: Any) -> tuple[int, str, str | None]:
    """Open a handshake that must be refused: (HTTP status, body, WWW-Authenticate)."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=5, close_timeout=5, **kwargs):
            pass
    response = info.value.response
    return response.status_code, response.body.decode(), response.headers.get("WWW-Authenticate")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "token missing"),
        ("expired", "token expired"),
        ("forged", "token signature invalid"),
        ("oversized", "token too large (limit 4096 characters)"),
        ("two-places", "token given in more than one place"),
        ("not-bearer", "Authorization header: expected 'Bearer <token>'"),
    ],
)
async def test_authentication_refusals_are_http_401(
    pachinko_live: Any, case: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    # pachinko serve's protocol class (plain uvicorn logs an error after a denial)
    server = await pachinko_live(create_app(), ws="pachinko.server:WebSocketsSansIOProtocol")
    uvicorn_log = logging.getLogger("uvicorn.error")  # configured by uvicorn: no propagation
    uvicorn_log.addHandler(caplog.handler)
    try:
        await refused_with_401(server, case, reason)
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    # a refusal is not a server error
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def refused_with_401(server: Any, case: str, reason: str) -> None:
    good = sign_token(SECRET, "ann", ttl=60)
    url, headers = server.url + "/ws/presence", {}
    if case == "expired":
        url += "?token=" + sign_token(SECRET, "ann", ttl=1, now=NOW)
    elif case == "forged":
        url += "?token=" + good[:-2] + "AA"
    elif case == "oversized":
        headers = {"Authorization": "Bearer " + "a" * 5000}
    elif case == "two-places":
        url += "?token=" + good
        headers = {"Authorization": f"Bearer {good}"}
    elif case == "not-bearer":
        headers = {"Authorization": "Basic YW5uOnB3"}
    assert await denial(url, additional_headers=headers) == (401, reason, "Bearer")


async def test_a_token_in_the_subprotocol_selects_the_other_protocol(pachinko_live: Any) -> None:
    server = await pachinko_live(create_app())
    token = sign_token(SECRET, "ann", ttl=60, info={"name": "Ann"})
    async with connect(
        server.url + "/ws/presence",
        subprotocols=["pachinko", f"pachinko.token.{token}"],  # type: ignore[list-item]
        open_timeout=5,
    ) as ws:
        # websockets (like browsers) fails a handshake that selects none
        assert ws.subprotocol == "pachinko"
        await ws.send('{"type": "join", "room": "lobby"}')
        assert '"event":"join"' in str(await ws.recv())


async def test_a_refused_join_is_an_error_reply_over_a_real_socket(pachinko_live: Any) -> None:
    server = await pachinko_live(create_app())
    token = sign_token(SECRET, "ann", ttl=60, info={"teams": ["blue"]})
    async with server.websocket(f"/ws/presence?token={token}") as ws:
        await ws.send_json({"type": "join", "room": "team:red"})
        assert await ws.expect_next() == {
            "type": "error",
            "reason": "forbidden",
            "detail": "join of room 'team:red' refused: not allowed",
            "path": None,
        }
        await ws.send_json({"type": "join", "room": "team:blue"})
        await ws.expect(type="joined", room="team:blue")


async def test_refuse_and_a_crash_in_authenticate_over_a_real_socket(pachinko_live: Any) -> None:
    def authenticate(req: Any) -> User:
        mode = req.get_param("mode")
        if mode == "forbid":
            raise Refuse()
        if mode == "custom":
            raise Refuse(4001, "banned")
        raise RuntimeError("the user database is down")

    router = WebSocketRouter()
    router.add_route("/r", WebSocketResource)
    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router, authenticate=authenticate)
    server = await pachinko_live(app)
    assert await server.refused("/ws/r?mode=forbid") == 403
    # a code of its own: accepted and closed at once, so a browser can read it
    async with server.websocket("/ws/r?mode=custom") as ws:
        assert await ws.expect_close() == 4001
        assert ws.close_reason == "banned"
    # a crash is logged and the handshake denied (1011 before accept: uvicorn's 403)
    assert await server.refused("/ws/r?mode=crash") == 403
