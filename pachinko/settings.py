"""Settings: the one options object.

The TOML file, the CLI and the Python API all build this same Struct.
Constructing it has no side effects; it only validates values.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["Settings"]

_Positive = Annotated[int, msgspec.Meta(gt=0)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits, security and runtime options for one Falcon app.

    Every default is explicit and stricter than the ASGI server's own.

    Attributes:
        max_message_size: Largest inbound message in bytes (UTF-8 for text).
            Larger messages close the connection with 1009. Default 64 KiB.
        rate_limit: Sustained inbound messages per second per connection, or
            ``None`` for no limit. Exceeding it closes with 1008.
        rate_burst: Messages a connection may send in a burst above the rate.
        allowed_origins: Origins allowed to open a WebSocket. ``None`` allows
            requests without an ``Origin`` header (non-browser clients) and
            same-origin browser requests only (scheme, host and port; see
            deployment.md); ``["*"]`` allows every origin.
        max_connections: Open connections allowed per process (``None``: no
            limit). Enforced at the handshake (close 1013).
        max_connections_per_user: Open connections allowed per user id,
            counted across every process with the Redis backend (on this
            process only, with a warning, while Redis is unreachable).
        send_queue_size: Outgoing messages buffered per connection.
        slow_consumer: What to do when a connection's outgoing queue is full:
            ``"drop"`` the new message, or ``"close"`` the connection.
        slow_consumer_close_code: Close code used by the ``"close"`` policy
            (1008 policy violation or 1013 try again later).
        send_timeout: Seconds a single send may take. A send that takes
            longer closes the connection with ``slow_consumer_close_code``
            under both policies (checked every ``send_timeout / 4`` seconds,
            at most every second).
        receive_queue: Falcon's ``ws_options.max_receive_queue`` for the app;
            0 disables Falcon's buffered receiver (pachinko always reads, so
            disconnects are still seen). ``None`` leaves Falcon's setting.
        error_replies: Answer undecodable messages with an error message.
        shutdown_timeout: Seconds shutdown waits for connections and workers.
        backend: Backend URL: ``memory://`` (in-process) or ``redis://...``.
        ping_interval: Server ping interval in seconds (used by ``serve``).
        ping_timeout: Server ping timeout in seconds (used by ``serve``).
        handshake_timeout: Seconds a client has, from opening its TCP
            connection, to complete its HTTP request head and WebSocket
            handshake; the connection is closed otherwise. ``None``: no limit
            (uvicorn's own behaviour). Used by ``serve``.
        max_handshake_size: Largest HTTP request head (the handshake) in
            bytes; a larger one is answered with 431 and closed. Used by
            ``serve`` (uvicorn's ``h11_max_incomplete_event_size``).
        keep_alive_timeout: Seconds an idle HTTP keep-alive connection (not a
            WebSocket) stays open. Used by ``serve`` (uvicorn's
            ``timeout_keep_alive``).
    """

    max_message_size: _Positive = 64 * 1024
    rate_limit: _PositiveFloat | None = 100.0
    rate_burst: _Positive = 200
    allowed_origins: tuple[str, ...] | None = None
    max_connections: _Positive | None = None
    max_connections_per_user: _Positive | None = None
    send_queue_size: _Positive = 256
    slow_consumer: Literal["drop", "close"] = "close"
    slow_consumer_close_code: Literal[1008, 1013] = 1013
    send_timeout: _PositiveFloat = 5.0
    receive_queue: Annotated[int, msgspec.Meta(ge=0)] | None = 0
    error_replies: bool = True
    shutdown_timeout: _PositiveFloat = 5.0
    backend: str = "memory://"
    ping_interval: _PositiveFloat | None = 20.0
    ping_timeout: _PositiveFloat | None = 20.0
    handshake_timeout: _PositiveFloat | None = 10.0
    max_handshake_size: _Positive = 16 * 1024
    keep_alive_timeout: _Positive = 5
