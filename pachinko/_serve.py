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
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol
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
from .hooks import has_own_hooks
from .observe import current_connection
from .resource import WebSocketResource
from .router import join_paths

if TYPE_CHECKING:
    from falcon.asgi import Request, Response, WebSocket

    from .manager import WebSocketConnectionManager
    from .observe import Observer
    from .router import RouteInfo, WebSocketRouter
    from .settings import Settings

__all__ = ["Mount", "OutageLog", "Receiver", "Serving", "receive_loop", "run_disconnect"]

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
_base_on_connect = WebSocketResource.on_connect
_base_on_disconnect = WebSocketResource.on_disconnect


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
    serving: Serving


class Serving:
    """How many accepted connections a runtime is serving; shutdown waits for none.

    PERF: a count, not a set of the serving tasks: a set's table is 32-64 B
    per open connection (bench_connect.py, tracemalloc).
    """

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        """One more connection is served (its handshake registered it)."""
        self.count += 1

    def leave(self) -> None:
        """A served connection's loop is over (it was deregistered)."""
        self.count -= 1
        if not self.count and self._idle is not None:
            self._idle.set()

    async def wait(self, timeout: float) -> int:
        """Wait until no connection is served, ``timeout`` s at most; return how many still are."""
        if self.count:
            idle = self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(idle.wait(), timeout)
            except TimeoutError:
                pass
            finally:
                self._idle = None
        return self.count


class Mount:
    """A router mounted under a path prefix of a Falcon app.

    The mount is the Falcon sink: Falcon calls it for every request whose
    path is the prefix or below it. :meth:`swap` replaces the router
    atomically: connections already open keep the resources they have.
    """

    __slots__ = ("_plans", "_static", "outages", "prefix", "router", "runtime")

    # NOTE: the prefix lives here, per mount: one router mounted on two apps
    #   (or twice on one) builds each app's URLs with that app's prefix.

    def __init__(self, runtime: Host, prefix: str, router: WebSocketRouter) -> None:
        self.runtime = runtime
        self.prefix = prefix
        self.router = router
        self.outages = OutageLog()
        self._plans: dict[int, _Plan] = {}
        # Request paths that matched a route without fields (at most
        # _STATIC_MAX): found by one dict lookup, not the router's walk.
        self._static: dict[str, _Plan] = {}
        router.root._mounted(prefix, self._plans, self._static)

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

    def match(self, path: str) -> tuple[_Plan, dict[str, Any] | None] | None:
        """The plan of the route the request path ``path`` matches, and its params.

        ``path`` is the whole request path, the prefix included. The params
        are ``None`` for a route without fields.

        PERF: a path that matched a route without fields is remembered:
        ~0.6 µs less per handshake (bench_connect.py). Only a match is kept
        (a route added later never takes a path a static route matched:
        a static template wins over one with fields, and the same template
        twice is an error).
        """
        plan = self._static.get(path)
        if plan is not None:
            return plan, None
        prefix = self.prefix
        found = self.router.match((path[len(prefix) :] if prefix != "/" else path) or "/")
        if found is None:
            return None
        info, params = found
        plan = self.plan_of(info)
        if params:
            return plan, params
        if len(self._static) < _STATIC_MAX:
            self._static[path] = plan
        return plan, None

    def plan_of(self, info: RouteInfo) -> _Plan:
        """What the handshake of ``info``'s route needs, worked out once (cached).

        Forgotten when a hook is added to the router (it may change the plan).
        """
        plan = self._plans.get(id(info))
        if plan is None or plan.info is not info:
            plan = self._plans[id(info)] = _Plan(self, info)
        return plan

    def swap(self, router: WebSocketRouter) -> WebSocketRouter:
        """Serve new connections with ``router``; return the previous one."""
        self._plans.clear()
        self._static.clear()
        router.root._mounted(self.prefix, self._plans, self._static)
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
        # NOTE: Falcon ignores what the sink's coroutine returns (the close code here).
        # PERF: positional arguments, as for the Connection (no keyword
        #   matching per handshake).
        return receive_loop(  # type: ignore[return-value]
            None, self.runtime.settings, ws, type(ws).receive_text, self, req
        )

    async def handle(
        self, req: Request, resp: Response | None, ws: WebSocket | None = None, **_: Any
    ) -> None:
        """Serve one request as the sink does (an ``async def`` for other callers)."""
        await self(req, resp, ws)


#: Paths a mount remembers at most (clients choose the paths they ask for).
_STATIC_MAX: Final = 1024


