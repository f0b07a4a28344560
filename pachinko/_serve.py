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
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import falcon
import msgspec
from falcon.asgi.ws import _WebSocketState
from falcon.errors import PayloadTypeError, WebSocketDisconnected
from msgspec import UNSET

from ._dispatch import AS_DECODED, ENVELOPE, ID_ATTR, RAW_DICT, REQUEST, Handler, MessageError
from ._dispatch_build import ID_TYPE
from ._wire import encode, encode_reply
from .auth import TOKEN_SUBPROTOCOL, Authenticate, offered_subprotocols
from .connection import Connection, User
from .errors import (
    AuthenticationFailed,
    BackendUnavailable,
    ConnectionLimitExceeded,
    JoinRefused,
    PachinkoError,
    Refuse,
    RequestAborted,
    RequestTimeout,
)
from .observe import current_connection
from .resource import WebSocketResource
from .router import join_paths

if TYPE_CHECKING:
    from falcon.asgi import Request, Response, WebSocket

    from .manager import WebSocketConnectionManager
    from .observe import Observer
    from .router import RouteInfo, WebSocketRouter
    from .settings import Settings

__all__ = ["Mount", "OutageLog", "Receiver", "receive_loop", "run_disconnect"]

logger = logging.getLogger("pachinko")

# RFC 6455 close codes used here, spelled out.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_NO_STATUS: Final = 1005
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_UNAUTHORIZED: Final = 3401  # Falcon's HTTP 401 equivalent
CLOSE_FORBIDDEN: Final = 3403  # Falcon's HTTP 403 equivalent
CLOSE_NOT_FOUND: Final = 3404  # Falcon's HTTP 404 equivalent

_base_unhandled = WebSocketResource.on_unhandled


class Host(Protocol):
    """What the serve loop needs of the app's :class:`~pachinko.app.Runtime`.

    NOTE: spelled out here so that the runtime imports the serve loop and
    not the other way round.
    """

    settings: Settings
    manager: WebSocketConnectionManager
    allowed_origins: frozenset[str] | None
    authenticate: Authenticate | None
    accepting: bool
    serving: set[asyncio.Task[Any]]


class Mount:
    """A router mounted under a path prefix of a Falcon app.

    The mount is the Falcon sink: Falcon calls it for every request whose
    path is the prefix or below it. :meth:`swap` replaces the router
    atomically: connections already open keep the resources they have.
    """

    __slots__ = ("_routes", "outages", "prefix", "router", "runtime")

    # NOTE: the prefix lives here, per mount: one router mounted on two apps
    #   (or twice on one) builds each app's URLs with that app's prefix.

    def __init__(self, runtime: Host, prefix: str, router: WebSocketRouter) -> None:
        self.runtime = runtime
        self.prefix = prefix
        self.router = router
        self.outages = OutageLog()
        self._routes: dict[str, str] = {}
        router.root._mounted(prefix)

    @property
    def pattern(self) -> re.Pattern[str]:
        """The sink prefix: the mount path followed by ``/`` or the end."""
        if self.prefix == "/":
            return re.compile("/")
        return re.compile(re.escape(self.prefix) + r"(?=/|\Z)")

    def url_for(self, name: str, /, **params: Any) -> str:
        """Build the URL path of the route called ``name``, this mount's prefix included.

        Raises:
            RouteError: No such route, or a field value is missing.
        """
        return join_paths(self.prefix, self.router._path_for(name, params))

    def route_of(self, template: str) -> str:
        """The route template ``template`` with this mount's prefix (cached)."""
        found = self._routes.get(template)
        if found is None:
            found = self._routes[template] = join_paths(self.prefix, template)
        return found

    def swap(self, router: WebSocketRouter) -> WebSocketRouter:
        """Serve new connections with ``router``; return the previous one."""
        router.root._mounted(self.prefix)
        old, self.router = self.router, router
        return old

    def __call__(
        self, req: Request, resp: Response | None, ws: WebSocket | None = None, **_: Any
    ) -> Coroutine[Any, Any, None]:
        """Falcon sink: serve a WebSocket, answer plain HTTP with 426.

        PERF: a plain method returning the coroutine that serves the
        connection, not a coroutine awaiting it: one coroutine frame and
        Falcon's keyword dict less per open connection (~460 B,
        benchmarks/bench_connect.py). Falcon accepts a callable object as an
        ASGI sink and awaits what it returns. That coroutine is the receive
        loop's own, from handshake to disconnect (:func:`receive_loop`).
        """
        if ws is None:
            return _upgrade_required(resp)
        path = req.path[len(self.prefix) :] if self.prefix != "/" else req.path
        # NOTE: Falcon ignores what the sink's coroutine returns (the close code here).
        return receive_loop(  # type: ignore[return-value]
            None,
            self.runtime.settings,
            ws,
            type(ws).receive_text,
            mount=self,
            router=self.router,
            req=req,
            path=path or "/",
        )

    async def handle(
        self, req: Request, resp: Response | None, ws: WebSocket | None = None, **_: Any
    ) -> None:
        """Serve one request as the sink does (an ``async def`` for other callers)."""
        await self(req, resp, ws)


