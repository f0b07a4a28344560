"""Sign-in for the example chat: signed, expiring tokens (``pachinko.auth``).

``POST /token`` with ``{"name": "ann"}`` answers ``{"token": ..., "user":
..., "expires_in": 3600}``: a token signed with ``CHAT_SECRET``, naming the
user (its id is the name) with the public info ``{"name": ...}``. The page
opens its WebSocket with the token as a subprotocol (``["pachinko",
"pachinko.token." + token]``: browsers cannot set headers on a WebSocket,
and a token in the URL would end up in access logs); ``authenticate``
checks it at every handshake.

NOTE: a demo sign-in: anyone may take any free-form name (there is no
password). A real app issues the token after its own login, from its own
session. Every process must share ``CHAT_SECRET`` (the default is for
local use only).
"""

from __future__ import annotations

import os
import re
from typing import Any, Final

import falcon
import falcon.asgi

from pachinko.auth import sign_token, token_authenticator

__all__ = ["TOKEN_TTL", "TokenEndpoint", "add_token_endpoint", "authenticate"]

SECRET: Final = os.environ.get("CHAT_SECRET", "example-chat-secret-change-me")
TOKEN_TTL: Final = 3600
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")

#: ``[app] authenticate`` of routes.example.toml (and of app_python.py).
authenticate = token_authenticator(SECRET, query=None)


class TokenEndpoint:
    """``POST /token``: a signed token for a display name."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body: Any = await req.get_media(default_when_empty={})
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise falcon.HTTPBadRequest(
                title="Invalid name",
                description="expected 1 to 32 letters, digits, '_' or '-'",
            )
        token = sign_token(SECRET, name, ttl=TOKEN_TTL, info={"name": name})
        resp.media = {"token": token, "user": name, "expires_in": TOKEN_TTL}


def add_token_endpoint(app: falcon.asgi.App[Any, Any]) -> None:
    """Serve ``POST /token`` on ``app`` (``[app] setup`` of routes.example.toml)."""
    app.add_route("/token", TokenEndpoint())
