"""Identity at the handshake (SPEC §8): tokens, authenticate, the user everywhere.

Through a real Falcon app and its in-process WebSocket client; the status a
real client sees over uvicorn is in tests/test_auth_uvicorn.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from falcon.errors import WebSocketDisconnected

import pachinko
from pachinko import AuthenticationFailed, Refuse, User, WebSocketResource, WebSocketRouter
from pachinko.auth import (
    sign_token,
    token_authenticator,
    token_from_request,
    verify_token,
)
from tests.helpers import FORBIDDEN, INTERNAL_ERROR, make_app, recv_json

UNAUTHORIZED = 3401  # Falcon's equivalent of HTTP 401
SECRET = "test-secret-of-32-characters-xx"
NOW = 1_000_000_000.0  # 2001: a token made then has expired


# -- tokens ----------------------------------------------------------------------


def test_a_signed_token_gives_back_its_user() -> None:
    token = sign_token(SECRET, "ann", ttl=60, info={"name": "Ann"}, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 59) == User("ann", {"name": "Ann"})
    assert verify_token(SECRET, sign_token(SECRET, User("bob"), ttl=1, now=NOW), now=NOW) == User(
        "bob"
    )


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: t, "token expired"),
        (lambda t: t.split(".")[0] + "." + "A" * 43, "token signature invalid"),
        (lambda t: "e30." + t.split(".")[1], "token signature invalid"),  # payload swapped
        (lambda t: t.replace(".", ""), "token malformed"),
        (lambda t: "x" * 5000, "token too large (limit 4096 characters)"),
    ],
    ids=["expired", "forged-signature", "forged-payload", "malformed", "oversized"],
)
def test_bad_tokens_are_refused_with_the_reason(mangle: Any, reason: str) -> None:
    token = mangle(sign_token(SECRET, "ann", ttl=60, now=NOW))
    with pytest.raises(AuthenticationFailed) as info:
        verify_token(SECRET, token, now=NOW + 60)
    assert (info.value.code, info.value.reason) == (UNAUTHORIZED, reason)


def test_a_token_signed_with_another_secret_is_forged() -> None:
    token = sign_token("another-secret-of-enough-length", "ann", ttl=60, now=NOW)
    with pytest.raises(AuthenticationFailed, match="signature invalid"):
        verify_token(SECRET, token, now=NOW)


def test_a_short_secret_is_a_configuration_error() -> None:
    with pytest.raises(pachinko.ConfigError, match="at least 16 bytes"):
        token_authenticator("short")


def test_user_ids_are_checked() -> None:
    with pytest.raises(ValueError, match="1 to 256 characters"):
        User("")
    with pytest.raises(ValueError, match="1 to 256 characters"):
        User("x" * 257)


# -- authenticate at the handshake -------------------------------------------------------


SEEN: list[tuple[str, Any]] = []


class Who(WebSocketResource):
    async def before_connect(self, req: Any, ws: Any, params: Any) -> None:
        SEEN.append(("before_connect", self.connection.user))

    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        SEEN.append(("on_connect", self.user))
        return True

    async def after_connect(self, ws: Any) -> None:
        SEEN.append(("after_connect", self.user))

    async def before_receive(self, ws: Any, message: str) -> None:
        SEEN.append(("before_receive", self.user))

    async def on_whoami(self, ws: Any, payload: Any) -> None:
        user = self.connection.user
        assert user is not None
        await self.send({"type": "me", "id": self.user_id, "info": user.info})

    async def on_rename(self, ws: Any, payload: Any) -> None:
        try:
            self.user_id = payload["to"]
        except pachinko.PachinkoError as ex:
            await self.send({"type": "refused", "detail": str(ex)})

    async def before_disconnect(self, ws: Any, close_code: int) -> None:
        SEEN.append(("before_disconnect", self.user))


def auth_app(authenticate: Any) -> Any:
    SEEN.clear()
    router = WebSocketRouter()
    router.add_route("/who", Who)

    async def global_hook(resource: Any, ws: Any, message: str) -> None:
        SEEN.append(("global before_receive", resource.connection.user))

    router.add_hook("before_receive", global_hook)
    return make_app(router, authenticate=authenticate)


async def refusal_code(conductor: Any, path: str, **kwargs: Any) -> int:
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws(path, **kwargs):
            pass
    return int(info.value.code)


async def test_the_user_is_on_the_connection_and_in_every_hook(conductor_for: Any) -> None:
    conductor = await conductor_for(auth_app(token_authenticator(SECRET)))
    token = sign_token(SECRET, "ann", ttl=60, info={"name": "Ann"})
    ann = User("ann", {"name": "Ann"})
    async with conductor.simulate_ws("/ws/who", headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send_text('{"type": "whoami"}')
        assert await recv_json(ws) == {"type": "me", "id": "ann", "info": {"name": "Ann"}}
    assert SEEN[:5] == [
        ("before_connect", ann),
        ("on_connect", ann),
        ("after_connect", ann),
        ("global before_receive", ann),
        ("before_receive", ann),
    ]
    assert ("before_disconnect", ann) in SEEN


@pytest.mark.parametrize("where", ["header", "query", "subprotocol"])
async def test_the_token_may_come_from_three_places(conductor_for: Any, where: str) -> None:
    conductor = await conductor_for(auth_app(token_authenticator(SECRET)))
    token = sign_token(SECRET, "bob", ttl=60)
    path, kwargs = "/ws/who", {}
    if where == "header":
        kwargs = {"headers": {"Authorization": f"Bearer {token}"}}
    elif where == "query":
        kwargs = {"query_string": f"token={token}"}
    else:
        kwargs = {"subprotocols": ["pachinko", f"pachinko.token.{token}"]}
    async with conductor.simulate_ws(path, **kwargs) as ws:
        await ws.send_text('{"type": "whoami"}')
        assert (await recv_json(ws))["id"] == "bob"
        if where == "subprotocol":
            # a browser fails a handshake that selects none of its protocols
            assert ws.subprotocol == "pachinko"


@pytest.mark.parametrize(
    "case", ["missing", "expired", "forged", "oversized", "two-places", "twice-in-query"]
)
async def test_bad_or_missing_tokens_are_refused_with_3401(conductor_for: Any, case: str) -> None:
    conductor = await conductor_for(auth_app(token_authenticator(SECRET)))
    good = sign_token(SECRET, "ann", ttl=60)
    query, headers = "", {}
    if case == "expired":
        query = "token=" + sign_token(SECRET, "ann", ttl=1, now=NOW)
    elif case == "forged":
        headers = {"Authorization": "Bearer " + good[:-2] + "AA"}
    elif case == "oversized":
        headers = {"Authorization": "Bearer " + "a" * 5000}
    elif case == "two-places":
        query = "token=" + good
        headers = {"Authorization": "Bearer " + good}
    elif case == "twice-in-query":
        query = f"token={good}&token={good}"
    code = await refusal_code(conductor, "/ws/who", headers=headers, query_string=query)
    assert code == UNAUTHORIZED
    assert SEEN == []  # no resource was built


async def test_what_authenticate_may_do(conductor_for: Any) -> None:
    async def authenticate(req: Any) -> User | None:
        mode = req.get_param("mode")
        if mode == "none":
            return None
        if mode == "forbid":
            raise Refuse()
        if mode == "crash":
            raise RuntimeError("the user database is down")
        if mode == "wrong":
            return "ann"  # type: ignore[return-value]
        return User("ann")

    conductor = await conductor_for(auth_app(authenticate))
    assert await refusal_code(conductor, "/ws/who", query_string="mode=none") == UNAUTHORIZED
    assert await refusal_code(conductor, "/ws/who", query_string="mode=forbid") == FORBIDDEN
    assert await refusal_code(conductor, "/ws/who", query_string="mode=crash") == INTERNAL_ERROR
    assert await refusal_code(conductor, "/ws/who", query_string="mode=wrong") == INTERNAL_ERROR
    async with conductor.simulate_ws("/ws/who") as ws:
        await ws.send_text('{"type": "whoami"}')
        assert (await recv_json(ws))["id"] == "ann"


async def test_a_sync_authenticate_works_too(conductor_for: Any) -> None:
    conductor = await conductor_for(auth_app(lambda req: User("sync")))
    async with conductor.simulate_ws("/ws/who") as ws:
        await ws.send_text('{"type": "whoami"}')
        assert (await recv_json(ws))["id"] == "sync"


async def test_an_authenticated_user_id_cannot_change(conductor_for: Any) -> None:
    conductor = await conductor_for(auth_app(lambda req: User("ann")))
    async with conductor.simulate_ws("/ws/who") as ws:
        await ws.send_text('{"type": "rename", "to": "mallory"}')
        refused = await recv_json(ws)
        assert refused["type"] == "refused"
        assert "set once, by the app's authenticate" in refused["detail"]
        await ws.send_text('{"type": "whoami"}')
        assert (await recv_json(ws))["id"] == "ann"


async def test_without_authenticate_nothing_changes(conductor_for: Any) -> None:
    conductor = await conductor_for(auth_app(None))
    async with conductor.simulate_ws("/ws/who") as ws:
        await ws.send_text('{"type": "rename", "to": "carol"}')
        await ws.send_text('{"type": "whoami"}')
        assert await recv_json(ws) == {"type": "me", "id": "carol", "info": {}}
    assert SEEN[0] == ("before_connect", None)


def test_token_from_request_rejects_a_non_bearer_authorization() -> None:
    class Req:
        params: dict[str, Any] = {}

        def get_header(self, name: str) -> str | None:
            return "Basic YW5uOnB3" if name == "Authorization" else None

    with pytest.raises(AuthenticationFailed, match="expected 'Bearer <token>'"):
        token_from_request(Req())  # type: ignore[arg-type]


def test_install_checks_authenticate() -> None:
    with pytest.raises(TypeError, match="authenticate must be callable"):
        make_app(WebSocketRouter(), authenticate="app.auth:from_token")