async def _upgrade_required(resp: Response | None) -> None:
    if resp is not None:
        resp.status = falcon.HTTP_426
        resp.set_header("Upgrade", "websocket")
        resp.media = {
            "title": "426 Upgrade Required",
            "description": "This path accepts WebSocket connections only.",
        }


def origin_allowed(req: Request, allowed: frozenset[str] | None) -> bool:
    """Check the handshake's Origin against the allow-list.

    Requests without an Origin header (non-browser clients) are allowed:
    cross-site WebSocket hijacking needs a browser, and browsers always send
    it. ``None`` means same-origin only: the Origin's scheme, host and port
    must be the request's (``https`` goes with ``wss``, ``http`` with
    ``ws``; a missing port is the scheme's default). The request's scheme is
    the ASGI scope's, which the server sets from a trusted proxy's
    ``X-Forwarded-Proto`` (uvicorn's ``--forwarded-allow-ips``); the header
    itself is never read here. ``"*"`` allows every origin.
    """
    origin = req.get_header("Origin")
    if origin is None or (allowed is not None and "*" in allowed):
        return True
    if allowed is None:
        return _same_origin(origin, req.scheme, req.get_header("Host") or "")
    return origin.lower().rstrip("/") in allowed


_SECURE: Final = {"http": False, "ws": False, "https": True, "wss": True}


