"""Route trees: the ``[[routes]]``, ``[[routers]]`` and ``[hooks]`` of a file as routers.

Each route's target is a resource class or factory named by ``resource``, or
a class built from its handlers (:mod:`._resources`). Services reach
resources through the router's resource factory, by parameter name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..errors import RouteError
from ..router import Route, WebSocketRouter
from ._checks import Call, Checker, object_kind, parameter_names
from ._plans import ServiceBox
from ._resources import ResourceClasses
from ._toml import format_path, line_of
from .loader import Located, router_hooks
from .model import RouteConfig, RouterConfig

__all__ = ["RouteTrees"]

#: Keys that apply to a resource built from handlers only.
_BUILT_ONLY: Final = (
    "base",
    "wire",
    "tag_field",
    "handlers",
    "sends",
    "hooks",
    "on_connect",
    "on_disconnect",
    "on_unhandled",
    "child_context",
)
#: What a route that cannot be registered should have been, by RouteError kind, and its key.
_ROUTE_PROBLEMS: Final = {
    "conflict": ("a route path used once", "path"),
    "name": ("a route name used once", "name"),
    "invalid": ("a valid route template", "path"),
}


class _Placeholder:
    """Stands in for a resource that failed to compile (never served)."""


class RouteTrees:
    """Builds the routers of one compilation (route names unique across them)."""

    def __init__(self, checker: Checker, classes: ResourceClasses, box: ServiceBox) -> None:
        self.checker = checker
        self.classes = classes
        self.box = box
        #: Route name -> where it was first used.
        self._names: dict[str, Located] = {}
        #: Resource class or factory -> the services it gets, by parameter name.
        self._inject: dict[Any, tuple[str, ...]] = {}

    def router(
        self,
        prefix: str,
        routes: list[tuple[Located, RouteConfig]],
        routers: list[tuple[Located, RouterConfig]],
        hooks: list[tuple[Located, str, str]],
    ) -> WebSocketRouter:
        """Return the router of ``routes``, ``routers`` and ``hooks`` (mounted at ``prefix``)."""
        router = WebSocketRouter(resource_factory=injecting_factory(self._inject, self.box))
        for where, event, hook_path in hooks:
            fn = self.checker.function_for(where, hook_path, Call.of_hook(event))
            if fn is not None:
                router.add_hook(event, fn)
        for where, route in routes:
            self._add_route(router, None, where, route, prefix, register=True)
        for where, sub in routers:
            self._add_router(router, prefix, where, sub)
        return router

    def _add_router(
        self, router: WebSocketRouter, prefix: str, where: Located, sub: RouterConfig
    ) -> None:
        source, path = where
        child = self.router(
            f"{prefix}/{sub.prefix}",
            [((source, (*path, "routes", i)), r) for i, r in enumerate(sub.routes)],
            [((source, (*path, "routers", i)), r) for i, r in enumerate(sub.routers)],
            router_hooks(sub.hooks, source, (*path, "hooks")),
        )
        try:
            router.add_router(sub.prefix, child)
        except RouteError as ex:
            self.checker.problem(
                where, "a router whose routes do not conflict", str(ex), extra=("prefix",)
            )

    def _add_route(
        self,
        router: WebSocketRouter,
        parent: Route | None,
        where: Located,
        route: RouteConfig,
        prefix: str,
        *,
        register: bool,
    ) -> None:
        """Add ``route`` and its subroutes (only checked if it cannot be registered)."""
        source, path = where
        template = f"{prefix}/{route.path}"
        self._check_name(where, route)
        # NOTE: a route whose resource failed still takes its path and name, so
        #   conflicts with it are reported too (the report raises at the end).
        target = self._target(where, route, template) or _Placeholder
        handle = self._registered(router, parent, where, route, target) if register else None
        for index, sub in enumerate(route.routes):
            sub_where = (source, (*path, "routes", index))
            self._add_route(router, handle, sub_where, sub, template, register=handle is not None)

    def _check_name(self, where: Located, route: RouteConfig) -> None:
        if route.name is None:
            return
        if route.name not in self._names:
            self._names[route.name] = (where[0], (*where[1], "name"))
            return
        other_source, other_path = self._names[route.name]
        line = line_of(other_source.lines, other_path)
        at = f"{other_source.name}:{line}" if line else other_source.name
        self.checker.problem(
            where,
            "a route name used once",
            f"{route.name!r} used already by {format_path(other_path)} ({at})",
            extra=("name",),
        )

    def _registered(
        self,
        router: WebSocketRouter,
        parent: Route | None,
        where: Located,
        route: RouteConfig,
        target: Any,
    ) -> Route | None:
        """Return the handle of the registered route, or ``None`` (reported)."""
        add = router.add_route if parent is None else parent.add_subroute
        try:
            return add(route.path, target, *route.args, name=route.name, **route.kwargs)
        except RouteError as ex:
            if ex.kind != "name" or route.name not in self._names:
                # NOTE: a name used twice in the file is reported above, with both places.
                expected, key = _ROUTE_PROBLEMS.get(ex.kind, _ROUTE_PROBLEMS["invalid"])
                self.checker.problem(where, expected, str(ex), extra=(key,))
            return None

    # -- targets ----------------------------------------------------------------------

    def _target(self, where: Located, route: RouteConfig, template: str) -> Any:
        """Return the route's resource class or factory, or ``None`` (reported)."""
        self._check_services(where, route)
        services = tuple(route.services)
        if route.resource is not None:
            return self._imported_resource(where, route, route.resource, services)
        built = self.classes.build(where, route, services, template)
        if built is None:
            return None
        cls, services = built
        if services:
            self._inject[cls] = services
        return cls

    def _check_services(self, where: Located, route: RouteConfig) -> None:
        known = self.checker.loaded.services
        for index, name in enumerate(route.services):
            if name not in known and ("services", name) not in self.checker.loaded.broken:
                self.checker.problem(
                    where,
                    "a declared service (" + (", ".join(known) or "none declared") + ")",
                    repr(name),
                    extra=("services", index),
                )

    def _imported_resource(
        self, where: Located, route: RouteConfig, resource: str, services: tuple[str, ...]
    ) -> Any:
        source, path = where
        for key in _BUILT_ONLY:
            if getattr(route, key) not in (None, [], {}):
                self.checker.problem(
                    where,
                    f"no {key!r} with 'resource' (it applies to resources built from handlers)",
                    f"{key} = ...",
                    extra=(key,),
                )
        target = self.checker.imported((source, (*path, "resource")), resource)
        if target is None:
            return None
        if not callable(target):
            found = f"{object_kind(target)} {resource}"
            self.checker.problem(where, "a resource class or factory", found, extra=("resource",))
            return None
        params = parameter_names(target)
        known = self.checker.loaded.services
        found_names = tuple(n for n in known if n in params and n not in route.kwargs)
        names = tuple(dict.fromkeys((*services, *found_names)))
        self.checker.check_arguments(
            where,
            "resource",
            resource,
            target,
            route.args,
            route.kwargs,
            set(names),
            "services",
        )
        if names:
            self._inject[target] = names
        return target


def injecting_factory(inject: dict[Any, tuple[str, ...]], box: ServiceBox) -> Callable[..., Any]:
    """Return a router's resource factory: ``target(*args, **kwargs, **its services)``.

    ``inject`` is filled while the routes are compiled; ``box`` gets the
    app's services when the app is configured.
    """

    def resource_factory(target: Any, *args: Any, **kwargs: Any) -> Any:
        names = inject.get(target)
        if names:
            services = box.services
            for name in names:
                if name not in kwargs:
                    kwargs[name] = services[name]
        return target(*args, **kwargs)

    resource_factory.__pachinko_inject__ = inject  # type: ignore[attr-defined]  # export
    return resource_factory
