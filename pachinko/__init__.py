"""pachinko: WebSockets for Falcon (ASGI).

Routing to per-connection resources, typed message dispatch with msgspec,
rooms and broadcasts across processes, lifespan-bound workers, and a
declarative ``routes.toml``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._dispatch import HandlerSpec, MessageError, handles_message
    from .app import Runtime, install, mount, runtime_of
    from .backends import ConnectionBackend, InProcessBackend
    from .backends.redis import RedisBackend
    from .config import configure, create_app
    from .connection import Connection
    from .errors import (
        BackendUnavailable,
        ConfigError,
        ConnectionLimitExceeded,
        HandlerDefinitionError,
        PachinkoError,
        Refuse,
        RequestAborted,
        RequestTimeout,
        RouteError,
        WorkerError,
    )
    from .manager import Delivery, WebSocketConnectionManager
    from .resource import WebSocketResource
    from .rooms import Position, Recovery, RoomPolicies, RoomPolicy
    from .router import Route, RouteInfo, WebSocketRouter
    from .settings import Settings
    from .workers import RestartPolicy, WorkerController, worker

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "Connection",
    "ConnectionBackend",
    "ConnectionLimitExceeded",
    "Delivery",
    "HandlerDefinitionError",
    "HandlerSpec",
    "InProcessBackend",
    "MessageError",
    "PachinkoError",
    "Position",
    "Recovery",
    "RedisBackend",
    "Refuse",
    "RequestAborted",
    "RequestTimeout",
    "RestartPolicy",
    "RoomPolicies",
    "RoomPolicy",
    "Route",
    "RouteError",
    "RouteInfo",
    "Runtime",
    "Settings",
    "WebSocketConnectionManager",
    "WebSocketResource",
    "WebSocketRouter",
    "WorkerController",
    "WorkerError",
    "configure",
    "create_app",
    "handles_message",
    "install",
    "mount",
    "runtime_of",
    "worker",
]

__version__ = "0.1.0"


# NOTE: names are imported on first use, so that ``import pachinko`` stays
#   cheap and optional parts (redis, the TOML layer, the CLI) load only when used.
_HOMES = {
    "HandlerSpec": "._dispatch",
    "MessageError": "._dispatch",
    "handles_message": "._dispatch",
    "Runtime": ".app",
    "install": ".app",
    "mount": ".app",
    "runtime_of": ".app",
    "ConnectionBackend": ".backends",
    "InProcessBackend": ".backends",
    "RedisBackend": ".backends.redis",
    "configure": ".config",
    "create_app": ".config",
    "Connection": ".connection",
    "WebSocketConnectionManager": ".manager",
    "Delivery": ".manager",
    "WebSocketResource": ".resource",
    "Position": ".rooms",
    "Recovery": ".rooms",
    "RoomPolicies": ".rooms",
    "RoomPolicy": ".rooms",
    "Route": ".router",
    "RouteInfo": ".router",
    "WebSocketRouter": ".router",
    "Settings": ".settings",
    "RestartPolicy": ".workers",
    "WorkerController": ".workers",
    "worker": ".workers",
    **dict.fromkeys(
        (
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
        ),
        ".errors",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pachinko' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