class _Plan:
    """A route's handshake, worked out at its first connection through a mount.

    PERF: the prefixed template, the resource chain and whether a fast
    path applies are found once per route, not per connection
    (benchmarks/bench_connect.py).
    """

    __slots__ = ("build", "info", "levels", "receiver", "route", "single")

    def __init__(self, mount: Mount, info: RouteInfo) -> None:
        self.info = info
        self.levels = info.chain
        self.route = join_paths(mount.prefix, info.template)
        target = info.target
        # One level whose target is a class, built without a factory: the
        # handshake builds it inline (the common case).
        self.single = (
            len(self.levels) == 1
            and info.router.root.resource_factory is None
            and isinstance(target, type)
        )
        # The plain route's one dispatch, shared by its connections (see
        # _open), and what builds its resource (no arguments to unpack).
        self.receiver: Receiver | None = None
        self.build: Callable[[], Any] = (
            functools.partial(target, *info.args, **info.kwargs)
            if info.args or info.kwargs
            else target
        )
        if (
            self.single
            and issubclass(target, WebSocketResource)  # type: ignore[arg-type]
            # calling the class gives an instance of it, nothing else
            and target.__new__ is object.__new__  # type: ignore[comparison-overlap]
            and type(target).__call__ is type.__call__
            and target.on_connect is _base_on_connect  # type: ignore[attr-defined]
            and info.router._hookless(target)  # type: ignore[arg-type]
        ):
            runtime = mount.runtime
            self.receiver = Receiver(
                target,  # type: ignore[arg-type]
                runtime.settings,
                runtime.manager,
                mount.outages,
                hooked=False,
            )


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
    # PERF: read from the dict of raw headers Falcon's ASGI request builds
    #   in its constructor: get_header() raises and catches a KeyError for a
    #   missing header, ~1 µs per handshake without an Origin (non-browser
    #   clients; bench_connect.py).
    raw = req._asgi_headers.get(b"origin")
    origin = None if raw is None else raw.decode("latin1")
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


def _open(mount: Mount, req: Request, ws: WebSocket) -> Connection | Awaitable[Connection | None]:
    """Open the connection: at once on the plain lane, else the awaitable handshake.

    The plain lane: a request path that matched a route without fields
    before, whose one resource class has no hooks and no ``on_connect`` of
    its own; no ``authenticate``, no observer, a backend that records no
    anonymous connection (``records_anonymous``), an Origin that passes.
    The connection is then built and registered here, with no coroutine,
    and returned unaccepted: :func:`receive_loop` accepts it. Anything
    else goes through :func:`_handshake` (wrapped by the observer), whose
    awaitable is returned: it accepts and gives the connection, or
    ``None`` once refused. A refusal or failure on the lane is likewise an
    awaitable closing the socket and giving ``None``.

    PERF: no handshake coroutine, no Receiver (the plan's is shared), the
    checks in one expression: 1.55x the hand-written loop against 1.78x
    through the full handshake, ~15,600 fewer instructions per connection
    (bench_connect.py; valgrind's count).
    """
    runtime = mount.runtime
    manager = runtime.manager
    plan = mount._static.get(req.path)
    if (
        plan is None
        or plan.receiver is None
        or manager.observer is not None
        or runtime.authenticate is not None
        or not runtime.accepting
        or manager.backend.records_anonymous
        or not origin_allowed(req, runtime.allowed_origins)
    ):
        obs = manager.observer
        if obs is None:
            return _handshake(runtime, mount, req, ws)
        return obs.handshake(req.path, _handshake(runtime, mount, req, ws))
    conn = Connection(ws, req.path, None, manager, mount, plan.route)
    current_connection.set(conn)  # log lines of this task name the connection
    try:
        leaf = plan.build()  # an instance of the plan's class (see _Plan)
        leaf._pachinko_connection = conn
        conn.resource = leaf
        # NOTE: None here: an anonymous connection, a backend that records none.
        manager.register(conn)
    except Refuse as refusal:
        return _refusing(runtime, ws, refusal)
    except Exception as ex:
        return _handshake_failed(runtime, ws, ex, "WebSocket handshake for %s failed", req.path)
    conn.receiver = plan.receiver
    runtime.serving.enter()
    return conn


async def _refusing(runtime: Host, ws: WebSocket, refusal: Refuse) -> None:
    """Refuse the handshake with ``refusal`` (counted by its cause)."""
    _refused(runtime, "limit" if isinstance(refusal, ConnectionLimitExceeded) else "refused")
    await _refuse(ws, refusal)


def _disconnected(conn: Connection, ex: WebSocketDisconnected) -> int:
    """The close code of a connection whose peer left (or was evicted)."""
    outbox = conn.outbox
    if outbox is not None and outbox.closed_with is not None:
        return outbox.closed_with  # type: ignore[no-any-return]  # closed as a slow consumer: say so
    return ex.code or CLOSE_NO_STATUS