def _same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether ``origin`` names the server reached with ``scheme`` and ``host``."""
    try:
        theirs = urlsplit(origin.strip())
        ours = urlsplit("//" + host.strip())
        their_port, our_port = theirs.port, ours.port
    except ValueError:  # a malformed port or IPv6 address
        return False
    secure = _SECURE.get(theirs.scheme.lower())
    if secure is None or secure != _SECURE.get(scheme.lower()):
        return False
    default = 443 if secure else 80
    return theirs.hostname is not None and (theirs.hostname, their_port or default) == (
        ours.hostname,
        our_port or default,
    )


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _opened(mount: Mount, rx: Receiver, req: Request, ws: WebSocket) -> None:
    """Accept, register as open, run the after_connect hooks."""
    manager = mount.runtime.manager
    conn = rx.leaf.connection
    if ws.unaccepted:
        await ws.accept(subprotocol=_token_carrier(req) if conn._user is not None else None)
    manager.opened(conn)
    if rx.observer is not None:
        rx.observer.opened(rx.observed)
    for hook in hook_list(rx.router, rx.chain, rx.leaf, "after_connect", reverse=True):
        try:
            await hook(ws)
        except JoinRefused as refused:
            await rx.refused(ws, refused, None)


def _disconnected(rx: Receiver, ex: WebSocketDisconnected) -> int:
    """The close code of a connection whose peer left (or was evicted)."""
    outbox = rx.leaf.connection.outbox
    if outbox is not None and outbox.closed_with is not None:
        return outbox.closed_with  # type: ignore[no-any-return]  # closed as a slow consumer: say so
    return ex.code or CLOSE_NO_STATUS


async def _closed(
    mount: Mount, rx: Receiver, ws: WebSocket, close_code: int, task: asyncio.Task[Any] | None
) -> None:
    """Fail pending requests, run the disconnect hooks, deregister."""
    runtime = mount.runtime
    manager = runtime.manager
    rx.abort_requests(close_code)
    await run_disconnect(rx.router, rx.chain, rx.leaf, ws, close_code, mount.outages, manager)
    await manager.disconnect(rx.leaf.connection)
    runtime.serving.discard(task)
    if rx.observer is not None:
        rx.observer.closed(rx.observed, close_code)


async def _handshake(
    runtime: Host,
    router: WebSocketRouter,
    req: Request,
    ws: WebSocket,
    path: str,
    mount: Mount,
) -> Receiver | None:
    """Match, check the origin, build the chain, run on_connect, register.

    Returns the connection's :class:`Receiver`, or ``None`` when the
    handshake was refused (and the socket closed).
    """
    obs = runtime.manager.observer
    if not runtime.accepting:
        if obs is not None:
            obs.refused("shutting_down")
        await ws.close(CLOSE_GOING_AWAY, "Server shutting down")
        return None
    found = router.match(path)
    if found is None:
        if obs is not None:
            obs.refused("not_found")
        await ws.close(CLOSE_NOT_FOUND)
        return None
    info, params = found
    if not origin_allowed(req, runtime.allowed_origins):
        logger.warning(
            "refused WebSocket %s: Origin %r is not allowed", req.path, req.get_header("Origin")
        )
        if obs is not None:
            obs.refused("origin")
        await ws.close(CLOSE_FORBIDDEN, "Origin not allowed")
        return None
    conn = Connection(ws, path, params, runtime.manager)
    conn.mount = mount
    conn.route = mount.route_of(info.template)
    current_connection.set(conn)  # log lines of this task name the connection
    if runtime.authenticate is not None:
        user = await _authenticate(runtime, runtime.authenticate, req, ws)
        if user is None:
            return None
        conn._user = user
    chain = await _build_chain(runtime, info, conn, req, ws, params)
    if chain is None:
        return None
    rx = Receiver(chain[-1], runtime.settings, runtime.manager, mount.outages, info.router, chain)
    conn.receiver = rx
    return rx


async def _build_chain(
    runtime: Host,
    info: RouteInfo,
    conn: Connection,
    req: Request,
    ws: WebSocket,
    params: dict[str, Any],
) -> tuple[WebSocketResource, ...] | None:
    """Build the resource chain and run on_connect; return None if refused."""
    factory = info.router.root.resource_factory
    chain: list[WebSocketResource] = []
    state = conn.state
    context: dict[str, Any] = {}
    levels = info.chain
    try:
        for level in levels:
            kwargs = {**level.kwargs, **context} if context else level.kwargs
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
            resource._pachinko_bind(conn, state)
            chain.append(resource)
            conn.resource = resource
            if len(chain) == 1:
                for hook in info.router._hooks_of("before_connect", type(resource)):
                    await hook(resource, req, ws, params)
            own = getattr(resource, "before_connect", None)
            if own is not None:
                await own(req, ws, params)
            accepted = await resource.on_connect(req, ws, **params)
            if not ws.unaccepted and ws.closed:
                _refused(runtime, "refused")
                return None  # the resource closed the handshake itself
            if not accepted:
                _refused(runtime, "refused")
                await ws.close(CLOSE_FORBIDDEN)
                return None
            if len(chain) < len(levels):
                context = dict(resource.get_child_context())
        conn.state = state
        conn.authorizers = hook_list(info.router, chain, chain[-1], "authorize_join")
        await runtime.manager.connect(conn)
    except Refuse as refusal:
        _refused(runtime, "limit" if isinstance(refusal, ConnectionLimitExceeded) else "refused")
        await _refuse(ws, refusal)
        return None
    except Exception as ex:
        await _handshake_failed(runtime, ws, ex, "WebSocket handshake for %s failed", req.path)
        return None
    return tuple(chain)


async def _authenticate(
    runtime: Host, authenticate: Authenticate, req: Request, ws: WebSocket
) -> User | None:
    """Run the app's ``authenticate``; return the user, or ``None`` once refused."""
    try:
        user = await _maybe_await(authenticate(req))
        if user is None:
            raise AuthenticationFailed()
        if not isinstance(user, User):
            raise TypeError(
                f"authenticate {authenticate!r} returned {type(user).__name__}, "
                "expected a pachinko.User or None"
            )
    except AuthenticationFailed as refusal:
        _refused(runtime, "unauthenticated")
        logger.info("refused WebSocket %s: %s", req.path, refusal.reason)
        if refusal.code == CLOSE_UNAUTHORIZED:
            await _deny(req, ws, refusal.code, refusal.reason)
        else:
            await _refuse(ws, refusal)
        return None
    except Refuse as refusal:
        _refused(runtime, "refused")
        await _refuse(ws, refusal)
        return None
    except Exception as ex:
        await _handshake_failed(runtime, ws, ex, "authenticate failed for WebSocket %s", req.path)
        return None
    return user


_DENIAL: Final = "websocket.http.response"


async def _deny(req: Request, ws: WebSocket, code: int, reason: str) -> None:
    """Deny the handshake with HTTP ``code - 3000`` (3401: 401) and ``reason`` as the body.

    Through the ASGI denial response extension where the server offers it
    (uvicorn does): a close before accept can only say 403. Elsewhere (the
    in-process test client) Falcon's close with ``code``.
    """
    send = getattr(ws, "_asgi_send", None)
    extensions = req.scope.get("extensions") or {}
    if send is None or _DENIAL not in extensions or not ws.unaccepted:
        await ws.close(code, reason or None)
        return
    # NOTE: Falcon 4 has no API for a denial response: the events go through
    #   the socket's ASGI send, and the socket is then marked closed so that
    #   Falcon sends no close event after them (tests/test_auth_uvicorn.py
    #   pins the status a real client sees).
    body = reason.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if code == CLOSE_UNAUTHORIZED:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": f"{_DENIAL}.start", "status": code - 3000, "headers": headers})
    await send({"type": f"{_DENIAL}.body", "body": body})
    ws._state = _WebSocketState.CLOSED
    ws._close_code = code


