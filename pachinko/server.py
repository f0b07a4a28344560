"""Serve with uvicorn, closing WebSockets gracefully (1001) on shutdown.

uvicorn closes open WebSockets itself when it shuts down, with code 1012
("service restart"), *before* the ASGI lifespan shutdown reaches the app. The
:class:`Server` here first runs the app's :meth:`Runtime.close_connections`:
new handshakes are refused, every socket is closed with 1001 ("going away")
and every ``on_disconnect`` runs; then uvicorn's own shutdown proceeds.
``pachinko serve`` uses it (with one worker process, or with ``--reload``);
with plain ``uvicorn module:app`` or several workers, clients see 1012 and
``on_disconnect`` still runs (with 1012).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import falcon.asgi
import uvicorn
from uvicorn.supervisors import ChangeReload, Multiprocess

from .app import _find_runtime

__all__ = ["Server", "run"]

STARTUP_FAILURE = 3  # uvicorn's exit status when the app cannot start


def _falcon_app(app: Any) -> falcon.asgi.App[Any, Any] | None:
    """Find the Falcon app inside uvicorn's middleware wrappers."""
    seen = 0
    while app is not None and seen < 16:
        if isinstance(app, falcon.asgi.App):
            return app
        app = getattr(app, "app", None)
        seen += 1
    return None


class Server(uvicorn.Server):
    """uvicorn's Server that closes pachinko's sockets with 1001 first."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = _falcon_app(getattr(self.config, "loaded_app", None))
        runtime = _find_runtime(app) if app is not None else None
        if runtime is not None:
            await runtime.close_connections(1001, "Server shutting down")
        await super().shutdown(sockets)


def run(app: Any, **options: Any) -> None:
    """Run ``app`` (an app or an import string) like ``uvicorn.run``.

    ``reload`` and ``workers > 1`` need an import string, as with uvicorn.
    Exits with status 3 (uvicorn's ``STARTUP_FAILURE``) if the app did not start.
    """
    config = uvicorn.Config(app, **options)
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
            #   with several workers clients see uvicorn's 1012 at shutdown.
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the SIGINT it handled, once it has shut down
    if not server.started and not config.should_reload and config.workers == 1:
        sys.exit(STARTUP_FAILURE)
