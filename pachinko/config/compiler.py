"""Compile a loaded routes.toml into the objects the Python API builds.

Everything happens here, once: imports, handler checks, ``defstruct``
schemas, resource classes (``type(...)`` with ``handles_message``), the
``WebSocketRouter`` tree, service and worker plans. The result holds no
TOML-specific object on the per-message path: the serve loop sees a plain
router and plain resource classes.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec

from .._dispatch import RESERVED
from .._naming import handler_name, snake_case
from ..errors import HandlerDefinitionError, RouteError
from ..hooks import HOOK_SIGNATURES
from ..resource import WebSocketResource, handles_message
from ..router import WebSocketRouter
from ..settings import Settings
from ..workers import RestartPolicy
from ._toml import KeyPath
from .imports import Importer, ImportFailure, is_import_path
from .loader import Loaded, Located, Report, Source, load, load_text, router_hooks
from .model import HandlerConfig, RouteConfig, RouterConfig
from .schema import compile_types

__all__ = ["Compiled", "ServicePlan", "WorkerPlan", "compile_loaded", "compile_text", "load_config"]

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
_FIELD_NAME: Final = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)")


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


@attrs.define
class Compiled:
    """A compiled configuration: what ``create_app`` wires into Falcon.

    Attributes:
        loaded: The configuration it was compiled from.
        router: The root router (mounted at ``prefix``).
        prefix: Mount prefix.
        settings: The app's settings.
        structs: Declared type name → Struct.
        services: Service plans, in declaration order.
        workers: Worker plans by name.
        setup: Callables run with the Falcon app at creation.
        box: Holds the services mapping the resource factory reads.
    """

    loaded: Loaded
    router: WebSocketRouter
    prefix: str
    settings: Settings
    structs: dict[str, Any]
    services: dict[str, ServicePlan]
    workers: dict[str, WorkerPlan]
    setup: list[Callable[..., Any]]
    box: ServiceBox


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
    return _Compiler(loaded, box or ServiceBox(), report or Report()).run()


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


class _Compiler:
    def __init__(self, loaded: Loaded, box: ServiceBox, report: Report) -> None:
        self.loaded = loaded
        self.box = box
        self.report = report
        self.structs: dict[str, Any] = {}
        self.inject: dict[Any, tuple[str, ...]] = {}  # target -> service names
        self.names: dict[str, Located] = {}
        self.class_names: set[str] = set()
        self.shadows: dict[str, ImportFailure | None] = {}
        self.importer = Importer(self.shadowed)
        #: Modules that raised while importing: the failure, every key naming them.
        self.broken_modules: dict[str, tuple[ImportFailure, list[Located]]] = {}

    # -- helpers ----------------------------------------------------------------

    def add(
        self,
        where: Located,
        expected: str,
        found: str,
        cause: BaseException | None = None,
        extra: KeyPath = (),
    ) -> None:
        source, path = where
        self.report.add(source, (*path, *extra), expected, found, cause)

    def resolve(self, where: Located, path: str) -> Any:
        try:
            return self.importer(path)
        except ImportFailure as ex:
            self.import_failed(where, ex)
            return None

    def shadowed(self, path: str) -> ImportFailure | None:
        """The failure to report when a module next to the root file is not the one imported.

        The file's folder is last on ``sys.path``: an installed package (or a
        module another app already imported) of the same name wins, and
        importing it instead would fail obscurely or run the wrong code.
        """
        top = path.partition(":")[0].partition(".")[0]
        if top in self.shadows:
            return self.shadows[top]
        self.shadows[top] = None
        root = self.loaded.root.path
        if root is None or not top.isidentifier():
            return None
        folder = root.resolve().parent
        local = next(
            (p for p in (folder / f"{top}.py", folder / top / "__init__.py") if p.is_file()), None
        )
        if local is None:
            return None
        origin = _origin(top)
        if origin is None or origin == local.resolve():
            return None
        name = local.name if local.name != "__init__.py" else f"{top}/"
        self.shadows[top] = ImportFailure(
            f"module {top!r} to be {name} next to {root.name}",
            f"{top!r} is {origin}, which comes first on sys.path or was imported already "
            f"(rename the local {name})",
            module=top,
        )
        return self.shadows[top]

    def import_failed(self, where: Located, ex: ImportFailure) -> None:
        if ex.module is None:
            self.add(where, ex.expected, ex.found, ex.cause)
        else:  # reported once for the module, by report_broken_modules()
            self.broken_modules.setdefault(ex.module, (ex, []))[1].append(where)

    def report_broken_modules(self) -> None:
        """One issue per module that failed to import, at the first key naming it."""
        from ._toml import format_path, line_of

        order = {source.name: index for index, source in enumerate(self.loaded.sources)}
        for ex, places in self.broken_modules.values():
            places.sort(key=lambda p: (order.get(p[0].name, 0), line_of(p[0].lines, p[1]) or 0))
            first, *others = places
            found = ex.found
            if others:
                also = ", ".join(
                    f"{format_path(path)} ({source.name}:{line_of(source.lines, path)})"
                    if line_of(source.lines, path) is not None
                    else f"{format_path(path)} ({source.name})"
                    for source, path in others
                )
                head, newline, trace = found.partition("\n")
                found = f"{head.rstrip(':')} (also named by {also})"
                found += f":{newline}{trace}" if newline else ""
            self.add(first, ex.expected, found, ex.cause)

    def function(
        self,
        where: Located,
        path: str,
        arity: int,
        what: str,
        is_async: bool = True,
        kwargs: tuple[str, ...] = (),
    ) -> Any:
        fn = self.resolve(where, path)
        if fn is None:
            return None
        if is_async and not inspect.iscoroutinefunction(fn):
            kind = "a regular function" if inspect.isfunction(fn) else _kind(fn)
            self.add(where, f"an async function {what}", f"{kind} {path}")
            return None
        if not callable(fn):
            self.add(where, f"a function {what}", f"{_kind(fn)} {path}")
            return None
        try:
            signature = inspect.signature(fn)
            signature.bind(*([None] * arity), **dict.fromkeys(kwargs))
        except (TypeError, ValueError):
            self.add(where, f"a function that can be called as {what}", f"{path}{_signature(fn)}")
            return None
        return fn

    # -- the run ----------------------------------------------------------------

    def run(self) -> Compiled:
        loaded = self.loaded
        types_in = {name: (where, decl) for name, (where, decl) in loaded.types.items()}
        by_name: dict[str, tuple[KeyPath, Any]] = {}
        sources: dict[str, Source] = {}
        for name, ((source, path), decl) in types_in.items():
            if not name.isidentifier():
                self.add((source, path), "a type name that is a Python identifier", repr(name))
                continue
            by_name[name] = (path, decl)
            sources[name] = source
        structs, problems = compile_types(by_name, self.importer)
        for problem in problems:
            # a problem's path starts with the type's own path: find its file
            name = str(problem.path[1]) if len(problem.path) > 1 else ""
            source = sources.get(name, loaded.root)
            if problem.failure is not None:
                self.import_failed((source, problem.path), problem.failure)
            else:
                self.report.add(source, problem.path, problem.expected, problem.found)
        self.structs = structs

        services = self.compile_services()
        workers = self.compile_workers(services)
        if not loaded.app.prefix.startswith("/"):
            self.add(
                (loaded.root, ("app", "prefix")),
                "a prefix starting with '/'",
                repr(loaded.app.prefix),
            )
        setup = [
            fn
            for index, path in enumerate(loaded.app.setup)
            if (
                fn := self.function(
                    (loaded.root, ("app", "setup", index)), path, 1, "setup(app)", is_async=False
                )
            )
            is not None
        ]
        router = self.compile_router("", loaded.routes, loaded.routers, loaded.hooks)
        self.report_broken_modules()
        self.report.raise_if_any()
        return Compiled(
            loaded,
            router,
            loaded.app.prefix,
            loaded.settings,
            structs,
            services,
            workers,
            setup,
            self.box,
        )

    def compile_services(self) -> dict[str, ServicePlan]:
        plans: dict[str, ServicePlan] = {}
        for name, (where, decl) in self.loaded.services.items():
            factory = self.resolve((where[0], (*where[1], "factory")), decl.factory)
            if factory is None:
                continue
            if not callable(factory):
                self.add(
                    where,
                    "a callable factory",
                    f"{_kind(factory)} {decl.factory}",
                    extra=("factory",),
                )
                continue
            inject = tuple(n for n in _parameters(factory) if n in plans and n not in decl.kwargs)
            self.check_call(
                where,
                "factory",
                decl.factory,
                factory,
                decl.args,
                decl.kwargs,
                set(plans),
                "services declared before it",
            )
            plans[name] = ServicePlan(
                name, factory, tuple(decl.args), dict(decl.kwargs), inject, decl
            )
        return plans

    def check_call(
        self,
        where: Located,
        key: str,
        path: str,
        target: Any,
        args: Any,
        kwargs: Any,
        provided: set[str],
        what: str,
    ) -> None:
        """Report a call that will fail at startup or connect time, now."""
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError as ex:
            self.add(where, f"arguments that {path} accepts", str(ex), extra=(key,))
            return
        missing = [
            name
            for name, param in signature.parameters.items()
            if name not in bound.arguments
            and name not in provided
            and param.default is inspect.Parameter.empty
            and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        ]
        if missing:
            names = ", ".join(sorted(provided)) or "none"
            self.add(
                where,
                f"a value for every parameter of {path} (from args, kwargs or {what}: {names})",
                f"no value for {', '.join(map(repr, missing))}",
                extra=(key,),
            )

    def compile_workers(self, services: Mapping[str, ServicePlan]) -> dict[str, WorkerPlan]:
        plans: dict[str, WorkerPlan] = {}
        for name, (where, decl) in self.loaded.workers.items():
            target = self.resolve((where[0], (*where[1], "target")), decl.target)
            if target is None:
                continue
            if not inspect.iscoroutinefunction(target) and not hasattr(
                target, "__pachinko_worker__"
            ):
                self.add(
                    where, "an async function", f"{_kind(target)} {decl.target}", extra=("target",)
                )
                continue
            self.check_call(
                where,
                "target",
                decl.target,
                target,
                decl.args,
                decl.kwargs,
                {"manager", "settings", *self.loaded.services},
                "injected",
            )
            plans[name] = WorkerPlan(
                name, target, tuple(decl.args), dict(decl.kwargs), decl.restart, decl
            )
        return plans

    def compile_router(
        self,
        prefix: str,
        routes: list[tuple[Located, RouteConfig]],
        routers: list[tuple[Located, RouterConfig]],
        hooks: list[tuple[Located, str, str]],
    ) -> WebSocketRouter:
        router = WebSocketRouter(resource_factory=self.factory())
        for where, event, hook_path in hooks:
            signature = HOOK_SIGNATURES[event]
            fn = self.function(where, hook_path, len(signature.params), signature.call)
            if fn is not None:
                router.add_hook(event, fn)
        for where, route in routes:
            self.compile_route(router, None, where, route, prefix, register=True)
        for (source, path), sub in routers:
            child = self.compile_router(
                f"{prefix}/{sub.prefix}",
                [((source, (*path, "routes", i)), r) for i, r in enumerate(sub.routes)],
                [((source, (*path, "routers", i)), r) for i, r in enumerate(sub.routers)],
                router_hooks(sub.hooks, source, (*path, "hooks")),
            )
            try:
                router.add_router(sub.prefix, child)
            except RouteError as ex:
                self.add(
                    (source, path),
                    "a router whose routes do not conflict",
                    str(ex),
                    extra=("prefix",),
                )
        return router

    def factory(self) -> Callable[..., Any] | None:
        inject = self.inject
        box = self.box

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

    def compile_route(
        self,
        router: WebSocketRouter,
        parent: Any,
        where: Located,
        route: RouteConfig,
        prefix: str,
        *,
        register: bool,
    ) -> None:
        source, path = where
        template = f"{prefix}/{route.path}"
        if route.name is not None:
            if route.name in self.names:
                other_source, other_path = self.names[route.name]
                from ._toml import format_path, line_of

                line = line_of(other_source.lines, other_path)
                at = f"{other_source.name}:{line}" if line else other_source.name
                self.add(
                    where,
                    "a route name used once",
                    f"{route.name!r} used already by {format_path(other_path)} ({at})",
                    extra=("name",),
                )
            else:
                self.names[route.name] = (source, (*path, "name"))
        # NOTE: a route whose resource failed still takes its path and name, so
        #   conflicts with it are reported too (the report raises at the end).
        target = self.route_target(where, route, template) or _Placeholder
        handle = None
        if register:
            try:
                if parent is None:
                    handle = router.add_route(
                        route.path, target, *route.args, name=route.name, **route.kwargs
                    )
                else:
                    handle = parent.add_subroute(
                        route.path, target, *route.args, name=route.name, **route.kwargs
                    )
            except RouteError as ex:
                if ex.kind != "name" or route.name not in self.names:
                    # NOTE: a name used twice in the file is reported above, with both places.
                    expected, key = _ROUTE_PROBLEMS.get(ex.kind, _ROUTE_PROBLEMS["invalid"])
                    self.add(where, expected, str(ex), extra=(key,))
        for index, sub in enumerate(route.routes):
            self.compile_route(
                router,
                handle,
                (source, (*path, "routes", index)),
                sub,
                template,
                register=handle is not None,
            )

    def route_target(self, where: Located, route: RouteConfig, template: str) -> Any:
        source, path = where
        services = tuple(route.services)
        known = self.loaded.services
        for index, name in enumerate(services):
            if name not in known and ("services", name) not in self.loaded.broken:
                self.add(
                    where,
                    "a declared service (" + (", ".join(known) or "none declared") + ")",
                    repr(name),
                    extra=("services", index),
                )
        if route.resource is not None:
            built = [key for key in _BUILT_ONLY if getattr(route, key) not in (None, [], {})]
            for key in built:
                self.add(
                    where,
                    f"no {key!r} with 'resource' (it applies to resources built from handlers)",
                    f"{key} = ...",
                    extra=(key,),
                )
            target = self.resolve((source, (*path, "resource")), route.resource)
            if target is None:
                return None
            if not callable(target):
                self.add(
                    where,
                    "a resource class or factory",
                    f"{_kind(target)} {route.resource}",
                    extra=("resource",),
                )
                return None
            params = _parameters(target)
            names = tuple(n for n in known if n in params and n not in route.kwargs)
            names = tuple(dict.fromkeys((*services, *names)))
            self.check_call(
                where,
                "resource",
                route.resource,
                target,
                route.args,
                route.kwargs,
                set(names),
                "services",
            )
            if names:
                self.inject[target] = names
            return target
        return self.build_resource(where, route, services, template)

    def build_resource(
        self, where: Located, route: RouteConfig, services: tuple[str, ...], template: str
    ) -> Any:
        source, path = where
        base: Any = WebSocketResource
        if route.base is not None:
            base = self.resolve((source, (*path, "base")), route.base)
            if base is None:
                return None
            if not (isinstance(base, type) and issubclass(base, WebSocketResource)):
                self.add(
                    where,
                    "a WebSocketResource subclass",
                    f"{_kind(base)} {route.base}",
                    extra=("base",),
                )
                return None
        wire = route.wire or getattr(base, "wire", "flat")
        tag_field = route.tag_field or getattr(base, "tag_field", "type")
        namespace: dict[str, Any] = {"wire": wire, "tag_field": tag_field}
        ok = True
        taken = set(dir(base)) | RESERVED | {"types"}
        fields = tuple(_FIELD_NAME.findall(template))
        for tag, raw in route.handlers.items():
            decl = raw if isinstance(raw, HandlerConfig) else HandlerConfig(handler=raw)
            hpath = (*path, "handlers", tag)
            hwhere = (source, (*hpath, "handler") if isinstance(raw, HandlerConfig) else hpath)
            fn = self.function(hwhere, decl.handler, 3, "(resource, ws, payload)")
            struct = None
            if decl.payload is not None:
                struct = self.payload(source, (*hpath, "payload"), decl.payload)
                if struct is None:
                    ok = False
            if fn is None or not ok:
                ok = False
                continue
            if struct is not None and wire == "flat":
                # NOTE: checked here for a precise error; the core builds the tagged variant.
                try:
                    msgspec.defstruct(
                        struct.__name__,
                        [],
                        bases=(struct,),
                        tag=tag,
                        tag_field=tag_field,
                        kw_only=True,
                    )
                except (TypeError, ValueError) as ex:
                    self.add(
                        (source, (*hpath, "payload")),
                        f"a payload type that can be tagged on field {tag_field!r}",
                        f"{decl.payload}: {ex}",
                    )
                    ok = False
                    continue
            method = handler_name(tag)
            if method in taken or method in namespace or not snake_case(tag):
                method = f"handle_{len(namespace)}_{snake_case(tag) or 'message'}"
            handler = _copy_function(fn)
            if struct is not None:
                # The payload type reaches the dispatcher the way a Python user
                # gives it: as the annotation of the handler's payload parameter.
                payload_param = list(inspect.signature(handler).parameters)[2]
                handler.__annotations__ = {**handler.__annotations__, payload_param: struct}
            try:
                namespace[method] = handles_message(tag, strict=decl.strict)(handler)
            except HandlerDefinitionError as ex:
                self.add((source, hpath), "a handler for a valid message type", str(ex))
                ok = False
        sends: list[Any] = []
        for index, name in enumerate(route.sends):
            struct = self.payload(source, (*path, "sends", index), name)
            if struct is None:
                ok = False
            else:
                sends.append(struct)
        namespace["sends"] = tuple(sends)
        if route.handlers and getattr(base, "schema", None) is not None:
            # NOTE: the declared handlers define the message types (and their
            #   payload Structs, maybe rebuilt from TOML); the base's schema
            #   would otherwise pit its own Structs against them.
            namespace["schema"] = None
        # Typed sends: handlers build declared types as resource.types.Name(...).
        namespace["types"] = types.SimpleNamespace(**self.structs)
        lifecycle = (
            ("on_connect", route.on_connect, 3, "(resource, req, ws, **params)", fields, True),
            ("on_disconnect", route.on_disconnect, 3, "(resource, ws, close_code)", (), True),
            ("on_unhandled", route.on_unhandled, 3, "(resource, ws, error)", (), True),
            ("get_child_context", route.child_context, 1, "(resource) -> dict", (), False),
        )
        for attr, value, arity, what, kwargs, is_async in lifecycle:
            if value is None:
                continue
            key = "child_context" if attr == "get_child_context" else attr
            fn = self.function((source, (*path, key)), value, arity, what, is_async, kwargs)
            if fn is None:
                ok = False
            else:
                namespace[attr] = fn
        if route.hooks is not None:
            for event, signature in HOOK_SIGNATURES.items():
                value = getattr(route.hooks, event)
                if value is None:
                    continue
                fn = self.function(
                    (source, (*path, "hooks", event)),
                    value,
                    len(signature.params),
                    signature.call,
                )
                if fn is None:
                    ok = False
                else:
                    namespace[event] = fn
        if base.__init__ is object.__init__:
            # A built resource stores its kwargs and services as attributes.
            for name in (*route.kwargs, *services):
                if name in taken or not name.isidentifier():
                    self.add(
                        where,
                        "keyword arguments and services that are free attribute names",
                        repr(name),
                        extra=("kwargs", name) if name in route.kwargs else (),
                    )
                    ok = False
            if route.args:
                self.add(
                    where,
                    "no positional 'args' for a resource built from handlers "
                    "(use kwargs: they become attributes)",
                    f"{len(route.args)} args",
                    extra=("args",),
                )
                ok = False
            namespace["__init__"] = _store_attributes
        else:
            # The base's own constructor: services are injected by parameter name.
            params = _parameters(base)
            found = tuple(n for n in self.loaded.services if n in params and n not in route.kwargs)
            services = tuple(dict.fromkeys((*services, *found)))
            self.check_call(
                where,
                "base",
                route.base or "",
                base,
                route.args,
                route.kwargs,
                set(services),
                "services",
            )
        if not ok:
            return None
        name = self.class_name(route)
        # NOTE: what the class was built from: hot reload diffs it, export writes it back.
        namespace["__pachinko_declaration__"] = msgspec.to_builtins(
            msgspec.structs.replace(route, routes=[])
        )
        namespace["__pachinko_services__"] = services
        namespace["__module__"] = "pachinko.config.built"
        namespace["__qualname__"] = name
        try:
            cls = types.new_class(name, (base,), {}, lambda ns: ns.update(namespace))
        except (HandlerDefinitionError, TypeError, ValueError) as ex:
            self.add(where, "handlers that fit their message types", str(ex), extra=("handlers",))
            return None
        if services:
            self.inject[cls] = services
        return cls

    def payload(self, source: Source, path: KeyPath, name: str) -> Any:
        if name in self.structs:
            return self.structs[name]
        if name in self.loaded.types or ("types", name) in self.loaded.broken:
            return None  # the type has errors, reported where it is declared
        if is_import_path(name):
            value = self.resolve((source, path), name)
            if value is None:
                return None
            if isinstance(value, type) and issubclass(value, msgspec.Struct):
                return value
            self.add((source, path), "a msgspec.Struct subclass", f"{_kind(value)} {name}")
            return None
        declared = [*self.loaded.types, *(n for k, n in self.loaded.broken if k == "types")]
        known = ", ".join(declared) or "none declared"
        self.add(
            (source, path), f"a declared type ({known}) or an import path to a Struct", repr(name)
        )
        return None

    def class_name(self, route: RouteConfig) -> str:
        stem = route.name or route.path
        words = re.findall(r"[A-Za-z0-9]+", stem)
        base = "".join(w[:1].upper() + w[1:] for w in words) or "Root"
        if base[0].isdigit():
            base = "R" + base
        name = f"{base}Resource"
        count = 2
        while name in self.class_names:
            name = f"{base}Resource{count}"
            count += 1
        self.class_names.add(name)
        return name


class _Placeholder:
    """Stands in for a resource that failed to compile (never served)."""


def _store_attributes(self: Any, **kwargs: Any) -> None:
    """Store the route's kwargs and injected services as attributes."""
    for key, value in kwargs.items():
        setattr(self, key, value)