async def _refuse(ws: WebSocket, refusal: Refuse) -> None:
    # NOTE: a close before accept reaches real clients as HTTP 403 only;
    #   to let them read the code and reason, accept and close at once.
    #   Without a code of its own it is a plain denial.
    if refusal.code != CLOSE_FORBIDDEN and ws.unaccepted:
        await ws.accept()
    await ws.close(refusal.code, refusal.reason or None)


def _token_carrier(req: Request) -> str | None:
    """The subprotocol to select when the client sent its token as one.

    A browser fails a handshake whose response selects none of the offered
    subprotocols: select the first offered one that is not the token
    (``pachinko`` in ``["pachinko", "pachinko.token.<token>"]``).
    """
    offered = offered_subprotocols(req)
    if not any(item.startswith(TOKEN_SUBPROTOCOL) for item in offered):
        return None
    for item in offered:
        if not item.startswith(TOKEN_SUBPROTOCOL):
            return item
    return None


async def _handshake_failed(
    runtime: Host, ws: WebSocket, ex: Exception, message: str, path: str
) -> None:
    """Count a handshake step that raised ``ex``; log and close unless the peer left.

    Call it from the ``except`` clause (the log carries the traceback).
    """
    if isinstance(ex, WebSocketDisconnected):
        _refused(runtime, "disconnected")
        return
    _refused(runtime, "error")
    logger.exception(message, path)
    await _close_quietly(ws, CLOSE_INTERNAL_ERROR)


def _refused(runtime: Host, cause: str) -> None:
    obs = runtime.manager.observer
    if obs is not None:
        obs.refused(cause)


def hook_list(
    router: WebSocketRouter | None,
    chain: Sequence[WebSocketResource],
    leaf: WebSocketResource,
    event: str,
    *,
    reverse: bool = False,
) -> tuple[Callable[..., Awaitable[Any]], ...]:
    """Bound hook callables for ``event``: global, parent, child (or reversed)."""
    found = router._hooks_of(event, type(leaf)) if router is not None else ()
    if not found and len(chain) == 1:
        # PERF: the common case (no global hooks, one resource) builds no list.
        own = getattr(chain[0], event, None)
        return () if own is None else (own,)
    hooks: list[Callable[..., Awaitable[Any]]] = [functools.partial(h, leaf) for h in found]
    for resource in chain:
        fn = getattr(resource, event, None)
        if fn is not None:
            hooks.append(fn)
    if not hooks:
        # PERF: none (the common case) is the shared empty tuple, not a
        #   56-byte list held by every connection (bench_connect.py)
        return ()
    if reverse:
        hooks.reverse()
    return tuple(hooks)


class OutageLog:
    """Log a backend outage that handlers run into once, not once per message.

    A backend that counts its outages (``outages`` and ``available``, as the
    Redis backend has them) tells them apart: a failure while it is still
    marked available belongs to the outage it is about to notice. For other
    backends an outage is a run of failures less than ``quiet`` seconds apart.
    """

    __slots__ = ("key", "last", "quiet")

    def __init__(self, quiet: float = 30.0) -> None:
        self.quiet = quiet
        self.key: int | None = None
        self.last: float | None = None

    def report(self, exc: BackendUnavailable, backend: object, where: str) -> None:
        """Record one failure: a warning for the first of an outage, else debug."""
        now = monotonic()
        outages = getattr(backend, "outages", None)
        if isinstance(outages, int):
            key = outages if getattr(backend, "available", None) is False else outages + 1
            new = key != self.key
            self.key = key
        else:
            new = self.last is None or now - self.last >= self.quiet
        self.last = now
        if not new:
            logger.debug("%s: backend still unavailable: %s", where, exc)
            return
        logger.warning(
            "%s: %s; clients get error replies with reason 'unavailable' until it is back "
            "(logged once per outage)",
            where,
            exc,
        )


