"""Serve with uvicorn: graceful 1001 shutdown, logging, guarded connections.

uvicorn closes open WebSockets itself when it shuts down, with code 1012
("service restart"), *before* the ASGI lifespan shutdown reaches the app. The
:class:`Server` here first runs the app's :meth:`Runtime.close_connections`:
new handshakes are refused, every socket is closed with 1001 ("going away")
and every ``on_disconnect`` runs; then uvicorn's own shutdown proceeds.
``pachinko serve`` uses it (with one worker process, or with ``--reload``);
with plain ``uvicorn module:app`` or several workers, clients see 1012 and
``on_disconnect`` still runs (with 1012).

:class:`Config` adds what uvicorn (0.54) lacks for a server facing the
internet, as subclasses of uvicorn's own protocol classes (so they apply in
every process, ``--workers`` and ``--reload`` included):

- a handshake timeout: a connection that has not completed its request head
  or its WebSocket handshake ``handshake_timeout`` seconds after it was
  opened is closed (uvicorn has none: a client sending nothing, or one byte
  at a time, holds its socket forever);
- a bound on the request head (``max_handshake_size``, answered with 431);
  uvicorn's h11 protocol has it, its httptools protocol does not;
- a handshake the ``websockets`` parser rejects (a line over 8 KiB, more than
  128 headers) is answered with 400 and closed; uvicorn leaves it open with
  no answer, and its shutdown then fails on it;
- a shutdown that a misbehaving connection cannot break (the lifespan
  shutdown always runs);
- pongs to a client that does not read are coalesced into one (RFC 6455
  5.5.3 allows it) instead of piling up in the server's memory;
- invalid UTF-8 in a text frame (a client's fault) is logged in one line.
"""

from __future__ import annotations

import copy
import functools
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any, Final

import falcon.asgi
import uvicorn
import uvicorn.config
from uvicorn.supervisors import ChangeReload, Multiprocess

from .app import _find_runtime

__all__ = [
    "Config",
    "Server",
    "configure_logging",
    "log_config",
    "require_websocket_library",
    "run",
]

STARTUP_FAILURE = 3  # uvicorn's exit status when the app cannot start

logger = logging.getLogger("pachinko.server")

#: The formats of :func:`log_config` (``pachinko serve --log-format``).
LOG_FORMATS: Final = ("text", "json")

#: uvicorn's level names (its ``--log-level``), ``trace`` included.
LOG_LEVELS: Final[dict[str, int]] = dict(uvicorn.config.LOG_LEVELS)


def log_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """The logging configuration of ``pachinko serve`` (``logging.config.dictConfig``).

    uvicorn's own configuration (its loggers, levels and formats unchanged),
    plus a handler on the root logger, so pachinko's loggers (``pachinko``,
    ``pachinko.config``, ``pachinko.workers`` ...) and the application's own
    loggers are shown too, at ``level`` and above, in uvicorn's format with
    the logger's name: ``INFO:     pachinko.config: reloaded routes.toml ...``.
    A line logged while serving a connection ends with it:
    `` [connection 9f2c.1a /ws/rooms/{room} user=ada]`` (see :mod:`pachinko.logs`).

    Args:
        level: One of uvicorn's levels (``critical`` ... ``debug``, ``trace``).
        fmt: ``text`` (uvicorn's format) or ``json`` (one JSON object per
            line, uvicorn's lines included: :class:`pachinko.logs.JsonFormatter`).

    Raises:
        ValueError: ``fmt`` is neither.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log_config(): fmt must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    # NOTE: the formatters are chosen here only: another output format (JSON
    #   lines, say) is another formatter for the "default" and "named" handlers.
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["named"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
        "use_colors": None,
    }
    for formatter in ("default", "named"):  # uvicorn's lines and everyone else's
        config["formatters"][formatter]["fmt"] += "%(connection)s"
    config["handlers"]["named"] = {
        "formatter": "named",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["filters"] = {"connection": {"()": "pachinko.logs.ConnectionFilter"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["connection"]
    if fmt == "json":
        for name in list(config["formatters"]):
            config["formatters"][name] = {"()": "pachinko.logs.JsonFormatter"}
    config["root"] = {"handlers": ["named"], "level": LOG_LEVELS[level.lower()]}
    # watchfiles logs every change it sees at INFO; the reload line says what changed.
    config["loggers"]["watchfiles"] = {"level": "WARNING"}
    return config


def configure_logging(config: dict[str, Any] | str, level: str) -> None:
    """Apply a logging configuration now, exactly as uvicorn will in its processes.

    ``config`` is :func:`log_config`'s or a file (``--log-config``); ``level``
    is uvicorn's ``log_level``. Lets the app log while it is built, before
    uvicorn starts.
    """
    # NOTE: a Config only to run uvicorn's configure_logging (it reads files
    #   by their suffix, registers TRACE and applies the level).
    uvicorn.Config("pachinko:__name__", log_config=config, log_level=level)


def require_websocket_library() -> None:
    """Raise ModuleNotFoundError if uvicorn has no WebSocket library to use."""
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    if AutoWebSocketsProtocol is None:
        raise ModuleNotFoundError("No module named 'websockets'", name="websockets")


def _falcon_app(app: Any) -> falcon.asgi.App[Any, Any] | None:
    """Find the Falcon app inside uvicorn's middleware wrappers."""
    seen = 0
    while app is not None and seen < 16:
        if isinstance(app, falcon.asgi.App):
            return app
        app = getattr(app, "app", None)
        seen += 1
    return None


