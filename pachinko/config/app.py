"""Entry points: ``create_app(path)`` and ``configure(app, path)``.

Both load and compile the file first (every error at once, before anything
touches the app), then install pachinko with the file's settings, room
policies, services and workers, mount the router under ``[app].prefix`` and run the
``[app].setup`` callables with the app.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import falcon.asgi

from ..app import mount, runtime_of
from ..errors import ConfigError
from ._env import METRICS_ENV, RELOAD_ENV
from ._plans import service_factories, worker_callable
from .compiler import Compiled, load_config

if TYPE_CHECKING:
    from .._serve import Mount
    from ..app import Runtime
    from .reload import Reloader

__all__ = ["RELOAD_ENV", "Configured", "configure", "create_app", "reload_enabled"]


class Configured:
    """What :func:`configure` did to an app (kept by its lifespan hook).

    Attributes:
        path: The configuration file.
        compiled: The configuration currently served.
        mount: The mount serving its router.
        runtime: The app's pachinko runtime.
        reloader: The hot reloader, when reload is enabled.
    """

    def __init__(self, path: str, compiled: Compiled, mount: Mount, runtime: Runtime) -> None:
        self.path = path
        self.compiled = compiled
        self.mount = mount
        self.runtime = runtime
        self.reloader: Reloader | None = None

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        """Start watching the files (Falcon lifespan middleware hook)."""
        if self.reloader is not None:
            await self.reloader.start()

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        """Stop watching the files."""
        if self.reloader is not None:
            await self.reloader.stop()


def reload_enabled(
    compiled: Compiled, reload: bool | None, environ: Mapping[str, str] | None = None
) -> bool:
    """Hot reload is on if asked for, else if ``PACHINKO_RELOAD`` or ``[app].reload`` say so."""
    if reload is not None:
        return reload
    env = (os.environ if environ is None else environ).get(RELOAD_ENV, "")
    if env.strip().lower() in ("1", "true", "yes", "on"):
        return True
    return compiled.loaded.app.reload


def metrics_path(
    compiled: Compiled, metrics: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The metrics endpoint's path: asked for, else ``PACHINKO_METRICS``, else ``[app].metrics``."""
    if metrics is not None:
        return metrics or None
    env = (os.environ if environ is None else environ).get(METRICS_ENV, "").strip()
    return env or compiled.loaded.app.metrics


def _metrics(path: str | None) -> dict[str, Any]:
    """``install()``'s ``metrics`` option for an endpoint at ``path`` (none if None)."""
    if path is None:
        return {}
    if not path.startswith("/"):
        raise ConfigError(f"metrics: expected a path starting with '/', got {path!r}")
    try:
        from ..metrics import Metrics
    except ImportError as ex:
        raise ConfigError(
            f"metrics at {path!r} need prometheus-client, which is not installed: "
            "pip install 'pachinko[metrics]'"
        ) from ex
    return {"metrics": Metrics(path)}


def create_app(
    path: str | os.PathLike[str],
    *,
    reload: bool | None = None,
    environ: Mapping[str, str] | None = None,
    metrics: str | None = None,
) -> falcon.asgi.App[Any, Any]:
    """Build a Falcon ASGI app from a routes.toml.

    Args:
        path: The configuration file.
        reload: Watch the files and swap routes in on change; default from
            ``PACHINKO_RELOAD`` or ``[app].reload``. Development only: the
            file names code to import, so it must be trusted.
        environ: Variables for ``${VAR}`` (default: ``os.environ``).
        metrics: Serve Prometheus metrics at this path (``""``: not even if
            the file says so); default from ``PACHINKO_METRICS`` or
            ``[app].metrics``.

    Raises:
        ConfigError: With every problem of the file (and its includes).
    """
    app = falcon.asgi.App()
    configure(app, path, reload=reload, environ=environ, metrics=metrics)
    return app


def configure(
    app: falcon.asgi.App[Any, Any],
    path: str | os.PathLike[str],
    *,
    reload: bool | None = None,
    environ: Mapping[str, str] | None = None,
    metrics: str | None = None,
) -> Configured:
    """Serve a routes.toml on an existing Falcon app, next to its HTTP routes.

    Installs pachinko on ``app`` (the file's settings, rooms, services and
    workers, and metrics: see :func:`create_app`), mounts the router under
    ``[app].prefix`` and runs ``[app].setup``.

    Raises:
        ConfigError: With every problem of the file; ``app`` is untouched.
        PachinkoError: pachinko is already installed on ``app``.
    """
    display = os.fspath(path)
    compiled = load_config(display, environ)
    mounted = mount(
        app,
        compiled.prefix,
        compiled.router,
        settings=compiled.settings,
        rooms=compiled.rooms,
        workers=[worker_callable(plan) for plan in compiled.workers.values()],
        services=service_factories(compiled.services, lambda: runtime_of(app).services),
        authenticate=compiled.authenticate,
        **_metrics(metrics_path(compiled, metrics, environ)),
    )
    runtime = runtime_of(app)
    compiled.box.services = runtime.services
    configured = Configured(display, compiled, mounted, runtime)
    if reload_enabled(compiled, reload, environ):
        from .reload import Reloader

        configured.reloader = Reloader(configured, environ=environ)
    app.add_middleware(configured)
    for setup in compiled.setup:
        setup(app)
    return configured
