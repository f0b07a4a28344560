"""Write a router tree, or a whole app, back as routes.toml (with its schemas).

Each resource class becomes a route built from handlers on top of the class
itself (``base = "module:Class"``): every message type is listed with its
handler's import path and its payload schema as a ``[types]`` table, so the
file documents the API and loading it gives an equivalent router (same
templates, names, message types, schemas, wire shape; same code).
Schemas are read with ``msgspec.inspect``; a Struct whose fields have no TOML
form (renamed fields, constraints on list items, ...) is exported as an
import path (``struct = "module:Name"``) instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import msgspec.inspect as mi
import tomli_w

from .._tree import Received, RouterView, RouteView, router_tree
from ..errors import PachinkoError
from ..hooks import HOOK_EVENTS
from ..resource import WebSocketResource
from ..rooms import POSITION_FIELD, RoomPolicies
from ..router import WebSocketRouter
from ..settings import Settings
from ._checks import parameter_names
from ._resources import BUILT_MODULE
from .errors import ConfigFileError, Issue
from .imports import ImportFailure, import_path
from .model import RouteConfig, RouterConfig

if TYPE_CHECKING:
    import falcon.asgi

    from .compiler import Compiled

__all__ = ["export_app", "export_app_document", "export_document", "export_toml"]

#: Attribute of a compiled router's resource factory: resource class -> services.
_INJECT = "__pachinko_inject__"
_SCALARS: dict[type, str] = {
    mi.StrType: "str",
    mi.IntType: "int",
    mi.FloatType: "float",
    mi.BoolType: "bool",
    mi.DateTimeType: "datetime",
    mi.DateType: "date",
    mi.TimeType: "time",
    mi.UUIDType: "uuid",
    mi.AnyType: "any",
}
_CONSTRAINTS = ("min_length", "max_length", "pattern", "ge", "gt", "le", "lt", "multiple_of")
_LIFECYCLE = {
    "on_connect": "on_connect",
    "on_disconnect": "on_disconnect",
    "on_unhandled": "on_unhandled",
    "get_child_context": "child_context",
}


class _Unrepresentable(Exception):
    """A type with no TOML form (the Struct is exported by import path)."""


def export_toml(
    router: WebSocketRouter, *, prefix: str | None = None, settings: Settings | None = None
) -> str:
    """Return ``router``'s tree as a routes.toml document.

    Args:
        router: Any router of the tree (the whole tree is exported).
        prefix: Mount prefix to write as ``[app].prefix``.
        settings: Settings to write as ``[settings]`` (non-default values).

    Raises:
        ConfigError: Something cannot be named by an import path (a class or
            function defined inside a function, a lambda, a hook limited to
            one resource class).
    """
    return tomli_w.dumps(export_document(router, prefix=prefix, settings=settings))


def export_document(
    router: WebSocketRouter, *, prefix: str | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Like :func:`export_toml`, as the TOML document's dict."""
    exporter = _Exporter()
    body = exporter.router(router_tree(router.root))
    exporter.raise_if_any()
    return _document(exporter, body, {} if prefix is None else {"prefix": prefix}, settings)


def export_app(app: falcon.asgi.App[Any, Any], *, prefix: str | None = None) -> str:
    """Return a Falcon app's pachinko part as a routes.toml document.

    The app's one mounted router, its prefix and settings, its room
    policies (``[rooms]``), and its services and workers. An app configured
    from a routes.toml is written from its declarations (``[app] setup``
    included); HTTP routes and middleware that Python code added to the app
    are not pachinko's and are not written.

    Args:
        app: An app with pachinko installed and one router mounted.
        prefix: ``[app].prefix`` to write instead of the mount's.

    Raises:
        ConfigError: Something has no import path (a service factory or
            worker defined inside a function, ...); every one is named.
        PachinkoError: pachinko is not installed, or not one router is mounted.
    """
    return tomli_w.dumps(export_app_document(app, prefix=prefix))


