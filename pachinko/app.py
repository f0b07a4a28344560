"""Wiring into Falcon: install(), mount() and the per-app Runtime."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._serve import Mount, Serving
from .errors import ConfigError, PachinkoError, RouteError
from .manager import WebSocketConnectionManager
from .observe import Observer, Observers
from .router import WebSocketRouter
from .settings import Settings
from .workers import WorkerController, shutdown_server

if TYPE_CHECKING:
    import falcon.asgi

    from .auth import Authenticate
    from .backends import ConnectionBackend
    from .rooms import RoomPolicies, RoomPolicy

__all__ = ["Runtime", "install", "mount", "runtime_of"]

logger = logging.getLogger("pachinko")


class Runtime:
    """Everything pachinko keeps for one Falcon app.

    One per app, carried by the lifespan middleware that :func:`install`
    adds (``falcon.asgi.App`` has ``__slots__``: nothing is stored on it).
    Two apps in one process have two runtimes and share nothing.

    Attributes:
        settings: The app's :class:`~pachinko.Settings`.
        manager: The app's connection manager.
        workers: The controller of the app's background workers.
        declared_workers: Workers started at startup.
        service_factories: Name → factory, called once at startup.
        services: Name → service instance (filled at startup).
        mounts: Routers mounted on the app.
        accepting: False once shutdown began: new handshakes are refused.
        authenticate: The app's ``authenticate(req)``, run at every handshake
            (``None``: connections have no user unless the app sets one).
    """

    def __init__(
        self,
        settings: Settings,
        manager: WebSocketConnectionManager,
        workers: Iterable[Callable[..., Any]] = (),
        services: Mapping[str, Callable[[], Any]] | None = None,
        on_worker_crash: Callable[[str, BaseException], Any] | None = None,
        authenticate: Authenticate | None = None,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.authenticate = authenticate
        self.workers = WorkerController(
            stop_timeout=settings.shutdown_timeout, on_crash=on_worker_crash or shutdown_server
        )
        self.declared_workers: list[Callable[..., Any]] = list(workers)
        self.service_factories: dict[str, Callable[[], Any]] = dict(services or {})
        self.services: dict[str, Any] = {}
        self.mounts: list[Mount] = []
        self.accepting = True
        # Accepted connections being served: shutdown waits for their on_disconnect.
        self.serving = Serving()
        self._closed_connections = False
        origins = settings.allowed_origins
        self.allowed_origins = (
            None if origins is None else frozenset(o.lower().rstrip("/") for o in origins)
        )

    def url_for(self, name: str, /, **params: Any) -> str:
        """Build the URL path of the route called ``name`` on this app, prefix included.

        Looks the name up in every router mounted on the app; the prefix is
        that mount's, whatever other apps mounted the same router at.

        Raises:
            RouteError: No mounted route has that name, several mounts do
                (ask the mount), or a field value is missing.
        """
        found = [m for m in self.mounts if name in m.router.root._names]
        if not found:
            known = sorted({n for m in self.mounts for n in m.router.root._names})
            raise RouteError(
                f"url_for(): no route named {name!r} on this app "
                f"(known: {', '.join(known) or 'none'})"
            )
        if len(found) > 1:
            raise RouteError(
                f"url_for({name!r}): routers mounted at "
                f"{' and '.join(repr(m.prefix) for m in found)} both have a route of that "
                "name; ask the mount: runtime_of(app).mounts[i].url_for(...)"
            )
        return found[0].url_for(name, **params)

    async def startup(self) -> None:
        """Start the backend, create services, start workers (ASGI lifespan startup)."""
        _check_service_names(self.service_factories)
        await self.manager.start()
        if self.manager.observer is not None:
            self.manager.observer.started(self.manager)
        try:
            for name, factory in self.service_factories.items():
                service = factory()
                self.services[name] = await service if inspect.isawaitable(service) else service
            await self.workers.start(
                *self.declared_workers,
                manager=self.manager,
                settings=self.settings,
                **self.services,
            )
        except BaseException:
            # NOTE: a startup that fails half-way leaves nothing running.
            await self._close_services()
            await self.manager.close()
            raise
        self.accepting = True

    async def _close_services(self) -> None:
        """Close the services that can be closed, newest first; forget them all.

        A service with an ``aclose()`` or ``close()`` method (a connection
        pool, a client session) is closed; an error is logged, not raised.
        """
        for name, service in reversed(list(self.services.items())):
            closer = getattr(service, "aclose", None) or getattr(service, "close", None)
            if not callable(closer):
                continue
            try:
                result = closer()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("closing service %r failed", name)
        self.services.clear()

    async def close_connections(
        self, code: int = 1001, reason: str = "Server shutting down"
    ) -> None:
        """Stop accepting, close every open socket, wait for their ``on_disconnect``.

        Waits at most ``settings.shutdown_timeout`` seconds. Runs once; the
        first step of :meth:`shutdown`, and what :class:`pachinko.server.Server`
        calls before uvicorn closes the sockets itself (with 1012).
        """
        if self._closed_connections:
            return
        self._closed_connections = True
        self.accepting = False
        await self.manager.close_all(code, reason)
        still = await self.serving.wait(self.settings.shutdown_timeout)
        if still:
            logger.error(
                "%d connection(s) still open after %.1f s of shutdown",
                still,
                self.settings.shutdown_timeout,
            )

    async def shutdown(self) -> None:
        """Stop accepting, close sockets with 1001, stop workers, close services and backend.

        This order is the app's graceful shutdown (ASGI lifespan shutdown).
        """
        try:
            await self.close_connections()
        finally:
            try:
                await self.workers.stop()
            finally:
                try:
                    await self._close_services()
                finally:
                    await self.manager.close()
                    if self.manager.observer is not None:
                        self.manager.observer.stopped(self.manager)
        self._closed_connections = False


def _check_service_names(services: Mapping[str, Any]) -> None:
    reserved = sorted(_RESERVED_SERVICES & services.keys())
    if reserved:
        raise ConfigError(
            f"services: {', '.join(map(repr, reserved))} is reserved for the app's own "
            "object (injected into workers by that name); rename the service"
        )


_RESERVED_SERVICES = frozenset({"manager", "settings"})


class _Lifespan:
    """Falcon middleware running the Runtime at ASGI lifespan startup/shutdown.

    It defines no request hooks, so it costs nothing per request.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self.runtime.startup()

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self.runtime.shutdown()


