"""Identity at the handshake: the user object, signed tokens, where tokens come from.

An app authenticates with one function, given to :func:`~pachinko.install`
(``authenticate=``) or named in routes.toml (``[app] authenticate =
"app.auth:from_token"``). It receives the Falcon request of the handshake
and returns the :class:`User`, or refuses: it returns ``None`` or raises
:class:`~pachinko.errors.AuthenticationFailed` (close code 3401, an HTTP
401 for a real client) or :class:`~pachinko.errors.Refuse` (3403).

Where a token comes from (:func:`token_from_request`):

- the ``Authorization: Bearer <token>`` header: the best place, but
  browsers cannot set headers on a WebSocket;
- the ``Sec-WebSocket-Protocol`` header, as an offered subprotocol
  ``pachinko.token.<token>`` (``new WebSocket(url, ["pachinko",
  "pachinko.token." + token])``): what a browser can send without putting
  the token in the URL; the server selects ``pachinko``;
- a query parameter (``?token=...``): the simplest, but query strings end
  up in access logs and proxies' logs, so use short-lived tokens there.

A token found in more than one place is refused (which one would win is
exactly the ambiguity an attacker looks for).

:func:`sign_token` and :func:`verify_token` make and check compact signed,
expiring tokens with the standard library (HMAC-SHA256): enough for an app
that issues its own tokens from an HTTP endpoint (the example chat does).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .connection import User
from .errors import AuthenticationFailed, ConfigError

if TYPE_CHECKING:
    from falcon.asgi import Request

__all__ = [
    "MAX_TOKEN_SIZE",
    "TOKEN_SUBPROTOCOL",
    "Authenticate",
    "User",
    "offered_subprotocols",
    "sign_token",
    "token_authenticator",
    "token_from_request",
    "verify_token",
]

#: Prefix of the offered subprotocol that carries a token.
TOKEN_SUBPROTOCOL: Final = "pachinko.token."

#: Longest token accepted by default, in characters (a token is ASCII).
MAX_TOKEN_SIZE: Final = 4096

#: ``authenticate(req)``: the user of a handshake, or ``None`` to refuse.
Authenticate = Callable[["Request"], "User | Awaitable[User | None] | None"]


class _Claims(msgspec.Struct, forbid_unknown_fields=True):
    sub: str
    exp: float
    info: dict[str, Any] = {}


_encode_claims = msgspec.json.Encoder().encode
_decode_claims = msgspec.json.Decoder(_Claims).decode


def _key(secret: str | bytes) -> Any:
    """The HMAC-SHA256 state of ``secret``, keyed once (copied per token)."""
    key = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(key, bytes) or len(key) < 16:
        raise ConfigError(
            "token secret: expected at least 16 bytes (e.g. secrets.token_urlsafe(32)), "
            f"got {len(key) if isinstance(key, bytes) else type(key).__name__}"
        )
    return hmac.new(key, digestmod="sha256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(keyed: Any, payload: str) -> str:
    mac = keyed.copy()
    mac.update(payload.encode())
    return _b64(mac.digest())


def sign_token(
    secret: str | bytes,
    user: User | str,
    *,
    ttl: float,
    info: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """Make a signed token for ``user`` that expires ``ttl`` seconds from now.

    The token is ``<claims>.<signature>``, both base64url: the claims (user
    id, expiry, public info) are readable by anyone who holds the token,
    and cannot be changed without the secret.

    Args:
        secret: The signing key (at least 16 bytes), shared by every process.
        user: A :class:`User`, or a user id.
        ttl: Seconds the token is valid.
        info: Public info (default: ``user.info``).
        now: The current time (tests).

    Raises:
        ConfigError: The secret is shorter than 16 bytes.
        ValueError: ``ttl`` is not positive, or a bad user id.
    """
    key = _key(secret)
    if not ttl > 0:
        raise ValueError(f"sign_token(): ttl must be > 0 seconds (got {ttl!r})")
    if isinstance(user, str):
        user = User(user, dict(info or {}))
    elif info is not None:
        user = User(user.id, dict(info))
    issued = time.time() if now is None else now
    payload = _b64(_encode_claims(_Claims(user.id, issued + ttl, user.info)))
    return f"{payload}.{_sign(key, payload)}"


def verify_token(
    secret: str | bytes,
    token: str,
    *,
    now: float | None = None,
    max_size: int = MAX_TOKEN_SIZE,
) -> User:
    """Check a token made by :func:`sign_token`; return its user.

    Raises:
        AuthenticationFailed: The token is too large, malformed, forged
            (bad signature) or expired; the reason says which.
        ConfigError: The secret is shorter than 16 bytes.
    """
    return _verify(_key(secret), token, time.time() if now is None else now, max_size)


def _verify(keyed: Any, token: str, now: float, max_size: int) -> User:
    if len(token) > max_size:
        raise AuthenticationFailed(f"token too large (limit {max_size} characters)")
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not signature:
        raise AuthenticationFailed("token malformed")
    # NOTE: the signature is checked before the claims are decoded: nothing
    #   of a forged token is parsed.
    if not hmac.compare_digest(_sign(keyed, payload), signature):
        raise AuthenticationFailed("token signature invalid")
    try:
        claims = _decode_claims(_unb64(payload))
        user = User(claims.sub, claims.info)
    except (msgspec.DecodeError, binascii.Error, ValueError, TypeError) as ex:
        raise AuthenticationFailed("token malformed") from ex
    if claims.exp <= now:
        raise AuthenticationFailed("token expired")
    return user


def offered_subprotocols(req: Request) -> list[str]:
    """The subprotocols the client offered (the ASGI scope's list)."""
    offered = req.scope.get("subprotocols")
    if not offered:
        return []
    return [item for item in offered if isinstance(item, str)]


def token_from_request(
    req: Request,
    *,
    header: bool = True,
    query: str | None = "token",
    subprotocol: bool = True,
    max_size: int = MAX_TOKEN_SIZE,
) -> str | None:
    """Find the token of a handshake; ``None`` when there is none.

    Args:
        req: The handshake's Falcon request.
        header: Look in ``Authorization: Bearer <token>``.
        query: The query parameter to look in (``None``: not in the URL).
        subprotocol: Look for an offered subprotocol ``pachinko.token.<token>``.
        max_size: Longest token accepted.

    Raises:
        AuthenticationFailed: The token is in more than one place (or twice
            in one), too large, or the ``Authorization`` header is not a
            bearer token.
    """
    found: list[str] = []
    if header:
        value = req.get_header("Authorization")
        if value is not None:
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise AuthenticationFailed("Authorization header: expected 'Bearer <token>'")
            found.append(credentials.strip())
    if query is not None:
        param = req.params.get(query)
        if isinstance(param, list):
            raise AuthenticationFailed(f"query parameter {query!r} given {len(param)} times")
        if param:
            found.append(param)
    if subprotocol:
        for item in offered_subprotocols(req):
            if item.startswith(TOKEN_SUBPROTOCOL):
                found.append(item[len(TOKEN_SUBPROTOCOL) :])
    if not found:
        return None
    if len(found) > 1:
        raise AuthenticationFailed("token given in more than one place")
    token = found[0]
    if len(token) > max_size:
        raise AuthenticationFailed(f"token too large (limit {max_size} characters)")
    return token


def token_authenticator(
    secret: str | bytes,
    *,
    header: bool = True,
    query: str | None = "token",
    subprotocol: bool = True,
    max_size: int = MAX_TOKEN_SIZE,
) -> Callable[[Request], Awaitable[User]]:
    """An ``authenticate`` function for tokens made by :func:`sign_token`.

    It reads the token (see :func:`token_from_request`) and verifies it; a
    missing, malformed, forged or expired token is refused with 3401.

    Raises:
        ConfigError: The secret is shorter than 16 bytes (at once, not at
            the first handshake).
    """
    # PERF: keying HMAC costs more than hashing a token; each handshake
    #   copies the state keyed here (bench_connect.py, the +authenticate row).
    keyed = _key(secret)

    async def authenticate(req: Request) -> User:
        token = token_from_request(
            req, header=header, query=query, subprotocol=subprotocol, max_size=max_size
        )
        if token is None:
            raise AuthenticationFailed("token missing")
        return _verify(keyed, token, time.time(), max_size)

    return authenticate