def _copy_function(fn: Any) -> Any:
    """A fresh function object with ``fn``'s code: marks set on it stay ours.

    NOTE: ``handles_message`` marks the function object; the same user
    function may serve several routes, tags or reloads, so each gets a copy
    (no wrapper: no extra call per message).
    """
    if isinstance(fn, types.FunctionType):
        copy = types.FunctionType(
            fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
        )
        copy.__kwdefaults__ = fn.__kwdefaults__
        copy.__annotations__ = dict(fn.__annotations__)
        copy.__qualname__ = fn.__qualname__
        copy.__module__ = fn.__module__
        copy.__doc__ = fn.__doc__
        copy.__dict__.update(
            {k: v for k, v in fn.__dict__.items() if not k.startswith("__pachinko")}
        )
        copy.__pachinko_origin__ = fn  # type: ignore[attr-defined]  # for export
        return copy

    async def call(resource: Any, ws: Any, payload: Any) -> Any:
        return await fn(resource, ws, payload)

    call.__name__ = getattr(fn, "__name__", "handler")
    call.__qualname__ = getattr(fn, "__qualname__", call.__name__)
    call.__pachinko_origin__ = fn  # type: ignore[attr-defined]  # for export
    return call


def _origin(top: str) -> Path | None:
    """Where the top-level module ``top`` is (or would be) imported from."""
    module = sys.modules.get(top)
    try:
        spec = module.__spec__ if module is not None else importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin is not None and spec.has_location:
        return Path(spec.origin).resolve()
    locations = list(spec.submodule_search_locations or ())
    return Path(locations[0]).resolve() if locations else None


def _parameters(target: Any) -> tuple[str, ...]:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return ()
    return tuple(signature.parameters)


def _signature(fn: Any) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _kind(value: Any) -> str:
    if isinstance(value, type):
        return "a class"
    if inspect.ismodule(value):
        return "a module"
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return "a function"
    return f"a {type(value).__name__}"