def runtime_of(app: falcon.asgi.App[Any, Any]) -> Runtime:
    """Return the :class:`Runtime` that :func:`install` attached to ``app``.

    Raises:
        PachinkoError: pachinko is not installed on ``app``.
    """
    runtime = _find_runtime(app)
    if runtime is None:
        raise PachinkoError(
            "pachinko is not installed on this app: call pachinko.install(app) first"
        )
    return runtime


def _find_runtime(app: falcon.asgi.App[Any, Any]) -> Runtime | None:
    # NOTE: App has __slots__ and no __weakref__: the runtime lives in our
    #   middleware object, found again in the app's middleware list.
    for component in getattr(app, "_unprepared_middleware", ()):
        if isinstance(component, _Lifespan):
            return component.runtime
    return None


def install(
    app: falcon.asgi.App[Any, Any],
    *,
    settings: Settings | None = None,
    backend: ConnectionBackend | None = None,
    workers: Iterable[Callable[..., Any]] = (),
    services: Mapping[str, Callable[[], Any]] | None = None,
    on_worker_crash: Callable[[str, BaseException], Any] | None = None,
    authenticate: Authenticate | None = None,
    rooms: Mapping[str, RoomPolicy] | RoomPolicies | None = None,
    metrics: Observer | None = None,
    tracing: Observer | None = None,
) -> WebSocketConnectionManager:
    """Install pachinko on a Falcon ASGI app; return its connection manager.

    Adds lifespan middleware (startup starts the backend, services and
    workers; shutdown closes sockets with 1001, stops workers, closes the
    backend) and applies ``settings.receive_queue`` to ``app.ws_options``.
    Calling it again returns the same manager; passing other options then
    is an error.

    Args:
        app: A plain ``falcon.asgi.App``.
        settings: Limits and options (defaults: :class:`Settings`).
        backend: Connection backend; default from ``settings.backend``.
        workers: Background workers started at startup.
        services: Name → factory; instances are created once at startup and
            injected into workers by parameter name.
        on_worker_crash: Called as ``f(name, exc)`` when a worker crashes
            after startup. Default: log at CRITICAL and send SIGTERM to this
            process, so the server shuts down (see docs/workers.md).
        authenticate: ``authenticate(req)`` (sync or async), run at every
            handshake before the resources are built: returns the
            :class:`~pachinko.User` of the connection, or refuses (returns
            ``None`` or raises :class:`~pachinko.AuthenticationFailed`:
            3401, HTTP 401 for a real client). The user's id then cannot
            change for the life of the connection. See
            :mod:`pachinko.auth` for tokens.
        rooms: Room policies by room name or pattern (``"team:*"``):
            history kept for recovery, presence and join authorization (see
            :class:`~pachinko.RoomPolicy` and docs/connections.md).
        metrics: A :class:`pachinko.metrics.Metrics` (its ``/metrics`` route
            is added to ``app``), or any :class:`~pachinko.observe.Observer`.
        tracing: A :class:`pachinko.tracing.Tracing`, or any observer.

    Raises:
        ConfigError: Already installed with different options, or a
            service is named ``manager`` or ``settings`` (reserved).
        TypeError: ``authenticate`` is not callable.
    """
    _check_service_names(services or {})
    existing = _find_runtime(app)
    if existing is not None:
        # NOTE: an option counts as passed when it is not None (these) or
        #   not empty (workers, services, on_worker_crash, authenticate).
        passed = (backend, rooms, metrics, tracing)
        if (
            (settings is not None and settings != existing.settings)
            or any((workers, services, on_worker_crash, authenticate))
            or any(option is not None for option in passed)
        ):
            raise ConfigError(
                "install(): pachinko is already installed on this app; pass settings, backend, "
                "workers, services, authenticate, rooms, metrics and tracing to the first "
                "install() call"
            )
        return existing.manager
    if authenticate is not None and not callable(authenticate):
        raise TypeError(
            f"install(): authenticate must be callable, got {type(authenticate).__name__}"
        )
    settings = settings or Settings()
    manager = WebSocketConnectionManager(settings, backend, rooms=rooms)
    manager.identity_fixed = authenticate is not None
    runtime = Runtime(settings, manager, workers, services, on_worker_crash, authenticate)
    if settings.receive_queue is not None:
        app.ws_options.max_receive_queue = settings.receive_queue
    app.add_middleware(_Lifespan(runtime))
    observers = [obs for obs in (tracing, metrics) if obs is not None]
    if observers:
        # NOTE: tracing first: its span around a handler contains the
        #   metrics' timing of it.
        observer = observers[0] if len(observers) == 1 else Observers(observers)
        manager.observe(observer)
        runtime.workers.observer = observer
        observer.installed(app)
    return manager


