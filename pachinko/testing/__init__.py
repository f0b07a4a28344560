"""Testing toolkit for pachinko apps (also a pytest plugin).

- :class:`AppClient`: drive the real Falcon app in-process (ASGI lifespan
  included, no server, no socket).
- :class:`LiveServer`: the same app served by uvicorn on a free loopback
  port, with a real ``websockets`` client; :class:`ServerProcess` runs
  ``pachinko serve`` as a child process.
- :class:`WebSocketSimulator` and :class:`ResourceHarness`: unit-test one
  resource without an app.
- :class:`Probe`: receive what a room or a user receives, and assert on it.

Every receive has a timeout (:data:`DEFAULT_TIMEOUT` seconds unless told
otherwise), so a test that waits for a message that never comes fails with
the messages that came instead, and never hangs. The pytest plugin adds the
``pachinko_client``, ``pachinko_live`` and ``pachinko_timeout`` fixtures and
the ``--pachinko-timeout`` option.
"""

from __future__ import annotations

from ._stream import (
    DEFAULT_TIMEOUT,
    HandshakeRefused,
    MessageStream,
    ReceiveTimeout,
    WebSocketClosed,
    matches,
)
from .inprocess import AppClient, InProcessWebSocket
from .live import LiveServer, LiveWebSocket, ServerProcess, connect
from .recovery import RoomFollower
from .simulator import Probe, ResourceHarness, WebSocketSimulator

__all__ = [
    "DEFAULT_TIMEOUT",
    "AppClient",
    "HandshakeRefused",
    "InProcessWebSocket",
    "LiveServer",
    "LiveWebSocket",
    "MessageStream",
    "Probe",
    "ReceiveTimeout",
    "ResourceHarness",
    "RoomFollower",
    "ServerProcess",
    "WebSocketClosed",
    "WebSocketSimulator",
    "connect",
    "matches",
]

# Tracebacks show the public names (pachinko.testing.ReceiveTimeout).
for _name in __all__:
    if isinstance(globals()[_name], type):
        globals()[_name].__module__ = __name__
del _name