class Receiver:
    """One connection's dispatch, built once when the connection opens.

    :func:`receive_loop` runs the one dispatch step with it (decode, hooks,
    handler, error reply or error handling): the Mount for every real
    connection, :class:`~pachinko.testing.ResourceHarness` one message at a
    time, so that a unit test runs exactly what production runs.
    """

    __slots__ = (
        "_unhandled",
        "after",
        "before",
        "by_type",
        "chain",
        "error_hooks",
        "leaf",
        "manager",
        "observed",
        "observer",
        "outages",
        "pending",
        "router",
        "task",
    )

    def __init__(
        self,
        leaf: WebSocketResource,
        settings: Settings,
        manager: WebSocketConnectionManager,
        outages: OutageLog,
        router: WebSocketRouter | None = None,
        chain: Sequence[WebSocketResource] | None = None,
    ) -> None:
        levels = (leaf,) if chain is None else chain
        self.leaf = leaf
        self.router = router
        self.chain = levels
        self.manager = manager
        self.outages = outages
        self.before = hook_list(router, levels, leaf, "before_receive")
        self.after = hook_list(router, levels, leaf, "after_receive", reverse=True)
        self.error_hooks = hook_list(router, levels, leaf, "on_error", reverse=True)
        # PERF: None stands for the leaf's own on_unhandled, looked up when
        #   called (rarely): a bound method kept per connection is 64 B
        #   (bench_connect.py, tracemalloc).
        self._unhandled: Callable[[Any, MessageError], Awaitable[None]] | None = None
        if not settings.error_replies and type(leaf).on_unhandled is _base_unhandled:
            self._unhandled = _ignore_unhandled
        obs: Observer | None = manager.observer
        self.observer = obs
        # The observer's state for this connection (labels, a span to link to).
        self.observed = None if obs is None else obs.connection(leaf.connection, type(leaf))
        by_type = type(leaf).__pachinko_table__.by_type
        # PERF: observed handlers (counted, traced) are wrapped once per
        #   connection: the loop's fast path is the same with or without.
        self.by_type = by_type if obs is None else obs.handlers(self.observed, by_type)
        # The server's requests awaiting the client's answer, by id (created on
        # the first request; _ABORTED once the connection ended).
        self.pending: dict[str | int, asyncio.Future[str]] | None = None
        # The task running this connection's receive loop (the handshake's).
        self.task = asyncio.current_task()

    def unhandled(self, ws: WebSocket, error: MessageError) -> Awaitable[None]:
        """Answer a message that got no handler: the leaf's ``on_unhandled`` (or a drop)."""
        drop = self._unhandled
        return self.leaf.on_unhandled(ws, error) if drop is None else drop(ws, error)

    async def failed(self, ws: WebSocket, text: str, exc: Exception) -> int | None:
        """Handle an exception of a hook or handler; return a close code, or None.

        The error hooks come first (``True``: handled). A
        :class:`~pachinko.errors.BackendUnavailable` then becomes an error
        reply through ``on_unhandled`` (reason ``unavailable``), logged once
        per outage; anything else is logged with its traceback and closes
        the connection with 1011.
        """
        if await _run_error_hooks(self.error_hooks, ws, exc):
            return None
        if isinstance(exc, JoinRefused):
            await self.refused(ws, exc, text)
            return None
        where = f"handler of {type(self.leaf).__qualname__}"
        if isinstance(exc, BackendUnavailable):
            self.outages.report(exc, self.manager.backend, where)
            if self.observer is not None:
                self.observer.error_reply(self.observed, "unavailable")
            try:
                await self.unhandled(
                    ws, MessageError("unavailable", UNAVAILABLE_DETAIL, None, text)
                )
            except WebSocketDisconnected:
                raise
            except Exception as ex:
                exc = ex
                where = f"{type(self.leaf).__qualname__}.on_unhandled"
            else:
                return None
        logger.error("%s raised; closing with 1011", where, exc_info=exc)
        await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
        return CLOSE_INTERNAL_ERROR

    async def refused(self, ws: WebSocket, exc: JoinRefused, text: str | None) -> None:
        """Answer a refused join with the error reply (reason ``forbidden``)."""
        await self.unhandled(ws, MessageError("forbidden", str(exc), None, text or ""))

    # -- requests from the client (a handler that declares a reply) -----------

    async def run_request(
        self, ws: WebSocket, handler: Handler, payload: Any, rid: Any, text: str
    ) -> int | None:
        """Run a request's handler; send its return value as the reply, with the id.

        A handler exception for a message with an id becomes an error reply
        with that id (``handler_error``, or ``unavailable`` for a backend
        outage) after the error hooks, and the connection stays open; without
        an id it is handled as any handler's (:meth:`failed`). Returns a close
        code, or ``None``.
        """
        leaf = self.leaf
        try:
            result = await handler(leaf, ws, payload)
            if result is None:
                return None
            frame = type(leaf).__pachinko_table__.reply(result, rid)  # type: ignore[misc]
        except WebSocketDisconnected:
            raise
        except Exception as exc:
            if rid is UNSET:
                raise
            return await self.request_failed(ws, text, exc, rid)
        await ws.send_text(frame)
        return None

    async def request_failed(
        self, ws: WebSocket, text: str, exc: Exception, rid: str | int
    ) -> int | None:
        if await _run_error_hooks(self.error_hooks, ws, exc):
            return None
        where = f"handler of {type(self.leaf).__qualname__}"
        if isinstance(exc, JoinRefused):
            error = MessageError("forbidden", str(exc), None, text, rid)
        elif isinstance(exc, BackendUnavailable):
            self.outages.report(exc, self.manager.backend, where)
            error = MessageError("unavailable", UNAVAILABLE_DETAIL, None, text, rid)
        else:
            logger.error(
                "%s raised for request %r; error reply 'handler_error'", where, rid, exc_info=exc
            )
            error = MessageError("handler_error", HANDLER_ERROR_DETAIL, None, text, rid)
        try:
            await self.unhandled(ws, error)
        except WebSocketDisconnected:
            raise
        except Exception as ex:
            logger.error(
                "%s.on_unhandled raised; closing with 1011",
                type(self.leaf).__qualname__,
                exc_info=ex,
            )
            await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
            return CLOSE_INTERNAL_ERROR
        return None

    # -- requests from the server (resource.request()) -------------------------

    async def request(self, message: Any, timeout: float) -> Any:
        """Send ``message`` with a new correlation id; return the client's answer.

        Raises:
            RequestTimeout: No answer within ``timeout`` seconds.
            RequestAborted: The connection closed first (or had closed).
            PachinkoError: Awaited by this connection's own receive loop (a
                handler of this connection), which could never read the answer.
        """
        name = type(self.leaf).__qualname__
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"{name}.request(): timeout must be a number > 0, got {timeout!r}")
        pending = self.pending
        if pending is _ABORTED:
            raise RequestAborted(f"{name}.request(): the connection is closed")
        if asyncio.current_task() is self.task:
            raise PachinkoError(
                f"{name}.request() awaited by a handler of the same connection: its receive "
                "loop waits for the handler, so it could never read the answer; run it in a "
                "task of its own (asyncio.create_task(self.request(...)))"
            )
        if pending is None:
            pending = self.pending = {}
        rid = f"{SERVER_ID_PREFIX}{next(_request_ids)}"
        leaf = self.leaf
        frame = encode_reply(message, rid, leaf.wire, leaf.tag_field, leaf.id_field)
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        pending[rid] = answer
        try:
            try:
                await leaf.connection.ws.send_text(frame)
            except WebSocketDisconnected as ex:
                raise RequestAborted(
                    f"{name}.request() {rid!r}: the connection closed before it was sent"
                ) from ex
            try:
                text = await asyncio.wait_for(answer, timeout)
            except TimeoutError:
                raise RequestTimeout(
                    f"{name}.request() {rid!r}: no answer from the client within {timeout:g} s"
                ) from None
        finally:
            if pending.get(rid) is answer:
                del pending[rid]
        return msgspec.json.decode(text)

    def take_answer(self, text: str) -> bool:
        """Whether ``text`` answers a pending request (which then gets it)."""
        pending = self.pending
        if not pending:
            return False
        try:
            rid = _answer_decoder(self.leaf.id_field).decode(text).pachinko_id
        except (msgspec.DecodeError, RecursionError):
            return False
        answer = pending.get(rid) if rid is not UNSET else None
        if answer is None or answer.done():
            return False
        answer.set_result(text)
        return True

    def abort_requests(self, close_code: int) -> None:
        """Fail the requests still awaiting an answer: the connection ended."""
        pending, self.pending = self.pending, _ABORTED
        if not pending:
            return
        for rid, answer in list(pending.items()):
            if not answer.done():
                answer.set_exception(
                    RequestAborted(
                        f"{type(self.leaf).__qualname__}.request() {rid!r}: the connection "
                        f"closed (code {close_code}) before the client answered"
                    )
                )