async def _closed(mount: Mount, conn: Connection, ws: WebSocket, close_code: int) -> None:
    """Fail pending requests, run the disconnect hooks, deregister."""
    runtime = mount.runtime
    manager = runtime.manager
    rx: Receiver = conn.receiver
    leaf = conn.resource
    rx.abort_requests(conn, close_code)
    try:
        if rx.hooked:
            await run_disconnect(rx.router, rx.levels, leaf, ws, close_code, mount.outages, manager)
        else:
            try:
                await leaf.on_disconnect(ws, close_code)
            except BackendUnavailable as ex:
                mount.outages.report(
                    ex, manager.backend, f"{type(leaf).__qualname__}.on_disconnect"
                )
            except Exception:
                logger.exception("%s.on_disconnect raised", type(leaf).__qualname__)
    finally:
        # NOTE: even when cancelled: shutdown counts the connections served.
        pending = _deregister(runtime, conn, close_code)
        if pending is not None:
            await pending


def _close(
    mount: Mount, conn: Connection, ws: WebSocket, close_code: int
) -> Awaitable[None] | None:
    """:func:`_closed`, done at once when there is nothing to await (returns ``None``).

    PERF: one resource without hooks or an ``on_disconnect`` of its own,
    and a backend with nothing to forget: no coroutine at all
    (bench_connect.py).
    """
    rx: Receiver = conn.receiver
    if not rx.quiet_close:
        return _closed(mount, conn, ws, close_code)
    if conn.pending is not None:
        rx.abort_requests(conn, close_code)
    return _deregister(mount.runtime, conn, close_code)


def _deregister(runtime: Host, conn: Connection, close_code: int) -> Awaitable[None] | None:
    """Deregister the connection, then forget it; return the backend's step (``None``: done)."""
    pending = runtime.manager.deregister(conn)
    if pending is None:
        _forget(runtime, conn, close_code)
        return None
    return _forget_after(pending, runtime, conn, close_code)


async def _forget_after(
    pending: Awaitable[None], runtime: Host, conn: Connection, close_code: int
) -> None:
    try:
        await pending
    finally:
        _forget(runtime, conn, close_code)


def _forget(runtime: Host, conn: Connection, close_code: int) -> None:
    """The connection's loop is over: no longer serving, observed as closed."""
    runtime.serving.leave()
    observed = conn.receiver.observed
    if observed is not _UNOBSERVED:
        obs = runtime.manager.observer
        if obs is not None:  # unless it was removed since
            obs.closed(observed, close_code)
    conn.ended()


class _Refusal(NamedTuple):
    """A handshake refused before any user code: the observer's cause, the close."""

    cause: str
    code: int
    reason: str | None = None


_SHUTTING_DOWN: Final = _Refusal("shutting_down", CLOSE_GOING_AWAY, "Server shutting down")
_NOT_FOUND: Final = _Refusal("not_found", CLOSE_NOT_FOUND)
_BAD_ORIGIN: Final = _Refusal("origin", CLOSE_FORBIDDEN, "Origin not allowed")


def _route(
    runtime: Host, mount: Mount, req: Request
) -> tuple[_Plan, dict[str, Any] | None] | _Refusal:
    """The matched route's plan and params, or why the handshake is refused first."""
    if not runtime.accepting:
        return _SHUTTING_DOWN
    found = mount.match(req.path)
    if found is None:
        return _NOT_FOUND
    if not origin_allowed(req, runtime.allowed_origins):
        logger.warning(
            "refused WebSocket %s: Origin %r is not allowed", req.path, req.get_header("Origin")
        )
        return _BAD_ORIGIN
    return found


def _checked(level: RouteInfo, built: object) -> WebSocketResource:
    """What ``level``'s target built, if it is a resource.

    Raises:
        TypeError: It is not a :class:`~pachinko.WebSocketResource`.
    """
    if not isinstance(built, WebSocketResource):
        raise TypeError(
            f"route {level.template!r}: {level.target!r} returned "
            f"{type(built).__name__}, expected a WebSocketResource"
        )
    return built


def _build_leaf(info: RouteInfo, conn: Connection) -> tuple[WebSocketResource, bool, bool]:
    """Build the one resource of ``info`` and bind it.

    Returns it, whether hooks apply, and whether its connect step must run
    (hooks, which may close the handshake, or an ``on_connect`` of its own).
    """
    leaf = _checked(info, info.target(*info.args, **info.kwargs))
    leaf._pachinko_bind(conn)
    conn.resource = leaf
    hooked = not info.router._hookless(type(leaf))
    return leaf, hooked, hooked or type(leaf).on_connect is not _base_on_connect


