"""Compile a loaded routes.toml into the objects the Python API builds.

Everything happens here, once: imports, handler checks, ``defstruct``
schemas, resource classes (``type(...)`` with ``handles_message``), the
``WebSocketRouter`` tree, service and worker plans, room policies and the
``authenticate`` function. The result holds no
TOML-specific object on the per-message path: the serve loop sees a plain
router and plain resource classes.

The work is split by what it makes: :mod:`._types` (declared types),
:mod:`._plans` (services and workers), :mod:`._rooms` (room policies),
:mod:`._routes` (route trees), :mod:`._resources` (resource classes);
:mod:`._checks` imports and checks what the file names for all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from ..rooms import RoomPolicies
from ..router import WebSocketRouter
from ..settings import Settings
from ._checks import Call, Checker
from ._plans import ServiceBox, ServicePlan, WorkerPlan, service_plans, worker_plans
from ._resources import ResourceClasses
from ._rooms import room_policies
from ._routes import RouteTrees
from ._types import declared_structs
from .loader import Loaded, Report, load, load_text

__all__ = [
    "Compiled",
    "ServiceBox",
    "ServicePlan",
    "WorkerPlan",
    "compile_loaded",
    "compile_text",
    "load_config",
]

_SETUP: Final = Call("setup(app)", 1, is_async=False)
_AUTHENTICATE: Final = Call("authenticate(req)", 1, is_async=False)


@attrs.define
class Compiled:
    """A compiled configuration: what ``create_app`` wires into Falcon.

    Attributes:
        loaded: The configuration it was compiled from.
        router: The root router (mounted at ``prefix``).
        prefix: Mount prefix.
        settings: The app's settings.
        rooms: The room policies (``[rooms]``, ``[app] position_field``).
        structs: Declared type name → Struct.
        services: Service plans, in declaration order.
        workers: Worker plans by name.
        setup: Callables run with the Falcon app at creation.
        box: Holds the services mapping the resource factory reads.
        authenticate: ``[app] authenticate``, imported (or ``None``).
    """

    loaded: Loaded
    router: WebSocketRouter
    prefix: str
    settings: Settings
    rooms: RoomPolicies
    structs: dict[str, Any]
    services: dict[str, ServicePlan]
    workers: dict[str, WorkerPlan]
    setup: list[Callable[..., Any]]
    box: ServiceBox
    authenticate: Callable[..., Any] | None = None


def compile_loaded(
    loaded: Loaded, box: ServiceBox | None = None, report: Report | None = None
) -> Compiled:
    """Compile ``loaded`` (see module docstring).

    Args:
        loaded: The checked configuration.
        box: Where the resource factory finds services (a new one by default).
        report: Problems found while loading, reported with the compiler's.

    Raises:
        ConfigFileError: With every problem found.
    """
    box = box or ServiceBox()
    checker = Checker(loaded, report or Report())
    structs = declared_structs(checker)
    services = service_plans(checker)
    workers = worker_plans(checker)
    _check_prefix(checker)
    rooms = room_policies(checker)
    setup = _setup_callables(checker)
    authenticate = _authenticate(checker)
    trees = RouteTrees(checker, ResourceClasses(checker, structs), box)
    router = trees.router("", loaded.routes, loaded.routers, loaded.hooks)
    checker.report_broken_modules()
    checker.report.raise_if_any()
    prefix = loaded.app.prefix
    return Compiled(
        loaded,
        router,
        prefix,
        loaded.settings,
        rooms,
        structs,
        services,
        workers,
        setup,
        box,
        authenticate,
    )


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    box: ServiceBox | None = None,
) -> Compiled:
    """Load and compile ``path``, reporting every problem of both steps at once.

    Raises:
        ConfigFileError: With every problem found.
    """
    report = Report()
    return compile_loaded(load(path, environ, report), box, report)


def compile_text(
    text: str,
    name: str = "<string>",
    environ: Mapping[str, str] | None = None,
    box: ServiceBox | None = None,
) -> Compiled:
    """Like :func:`load_config` for a document in a string."""
    report = Report()
    return compile_loaded(load_text(text, name, environ, report), box, report)


def _check_prefix(checker: Checker) -> None:
    prefix = checker.loaded.app.prefix
    if not prefix.startswith("/"):
        where = (checker.loaded.root, ("app", "prefix"))
        checker.problem(where, "a prefix starting with '/'", repr(prefix))
    metrics = checker.loaded.app.metrics
    if metrics is not None and not metrics.startswith("/"):
        where = (checker.loaded.root, ("app", "metrics"))
        checker.problem(where, "a path starting with '/'", repr(metrics))


def _setup_callables(checker: Checker) -> list[Callable[..., Any]]:
    """Return the ``[app] setup`` functions that check out."""
    root = checker.loaded.root
    found = [
        checker.function_for((root, ("app", "setup", index)), path, _SETUP)
        for index, path in enumerate(checker.loaded.app.setup)
    ]
    return [fn for fn in found if fn is not None]


def _authenticate(checker: Checker) -> Callable[..., Any] | None:
    """Return the ``[app] authenticate`` function, if declared and it checks out."""
    path = checker.loaded.app.authenticate
    if path is None:
        return None
    where = (checker.loaded.root, ("app", "authenticate"))
    fn: Callable[..., Any] | None = checker.function_for(where, path, _AUTHENTICATE)
    return fn