def _peer(protocol: Any) -> str:
    client = getattr(protocol, "client", None)
    return "%s:%d" % tuple(client) if client else "-"  # noqa: UP031 (uvicorn's format)


def _reject(transport: Any, status: int, phrase: str, body: str) -> None:
    """Answer a request uvicorn will not answer, then close the connection."""
    data = body.encode()
    transport.write(
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
        + data
    )
    transport.close()


# -- HTTP: handshake timeout and head size -------------------------------------------


class _HttpGuard:
    """Mixin for uvicorn's HTTP protocols: close connections whose handshake stalls."""

    config: Any
    transport: Any
    loop: Any
    cycle: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        timeout = getattr(self.config, "handshake_timeout", None)
        if timeout is not None:
            # PERF: one timer per connection (a heap entry), not a sweep.
            self.loop.call_later(timeout, self._handshake_expired, timeout)

    def _handshake_expired(self, timeout: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        current = transport.get_protocol()
        if current is self:
            if self.cycle is not None:
                return  # a request arrived: uvicorn's keep-alive timeout applies
        elif getattr(current, "handshake_complete", True):
            return  # an open WebSocket (or one the app answered)
        logger.info(
            "%s - handshake not completed within %g s (handshake_timeout): connection closed",
            _peer(self),
            timeout,
        )
        transport.abort()


class _HeadLimit(_HttpGuard):
    """httptools has no limit on a request head: count its bytes ourselves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pachinko_head_open = True
        self._pachinko_head_bytes = 0

    def on_message_begin(self) -> None:
        self._pachinko_head_open = True
        super().on_message_begin()  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._pachinko_head_open = False
        super().on_headers_complete()  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        self._pachinko_head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if not self._pachinko_head_open:
            self._pachinko_head_bytes = 0
            return
        limit = getattr(self.config, "h11_max_incomplete_event_size", None)
        transport = self.transport
        if (
            limit is not None
            and self._pachinko_head_bytes > limit
            and transport.get_protocol() is self
            and not transport.is_closing()
        ):
            logger.info(
                "%s - request head over %d bytes (max_handshake_size): 431", _peer(self), limit
            )
            _reject(
                transport,
                431,
                "Request Header Fields Too Large",
                f"Request head over {limit} bytes.",
            )


def _http_guards() -> dict[str, type]:
    guards: dict[str, type] = {}
    from uvicorn.protocols.http.h11_impl import H11Protocol

    guards["h11"] = type("H11Protocol", (_HttpGuard, H11Protocol), {"__module__": __name__})
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return guards
    guards["httptools"] = type(
        "HttpToolsProtocol", (_HeadLimit, HttpToolsProtocol), {"__module__": __name__}
    )
    return guards


# -- WebSockets: bad handshakes, ping floods, invalid UTF-8, shutdown -----------------


class _ClientFaults:
    """uvicorn's logger for one connection, with a client's faults in one line."""

    # uvicorn's message (websockets_sansio_impl), logged with a traceback per connection.
    _INVALID_UTF8 = "Invalid UTF-8 sequence received from client."

    def __init__(self, target: logging.Logger, protocol: Any) -> None:
        self._target = target
        self._protocol = protocol

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if msg == self._INVALID_UTF8:
            logger.info(
                '%s - "WebSocket %s" 1007: invalid UTF-8 in a text frame',
                _peer(self._protocol),
                getattr(self._protocol, "scope", {}).get("path", "?"),
            )
            return
        self._target.exception(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


_PONG: Final = 0x8A  # first byte of an unmasked, final pong frame (server to client)


def _sansio_guard() -> type | None:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # websockets is not installed
        return None

    class Guarded(WebSocketsSansIOProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.logger = _ClientFaults(self.logger, self)  # type: ignore[assignment]
            self.held_pong: bytes | None = None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if (
                not self.handshake_initiated
                and self.conn.handshake_exc is not None
                and not self.transport.is_closing()
            ):
                # NOTE: websockets could not parse the request (it sent EOF and
                #   will answer nothing): uvicorn would leave the socket open and
                #   later fail in shutdown(). Answer and close it.
                self.handshake_complete = self.close_sent = True
                exc = self.conn.handshake_exc
                output = b"".join(self.conn.data_to_send())  # websockets' 4xx, if any
                logger.info(
                    "%s - WebSocket handshake refused: %s", _peer(self), exc.__cause__ or exc
                )
                if output:
                    self.transport.write(output)
                    self.transport.close()
                else:
                    _reject(self.transport, 400, "Bad Request", f"Invalid handshake: {exc}")

        def handle_ping(self) -> None:
            if self.writable.is_set():
                super().handle_ping()
                return
            # The client does not read what we send: keep only the newest pong.
            # PERF: uvicorn buffers every pong (~26 MiB for 240,000 pings in 5 s).
            output = self.conn.data_to_send()
            if output and all(chunk[:1] == bytes([_PONG]) for chunk in output):
                self.held_pong = output[-1]
                return
            self.transport.write(b"".join(output))

        def resume_writing(self) -> None:
            super().resume_writing()
            pong, self.held_pong = self.held_pong, None
            if pong is not None and not self.transport.is_closing():
                self.transport.write(pong)

        def shutdown(self) -> None:
            _shutdown_safely(self, super().shutdown)

    Guarded.__name__ = Guarded.__qualname__ = "WebSocketsSansIOProtocol"
    Guarded.__module__ = __name__
    return Guarded


def _shutdown_safely(connection: Any, shutdown: Callable[[], None]) -> None:
    """Run a connection's ``shutdown()``; if it fails, log one line and drop the socket."""
    try:
        shutdown()
    except Exception as ex:
        logger.warning(
            "%s - closing the connection at shutdown failed (%s: %s); connection dropped",
            _peer(connection),
            type(ex).__name__,
            ex,
        )
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()


_HTTP = _http_guards()
HttpToolsProtocol = _HTTP.get("httptools")
H11Protocol = _HTTP["h11"]
WebSocketsSansIOProtocol = _sansio_guard()


class Config(uvicorn.Config):
    """uvicorn's Config with pachinko's connection guards.

    Args:
        app: The ASGI app or an import string, as for uvicorn.
        handshake_timeout: Seconds a connection has to complete its request
            head and WebSocket handshake; ``None``: no limit (uvicorn's).
        **options: uvicorn's options. With ``http`` and ``ws`` left at
            ``"auto"``, the guarded protocol classes are used; the request
            head limit is ``h11_max_incomplete_event_size`` for both HTTP
            implementations.
    """

    def __init__(self, app: Any, *, handshake_timeout: float | None = None, **options: Any):
        if options.get("http", "auto") == "auto":
            name = "HttpToolsProtocol" if HttpToolsProtocol is not None else "H11Protocol"
            options["http"] = f"{__name__}:{name}"
        if options.get("ws", "auto") == "auto" and WebSocketsSansIOProtocol is not None:
            options["ws"] = f"{__name__}:WebSocketsSansIOProtocol"
        super().__init__(app, **options)
        self.handshake_timeout = handshake_timeout


class Server(uvicorn.Server):
    """uvicorn's Server that closes pachinko's sockets with 1001 first."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = _falcon_app(getattr(self.config, "loaded_app", None))
        runtime = _find_runtime(app) if app is not None else None
        if runtime is not None:
            await runtime.close_connections(1001, "Server shutting down")
        # NOTE: uvicorn calls every connection's shutdown() in one loop: one
        #   that raises (uvicorn's websockets-sansio protocol after a bad
        #   handshake: `assert not self.eof_sent`) would end the loop and skip
        #   the lifespan shutdown (workers, services, backend). Guard each one.
        for connection in list(self.server_state.connections):
            original = connection.shutdown
            try:
                connection.shutdown = functools.partial(  # type: ignore[method-assign]
                    _shutdown_safely, connection, original
                )
            except AttributeError:  # pragma: no cover - a protocol with __slots__
                continue
        await super().shutdown(sockets)


def run(app: Any, **options: Any) -> None:
    """Run ``app`` (an app or an import string) like ``uvicorn.run``.

    ``options`` are :class:`Config`'s: uvicorn's, plus ``handshake_timeout``.
    ``reload`` and ``workers > 1`` need an import string, as with uvicorn.
    Exits with status 3 (uvicorn's ``STARTUP_FAILURE``) if the app did not start.
    """
    config = Config(app, **options)
    if (config.reload or config.workers > 1) and not isinstance(app, str):
        raise ValueError("reload or several workers need the app as an import string")
    if not (config.reload or config.workers > 1):
        config.load_app()
    server = Server(config)
    try:
        if config.should_reload:
            ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
        elif config.workers > 1:
            # NOTE: uvicorn's worker processes build their own uvicorn.Server, so
            #   with several workers clients see uvicorn's 1012 at shutdown (the
            #   guarded protocol classes apply there too).
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the SIGINT it handled, once it has shut down
    if not server.started and not config.should_reload and config.workers == 1:
        sys.exit(STARTUP_FAILURE)