async def _handshake(runtime: Host, mount: Mount, req: Request, ws: WebSocket) -> Connection | None:
    """Match, check the origin, build the chain, run on_connect, register, accept.

    Then mark the connection open and run the after_connect hooks. Returns
    the connection (its ``receiver`` set), or ``None`` when the handshake
    was refused (and the socket closed) or the connection ended before its
    loop (and is then deregistered).
    """
    manager = runtime.manager
    obs = manager.observer
    found = _route(runtime, mount, req)
    if isinstance(found, _Refusal):
        if obs is not None:
            obs.refused(found.cause)
        await ws.close(found.code, found.reason)
        return None
    plan, params = found
    info = plan.info
    conn = Connection(ws, req.path, params, manager, mount=mount, route=plan.route)
    current_connection.set(conn)  # log lines of this task name the connection
    authenticate = runtime.authenticate
    if authenticate is not None and not await _identify(runtime, authenticate, conn, req, ws):
        return None
    router = info.router
    chain: tuple[WebSocketResource, ...] | None = None
    try:
        if plan.single:
            # PERF: one resource built from its class: no chain, no coroutine
            #   of _build_chain's, and no hook lookup at all for a class
            #   without hooks (bench_connect.py)
            leaf, hooked, connect = _build_leaf(info, conn)
            # PERF: without hooks (which may close the handshake), the default
            #   on_connect (accept) is not called: a coroutine less.
            if connect and not await _connect_level(
                runtime, router, leaf, req, ws, conn.params, hooked
            ):
                return None
        else:
            chain = await _build_chain(runtime, plan, conn, req, ws, conn.params)
            if chain is None:
                return None
            leaf = chain[-1]
            hooked = True
        if hooked:
            conn.authorizers = hook_list(router, chain or (leaf,), leaf, "authorize_join")
        pending = manager.register(conn)
        if pending is not None:
            await pending
    except Refuse as refusal:
        await _refusing(runtime, ws, refusal)
        return None
    except Exception as ex:
        await _handshake_failed(runtime, ws, ex, "WebSocket handshake for %s failed", req.path)
        return None
    rx = plan.receiver
    if rx is None or obs is not None:
        rx = Receiver(
            type(leaf),
            runtime.settings,
            manager,
            mount.outages,
            router,
            chain or (leaf,),
            conn=conn,
            hooked=hooked,
        )
    conn.receiver = rx
    runtime.serving.enter()
    try:
        if ws.unaccepted:
            await ws.accept(subprotocol=_token_carrier(req, conn))
        manager.opened(conn)
        if obs is not None:
            obs.opened(rx.observed)
        if hooked:
            await _after_connect(rx, leaf, ws)
    except WebSocketDisconnected as ex:
        await _closed(mount, conn, ws, _disconnected(conn, ex))
        return None
    except Exception:
        logger.exception("WebSocket %s failed after the handshake", req.path)
        await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
        await _closed(mount, conn, ws, CLOSE_INTERNAL_ERROR)
        return None
    return conn


async def _connect_level(
    runtime: Host,
    router: WebSocketRouter,
    resource: WebSocketResource,
    req: Request,
    ws: WebSocket,
    params: dict[str, Any],
    hooked: bool,
    first: bool = True,
) -> bool:
    """One level's before_connect hooks and ``on_connect``; return whether it accepted.

    ``False``: refused (counted, and the socket closed unless the resource
    closed it itself).
    """
    if hooked:
        await _before_connect(router, resource, req, ws, params, first)
    accepted = await resource.on_connect(req, ws, **params)
    if not ws.unaccepted and ws.closed:
        _refused(runtime, "refused")
        return False  # the resource closed the handshake itself
    if not accepted:
        _refused(runtime, "refused")
        await ws.close(CLOSE_FORBIDDEN)
        return False
    return True


async def _after_connect(rx: Receiver, leaf: WebSocketResource, ws: WebSocket) -> None:
    """The after_connect hooks (child first); a refused join gets its error reply."""
    for hook in hook_list(rx.router, rx.levels, leaf, "after_connect", reverse=True):
        try:
            await hook(ws)
        except JoinRefused as refused:
            await rx.refused(leaf, ws, refused, None)


async def _before_connect(
    router: WebSocketRouter,
    resource: WebSocketResource,
    req: Request,
    ws: WebSocket,
    params: dict[str, Any],
    first: bool = True,
) -> None:
    """The router's before_connect hooks (for the first level), then the resource's own."""
    if first:
        for hook in router._hooks_of("before_connect", type(resource)):
            await hook(resource, req, ws, params)
    own = getattr(resource, "before_connect", None)
    if own is not None:
        await own(req, ws, params)


async def _build_chain(
    runtime: Host,
    plan: _Plan,
    conn: Connection,
    req: Request,
    ws: WebSocket,
    params: dict[str, Any],
) -> tuple[WebSocketResource, ...] | None:
    """Build the resource chain and run on_connect; return None if refused.

    Raises what a level raises (the handshake refuses or fails with it).
    """
    info = plan.info
    factory = info.router.root.resource_factory
    chain: list[WebSocketResource] = []
    state = conn.state
    context: dict[str, Any] = {}
    levels = plan.levels
    for level in levels:
        kwargs = {**level.kwargs, **context} if context else level.kwargs
        if "state" in context:
            state = kwargs.pop("state")
        built = (
            factory(level.target, *level.args, **kwargs)
            if factory
            else level.target(*level.args, **kwargs)
        )
        resource = _checked(level, await _maybe_await(built))
        resource._pachinko_bind(conn, state)
        chain.append(resource)
        conn.resource = resource
        if not await _connect_level(
            runtime, info.router, resource, req, ws, params, True, first=len(chain) == 1
        ):
            return None
        if len(chain) < len(levels):
            context = dict(resource.get_child_context())
    conn.state = state
    return tuple(chain)


