"""The exceptions pachinko raises.

Each class is also a builtin exception, so callers who do not know pachinko
can still catch what they expect (``ValueError`` for bad configuration,
``TypeError`` for a bad handler definition, ``ConnectionError`` for an
unreachable backend).
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "ConnectionLimitExceeded",
    "HandlerDefinitionError",
    "PachinkoError",
    "Refuse",
    "RequestAborted",
    "RequestTimeout",
    "RouteError",
    "WorkerError",
]


class PachinkoError(Exception):
    """Base class of every error pachinko raises on purpose."""


class HandlerDefinitionError(PachinkoError, TypeError):
    """Raised at class creation when a message handler is defined wrongly."""


class RouteError(PachinkoError, ValueError):
    """Raised when a route, template or route name cannot be registered.

    Attributes:
        kind: ``"conflict"`` (another route matches the same paths),
            ``"name"`` (the route name is taken) or ``"invalid"`` (anything
            else: a malformed template, an unknown name, ...).
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class ConfigError(PachinkoError, ValueError):
    """Raised when a configuration (routes.toml, Settings, install() options) is invalid."""


class BackendUnavailable(PachinkoError, ConnectionError):
    """Raised when the connection backend (e.g. Redis) cannot be reached."""


class RequestTimeout(PachinkoError, TimeoutError):
    """Raised by ``resource.request()`` when the client's answer did not come in time."""


class RequestAborted(PachinkoError, ConnectionError):
    """Raised by ``resource.request()`` when the connection closed before the answer came."""


class WorkerError(PachinkoError, RuntimeError):
    """Raised when a background worker cannot be started or has crashed."""


class Refuse(PachinkoError):
    """Raise from ``on_connect`` to refuse the connection with a close code.

    With the default code 3403 the handshake is denied (real clients see an
    HTTP 403). With any other code the handshake is accepted and closed at
    once with that code and reason, so browsers can read them.

    Args:
        code: WebSocket close code sent to the client (default 3403).
        reason: Close reason sent to the client.
    """

    def __init__(self, code: int = 3403, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class ConnectionLimitExceeded(Refuse):
    """Raised at the handshake when a global or per-user limit is reached."""

    def __init__(self, reason: str, code: int = 1013) -> None:
        super().__init__(code, reason)