#: Prefix of the correlation ids of the server's requests to clients (clients
#: number their own requests otherwise).
SERVER_ID_PREFIX: Final = "srv-"
_request_ids = itertools.count(1)
#: ``Receiver.pending`` once the connection ended.
_ABORTED: Final[dict[str | int, asyncio.Future[str]]] = {}
_ANSWER_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {}


def _answer_decoder(id_field: str) -> msgspec.json.Decoder[Any]:
    """Reads only the correlation id of a message (skipping everything else)."""
    decoder = _ANSWER_DECODERS.get(id_field)
    if decoder is None:
        answer = msgspec.defstruct(
            "Answer", [(ID_ATTR, ID_TYPE, UNSET)], rename={ID_ATTR: id_field}
        )
        decoder = _ANSWER_DECODERS[id_field] = msgspec.json.Decoder(answer)
    return decoder


#: The error reply's ``detail`` when the handler of a request raised. It says
#: nothing of the exception (the log has the traceback).
HANDLER_ERROR_DETAIL: Final = "The server failed to handle this message"

#: The error reply's ``detail`` when a handler hit a backend outage. It says
#: nothing of the backend itself (its URL may hold credentials).
UNAVAILABLE_DETAIL: Final = "A service the server needs is unavailable; try again later"


# What the fast decoder raises for a message the slow path classifies.
_UNDECODABLE: Final = (msgspec.DecodeError, RecursionError)