async def _identify(
    runtime: Host, authenticate: Authenticate, conn: Connection, req: Request, ws: WebSocket
) -> bool:
    """Run the app's ``authenticate`` for ``conn``; ``False`` once refused (and closed)."""
    user = await _authenticate(runtime, authenticate, req, ws)
    if user is None:
        return False
    conn._user = user
    return True


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


def _token_carrier(req: Request, conn: Connection) -> str | None:
    """The subprotocol to select when the client sent its token as one (``None``: none).

    A browser fails a handshake whose response selects none of the offered
    subprotocols: select the first offered one that is not the token
    (``pachinko`` in ``["pachinko", "pachinko.token.<token>"]``). Only a
    connection that has a user can have come with a token.
    """
    if conn._user is None:
        return None
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

    The log carries ``ex``'s traceback.
    """
    if isinstance(ex, WebSocketDisconnected):
        _refused(runtime, "disconnected")
        return
    _refused(runtime, "error")
    logger.error(message, path, exc_info=ex)
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


_NO_HOOKS: Final[tuple[Any, ...]] = (None, (), (), ())
#: ``Receiver.observed`` of a connection opened without an observer.
_UNOBSERVED: Final[Any] = object()


def _has_hooks(router: WebSocketRouter | None, cls: type) -> bool:
    """Whether a hook applies to ``cls`` (a router's global ones, its own methods)."""
    if router is not None:
        return not router._hookless(cls)
    return has_own_hooks(cls)


class Receiver:
    """A connection's dispatch, built when it opens (or shared by a route's plain connections).

    :func:`receive_loop` runs the one dispatch step with it (decode, hooks,
    handler, error reply or error handling): the Mount for every real
    connection, :class:`~pachinko.testing.ResourceHarness` one message at a
    time, so that a unit test runs exactly what production runs.

    What belongs to one connection (its resources, the server's requests
    awaiting an answer) stays on the :class:`~pachinko.Connection`: the
    methods take it. PERF: a route's connections without hooks or an
    observer share one receiver (made with the route's plan): nothing to
    build per handshake, ~100 B less per idle connection (bench_connect.py).
    """

    __slots__ = (
        "_hooks",
        "_unhandled",
        "by_type",
        "chain",
        "manager",
        "observed",
        "outages",
        "quiet_close",
    )

    def __init__(
        self,
        cls: type[WebSocketResource],
        settings: Settings,
        manager: WebSocketConnectionManager,
        outages: OutageLog,
        router: WebSocketRouter | None = None,
        levels: Sequence[WebSocketResource] | None = None,
        *,
        conn: Connection | None = None,
        hooked: bool | None = None,
    ) -> None:
        """``cls``: the leaf resource's class.

        ``levels``: the connection's resources, outermost first (the leaf
        last; needed when hooks apply). ``conn``: the one connection this
        dispatch is for, observed by the app's observer (``None``: shared,
        never observed). ``hooked``: whether any hook applies (``None``:
        find out).
        """
        self.manager = manager
        self.outages = outages
        if hooked is None:
            hooked = (levels is not None and len(levels) > 1) or _has_hooks(router, cls)
        # PERF: without hooks (the common case) one shared tuple; with them,
        #   (router, before_receive, after_receive, on_error), bound once per
        #   connection. Fewer slots: 32 B less per connection (bench_connect.py).
        self._hooks: tuple[Any, ...] = _NO_HOOKS
        self.chain: tuple[WebSocketResource, ...] | None = None
        if hooked:
            if not levels:
                raise TypeError("Receiver(): the connection's resources are needed for hooks")
            leaf = levels[-1]
            self.chain = tuple(levels)
            self._hooks = (
                router,
                hook_list(router, levels, leaf, "before_receive"),
                hook_list(router, levels, leaf, "after_receive", reverse=True),
                hook_list(router, levels, leaf, "on_error", reverse=True),
            )
        # Nothing to run at the close: no hooks, the default on_disconnect.
        self.quiet_close = not hooked and cls.on_disconnect is _base_on_disconnect
        # PERF: None stands for the leaf's own on_unhandled, looked up when
        #   called (rarely): a bound method kept per connection is 64 B
        #   (bench_connect.py, tracemalloc).
        self._unhandled: Callable[[Any, MessageError], Awaitable[None]] | None = None
        if not settings.error_replies and cls.on_unhandled is _base_unhandled:
            self._unhandled = _ignore_unhandled
        obs: Observer | None = None if conn is None else manager.observer
        # The observer's state for this connection (labels, a span to link
        # to), or _UNOBSERVED: opened without an observer, never reported.
        self.observed = _UNOBSERVED if obs is None or conn is None else obs.connection(conn, cls)
        by_type = cls.__pachinko_table__.by_type
        # PERF: observed handlers (counted, traced) are wrapped once per
        #   connection: the loop's fast path is the same with or without.
        self.by_type = by_type if obs is None else obs.handlers(self.observed, by_type)

    @property
    def levels(self) -> Sequence[WebSocketResource]:
        """The resources of a hooked connection, outermost first (the leaf last)."""
        return self.chain or ()

    @property
    def hooked(self) -> bool:
        """Whether any hook applies to this connection."""
        return self._hooks is not _NO_HOOKS

    @property
    def router(self) -> WebSocketRouter | None:
        """The router whose global hooks apply (``None`` without hooks or router)."""
        return self._hooks[0]  # type: ignore[no-any-return]

    @property
    def before(self) -> tuple[Callable[..., Awaitable[Any]], ...]:
        """The before_receive hooks, bound."""
        return self._hooks[1]  # type: ignore[no-any-return]

    @property
    def after(self) -> tuple[Callable[..., Awaitable[Any]], ...]:
        """The after_receive hooks, bound (reversed)."""
        return self._hooks[2]  # type: ignore[no-any-return]

    @property
    def error_hooks(self) -> tuple[Callable[..., Awaitable[Any]], ...]:
        """The on_error hooks, bound (reversed)."""
        return self._hooks[3]  # type: ignore[no-any-return]

    @property
    def observer(self) -> Observer | None:
        """The app's observer (metrics, tracing), if the connection is observed."""
        return None if self.observed is _UNOBSERVED else self.manager.observer

    def unhandled(
        self, leaf: WebSocketResource, ws: WebSocket, error: MessageError
    ) -> Awaitable[None]:
        """Answer a message that got no handler: ``leaf.on_unhandled`` (or a drop)."""
        drop = self._unhandled
        return leaf.on_unhandled(ws, error) if drop is None else drop(ws, error)

    async def failed(
        self, leaf: WebSocketResource, ws: WebSocket, text: str, exc: Exception
    ) -> int | None:
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
            await self.refused(leaf, ws, exc, text)
            return None
        where = f"handler of {type(leaf).__qualname__}"
        if isinstance(exc, BackendUnavailable):
            self.outages.report(exc, self.manager.backend, where)
            if self.observer is not None:
                self.observer.error_reply(self.observed, "unavailable")
            try:
                await self.unhandled(
                    leaf, ws, MessageError("unavailable", UNAVAILABLE_DETAIL, None, text)
                )
            except WebSocketDisconnected:
                raise
            except Exception as ex:
                exc = ex
                where = f"{type(leaf).__qualname__}.on_unhandled"
            else:
                return None
        logger.error("%s raised; closing with 1011", where, exc_info=exc)
        await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
        return CLOSE_INTERNAL_ERROR

    async def refused(
        self, leaf: WebSocketResource, ws: WebSocket, exc: JoinRefused, text: str | None
    ) -> None:
        """Answer a refused join with the error reply (reason ``forbidden``)."""
        await self.unhandled(leaf, ws, MessageError("forbidden", str(exc), None, text or ""))

    # -- requests from the client (a handler that declares a reply) -----------

    async def run_request(
        self,
        leaf: WebSocketResource,
        ws: WebSocket,
        handler: Handler,
        payload: Any,
        rid: Any,
        text: str,
    ) -> int | None:
        """Run a request's handler; send its return value as the reply, with the id.

        A handler exception for a message with an id becomes an error reply
        with that id (``handler_error``, or ``unavailable`` for a backend
        outage) after the error hooks, and the connection stays open; without
        an id it is handled as any handler's (:meth:`failed`). Returns a close
        code, or ``None``.
        """
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
            return await self.request_failed(leaf, ws, text, exc, rid)
        await ws.send_text(frame)
        return None

    async def request_failed(
        self, leaf: WebSocketResource, ws: WebSocket, text: str, exc: Exception, rid: str | int
    ) -> int | None:
        if await _run_error_hooks(self.error_hooks, ws, exc):
            return None
        where = f"handler of {type(leaf).__qualname__}"
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
            await self.unhandled(leaf, ws, error)
        except WebSocketDisconnected:
            raise
        except Exception as ex:
            logger.error(
                "%s.on_unhandled raised; closing with 1011",
                type(leaf).__qualname__,
                exc_info=ex,
            )
            await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
            return CLOSE_INTERNAL_ERROR
        return None

    # -- requests from the server (resource.request()) -------------------------

    async def request(self, conn: Connection, message: Any, timeout: float) -> Any:
        """Send ``message`` with a new correlation id; return the client's answer.

        Raises:
            RequestTimeout: No answer within ``timeout`` seconds.
            RequestAborted: The connection closed first (or had closed).
            PachinkoError: Awaited by this connection's own receive loop (a
                handler of this connection), which could never read the answer.
        """
        leaf = conn.resource
        name = type(leaf).__qualname__
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"{name}.request(): timeout must be a number > 0, got {timeout!r}")
        pending = conn.pending
        if pending is _ABORTED:
            raise RequestAborted(f"{name}.request(): the connection is closed")
        if _awaited_by_loop(conn):
            raise PachinkoError(
                f"{name}.request() awaited by a handler of the same connection: its receive "
                "loop waits for the handler, so it could never read the answer; run it in a "
                "task of its own (asyncio.create_task(self.request(...)))"
            )
        if pending is None:
            pending = conn.pending = {}
        rid = f"{SERVER_ID_PREFIX}{next(_request_ids)}"
        frame = encode_reply(message, rid, leaf.wire, leaf.tag_field, leaf.id_field)
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        pending[rid] = answer
        try:
            try:
                await conn.ws.send_text(frame)
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

    def take_answer(self, conn: Connection, text: str) -> bool:
        """Whether ``text`` answers a request of ``conn``'s (which then gets it)."""
        pending = conn.pending
        if not pending:
            return False
        try:
            rid = _answer_decoder(conn.resource.id_field).decode(text).pachinko_id
        except (msgspec.DecodeError, RecursionError):
            return False
        answer = pending.get(rid) if rid is not UNSET else None
        if answer is None or answer.done():
            return False
        answer.set_result(text)
        return True

    def abort_requests(self, conn: Connection, close_code: int) -> None:
        """Fail ``conn``'s requests still awaiting an answer: it ended."""
        pending, conn.pending = conn.pending, _ABORTED
        if not pending:
            return
        for rid, answer in list(pending.items()):
            if not answer.done():
                answer.set_exception(
                    RequestAborted(
                        f"{type(conn.resource).__qualname__}.request() {rid!r}: the connection "
                        f"closed (code {close_code}) before the client answered"
                    )
                )


