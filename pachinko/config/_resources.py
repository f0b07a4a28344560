"""Resource classes built from a route's handlers (``type(...)`` at load).

A route declared with ``handlers`` (and maybe ``sends``, lifecycle functions,
``hooks``) becomes a :class:`~pachinko.WebSocketResource` subclass: each
handler a method marked with ``handles_message``, its payload type the
annotation of the payload parameter, as a Python user writes it. The class
is built once, at load; per message nothing of TOML remains.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Sequence
from typing import Any, Final

import attrs
import msgspec

from .._dispatch import RESERVED
from .._naming import handler_name, snake_case
from ..errors import HandlerDefinitionError
from ..hooks import HOOK_SIGNATURES
from ..resource import WebSocketResource, handles_message
from ._checks import Call, Checker, object_kind, parameter_names
from ._toml import KeyPath
from ._types import payload_struct
from .loader import Located
from .model import HandlerConfig, RouteConfig

__all__ = ["BUILT_MODULE", "ResourceClasses"]

#: ``__module__`` of every built class (export recognises them by it).
BUILT_MODULE: Final = "pachinko.config.built"
_HANDLER: Final = Call("(resource, ws, payload)", 3)
#: Lifecycle methods: (class attribute, route key, how it is called).
_LIFECYCLE: Final = (
    ("on_connect", "on_connect", Call("(resource, req, ws, **params)", 3)),
    ("on_disconnect", "on_disconnect", Call("(resource, ws, close_code)", 3)),
    ("on_unhandled", "on_unhandled", Call("(resource, ws, error)", 3)),
    ("get_child_context", "child_context", Call("(resource) -> dict", 1, is_async=False)),
)
_FIELD_NAME: Final = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)")


@attrs.frozen
class _Handler:
    """A handler declaration whose function and payload type were found."""

    tag: str
    path: KeyPath
    decl: HandlerConfig
    fn: Any
    struct: Any
    reply: Any = None


class ResourceClasses:
    """Builds the resource classes of one compilation (class names unique within it)."""

    def __init__(self, checker: Checker, structs: dict[str, Any]) -> None:
        self.checker = checker
        self.structs = structs
        self._class_names: set[str] = set()

    def build(
        self, where: Located, route: RouteConfig, services: tuple[str, ...], template: str
    ) -> tuple[type, tuple[str, ...]] | None:
        """Return the class built for ``route`` and the services it gets, or ``None``.

        Every problem is reported, not only the first.
        """
        base = self._base_class(where, route)
        if base is None:
            return None
        namespace: dict[str, Any] = {
            "wire": route.wire or getattr(base, "wire", "flat"),
            "tag_field": route.tag_field or getattr(base, "tag_field", "type"),
        }
        taken = set(dir(base)) | RESERVED | {"types"}
        methods = self._handler_methods(where, route, namespace, taken)
        sends = self._sent_types(where, route)
        lifecycle = self._lifecycle_methods(where, route, template)
        hooks = self._hook_methods(where, route)
        init, services = self._constructor(where, route, base, services, taken)
        if methods is None or sends is None or lifecycle is None or hooks is None or init is None:
            return None
        namespace.update(methods)
        namespace["sends"] = sends
        if route.handlers and getattr(base, "schema", None) is not None:
            # NOTE: the declared handlers define the message types (and their
            #   payload Structs, maybe rebuilt from TOML); the base's schema
            #   would otherwise pit its own Structs against them.
            namespace["schema"] = None
        # Typed sends: handlers build declared types as resource.types.Name(...).
        namespace["types"] = types.SimpleNamespace(**self.structs)
        namespace.update({**lifecycle, **hooks, **init})
        cls = self._new_class(where, route, base, namespace, services)
        return None if cls is None else (cls, services)

    # -- the base class -------------------------------------------------------------

    def _base_class(self, where: Located, route: RouteConfig) -> Any:
        if route.base is None:
            return WebSocketResource
        source, path = where
        base = self.checker.imported((source, (*path, "base")), route.base)
        if base is None:
            return None
        if not (isinstance(base, type) and issubclass(base, WebSocketResource)):
            found = f"{object_kind(base)} {route.base}"
            self.checker.problem(where, "a WebSocketResource subclass", found, extra=("base",))
            return None
        return base

    # -- handlers -------------------------------------------------------------------

    def _handler_methods(
        self, where: Located, route: RouteConfig, namespace: dict[str, Any], taken: set[str]
    ) -> dict[str, Any] | None:
        """Return the handler methods by name, or ``None`` if one is broken."""
        methods: dict[str, Any] = {}
        ok = True
        for tag, raw in route.handlers.items():
            handler = self._found_handler(where, tag, raw)
            # NOTE: after a broken handler, the next ones are still looked up
            #   (their imports and payload types reported) but not built.
            if handler is None or not ok:
                ok = False
                continue
            if not self._payload_can_be_tagged(where, handler, namespace):
                ok = False
                continue
            method = handler_name(tag)
            if method in taken or method in namespace or method in methods or not snake_case(tag):
                method = f"handle_{len(namespace) + len(methods)}_{snake_case(tag) or 'message'}"
            marked = self._marked_handler(where, handler)
            if marked is None:
                ok = False
            else:
                methods[method] = marked
        return methods if ok else None

    def _found_handler(self, where: Located, tag: str, raw: Any) -> _Handler | None:
        source, path = where
        decl = raw if isinstance(raw, HandlerConfig) else HandlerConfig(handler=raw)
        hpath = (*path, "handlers", tag)
        hwhere = (source, (*hpath, "handler") if isinstance(raw, HandlerConfig) else hpath)
        fn = self.checker.function_for(hwhere, decl.handler, _HANDLER)
        struct = None
        if decl.payload is not None:
            payload_where = (source, (*hpath, "payload"))
            struct = payload_struct(self.checker, self.structs, payload_where, decl.payload)
            if struct is None:
                return None
        reply = None
        if decl.reply is not None:
            reply = payload_struct(
                self.checker, self.structs, (source, (*hpath, "reply")), decl.reply
            )
            if reply is None:
                return None
        return None if fn is None else _Handler(tag, hpath, decl, fn, struct, reply)

    def _payload_can_be_tagged(
        self, where: Located, handler: _Handler, namespace: dict[str, Any]
    ) -> bool:
        """Report a payload type that a flat message cannot carry with its tag."""
        if handler.struct is None or namespace["wire"] != "flat":
            return True
        tag_field = namespace["tag_field"]
        # NOTE: checked here for a precise error; the core builds the tagged variant.
        try:
            msgspec.defstruct(
                handler.struct.__name__,
                [],
                bases=(handler.struct,),
                tag=handler.tag,
                tag_field=tag_field,
                kw_only=True,
            )
        except (TypeError, ValueError) as ex:
            self.checker.problem(
                (where[0], (*handler.path, "payload")),
                f"a payload type that can be tagged on field {tag_field!r}",
                f"{handler.decl.payload}: {ex}",
            )
            return False
        return True

    def _marked_handler(self, where: Located, handler: _Handler) -> Any:
        """Return a copy of the handler function marked with ``handles_message``."""
        fn = _copy_function(handler.fn)
        if handler.struct is not None:
            # The payload type reaches the dispatcher the way a Python user
            # gives it: as the annotation of the handler's payload parameter.
            payload_param = list(inspect.signature(fn).parameters)[2]
            fn.__annotations__ = {**fn.__annotations__, payload_param: handler.struct}
        try:
            return handles_message(handler.tag, strict=handler.decl.strict, reply=handler.reply)(fn)
        except HandlerDefinitionError as ex:
            self.checker.problem(
                (where[0], handler.path), "a handler for a valid message type", str(ex)
            )
            return None

    # -- sends, lifecycle, hooks ----------------------------------------------------

    def _sent_types(self, where: Located, route: RouteConfig) -> tuple[Any, ...] | None:
        source, path = where
        found = [
            payload_struct(self.checker, self.structs, (source, (*path, "sends", index)), name)
            for index, name in enumerate(route.sends)
        ]
        return None if any(struct is None for struct in found) else tuple(found)

    def _lifecycle_methods(
        self, where: Located, route: RouteConfig, template: str
    ) -> dict[str, Any] | None:
        fields = tuple(_FIELD_NAME.findall(template))
        declared: list[tuple[str, KeyPath, str, Call]] = []
        for attr, key, call in _LIFECYCLE:
            value = getattr(route, key)
            if value is not None:
                kwargs = fields if attr == "on_connect" else ()
                declared.append((attr, (key,), value, attrs.evolve(call, kwargs=kwargs)))
        return self._functions(where, declared)

    def _hook_methods(self, where: Located, route: RouteConfig) -> dict[str, Any] | None:
        if route.hooks is None:
            return {}
        declared = [
            (event, ("hooks", event), value, Call.of_hook(event))
            for event in HOOK_SIGNATURES
            if (value := getattr(route.hooks, event)) is not None
        ]
        return self._functions(where, declared)

    def _functions(
        self, where: Located, declared: Sequence[tuple[str, KeyPath, str, Call]]
    ) -> dict[str, Any] | None:
        """Return ``{attribute: function}`` for ``(attribute, keys, path, call)``, or ``None``."""
        source, path = where
        found = {
            attr: self.checker.function_for((source, (*path, *keys)), value, call)
            for attr, keys, value, call in declared
        }
        return None if any(fn is None for fn in found.values()) else found

    # -- construction -----------------------------------------------------------------

    def _constructor(
        self,
        where: Located,
        route: RouteConfig,
        base: Any,
        services: tuple[str, ...],
        taken: set[str],
    ) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        """Return the ``__init__`` to add (if any) and the services the class gets."""
        if base.__init__ is object.__init__:
            # A built resource stores its kwargs and services as attributes.
            return self._attribute_init(where, route, services, taken), services
        # The base's own constructor: services are injected by parameter name.
        params = parameter_names(base)
        found = tuple(
            n for n in self.checker.loaded.services if n in params and n not in route.kwargs
        )
        services = tuple(dict.fromkeys((*services, *found)))
        self.checker.check_arguments(
            where,
            "base",
            route.base or "",
            base,
            route.args,
            route.kwargs,
            set(services),
            "services",
        )
        return {}, services

    def _attribute_init(
        self, where: Located, route: RouteConfig, services: tuple[str, ...], taken: set[str]
    ) -> dict[str, Any] | None:
        ok = True
        for name in (*route.kwargs, *services):
            if name in taken or not name.isidentifier():
                self.checker.problem(
                    where,
                    "keyword arguments and services that are free attribute names",
                    repr(name),
                    extra=("kwargs", name) if name in route.kwargs else (),
                )
                ok = False
        if route.args:
            self.checker.problem(
                where,
                "no positional 'args' for a resource built from handlers "
                "(use kwargs: they become attributes)",
                f"{len(route.args)} args",
                extra=("args",),
            )
            ok = False
        return {"__init__": _store_attributes} if ok else None

    def _new_class(
        self,
        where: Located,
        route: RouteConfig,
        base: type,
        namespace: dict[str, Any],
        services: tuple[str, ...],
    ) -> type | None:
        name = self._class_name(route)
        # NOTE: what the class was built from: hot reload diffs it, export writes it back.
        namespace["__pachinko_declaration__"] = msgspec.to_builtins(
            msgspec.structs.replace(route, routes=[])
        )
        namespace["__pachinko_services__"] = services
        namespace["__module__"] = BUILT_MODULE
        namespace["__qualname__"] = name
        try:
            return types.new_class(name, (base,), {}, lambda ns: ns.update(namespace))
        except (HandlerDefinitionError, TypeError, ValueError) as ex:
            self.checker.problem(
                where, "handlers that fit their message types", str(ex), extra=("handlers",)
            )
            return None

    def _class_name(self, route: RouteConfig) -> str:
        """``RoomsRoomResource`` for ``/rooms/{room}``; unique within the compilation."""
        words = re.findall(r"[A-Za-z0-9]+", route.name or route.path)
        stem = "".join(w[:1].upper() + w[1:] for w in words) or "Root"
        if stem[0].isdigit():
            stem = "R" + stem
        name = f"{stem}Resource"
        count = 2
        while name in self._class_names:
            name = f"{stem}Resource{count}"
            count += 1
        self._class_names.add(name)
        return name


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
