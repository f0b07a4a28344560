"""The rooms app with a per-user connection limit: ``uvicorn tests.apps.limited:app``.

Environment: ``PACHINKO_BACKEND`` (as tests/apps/rooms.py) and
``PACHINKO_MAX_PER_USER`` (default 3).
"""

from __future__ import annotations

import os

import falcon.asgi

import pachinko
from pachinko import Settings
from tests.apps.rooms import Rooms


def create() -> falcon.asgi.App:
    router = pachinko.WebSocketRouter()
    router.add_route("/rooms", Rooms)
    app = falcon.asgi.App()
    settings = Settings(
        backend=os.environ.get("PACHINKO_BACKEND", "memory://"),
        rate_limit=None,
        max_connections_per_user=int(os.environ.get("PACHINKO_MAX_PER_USER", "3")),
    )
    pachinko.mount(app, "/ws", router, settings=settings)
    return app


app = create()