def _awaited_by_loop(conn: Connection) -> bool:
    """Whether the running code is awaited by ``conn``'s receive loop.

    A handler awaiting its own connection's request would wait forever:
    the loop reads the answer only once the handler returns. The frames of
    an await chain are linked while it runs, so the loop's frame is found
    by walking back from the caller; a task of its own starts a new chain.

    PERF: checked here, when a request is made, not paid for by every
    handshake (finding the loop's task there was ~0.5 µs, bench_connect.py).
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _LOOP_CODE and frame.f_locals.get("conn") is conn:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


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
    conn: Connection | None,
    settings: Settings,
    ws: WebSocket,
    receive_text: Callable[[WebSocket], Awaitable[str | None]],
    mount: Mount | None = None,
    req: Request | None = None,
) -> int | None:
    """Receive, decode, dispatch until the connection closes.

    With ``mount`` (the sink), this is the whole connection: the handshake,
    accept and after_connect first (:func:`_handshake`, which builds ``rx``),
    the disconnect hooks and deregistration in a ``finally`` after. Without
    it (the :class:`~pachinko.testing.ResourceHarness`), the dispatch of the
    messages ``receive_text(ws)`` gives, with ``rx`` built by the caller, and
    exceptions propagate.

    PERF: one coroutine frame per open connection, not a serving frame
    awaiting this one: ~300 B less per idle connection
    (benchmarks/bench_connect.py, tracemalloc). The steps before and after
    the loop run in coroutines of their own, gone once they return. The
    frame's size is 8 B per local variable, so constants are module globals
    and values needed only off the plain path are read where needed.

    Returns:
        The close code, or ``None`` when ``receive_text(ws)`` returned ``None``
        (the harness has no more messages) or the handshake was refused.
    """
    if mount is not None:
        conn = _open(mount, req, ws)  # type: ignore[arg-type, assignment]
        if type(conn) is not Connection:
            conn = await conn  # type: ignore[misc]
            if conn is None:
                return None
    elif conn is None:
        raise TypeError("receive_loop(): a Connection is required without a mount")
    close_code: int | None = CLOSE_NO_STATUS
    try:
        if ws.unaccepted:
            # Opened on the mount's plain lane (_open): accepted here.
            await ws.accept()
            mount.runtime.manager.opened(conn)  # type: ignore[union-attr]
        rx: Receiver = conn.receiver
        leaf = conn.resource
        before = rx._hooks[1]
        after = rx._hooks[2]
        table = type(leaf).__pachinko_table__
        decoder = table.decoder
        by_type = rx.by_type
        # NOTE: a str of n code points is at most 4n UTF-8 bytes, so the exact
        #   byte count is only computed for messages longer than a quarter of the limit.
        quarter = settings.max_message_size // 4
        rate = settings.rate_limit
        tokens = float(settings.rate_burst)
        last = 0.0 if rate is None else monotonic()

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
            # NOTE: read per message: the connection's outbox is made for its
            #   first frame (NoOutbox before), and None once deregistered.
            if conn.outbox is not None and conn.outbox.evicted:
                # Evicted (a slow consumer, a failed send): dispatch nothing more
                # until the disconnect, which the outbox makes happen in time.
                continue
            if len(text) > quarter and (
                len(text) > settings.max_message_size
                or len(text.encode()) > settings.max_message_size
            ):
                await ws.close(
                    CLOSE_TOO_BIG, f"Message too big (limit {settings.max_message_size} bytes)"
                )
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
                    tokens = min(float(settings.rate_burst), tokens + (now - last) * rate)
                    last = now
                    if tokens < 0.0:
                        await ws.close(CLOSE_POLICY_VIOLATION, "Message rate limit exceeded")
                        close_code = CLOSE_POLICY_VIOLATION
                        break
            if conn.pending and rx.take_answer(conn, text):
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
                    except _UNDECODABLE:
                        pass  # the slow path below answers it
                    else:
                        # NOTE: an else block: what the handler raises is not
                        #   taken for a decode error.
                        if kind == AS_DECODED:
                            await handler(leaf, ws, msg)
                        elif kind == ENVELOPE:
                            await handler(leaf, ws, msg.payload)
                        elif kind == RAW_DICT:
                            await handler(leaf, ws, _decode_any(text))
                        else:
                            # a request. PERF: inline, no coroutine of its own
                            #   (bench_dispatch.py, replies row)
                            rid = msg.pachinko_id
                            if kind == _DECODED_REQUEST:
                                payload = msg
                                if rid is not UNSET:
                                    # the id is the message's, not the payload's: re-encoding
                                    # the handler's Struct never carries it on
                                    msg.pachinko_id = UNSET
                            elif kind == _ENVELOPE_REQUEST:
                                payload = msg.payload
                            elif kind == _RAW_REQUEST:
                                payload = _decode_any(text)
                            else:  # a frozen Struct
                                payload = msg
                                if rid is not UNSET:
                                    _force_setattr(msg, ID_ATTR, UNSET)
                            try:
                                # NOTE: result becomes the reply frame (one local less).
                                result = await handler(leaf, ws, payload)
                                if result is not None:
                                    reply: Any = table.reply
                                    if type(result) in reply.quick and rid is not UNSET:
                                        result = b"".join(
                                            (reply.head, encode(rid), b",", encode(result)[1:])
                                        ).decode()
                                    else:
                                        result = reply(result, rid)
                            except WebSocketDisconnected:
                                raise
                            except Exception as exc:
                                if rid is UNSET:
                                    raise
                                # NOTE: close_code is reused (one local less); None goes on.
                                close_code = await rx.request_failed(leaf, ws, text, exc, rid)
                                if close_code is not None:
                                    break
                                result = None
                            if result is not None:
                                await ws.send_text(result)
                        if after:
                            for hook in after:
                                await hook(ws, text)
                        continue
                msg = type(leaf).__pachinko_table__.dispatch_slow(text)
                if isinstance(msg, MessageError):
                    if rx.observer is not None:
                        rx.observer.error_reply(rx.observed, msg.reason)
                    await rx.unhandled(leaf, ws, msg)
                    continue
                handler, payload, rid = msg
                if rid is not None:
                    close_code = await rx.run_request(leaf, ws, handler, payload, rid, text)
                    if close_code is not None:
                        break
                elif rx.observer is None:
                    await handler(leaf, ws, payload)
                else:
                    await rx.observer.handle(rx.observed, handler, handler, leaf, ws, payload)
                for hook in after:
                    await hook(ws, text)
            except WebSocketDisconnected:
                raise
            except Exception as exc:
                close_code = await rx.failed(leaf, ws, text, exc)
                if close_code is not None:
                    break
    except WebSocketDisconnected as exc:
        if mount is None:
            raise
        close_code = _disconnected(conn, exc)
    except Exception:
        if mount is None:
            raise
        logger.exception("WebSocket %s failed after the handshake", req.path)  # type: ignore[union-attr]
        close_code = CLOSE_INTERNAL_ERROR
        await _close_quietly(ws, CLOSE_INTERNAL_ERROR)
    finally:
        if mount is not None:
            # NOTE: payload is reused (one local less): what the close leaves
            #   to await (None: all done, the common case).
            payload = _close(mount, conn, ws, close_code or CLOSE_NO_STATUS)
            if payload is not None:
                await payload
    return close_code


_LOOP_CODE: Final = receive_loop.__code__

# Constants of the receive loop (module globals: a local is 8 B of every
# connection's frame).
_DECODED_REQUEST: Final = AS_DECODED | REQUEST
_ENVELOPE_REQUEST: Final = ENVELOPE | REQUEST
_RAW_REQUEST: Final = RAW_DICT | REQUEST
_decode_any: Final = msgspec.json.decode
_force_setattr: Final = msgspec.structs.force_setattr


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