def export_app_document(
    app: falcon.asgi.App[Any, Any], *, prefix: str | None = None
) -> dict[str, Any]:
    """Like :func:`export_app`, as the TOML document's dict."""
    from ..app import runtime_of
    from .app import Configured

    runtime = runtime_of(app)
    if len(runtime.mounts) != 1:
        raise PachinkoError(
            f"export needs an app with one mounted router, found {len(runtime.mounts)}"
        )
    mount = runtime.mounts[0]
    for component in getattr(app, "_unprepared_middleware", ()):
        if isinstance(component, Configured) and component.mount is mount:
            return _declared(component.compiled, prefix)
    exporter = _Exporter(declared=runtime.service_factories)
    services = {
        name: table
        for name, factory in runtime.service_factories.items()
        if (table := exporter.service(name, factory, runtime.service_factories)) is not None
    }
    workers = exporter.workers(runtime.declared_workers)
    body = exporter.router(router_tree(mount.router.root))
    policies = runtime.manager.room_policies
    app_table: dict[str, Any] = {"prefix": prefix or mount.prefix}
    if runtime.authenticate is not None:
        path = exporter.path_of(runtime.authenticate, "app.authenticate")
        if path is not None:
            app_table["authenticate"] = path
    if policies.position_field != POSITION_FIELD:
        app_table["position_field"] = policies.position_field
    rooms = _rooms(policies, exporter)
    exporter.raise_if_any()
    doc = _document(exporter, body, app_table, runtime.settings)
    if rooms:
        doc["rooms"] = rooms
    if services:
        doc["services"] = services
    if workers:
        doc["workers"] = workers
    return _ordered(doc)