async def receive_loop(
    rx: Receiver | None,
    settings: Settings,
    ws: WebSocket,
    receive_text: Callable[[WebSocket], Awaitable[str | None]],
    *,
    mount: Mount | None = None,
    router: WebSocketRouter | None = None,
    req: Request | None = None,
    path: str = "/",
) -> int | None:
    """Receive, decode, dispatch until the connection closes.

    With ``mount`` (the sink), this is the whole connection: the handshake
    (which builds ``rx``), accept and after_connect first, the disconnect
    hooks and deregistration in a ``finally`` after. Without it (the
    :class:`~pachinko.testing.ResourceHarness`), the dispatch of the
    messages ``receive_text(ws)`` gives, with ``rx`` built by the caller, and
    exceptions propagate.

    PERF: one coroutine frame per open connection, not a serving frame
    awaiting this one: ~300 B less per idle connection
    (benchmarks/bench_connect.py, tracemalloc). The steps before and after
    the loop run in coroutines of their own, gone once they return.

    Returns:
        The close code, or ``None`` when ``receive_text(ws)`` returned ``None``
        (the harness has no more messages) or the handshake was refused.
    """
    task: asyncio.Task[Any] | None = None
    if mount is not None:
        obs = mount.runtime.manager.observer
        handshake = _handshake(mount.runtime, router, req, ws, path, mount)  # type: ignore[arg-type]
        rx = await (handshake if obs is None else obs.handshake(req.path, handshake))  # type: ignore[union-attr]
        # PERF: the finished handshake coroutine held by this frame's local
        #   kept ~340 B per open connection (bench_connect.py, tracemalloc).
        del handshake
        if rx is None:
            return None
        task = asyncio.current_task()
        if task is not None:
            mount.runtime.serving.add(task)
    elif rx is None:
        raise TypeError("receive_loop(): a Receiver is required without a mount")
    close_code: int | None = CLOSE_NO_STATUS
    try:
        if mount is not None:
            await _opened(mount, rx, req, ws)  # type: ignore[arg-type]
        leaf = rx.leaf
        before = rx.before
        after = rx.after
        table = type(leaf).__pachinko_table__
        decoder = table.decoder
        by_type = rx.by_type
        as_decoded, envelope, raw_dict = AS_DECODED, ENVELOPE, RAW_DICT
        reply: Any = table.reply
        if reply is not None:
            quick, head, comma, join = reply.quick, reply.head, b",", b"".join
        unset = UNSET
        decoded_request = AS_DECODED | REQUEST
        envelope_request = ENVELOPE | REQUEST
        raw_request = RAW_DICT | REQUEST
        decode_any = msgspec.json.decode
        force_setattr = msgspec.structs.force_setattr
        max_size = settings.max_message_size
        # NOTE: a str of n code points is at most 4n UTF-8 bytes, so the exact
        #   byte count is only computed for messages longer than a quarter of the limit.
        quarter = max_size // 4
        rate = settings.rate_limit
        burst = float(settings.rate_burst)
        tokens = burst
        last = monotonic()
        outbox = leaf.connection.outbox
        obs = rx.observer
        observed = rx.observed

        while True:
            try:
                text = await receive_text(ws)
            except PayloadTypeError:
                await ws.close(CLOSE_UNSUPPORTED_DATA, "Binary frames are not accepted")
                close_code = CLOSE_UNSUPPORTED_DATA
                break
            if text is None:
                close_code = None
                break
            if outbox.evicted:
                # Evicted (a slow consumer, a failed send): dispatch nothing more
                # until the disconnect, which the outbox makes happen in time.
                continue
            size = len(text)
            if size > quarter and (size > max_size or len(text.encode()) > max_size):
                await ws.close(CLOSE_TOO_BIG, f"Message too big (limit {max_size} bytes)")
                close_code = CLOSE_TOO_BIG
                break
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
                        close_code = CLOSE_POLICY_VIOLATION
                        break
            if rx.pending and rx.take_answer(text):
                continue  # the client's answer to a server request: no handler, no hooks
            try:
                if before:
                    for hook in before:
                        await hook(ws, text)
                payload: Any
                handler: Any
                if decoder is not None:
                    # NOTE: msgspec raises RecursionError for deep nesting (from
                    #   ~1000 levels on 3.11), even while skipping a value: the slow
                    #   path turns it into an error reply.
                    try:
                        msg = decoder.decode(text)
                        handler, kind = by_type[type(msg)]
                        if kind == as_decoded:
                            payload = msg
                        elif kind == envelope:
                            payload = msg.payload
                        elif kind == raw_dict:
                            payload = decode_any(text)
                        else:
                            # a request: below, off the plain path
                            request, handler = handler, None
                    except _UNDECODABLE:
                        handler = None
                        kind = 0
                    if handler is not None:
                        await handler(leaf, ws, payload)
                        if after:
                            for hook in after:
                                await hook(ws, text)
                        continue
                    if kind & REQUEST:
                        # PERF: inline, no coroutine of its own (bench_dispatch.py, replies row)
                        rid = msg.pachinko_id
                        if kind == decoded_request:
                            payload = msg
                            if rid is not unset:
                                # the id is the message's, not the payload's: re-encoding
                                # the handler's Struct never carries it on
                                msg.pachinko_id = unset
                        elif kind == envelope_request:
                            payload = msg.payload
                        elif kind == raw_request:
                            payload = decode_any(text)
                        else:  # a frozen Struct
                            payload = msg
                            if rid is not unset:
                                force_setattr(msg, ID_ATTR, unset)
                        frame = None
                        try:
                            result = await request(leaf, ws, payload)
                            if result is not None:
                                if type(result) in quick and rid is not unset:
                                    frame = join(
                                        (head, encode(rid), comma, encode(result)[1:])
                                    ).decode()
                                else:
                                    frame = reply(result, rid)
                        except WebSocketDisconnected:
                            raise
                        except Exception as exc:
                            if rid is unset:
                                raise
                            code = await rx.request_failed(ws, text, exc, rid)
                            if code is not None:
                                close_code = code
                                break
                        if frame is not None:
                            await ws.send_text(frame)
                        if after:
                            for hook in after:
                                await hook(ws, text)
                        continue
                outcome = table.dispatch_slow(text)
                if isinstance(outcome, MessageError):
                    if obs is not None:
                        obs.error_reply(observed, outcome.reason)
                    await rx.unhandled(ws, outcome)
                    continue
                handler, payload, rid = outcome
                if rid is not None:
                    code = await rx.run_request(ws, handler, payload, rid, text)
                    if code is not None:
                        close_code = code
                        break
                elif obs is None:
                    await handler(leaf, ws, payload)
                else:
                    await obs.handle(observed, handler, handler, leaf, ws, payload)
                for hook in after:
                    await hook(ws, text)
            except WebSocketDisconnected:
                raise
            except Exception as exc:
                code = await rx.failed(ws, text, exc)
                if code is not None:
                    close_code = code
                    break
    except WebSocketDisconnected as ex:
        if mount is None:
            raise
        close_code = _disconnected(rx, ex)
    except Exception:
        if mount is None:
            raise
        logger.exception("WebSocket %s failed after the handshake", req.path)  # type: ignore[union-attr]
        close_code = CLOSE_INTERNAL_ERROR
        await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
    finally:
        if mount is not None:
            await _closed(mount, rx, ws, close_code or CLOSE_NO_STATUS, task)
    return close_code


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


