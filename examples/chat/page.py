"""The chat page: a Falcon HTTP route at ``/`` serving ``static/index.html``.

``routes.example.toml`` lists :func:`add_page` in ``[app] setup``, so
``create_app`` calls it with the Falcon app after mounting the WebSocket
routes. The page is plain HTML and JavaScript (no build step); it connects to
the route named ``chat``, whose URL (mount prefix included) is written into
the page here, so changing ``[app] prefix`` needs no edit of the HTML.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Final

import falcon
import falcon.asgi

from pachinko import PachinkoError, runtime_of

__all__ = ["ChatPage", "add_page"]

PAGE: Final = Path(__file__).parent / "static" / "index.html"
_PLACEHOLDER: Final = '<meta name="pachinko-ws-path" content="/ws/chat">'


def chat_path(app: falcon.asgi.App[Any, Any], route: str = "chat") -> str:
    """The URL path of the WebSocket route named ``route`` on ``app``."""
    try:
        return runtime_of(app).url_for(route)
    except PachinkoError:  # not installed, or no such route (RouteError)
        return "/ws/chat"


class ChatPage:
    """``GET /``: the chat page (read once, at startup)."""

    def __init__(self, ws_path: str) -> None:
        page = PAGE.read_text(encoding="utf-8")
        tag = f'<meta name="pachinko-ws-path" content="{html.escape(ws_path, quote=True)}">'
        self.body = page.replace(_PLACEHOLDER, tag).encode()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.cache_control = ["no-cache"]
        resp.data = self.body


def add_page(app: falcon.asgi.App[Any, Any]) -> None:
    """Serve the chat page at ``/`` of ``app``."""
    app.add_route("/", ChatPage(chat_path(app)))
