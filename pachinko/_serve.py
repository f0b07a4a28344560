"""The handshake and the receive loop: the per-message hot path.

PERF: per message the loop does one ``receive_text``, one length check, the
token-bucket update, one ``decoder.decode``, one dict lookup by type and one
await. Hook lists, the decoder and the table are fetched once per
connection. See benchmarks/bench_dispatch.py.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import falcon
import msgspec
from falcon.errors import PayloadTypeError, WebSocketDisconnected

from ._dispatch import ENVELOPE, RAW_DICT, MessageError
from .connection import Connection
from .errors import Refuse
from .resource import WebSocketResource

if TYPE_CHECKING:
    from falcon.asgi import Request, Response, WebSocket

    from .app import Runtime
    from .router import RouteInfo, WebSocketRouter

__all__ = ["Mount"]

logger = logging.getLogger("pachinko")

# RFC 6455 close codes used here, spelled out.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_NO_STATUS: Final = 1005
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_FORBIDDEN: Final = 3403  # Falcon's HTTP 403 equivalent
CLOSE_NOT_FOUND: Final = 3404  # Falcon's HTTP 404 equivalent

_base_unhandled = WebSocketResource.on_unhandled


class Mount:
    """A router mounted under a path prefix of a Falcon app.

    Falcon calls :meth:`handle` (registered as a sink) for every request
    whose path is the prefix or below it. :meth:`swap` replaces the router
    atomically: connections already open keep the resources they have.
    """

    __slots__ = ("prefix", "router", "runtime")

    def __init__(self, runtime: Runtime, prefix: str, router: WebSocketRouter) -> None:
        self.runtime = runtime
        self.prefix = prefix
        self.router = router
        router.root._mounted(prefix)

    @property
    def pattern(self) -> re.Pattern[str]:
        """The sink prefix: the mount path followed by ``/`` or the end."""
        if self.prefix == "/":
            return re.compile("/")
        return re.compile(re.escape(self.prefix) + r"(?=/|\Z)")

    def swap(self, router: WebSocketRouter) -> WebSocketRouter:
        """Serve new connections with ``router``; return the previous one."""
        router.root._mounted(self.prefix)
        old, self.router = self.router, router
        return old

    async def handle(
        self, req: Request, resp: Response | None, ws: WebSocket | None = None, **_: Any
    ) -> None:
        """Falcon sink: serve a WebSocket, answer plain HTTP with 426."""
        if ws is None:
            if resp is not None:
                resp.status = falcon.HTTP_426
                resp.set_header("Upgrade", "websocket")
                resp.media = {
                    "title": "426 Upgrade Required",
                    "description": "This path accepts WebSocket connections only.",
                }
            return
        path = req.path[len(self.prefix) :] if self.prefix != "/" else req.path
        await serve(self.runtime, self.router, req, ws, path or "/")


def origin_allowed(req: Request, allowed: frozenset[str] | None) -> bool:
    """Check the handshake's Origin against the allow-list.

    Requests without an Origin header (non-browser clients) are allowed:
    cross-site WebSocket hijacking needs a browser, and browsers always send
    it. ``None`` means same-origin only; ``"*"`` allows every origin.
    """
    origin = req.get_header("Origin")
    if origin is None or (allowed is not None and "*" in allowed):
        return True
    if allowed is None:
        host = (req.get_header("Host") or "").lower()
        return urlsplit(origin).netloc.lower() == host
    return origin.lower().rstrip("/") in allowed


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def serve(
    runtime: Runtime, router: WebSocketRouter, req: Request, ws: WebSocket, path: str
) -> None:
    """Run one WebSocket connection from handshake to close."""
    if not runtime.accepting:
        await ws.close(CLOSE_GOING_AWAY, "Server shutting down")
        return
    found = router.match(path)
    if found is None:
        await ws.close(CLOSE_NOT_FOUND)
        return
    info, params = found
    if not origin_allowed(req, runtime.allowed_origins):
        logger.warning(
            "refused WebSocket %s: Origin %r is not allowed", req.path, req.get_header("Origin")
        )
        await ws.close(CLOSE_FORBIDDEN, "Origin not allowed")
        return

    manager = runtime.manager
    conn = Connection(ws, path, params, manager)
    chain = await _handshake(runtime, info, conn, req, ws, params)
    if chain is None:
        return
    leaf = chain[-1]
    close_code = CLOSE_NO_STATUS
    task = asyncio.current_task()
    if task is not None:
        runtime.serving.add(task)
    try:
        if ws.unaccepted:
            await ws.accept()
        manager.opened(conn)
        close_code = await _receive_loop(runtime, info, chain, leaf, ws)
    except WebSocketDisconnected as ex:
        close_code = ex.code or CLOSE_NO_STATUS
    except Exception:
        logger.exception("WebSocket %s failed after the handshake", req.path)
        close_code = CLOSE_INTERNAL_ERROR
        await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
    finally:
        await _disconnect(info, chain, leaf, ws, close_code)
        await manager.disconnect(conn)
        runtime.serving.discard(task)


async def _handshake(
    runtime: Runtime,
    info: RouteInfo,
    conn: Connection,
    req: Request,
    ws: WebSocket,
    params: dict[str, Any],
) -> list[WebSocketResource] | None:
    """Build the resource chain and run on_connect; return None if refused."""
    factory = info.router.root.resource_factory
    chain: list[WebSocketResource] = []
    state = conn.state
    context: dict[str, Any] = {}
    try:
        for level in info.chain:
            kwargs = {**level.kwargs, **context}
            if "state" in context:
                state = kwargs.pop("state")
            built = (
                factory(level.target, *level.args, **kwargs)
                if factory
                else level.target(*level.args, **kwargs)
            )
            resource = await _maybe_await(built)
            if not isinstance(resource, WebSocketResource):
                raise TypeError(
                    f"route {level.template!r}: {level.target!r} returned "
                    f"{type(resource).__name__}, expected a WebSocketResource"
                )
            resource._pachinko_connection = conn  # type: ignore[attr-defined]
            resource._pachinko_send_text = ws.send_text  # type: ignore[attr-defined]
            resource.state = state
            chain.append(resource)
            conn.resource = resource
            if len(chain) == 1:
                for hook in info.router.hooks_for("before_connect", type(resource)):
                    await hook(resource, req, ws, params)
            own = getattr(resource, "before_connect", None)
            if own is not None:
                await own(req, ws, params)
            accepted = await resource.on_connect(req, ws, **params)
            if not ws.unaccepted and ws.closed:
                return None  # the resource closed the handshake itself
            if not accepted:
                await ws.close(CLOSE_FORBIDDEN)
                return None
            if len(chain) < len(info.chain):
                context = dict(resource.get_child_context())
        conn.state = state
        await runtime.manager.connect(conn)
    except Refuse as refusal:
        # NOTE: a close before accept reaches real clients as HTTP 403 only;
        #   to let them read the resource's own code and reason, accept and
        #   close at once. Without a code of its own it is a plain denial.
        if refusal.code != CLOSE_FORBIDDEN and ws.unaccepted:
            await ws.accept()
        await ws.close(refusal.code, refusal.reason or None)
        return None
    except WebSocketDisconnected:
        return None
    except Exception:
        logger.exception("WebSocket handshake for %s failed", req.path)
        await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
        return None
    return chain


def _hooks(
    info: RouteInfo,
    chain: list[WebSocketResource],
    leaf: WebSocketResource,
    event: str,
    *,
    reverse: bool = False,
) -> tuple[Callable[..., Awaitable[Any]], ...]:
    """Bound hook callables for ``event``: global, parent, child (or reversed)."""
    hooks: list[Callable[..., Awaitable[Any]]] = [
        functools.partial(hook, leaf) for hook in info.router.hooks_for(event, type(leaf))
    ]
    hooks += [fn for res in chain if (fn := getattr(res, event, None)) is not None]
    if reverse:
        hooks.reverse()
    # PERF: a tuple: none (the common case) is the shared empty tuple, not a
    #   56-byte list held by every connection (bench_connect.py)
    return tuple(hooks)


async def _receive_loop(
    runtime: Runtime,
    info: RouteInfo,
    chain: list[WebSocketResource],
    leaf: WebSocketResource,
    ws: WebSocket,
) -> int:
    """Receive, decode, dispatch until the connection closes; return the close code."""
    settings = runtime.settings
    for hook in _hooks(info, chain, leaf, "after_connect", reverse=True):
        await hook(ws)
    before = _hooks(info, chain, leaf, "before_receive")
    after = _hooks(info, chain, leaf, "after_receive", reverse=True)
    error_hooks = _hooks(info, chain, leaf, "on_error", reverse=True)
    unhandled = leaf.on_unhandled
    if not settings.error_replies and type(leaf).on_unhandled is _base_unhandled:
        unhandled = _ignore_unhandled

    table = type(leaf).__pachinko_table__
    decoder = table.decoder
    by_type = table.by_type
    dispatch_slow = table.dispatch_slow
    envelope, raw_dict = ENVELOPE, RAW_DICT
    receive_text = ws.receive_text
    max_size = settings.max_message_size
    # NOTE: a str of n code points is at most 4n UTF-8 bytes, so the exact
    #   byte count is only computed for messages longer than a quarter of the limit.
    quarter = max_size // 4
    rate = settings.rate_limit
    burst = float(settings.rate_burst)
    tokens = burst
    last = monotonic()

    while True:
        try:
            text = await receive_text()
        except PayloadTypeError:
            await ws.close(CLOSE_UNSUPPORTED_DATA, "Binary frames are not accepted")
            return CLOSE_UNSUPPORTED_DATA
        size = len(text)
        if size > quarter and (size > max_size or len(text.encode()) > max_size):
            await ws.close(CLOSE_TOO_BIG, f"Message too big (limit {max_size} bytes)")
            return CLOSE_TOO_BIG
        if rate is not None:
            # PERF: a token bucket refilled lazily, only when it runs dry: the
            #   clock is read once per `burst` messages in a flood, never for
            #   normal traffic. At most burst + rate * t messages pass in t
            #   seconds, as with an eager bucket.
            tokens -= 1.0
            if tokens < 0.0:
                now = monotonic()
                tokens = min(burst, tokens + (now - last) * rate)
                last = now
                if tokens < 0.0:
                    await ws.close(CLOSE_POLICY_VIOLATION, "Message rate limit exceeded")
                    return CLOSE_POLICY_VIOLATION
        try:
            if before:
                for hook in before:
                    await hook(ws, text)
            payload: Any
            if decoder is not None:
                try:
                    msg = decoder.decode(text)
                except msgspec.DecodeError:
                    msg = None
                if msg is not None:
                    handler, kind = by_type[type(msg)]
                    payload = msg
                    if kind == envelope:
                        payload = msg.payload
                    elif kind == raw_dict:
                        payload = msgspec.json.decode(text)
                    await handler(leaf, ws, payload)
                    if after:
                        for hook in after:
                            await hook(ws, text)
                    continue
            outcome = dispatch_slow(text)
            if isinstance(outcome, MessageError):
                await unhandled(ws, outcome)
                continue
            handler, payload = outcome
            await handler(leaf, ws, payload)
            for hook in after:
                await hook(ws, text)
        except WebSocketDisconnected:
            raise
        except Exception as exc:
            if not await _run_error_hooks(error_hooks, ws, exc):
                logger.error(
                    "handler of %s raised; closing with 1011", type(leaf).__qualname__, exc_info=exc
                )
                await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
                return CLOSE_INTERNAL_ERROR


async def _ignore_unhandled(ws: WebSocket, error: MessageError) -> None:
    logger.debug("dropped undecodable message: %r", error)


async def _run_error_hooks(
    hooks: tuple[Callable[..., Awaitable[Any]], ...], ws: WebSocket, exc: Exception
) -> bool:
    handled = False
    for hook in hooks:
        try:
            handled = bool(await hook(ws, exc)) or handled
        except Exception:
            logger.exception("error hook %r raised", hook)
    return handled


async def _disconnect(
    info: RouteInfo,
    chain: list[WebSocketResource],
    leaf: WebSocketResource,
    ws: WebSocket,
    close_code: int,
) -> None:
    """before_disconnect hooks, then on_disconnect, leaf first; each runs once."""
    for hook in _hooks(info, chain, leaf, "before_disconnect"):
        try:
            await hook(ws, close_code)
        except Exception:
            logger.exception("before_disconnect hook %r raised", hook)
    for resource in reversed(chain):
        try:
            await resource.on_disconnect(ws, close_code)
        except Exception:
            logger.exception("%s.on_disconnect raised", type(resource).__qualname__)


async def _close_quietly(ws: WebSocket, code: int) -> None:
    try:
        await ws.close(code)
    except Exception:  # the peer may already be gone
        logger.debug("close(%s) failed", code, exc_info=True)