async def run_disconnect(
    router: WebSocketRouter | None,
    chain: Sequence[WebSocketResource],
    leaf: WebSocketResource,
    ws: WebSocket,
    close_code: int,
    outages: OutageLog,
    manager: WebSocketConnectionManager,
) -> None:
    """before_disconnect hooks, then on_disconnect, leaf first; each runs once.

    A backend outage they run into is logged once per outage (``outages``),
    anything else with its traceback.
    """
    for hook in hook_list(router, chain, leaf, "before_disconnect"):
        try:
            await hook(ws, close_code)
        except BackendUnavailable as ex:
            outages.report(ex, manager.backend, f"before_disconnect hook {hook!r}")
        except Exception:
            logger.exception("before_disconnect hook %r raised", hook)
    for resource in reversed(chain):
        try:
            await resource.on_disconnect(ws, close_code)
        except BackendUnavailable as ex:
            outages.report(ex, manager.backend, f"{type(resource).__qualname__}.on_disconnect")
        except Exception:
            logger.exception("%s.on_disconnect raised", type(resource).__qualname__)


async def _close_quietly(ws: WebSocket, code: int) -> None:
    try:
        await ws.close(code)
    except Exception:  # the peer may already be gone
        logger.debug("close(%s) failed", code, exc_info=True)