def _document(
    exporter: _Exporter, body: dict[str, Any], app: dict[str, Any], settings: Settings | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if app:
        doc["app"] = app
    if settings is not None:
        changed = _settings(settings)
        if changed:
            doc["settings"] = changed
    if exporter.types:
        doc["types"] = exporter.types
    doc.update(body)
    return doc


def _settings(settings: Settings) -> dict[str, Any]:
    """The values that differ from the defaults (``false`` for one turned off)."""
    values = msgspec.to_builtins(settings)
    defaults = msgspec.to_builtins(Settings())
    # NOTE: TOML has no null: a setting turned off is written `false`, which
    #   the loader reads back as None.
    return {k: False if v is None else v for k, v in values.items() if defaults.get(k, v) != v}


def _rooms(policies: RoomPolicies, exporter: _Exporter) -> dict[str, Any]:
    """``[rooms]`` tables: each declared policy's values that differ from the defaults."""
    out: dict[str, Any] = {}
    for pattern, policy in policies.items():
        table: dict[str, Any] = {}
        if policy.history:
            table["history"] = policy.history
        if policy.history_ttl is not None:
            table["history_ttl"] = policy.history_ttl
        if policy.presence:
            table["presence"] = True
        if policy.authorize is not None:
            path = exporter.path_of(policy.authorize, f"rooms.{pattern}.authorize")
            if path is not None:
                table["authorize"] = path
        out[pattern] = table
    return out


#: Top-level tables in the order a person writes them.
_ORDER = ("include", "app", "settings", "rooms", "types", "services", "workers", "hooks")


def _ordered(doc: dict[str, Any]) -> dict[str, Any]:
    head = {k: doc[k] for k in _ORDER if k in doc}
    return {**head, **{k: v for k, v in doc.items() if k not in head}}


def _declared(compiled: Compiled, prefix: str | None) -> dict[str, Any]:
    """The document a configured app was compiled from, includes merged."""
    loaded = compiled.loaded
    doc: dict[str, Any] = {
        "app": {**msgspec.to_builtins(loaded.app), "prefix": prefix or loaded.app.prefix}
    }
    changed = _settings(loaded.settings)
    if changed:
        doc["settings"] = changed
    for section in ("rooms", "types", "services", "workers"):
        items = getattr(loaded, section)
        if items:
            doc[section] = {name: msgspec.to_builtins(decl) for name, (_, decl) in items.items()}
    for decl in doc.get("types", {}).values():
        if "fields" in decl:
            decl["fields"] = _in_order(decl["fields"], "type")
    hooks: dict[str, list[str]] = {}
    for _, event, path in loaded.hooks:
        hooks.setdefault(event, []).append(path)
    if hooks:
        doc["hooks"] = hooks
    if loaded.routes:
        doc["routes"] = [_route(route) for _, route in loaded.routes]
    if loaded.routers:
        doc["routers"] = [_router(router) for _, router in loaded.routers]
    return _ordered(doc)


def _route(route: RouteConfig) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(msgspec.structs.replace(route, routes=[]))
    if "handlers" in out:
        out["handlers"] = _in_order(out["handlers"], "handler")
    if route.routes:
        out["routes"] = [_route(sub) for sub in route.routes]
    return out


def _router(router: RouterConfig) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(
        msgspec.structs.replace(router, routes=[], routers=[])
    )
    if router.routes:
        out["routes"] = [_route(route) for route in router.routes]
    if router.routers:
        out["routers"] = [_router(sub) for sub in router.routers]
    return out


def _in_order(table: dict[str, Any], key: str) -> dict[str, Any]:
    """Keep the order of ``fields`` / ``handlers`` through TOML.

    NOTE: tomli_w writes a table's plain values before its sub-tables, which
    would move a field written after a sub-table up (field order is the
    wire order). After the first sub-table, plain values become ``{key = v}``.
    """
    out: dict[str, Any] = {}
    tables = False
    for name, value in table.items():
        tables = tables or isinstance(value, dict)
        out[name] = {key: value} if tables and not isinstance(value, dict) else value
    return out


class _Exporter:
    def __init__(self, declared: Mapping[str, Any] | None = None) -> None:
        self.types: dict[str, Any] = {}
        self.names: dict[Any, str] = {}
        self.problems: list[Issue] = []
        #: Services the document declares (None: a bare router, it declares none).
        self.declared = declared
        #: Declared types of built resources, written after those the routes use.
        self.extra_types: list[Any] = []

    def raise_if_any(self) -> None:
        for struct in self.extra_types:
            if isinstance(struct, type) and issubclass(struct, msgspec.Struct):
                self.struct(struct, with_tag=True)
        self.extra_types.clear()
        if self.problems:
            raise ConfigFileError(self.problems)

    def fail(self, where: str, expected: str, found: str) -> None:
        self.problems.append(Issue("<export>", where, None, expected, found))

    def path_of(self, obj: Any, where: str) -> str | None:
        obj = getattr(obj, "__pachinko_origin__", obj)
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not module or not qualname or "<" in qualname:
            self.fail(where, "a module-level class or function", repr(obj))
            return None
        path = f"{module}:{qualname}"
        try:
            found = import_path(path)
        except ImportFailure:
            found = None
        if found is not obj and getattr(found, "__func__", None) is not obj:
            self.fail(where, f"an object importable as {path!r}", repr(obj))
            return None
        return path

    # -- tree -------------------------------------------------------------------

    def router(self, tree: RouterView, where: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {}
        hooks = self.router_hooks(tree, where)
        if hooks:
            body["hooks"] = {k: v[0] if len(v) == 1 else v for k, v in hooks.items()}
        inject: Mapping[Any, Any] = getattr(tree.router.resource_factory, _INJECT, None) or {}
        routes = [
            self.route(route, f"{where}routes[{i}]", inject) for i, route in enumerate(tree.routes)
        ]
        if routes:
            body["routes"] = routes
        routers = [
            {"prefix": sub.prefix, **self.router(sub, f"{where}routers[{i}].")}
            for i, sub in enumerate(tree.routers)
        ]
        if routers:
            body["routers"] = routers
        return body

    def router_hooks(self, tree: RouterView, where: str) -> dict[str, list[str]]:
        hooks: dict[str, list[str]] = {}
        for event, fn, only in tree.hooks:
            if only is not None:
                self.fail(
                    f"{where}hooks.{event}",
                    "a hook for every resource",
                    f"a hook limited to {only.__qualname__}",
                )
                continue
            path = self.path_of(fn, f"{where}hooks.{event}")
            if path is not None:
                hooks.setdefault(event, []).append(path)
        return hooks

    def route(self, route: RouteView, where: str, inject: Mapping[Any, Any]) -> dict[str, Any]:
        info = route.info
        out: dict[str, Any] = {"path": route.path}
        if info.name is not None:
            out["name"] = info.name
        out.update(self.resource(route, where, inject))
        if info.args:
            out["args"] = list(info.args)
        if info.kwargs:
            out["kwargs"] = dict(info.kwargs)
        if route.children:
            out["routes"] = [
                self.route(child, f"{where}.routes[{i}]", inject)
                for i, child in enumerate(route.children)
            ]
        return out

    # -- resources --------------------------------------------------------------

    def resource(self, route: RouteView, where: str, inject: Mapping[Any, Any]) -> dict[str, Any]:
        target = route.info.target
        if not (isinstance(target, type) and issubclass(target, WebSocketResource)):
            return self.factory(target, where, inject)
        built = target.__module__ == BUILT_MODULE
        out = self.resource_class(route, target, built, where)
        if built:
            out.update(self.built_services(target, where))
        elif inject.get(target):
            out["services"] = self.route_services(list(inject[target]), where)
            out.update(self.lifecycle(target, where))
        return out

    def factory(self, target: Any, where: str, inject: Mapping[Any, Any]) -> dict[str, Any]:
        """A route whose target is not a resource class: ``resource = "module:factory"``."""
        path = self.path_of(target, f"{where}.resource")
        out: dict[str, Any] = {"resource": path} if path else {}
        if inject.get(target):
            out["services"] = self.route_services(list(inject[target]), where)
        return out

    def resource_class(
        self, route: RouteView, target: type, built: bool, where: str
    ) -> dict[str, Any]:
        """The keys of a resource class: base, wire shape, handlers, sends."""
        base = target.__bases__[0] if built else target
        out: dict[str, Any] = {}
        if base is not WebSocketResource:
            path = self.path_of(base, f"{where}.base")
            if path:
                out["base"] = path
        out["wire"] = getattr(target, "wire", None)
        out["tag_field"] = getattr(target, "tag_field", None)
        handlers = self.handlers(route, target, built, where)
        if handlers:
            out["handlers"] = handlers
        sends = [self.struct(msg.payload, with_tag=True) for msg in route.sent]
        if sends:
            out["sends"] = sends
        return out

    def handlers(self, route: RouteView, target: type, built: bool, where: str) -> dict[str, Any]:
        handlers: dict[str, Any] = {}
        for msg in route.received:
            path = self.handler_path(msg, target, built, f"{where}.handlers.{msg.tag}")
            if path is None:
                continue
            entry: dict[str, Any] = {"handler": path}
            if msg.payload is not None:
                entry["payload"] = self.struct(_user_struct(msg.payload), with_tag=True)
            if not msg.strict:
                entry["strict"] = False
            handlers[msg.tag] = entry
        return handlers

    def built_services(self, target: type, where: str) -> dict[str, Any]:
        """The services of a class built from a routes.toml (and its declared types)."""
        # NOTE: handlers may build any declared type (resource.types.Name):
        #   every one is written, used by a route or not.
        self.extra_types.extend(vars(getattr(target, "types", None) or object()).values())
        services = list(getattr(target, "__pachinko_services__", ()))
        return {"services": self.route_services(services, where)} if services else {}

    def lifecycle(self, target: type, where: str) -> dict[str, Any]:
        """The lifecycle methods and hooks a Python resource class defines itself."""
        own = vars(target)
        out: dict[str, Any] = {}
        for attr, key in _LIFECYCLE.items():
            if attr in own:
                path = self.path_of(own[attr], f"{where}.{key}")
                if path:
                    out[key] = path
        hooks = {
            e: p
            for e in HOOK_EVENTS
            if e in own
            if (p := self.path_of(own[e], f"{where}.hooks.{e}"))
        }
        if hooks:
            out["hooks"] = hooks
        return out

    def route_services(self, names: list[str], where: str) -> list[str]:
        if self.declared is None:
            self.fail(
                f"{where}.services",
                "services the file can declare (export the app that serves this router: "
                "its [services] are written too)",
                ", ".join(map(repr, names)),
            )
        else:
            missing = [name for name in names if name not in self.declared]
            if missing:
                self.fail(
                    f"{where}.services",
                    "services of the app (" + (", ".join(self.declared) or "none") + ")",
                    ", ".join(map(repr, missing)),
                )
        return names

    # -- services and workers ------------------------------------------------------

    def service(
        self, name: str, factory: Any, services: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        where = f"services.{name}"
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if isinstance(factory, functools.partial):
            factory, args, kwargs = factory.func, factory.args, dict(factory.keywords)
        path = self.path_of(factory, f"{where}.factory")
        if path is None:
            return None
        table: dict[str, Any] = {"factory": path}
        if args:
            table["args"] = list(args)
        if kwargs:
            table["kwargs"] = kwargs
        try:
            tomli_w.dumps(msgspec.to_builtins(table))
        except (TypeError, ValueError):
            self.fail(where, "arguments with a TOML form", repr((args, kwargs)))
            return None
        # NOTE: a declared factory gets the services declared before it by
        #   parameter name; the Python app calls it without them.
        earlier = list(services)[: list(services).index(name)]
        shadowed = [n for n in parameter_names(factory) if n in earlier and n not in kwargs]
        if shadowed:
            self.fail(
                f"{where}.factory",
                "a factory without parameters named like the services declared before it "
                "(a routes.toml would pass them)",
                f"{path} with parameter(s) " + ", ".join(map(repr, shadowed)),
            )
            return None
        return msgspec.to_builtins(table)  # type: ignore[no-any-return]

    def workers(self, declared: Iterable[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fn in declared:
            spec = getattr(fn, "__pachinko_worker__", None)
            name = spec.name if spec is not None else getattr(fn, "__name__", repr(fn))
            path = self.path_of(fn, f"workers.{name}.target")
            if path is None:
                continue
            table: dict[str, Any] = {"target": path}
            if spec is not None and spec.restart is not None:
                table["restart"] = msgspec.to_builtins(spec.restart)
            out[name] = table
        return out

    def handler_path(self, msg: Received, target: type, built: bool, where: str) -> str | None:
        if built:
            return self.path_of(msg.handler, where)
        owner = next((k for k in target.__mro__ if msg.method in vars(k)), target)
        path = self.path_of(owner, where)
        return f"{path}.{msg.method}" if path else None

    # -- schemas ----------------------------------------------------------------

    def struct(self, struct: type, *, with_tag: bool) -> str:
        key = (struct, with_tag)
        if key in self.names:
            return self.names[key]
        name = struct.__name__
        count = 2
        while name in self.types:
            name = f"{struct.__name__}{count}"
            count += 1
        self.names[key] = name
        self.types[name] = {}  # reserve the name (recursive types)
        info = mi.type_info(struct)
        assert isinstance(info, mi.StructType)
        table: dict[str, Any] = {}
        try:
            fields: dict[str, Any] = {}
            for field in info.fields:
                if field.encode_name != field.name:
                    raise _Unrepresentable(f"field {field.name!r} is renamed")
                fields[field.name] = self.field(field)
            table["fields"] = _in_order(fields, "type")
        except _Unrepresentable:
            path = self.path_of(_user_struct(struct), f"types.{name}")
            table = {"struct": path or "?"}
        if with_tag and info.tag is not None and "struct" not in table:
            table["tag"] = str(info.tag)
            if info.tag_field != "type":
                table["tag_field"] = info.tag_field
        doc = vars(struct).get("__doc__")
        if isinstance(doc, str) and doc.strip() and "struct" not in table:
            table["description"] = inspect.cleandoc(doc)
        self.types[name] = table
        return name

    def field(self, field: mi.Field) -> Any:
        """A field as ``"type"`` or as a table (enum, constraints, default, ...)."""
        tp, description, optional = _optional(field.type)
        table = self.field_type(tp, optional)
        default = _default(field)
        if default is not msgspec.NODEFAULT and default is not None:
            table["default"] = _toml_value(default)
        if optional and default is msgspec.NODEFAULT:
            table["required"] = True
        if description is not None:
            table["description"] = description
        if list(table) == ["type"]:
            return table["type"]
        return table

    def field_type(self, tp: mi.Type, optional: bool) -> dict[str, Any]:
        """``type`` and its constraints, or ``enum``."""
        if isinstance(tp, mi.LiteralType):
            if optional:
                raise _Unrepresentable("an optional literal")
            return {"enum": list(tp.values)}
        text = self.type_string(tp)
        table: dict[str, Any] = {"type": f"optional[{text}]" if optional else text}
        for key in _CONSTRAINTS:
            value = getattr(tp, key, None)
            if value is not None:
                table[key] = value
        return table

    def type_string(self, tp: mi.Type) -> str:
        for kind, name in _SCALARS.items():
            if isinstance(tp, kind):
                return name
        if isinstance(tp, mi.ListType):
            return f"list[{self.inner(tp.item_type)}]"
        if isinstance(tp, mi.DictType):
            key = self.inner(tp.key_type)
            if key not in ("str", "int"):
                raise _Unrepresentable("dict keys")
            return f"dict[{key}, {self.inner(tp.value_type)}]"
        if isinstance(tp, mi.StructType):
            return self.struct(tp.cls, with_tag=True)
        raise _Unrepresentable(type(tp).__name__)

    def inner(self, tp: mi.Type) -> str:
        if isinstance(tp, mi.Metadata):
            raise _Unrepresentable("metadata inside a container")
        if isinstance(tp, mi.UnionType):
            rest = [t for t in tp.types if not isinstance(t, mi.NoneType)]
            if len(rest) != 1 or len(rest) == len(tp.types):
                raise _Unrepresentable("a union")
            return f"optional[{self.inner(rest[0])}]"
        if any(getattr(tp, key, None) is not None for key in _CONSTRAINTS):
            raise _Unrepresentable("constraints inside a container")
        return self.type_string(tp)


def _optional(tp: mi.Type) -> tuple[mi.Type, str | None, bool]:
    """Split a field's type into its type, its description and whether it is optional."""
    tp, description = _unwrap(tp)
    if not isinstance(tp, mi.UnionType):
        return tp, description, False
    rest = [t for t in tp.types if not isinstance(t, mi.NoneType)]
    if len(rest) != 1 or len(rest) == len(tp.types) or description is not None:
        raise _Unrepresentable("a union")
    tp, description = _unwrap(rest[0])
    return tp, description, True


def _default(field: mi.Field) -> Any:
    """The field's default value (made by its factory), or ``NODEFAULT``."""
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def _toml_value(value: Any) -> Any:
    """``value`` as TOML can write it."""
    try:
        builtin = msgspec.to_builtins(value)
        tomli_w.dumps({"x": builtin})
    except (TypeError, ValueError) as ex:
        raise _Unrepresentable("a default without TOML form") from ex
    return builtin


def _unwrap(tp: mi.Type) -> tuple[mi.Type, str | None]:
    """Split ``Annotated[T, Meta(description=...)]`` into T and the description."""
    if not isinstance(tp, mi.Metadata):
        return tp, None
    extra = dict(tp.extra_json_schema or {})
    description = extra.pop("description", None)
    if extra or tp.extra:
        raise _Unrepresentable("JSON schema extras")
    return tp.type, description


def _user_struct(struct: type) -> type:
    """The user's class behind pachinko's tagged/strict variants of it (same name)."""
    while struct.__bases__ and struct.__bases__[0].__name__ == struct.__name__:
        struct = struct.__bases__[0]
    return struct
