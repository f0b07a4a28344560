"""Services and workers: their declarations checked into plans, plans into callables.

The compiler makes the plans (:func:`service_plans`, :func:`worker_plans`);
``configure`` and the hot reloader turn them into what ``install()`` and the
worker controller take (:func:`service_factories`, :func:`worker_callable`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..workers import RestartPolicy
from ._checks import Checker, object_kind, parameter_names
from .loader import Located
from .model import ServiceConfig, WorkerConfig

__all__ = [
    "ServiceBox",
    "ServicePlan",
    "WorkerPlan",
    "service_factories",
    "service_plans",
    "worker_callable",
    "worker_plans",
]


class ServiceBox:
    """Where compiled resource factories find the app's services at connect time."""

    __slots__ = ("services",)

    def __init__(self) -> None:
        self.services: Mapping[str, Any] = {}


@attrs.frozen
class ServicePlan:
    """A declared service: ``factory(*args, **kwargs, **earlier services)``."""

    name: str
    factory: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inject: tuple[str, ...]
    declaration: Any = attrs.field(eq=False)


@attrs.frozen
class WorkerPlan:
    """A declared worker: ``target(*args, **kwargs)`` plus injected context."""

    name: str
    target: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    restart: RestartPolicy | None
    declaration: Any = attrs.field(eq=False)


def service_plans(checker: Checker) -> dict[str, ServicePlan]:
    """Return a plan for every declared service that checks out, in declaration order."""
    plans: dict[str, ServicePlan] = {}
    for name, (where, decl) in checker.loaded.services.items():
        plan = _service_plan(checker, name, where, decl, plans)
        if plan is not None:
            plans[name] = plan
    return plans


def _service_plan(
    checker: Checker,
    name: str,
    where: Located,
    decl: ServiceConfig,
    earlier: Mapping[str, ServicePlan],
) -> ServicePlan | None:
    factory = checker.imported((where[0], (*where[1], "factory")), decl.factory)
    if factory is None:
        return None
    if not callable(factory):
        found = f"{object_kind(factory)} {decl.factory}"
        checker.problem(where, "a callable factory", found, extra=("factory",))
        return None
    inject = tuple(n for n in parameter_names(factory) if n in earlier and n not in decl.kwargs)
    checker.check_arguments(
        where,
        "factory",
        decl.factory,
        factory,
        decl.args,
        decl.kwargs,
        set(earlier),
        "services declared before it",
    )
    return ServicePlan(name, factory, tuple(decl.args), dict(decl.kwargs), inject, decl)


def worker_plans(checker: Checker) -> dict[str, WorkerPlan]:
    """Return a plan for every declared worker that checks out."""
    plans: dict[str, WorkerPlan] = {}
    for name, (where, decl) in checker.loaded.workers.items():
        plan = _worker_plan(checker, name, where, decl)
        if plan is not None:
            plans[name] = plan
    return plans


def _worker_plan(
    checker: Checker, name: str, where: Located, decl: WorkerConfig
) -> WorkerPlan | None:
    target = checker.imported((where[0], (*where[1], "target")), decl.target)
    if target is None:
        return None
    if not inspect.iscoroutinefunction(target) and not hasattr(target, "__pachinko_worker__"):
        found = f"{object_kind(target)} {decl.target}"
        checker.problem(where, "an async function", found, extra=("target",))
        return None
    checker.check_arguments(
        where,
        "target",
        decl.target,
        target,
        decl.args,
        decl.kwargs,
        {"manager", "settings", *checker.loaded.services},
        "injected",
    )
    return WorkerPlan(name, target, tuple(decl.args), dict(decl.kwargs), decl.restart, decl)


def service_factories(
    plans: Mapping[str, ServicePlan],
    services: Callable[[], Mapping[str, Any]],
) -> dict[str, Callable[[], Any]]:
    """Zero-argument factories for ``install(services=...)``.

    A factory's parameters named like a service declared before it get that
    service (found in ``services()`` when the factory runs, at startup).
    """

    def bind(plan: ServicePlan) -> Callable[[], Any]:
        def make() -> Any:
            made = services()
            injected = {name: made[name] for name in plan.inject}
            return plan.factory(*plan.args, **plan.kwargs, **injected)

        make.__name__ = plan.name
        return make

    return {name: bind(plan) for name, plan in plans.items()}


def worker_callable(plan: WorkerPlan) -> Callable[..., Any]:
    """The callable handed to the WorkerController for a declared worker.

    Its signature lists only the target's parameters that the declaration
    does not fill (``args``/``kwargs``), so the controller injects the
    manager and services by name into exactly those.
    """
    target = plan.target
    signature = inspect.signature(target)
    bound = signature.bind_partial(*plan.args, **plan.kwargs)
    free = [p for name, p in signature.parameters.items() if name not in bound.arguments]

    async def run(**context: Any) -> Any:
        return await target(*plan.args, **plan.kwargs, **context)

    run.__signature__ = signature.replace(parameters=free)  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = plan.name
    run.__module__ = getattr(target, "__module__", __name__)
    if plan.restart is not None:
        from ..workers import worker

        return worker(restart=plan.restart)(run)
    return run