def mount(
    app: falcon.asgi.App[Any, Any], prefix: str, router: WebSocketRouter, **install_options: Any
) -> Mount:
    """Serve ``router`` for every WebSocket path at or below ``prefix``.

    Installs pachinko first if needed (``install_options`` go to
    :func:`install`). Paths below the prefix that match no route are refused
    as Falcon refuses them (close 3404 during the handshake); plain HTTP
    requests get ``426 Upgrade Required``.

    Returns:
        The :class:`Mount`; ``mount.swap(new_router)`` replaces the router
        atomically for new connections; ``mount.url_for(name, **params)``
        builds URLs with this prefix.

    Raises:
        RouteError: ``prefix`` does not start with ``/``, or a router is
            already mounted there.
        TypeError: ``prefix`` is not a str or ``router`` not a router.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"mount(): prefix must be a str, got {type(prefix).__name__}")
    if not isinstance(router, WebSocketRouter):
        raise TypeError(
            f"mount({prefix!r}): expected a WebSocketRouter, got {type(router).__name__}"
        )
    if not prefix.startswith("/"):
        raise RouteError(f"mount(): prefix must start with '/', got {prefix!r}")
    prefix = prefix.rstrip("/") or "/"
    if _find_runtime(app) is None or install_options:
        install(app, **install_options)
    runtime = runtime_of(app)
    if any(m.prefix == prefix for m in runtime.mounts):
        raise RouteError(f"mount(): a router is already mounted at {prefix!r}")
    mounted = Mount(runtime, prefix, router)
    runtime.mounts.append(mounted)
    app.add_sink(mounted, mounted.pattern)
    return mounted
