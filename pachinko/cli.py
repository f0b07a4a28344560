"""The ``pachinko`` command: serve, check, list and document a routes.toml.

A thin layer over :mod:`pachinko.config` (load, compile, create the app,
export) and :mod:`pachinko.asyncapi`; it adds no behaviour of its own
beyond choosing uvicorn's options from the file's settings and refusing
combinations that cannot work.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import urlsplit

import click

from .errors import PachinkoError
from .settings import Settings

if TYPE_CHECKING:
    from .config import Compiled
    from .router import WebSocketRouter

__all__ = ["main", "route_table", "uvicorn_options"]

_DEFAULT_CONFIG: Final = "routes.toml"
_TEMPLATES: Final = Path(__file__).parent / "config" / "templates"
#: Starter files written by ``pachinko init``: template name -> file name.
_STARTER: Final = {"routes.toml.tmpl": "routes.toml", "handlers.py.tmpl": "handlers.py"}
#: Modules of the serve extra that ``pachinko serve`` imports.
_SERVE_MODULES: Final = frozenset({"uvicorn", "websockets", "wsproto"})
_IN_PROCESS_SCHEMES: Final = frozenset({"memory", ""})
#: What ``pip install 'pachinko[serve]'`` adds that ``serve`` cannot do without.
_SERVE_EXTRA: Final = "pip install 'pachinko[serve]'"


# -- helpers -----------------------------------------------------------------------


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _needs_extra(what: str, ex: ImportError, alternative: str = "") -> NoReturn:
    """Exit 1 with one line naming the missing module and the extra that has it."""
    _fail(
        f"Error: {what} needs the module {ex.name!r}, which is not installed: install the "
        f"serve extra with {_SERVE_EXTRA}{alternative}"
    )


def _existing(path: str) -> str:
    if not Path(path).is_file():
        hint = " (create one with: pachinko init)" if Path(path).name == _DEFAULT_CONFIG else ""
        what = "is a directory" if Path(path).is_dir() else "does not exist"
        _fail(f"Error: configuration file {path} {what}{hint}", 2)
    return path


def _compile(path: str) -> Compiled:
    """Load and compile ``path``; on failure print every error and exit 1."""
    from .config import load_config

    _existing(path)
    try:
        return load_config(path)
    except PachinkoError as ex:  # ConfigError: every problem, already formatted
        _fail(str(ex))


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _type_name(tp: Any) -> str:
    if tp is None:
        return "-"
    return str(getattr(tp, "__name__", None) or tp)


def route_table(prefix: str, router: WebSocketRouter) -> list[dict[str, Any]]:
    """The compiled routing table: one entry per route, messages in both directions."""
    from ._naming import qualified_name
    from ._tree import mounted_routes
    from .router import join_paths

    table: list[dict[str, Any]] = []
    for route in mounted_routes([(prefix, router)]):
        info = route.info
        cls = info.resource_class
        messages = [
            {
                "direction": "in",
                "type": msg.tag,
                "handler": qualified_name(msg.handler),
                "payload": _type_name(msg.payload),
                "strict": msg.strict,
            }
            for msg in route.received
        ] + [
            {
                "direction": "out",
                "type": msg.tag if msg.tag is not None else _type_name(msg.payload),
                "handler": None,
                "payload": _type_name(msg.payload),
                "strict": None,
            }
            for msg in route.sent
        ]
        table.append(
            {
                "path": route.path,
                "name": info.name,
                "resource": cls.__qualname__ if cls is not None else qualified_name(info.target),
                "parent": join_paths(prefix, info.parent.template) if info.parent else None,
                "wire": getattr(cls, "wire", None),
                "tag_field": getattr(cls, "tag_field", None),
                "messages": messages,
            }
        )
    return table


def _render_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def uvicorn_options(settings: Settings, **options: Any) -> dict[str, Any]:
    """Options of :func:`pachinko.server.run` for serving an app with ``settings``.

    uvicorn's options plus ``handshake_timeout`` (:class:`pachinko.server.Config`).
    The WebSocket limits are the app's: ``ws_max_size`` is
    ``max_message_size`` (uvicorn's own default is 16 MiB), pings follow
    ``ping_interval``/``ping_timeout``, the graceful shutdown waits
    ``shutdown_timeout``; ``handshake_timeout``, ``max_handshake_size``
    (``h11_max_incomplete_event_size``) and ``keep_alive_timeout``
    (``timeout_keep_alive``) bound connections before and between requests.
    ``options`` are added last.
    """
    return {
        "lifespan": "on",
        "ws_max_size": settings.max_message_size,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "timeout_graceful_shutdown": max(1, math.ceil(settings.shutdown_timeout)),
        "handshake_timeout": settings.handshake_timeout,
        "h11_max_incomplete_event_size": settings.max_handshake_size,
        "timeout_keep_alive": settings.keep_alive_timeout,
        **options,
    }


_output_option = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file instead of standard output.",
)


# -- the command group ---------------------------------------------------------


@click.group(
    name="pachinko",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="pachinko", prog_name="pachinko")
def main() -> None:
    """WebSockets for Falcon: serve, check and document a routes.toml.

    Quick start: `pachinko init` writes a starter routes.toml and handler
    module; `pachinko serve` serves it on http://127.0.0.1:8000 (WebSocket
    routes below /ws).
    """


@main.command()
@click.argument("config", default=_DEFAULT_CONFIG, metavar="[CONFIG]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to bind (0: any free port, printed at startup).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes. More than one needs a shared backend (Redis).",
)
@click.option(
    "--reload",
    is_flag=True,
    help="Development: restart on Python changes, hot-swap routes on TOML changes.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug", "trace"]),
    help="Level of uvicorn's, pachinko's and the application's loggers.",
)
@click.option(
    "--log-config",
    default=None,
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="Logging configuration file (.json, .yaml or .ini, as uvicorn's --log-config); "
    "replaces pachinko's.",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="text: uvicorn's format; json: one JSON object per line. Lines about a "
    "connection name its id, route and user either way.",
)
@click.option(
    "--metrics",
    "metrics",
    is_flag=False,
    flag_value="/metrics",
    default=None,
    metavar="[PATH]",
    help="Serve Prometheus metrics at PATH (default /metrics; overrides [app] metrics). "
    "Needs pachinko[metrics]; with --workers N every process answers for all.",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    metavar="IPS",
    help="Proxies trusted for X-Forwarded-* headers (uvicorn's option; "
    "default: $FORWARDED_ALLOW_IPS or 127.0.0.1).",
)
@click.option(
    "--root-path", default="", help="ASGI root_path when mounted below a path by a proxy."
)
def serve(
    config: str,
    host: str,
    port: int,
    workers: int,
    reload: bool,
    log_level: str,
    log_config: str | None,
    log_format: str,
    metrics: str | None,
    forwarded_allow_ips: str | None,
    root_path: str,
) -> None:
    """Serve CONFIG (default: ./routes.toml) with uvicorn.

    The WebSocket limits come from the file's [settings]: max_message_size
    becomes uvicorn's ws_max_size, ping_interval / ping_timeout its
    WebSocket pings, shutdown_timeout its graceful shutdown timeout.
    """
    try:
        from .server import configure_logging, require_websocket_library
        from .server import log_config as default_log_config
        from .server import run as serve_with_uvicorn

        require_websocket_library()
    except ModuleNotFoundError as ex:  # NOTE: only the server's own modules
        if ex.name not in _SERVE_MODULES:
            raise
        _needs_extra("pachinko serve", ex)
    _existing(config)
    compiled = _compile(config)
    settings = compiled.settings
    scheme = urlsplit(settings.backend).scheme
    metrics = _check_serve_options(config, compiled, scheme, workers, reload, metrics)
    logging_config = log_config or default_log_config(log_level, log_format)
    configure_logging(logging_config, log_level)  # the app may log while it is built
    options = uvicorn_options(
        settings,
        host=host,
        port=port,
        log_level=log_level,
        log_config=logging_config,
        root_path=root_path,
    )
    if forwarded_allow_ips is not None:
        options["forwarded_allow_ips"] = forwarded_allow_ips
    routes = compiled.router.routes()
    click.echo(
        f"pachinko: serving {config}: {_count(len(routes), 'route')} below {compiled.prefix}, "
        f"backend {scheme or 'memory'}://, max message {settings.max_message_size} bytes",
        err=True,
    )
    if metrics is not None:
        click.echo(f"pachinko: metrics at {metrics}", err=True)
    _launch(serve_with_uvicorn, config, options, workers, reload, metrics)


def _check_serve_options(
    config: str,
    compiled: Compiled,
    scheme: str,
    workers: int,
    reload: bool,
    metrics: str | None,
) -> str | None:
    """Check ``serve``'s process options; return the metrics path (``None``: off)."""
    backend = compiled.settings.backend
    if workers > 1 and scheme in _IN_PROCESS_SCHEMES:
        _fail(
            f"Error: --workers {workers} needs a shared backend, but {config} uses the "
            f"in-process backend ({backend!r}): rooms, users and broadcasts would not "
            f"cross the {workers} processes. Set [settings] backend to a Redis URL "
            f"(redis://host:6379/0) or serve with one worker.",
            2,
        )
    if workers > 1 and reload:
        _fail("Error: --reload runs one process; it cannot be combined with --workers > 1", 2)
    if metrics is not None and not metrics.startswith("/"):
        _fail(f"Error: --metrics expects a path starting with '/', got {metrics!r}", 2)
    metrics = metrics or compiled.loaded.app.metrics
    if metrics is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            _fail(
                "Error: metrics need the module 'prometheus_client', which is not installed: "
                "install the metrics extra with pip install 'pachinko[metrics]'"
            )
    return metrics


def _launch(
    serve_with_uvicorn: Callable[..., None],
    config: str,
    options: dict[str, Any],
    workers: int,
    reload: bool,
    metrics: str | None,
) -> None:
    """Run uvicorn: on the app built here, or on the file in each process."""
    if workers == 1 and not reload:
        from .config import create_app

        try:
            app: Any = create_app(config, metrics=metrics or "")
        except PachinkoError as ex:
            _fail(str(ex))
        _run(serve_with_uvicorn, app, options)
        return
    # NOTE: several processes (or the reloader's child) import the app: they
    #   build it from the file named in the environment.
    from .config._env import ASGI_APP, CONFIG_ENV, METRICS_ENV, RELOAD_ENV

    os.environ[CONFIG_ENV] = str(Path(config).resolve())
    if metrics is not None:
        os.environ[METRICS_ENV] = metrics
    if reload:
        os.environ[RELOAD_ENV] = "1"  # TOML edits are swapped in without a restart
        options.update(reload=True, reload_dirs=[str(Path(config).resolve().parent)])
        _run(serve_with_uvicorn, ASGI_APP, options)
        return
    options["workers"] = workers
    with _multiprocess_metrics(metrics is not None):
        _run(serve_with_uvicorn, ASGI_APP, options)


@contextlib.contextmanager
def _multiprocess_metrics(enabled: bool) -> Iterator[None]:
    """prometheus-client's multiprocess directory for the worker processes.

    ``$PROMETHEUS_MULTIPROC_DIR`` if set (created if missing, emptied of a
    previous run's files), else a temporary directory removed at exit. Set
    before uvicorn starts the processes: prometheus-client reads it when it
    is imported.
    """
    if not enabled:
        yield
        return
    from .metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        prepare_multiprocess_dir(given)
        yield
        return
    with tempfile.TemporaryDirectory(prefix="pachinko-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory
        try:
            yield
        finally:
            del os.environ[MULTIPROC_ENV]


def _run(runner: Any, app: Any, options: dict[str, Any]) -> None:
    # NOTE: uvicorn re-raises the SIGINT it handled after its graceful
    #   shutdown; like `uvicorn.run`, Ctrl+C is then a normal exit (status 0).
    with contextlib.suppress(KeyboardInterrupt):
        runner(app, **options)


@main.command()
@click.argument("config")
def check(config: str) -> None:
    """Check CONFIG: load and compile everything, import every handler.

    Exits with status 0 if the file is valid, 1 with every error otherwise.
    A valid file's summary counts routes, workers, services, the declared
    [types], and the messages the routes receive (in) and send (out),
    summed over routes (the rows of `pachinko routes`).
    """
    compiled = _compile(config)
    routes = compiled.router.routes()
    rows = [m for row in route_table(compiled.prefix, compiled.router) for m in row["messages"]]
    received = sum(1 for m in rows if m["direction"] == "in")
    # NOTE: a type used by two routes is two rows of `pachinko routes`: the
    #   message counts say they are summed over routes, next to the declared types.
    click.echo(
        f"{config}: OK ({_count(len(routes), 'route')}, {_count(len(compiled.workers), 'worker')}, "
        f"{_count(len(compiled.services), 'service')}, "
        f"{_count(len(compiled.structs), 'declared type')}; "
        f"messages summed over routes: {received} in, {len(rows) - received} out)"
    )


@main.command()
@click.argument("config")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def routes(config: str, as_json: bool) -> None:
    """Print the compiled routing table of CONFIG.

    One line per message type: path, route name, resource, direction (in:
    client to server, out: server to client), type tag, handler, payload.
    """
    compiled = _compile(config)
    table = route_table(compiled.prefix, compiled.router)
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    if not table:
        click.echo(f"{config}: no routes")
        return
    rows = [["PATH", "NAME", "RESOURCE", "DIR", "TYPE", "HANDLER", "PAYLOAD"]]
    for route in table:
        head = [route["path"], route["name"] or "-", route["resource"]]
        if not route["messages"]:
            rows.append([*head, "-", "-", "-", "-"])
        for index, msg in enumerate(route["messages"]):
            rows.append(
                [
                    *(head if index == 0 else ["", "", ""]),
                    msg["direction"],
                    msg["type"],
                    msg["handler"] or "-",
                    msg["payload"],
                ]
            )
    click.echo(_render_table(rows))


@main.command()
@click.argument("config")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format.",
)
@_output_option
@click.option("--title", default=None, help="info.title (default: the file's name).")
@click.option("--api-version", default="1.0.0", show_default=True, help="info.version.")
@click.option(
    "--server", default=None, metavar="URL", help="Add a server, e.g. ws://localhost:8000."
)
def asyncapi(
    config: str,
    fmt: str,
    output: str | None,
    title: str | None,
    api_version: str,
    server: str | None,
) -> None:
    """Print the AsyncAPI 3.0 document of CONFIG.

    One channel per route; "receive" operations are the messages clients
    send (the declared payloads), "send" operations the messages the server
    sends (the resources' `sends`). Schemas are msgspec's JSON Schema.
    """
    from . import asyncapi as generator

    compiled = _compile(config)
    try:
        doc = generator.document(
            [(compiled.prefix, compiled.router)],
            title=title or Path(config).stem,
            version=api_version,
            server=server,
            rooms=compiled.rooms,
        )
    except ValueError as ex:
        _fail(f"Error: {ex}", 2)
    try:
        text = generator.dumps(doc, "json" if fmt == "json" else "yaml")
    except ModuleNotFoundError as ex:
        if ex.name != "yaml":
            raise
        _needs_extra("--format yaml", ex, " (or use --format json)")
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("directory", default=".", metavar="[DIR]", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def init(directory: str, force: bool) -> None:
    """Write a starter routes.toml and handlers.py into DIR (default: here).

    `pachinko serve` in DIR then serves it at once.
    """
    target = Path(directory)
    existing = [name for name in _STARTER.values() if (target / name).exists()]
    if existing and not force:
        _fail(
            f"Error: {', '.join(str(target / n) for n in existing)} already exist"
            f"{'s' if len(existing) == 1 else ''}; use --force to overwrite",
            1,
        )
    target.mkdir(parents=True, exist_ok=True)
    for template, name in _STARTER.items():
        (target / name).write_text(
            (_TEMPLATES / template).read_text(encoding="utf-8"), encoding="utf-8"
        )
        click.echo(f"wrote {target / name}")
    where = "" if target.resolve() == Path.cwd().resolve() else f"cd {directory} && "
    click.echo(f"next: {where}pachinko serve   (then connect to ws://127.0.0.1:8000/ws/echo)")


@main.command()
@click.argument("target", metavar="MODULE:ROUTER")
@click.option("--prefix", default=None, help="[app].prefix of the file (default /ws).")
@_output_option
def export(target: str, prefix: str | None, output: str | None) -> None:
    """Write the routes.toml of a router or app (MODULE:ROUTER).

    MODULE is imported from the current directory (as uvicorn does); ROUTER
    is a WebSocketRouter or a Falcon app with one mounted router. An app
    also has its settings, services and workers written (an app made from
    a routes.toml: everything it was declared with).
    """
    from .config.export import export_app, export_toml
    from .config.imports import ImportFailure, import_path
    from .router import WebSocketRouter as Router

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = import_path(target)
    except ImportFailure as ex:
        _fail(f"Error: cannot import {target}: {ex}")
    if not isinstance(obj, Router):
        import falcon.asgi

        from .app import runtime_of

        mounts = None
        if isinstance(obj, falcon.asgi.App):
            try:
                mounts = runtime_of(obj).mounts
            except PachinkoError:
                mounts = []
        if mounts is None or len(mounts) != 1:
            found = (
                type(obj).__name__
                if mounts is None
                else f"a Falcon app with {len(mounts)} mounted routers"
            )
            _fail(
                f"Error: {target} must be a WebSocketRouter or a Falcon app with one mounted "
                f"router, found {found}"
            )
    try:
        text = (
            export_toml(obj, prefix=prefix)
            if isinstance(obj, Router)
            else export_app(obj, prefix=prefix)
        )
    except PachinkoError as ex:
        _fail(f"Error: cannot export {target}:\n{ex}")
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
