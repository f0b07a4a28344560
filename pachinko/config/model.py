"""The routes.toml file format, as msgspec Structs that reject unknown keys.

Every table of the file is one Struct below; ``docs/toml-reference.md`` is
generated from them (``python -m pachinko.config.reference``). Values are
checked by :mod:`pachinko.config.validate`, which reports every problem of
a file at once, then converted into these Structs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..settings import Settings
from ..workers import RestartPolicy

__all__ = [
    "AppConfig",
    "ConfigFile",
    "FieldConfig",
    "HandlerConfig",
    "HooksConfig",
    "ResourceHooksConfig",
    "RoomConfig",
    "RouteConfig",
    "RouterConfig",
    "ServiceConfig",
    "TypeConfig",
    "WorkerConfig",
]

ImportPath = Annotated[str, msgspec.Meta(description="an import path 'package.module:attribute'")]
Hooks = ImportPath | list[ImportPath]
# NOTE: `int | float` keeps a bound as written (`gt = 1` stays 1 in messages and export).
_PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class _Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Base of every table: unknown keys are errors, never ignored."""


class AppConfig(_Table):
    """``[app]``: how the file is wired into the Falcon app (root file only).

    Attributes:
        prefix: Mount prefix of the root router (``/ws``).
        setup: Import paths of callables run once with the ``falcon.asgi.App``
            when the app is created (add HTTP routes, middleware, ...).
        reload: Watch this file and the files it includes, and swap the
            routes in when they change (development only).
        authenticate: Import path of ``authenticate(req)`` (sync or async),
            run at every handshake: returns the ``pachinko.User`` or refuses
            (``None`` or ``AuthenticationFailed``: 3401, HTTP 401). See
            ``pachinko.auth`` for signed tokens.
        position_field: Name of the field that carries the position of each
            broadcast to a room with history (see ``[rooms]``); reserved in
            messages broadcast to such rooms.
        metrics: Path of a Prometheus endpoint on the app (``"/metrics"``;
            needs the ``metrics`` extra, see docs/observability.md).
    """

    prefix: str = "/ws"
    setup: list[ImportPath] = []
    reload: bool = False
    authenticate: ImportPath | None = None
    position_field: Annotated[str, msgspec.Meta(min_length=1)] = "_pos"
    metrics: str | None = None


class HooksConfig(_Table):
    """``[hooks]`` of a router: global hooks, each an import path or a list of them.

    Each hook is an async function called with ``(resource, ...)`` as listed;
    hooks of an outer router run around those of an inner one.

    Attributes:
        One per hook event, called as :data:`pachinko.hooks.HOOK_SIGNATURES` lists.
    """

    before_connect: Hooks = []
    after_connect: Hooks = []
    before_receive: Hooks = []
    after_receive: Hooks = []
    before_disconnect: Hooks = []
    on_error: Hooks = []
    authorize_join: Hooks = []


class ResourceHooksConfig(_Table):
    """``hooks`` of a route built from handlers: one function per event.

    The function becomes the resource method of that name, so it is called
    with the same arguments as a global hook (the resource first).

    Attributes:
        One per hook event, called as :data:`pachinko.hooks.HOOK_SIGNATURES` lists.
    """

    before_connect: ImportPath | None = None
    after_connect: ImportPath | None = None
    before_receive: ImportPath | None = None
    after_receive: ImportPath | None = None
    before_disconnect: ImportPath | None = None
    on_error: ImportPath | None = None
    authorize_join: ImportPath | None = None


class FieldConfig(_Table):
    """A field of a declared message type (or just its type as a string).

    Attributes:
        type: ``str``, ``int``, ``float``, ``bool``, ``datetime``, ``date``,
            ``uuid``, ``any``, a declared type's name, an import path to a
            Struct, ``list[T]``, ``dict[str, T]`` or ``optional[T]``.
        enum: Allowed values (a literal type); ``type`` may then be omitted.
        default: Default value; makes the field optional.
        required: For ``optional[T]`` fields, which default to null unless
            this is true.
        min_length: Minimum length of a string, list or map.
        max_length: Maximum length of a string, list or map.
        pattern: Regular expression a string must match (``re.search``).
        ge: Number must be >= this.
        gt: Number must be > this.
        le: Number must be <= this.
        lt: Number must be < this.
        multiple_of: Number must be a multiple of this.
        description: Documentation (JSON Schema, AsyncAPI).
    """

    type: str | None = None
    enum: list[str | int] | None = None
    default: Any = msgspec.UNSET
    required: bool | None = None
    min_length: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_length: Annotated[int, msgspec.Meta(ge=0)] | None = None
    pattern: str | None = None
    ge: int | float | None = None
    gt: int | float | None = None
    le: int | float | None = None
    lt: int | float | None = None
    multiple_of: _PositiveInt | _PositiveFloat | None = None
    description: str | None = None


class TypeConfig(_Table):
    """``[types.Name]``: a message type, compiled with ``msgspec.defstruct``.

    Attributes:
        fields: Field name → type string or field table, in order.
        struct: Instead of ``fields``: an import path to a ``msgspec.Struct``.
        tag: Message type tag, for server-to-client types (typed sends).
        tag_field: Field holding the tag.
        description: Documentation: the Struct's docstring, so the JSON
            Schema, the AsyncAPI message and export show it (not with
            ``struct``: that Struct's own docstring describes it).
    """

    fields: dict[str, str | FieldConfig] = {}
    struct: ImportPath | None = None
    tag: str | None = None
    tag_field: str = "type"
    description: str | None = None


class HandlerConfig(_Table):
    """A message handler (or just its import path as a string).

    Attributes:
        handler: Import path of ``async def handler(resource, ws, payload)``.
        payload: Name of a declared type, or an import path to a Struct; the
            message is validated into it. Omitted: the handler's own
            annotation decides (raw JSON value if it has none).
        strict: Reject unknown fields at every depth.
        reply: Name of a declared type, or an import path to a Struct: the
            message type is a request, the handler's return value is sent as
            its reply with the request's correlation id (``id``). Omitted:
            the handler's own return annotation decides.
    """

    handler: ImportPath
    payload: str | None = None
    strict: bool = True
    reply: str | None = None


class RouteConfig(_Table):
    """``[[routes]]``: a route and its resource.

    The resource is either imported (``resource``) or built from the keys
    below it (``handlers``, ``hooks``, ``on_connect``, ...).

    Attributes:
        path: Falcon-style template below the router's prefix.
        name: Route name, for ``url_for``; unique in the whole file.
        resource: Import path of a resource class or factory.
        args: Positional arguments for the resource's constructor.
        kwargs: Keyword arguments for the constructor. A built resource
            stores them (and its services) as attributes; its ``types``
            attribute holds the declared types (``resource.types.Joined``).
        services: Services injected into the resource by parameter name
            (a built resource gets them as attributes).
        base: Base class of a built resource (a WebSocketResource subclass).
        wire: ``flat`` or ``envelope`` (built resources).
        tag_field: Field holding the message type (built resources).
        handlers: Message type → handler (built resources).
        sends: Declared types this resource sends (documentation, AsyncAPI).
        hooks: Resource hooks (built resources).
        on_connect: ``async (resource, req, ws, **params) -> bool``.
        on_disconnect: ``async (resource, ws, close_code)``.
        on_unhandled: ``async (resource, ws, error)``.
        child_context: ``(resource) -> dict`` for nested routes.
        routes: Nested routes (``add_subroute``): their paths continue this one.
    """

    path: str
    name: str | None = None
    resource: ImportPath | None = None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    services: list[str] = []
    base: ImportPath | None = None
    wire: Literal["flat", "envelope"] | None = None
    tag_field: str | None = None
    handlers: dict[str, ImportPath | HandlerConfig] = {}
    sends: list[str] = []
    hooks: ResourceHooksConfig | None = None
    on_connect: ImportPath | None = None
    on_disconnect: ImportPath | None = None
    on_unhandled: ImportPath | None = None
    child_context: ImportPath | None = None
    routes: list[RouteConfig] = []


class RouterConfig(_Table):
    """``[[routers]]``: a nested router (``add_router``) with its own hooks.

    Attributes:
        prefix: Prefix below the enclosing router.
        hooks: Hooks that run inside the enclosing router's.
        routes: Its routes.
        routers: Routers nested in it.
    """

    prefix: str
    hooks: HooksConfig | None = None
    routes: list[RouteConfig] = []
    routers: list[RouterConfig] = []


class ServiceConfig(_Table):
    """``[services.name]``: created once at startup, injected by parameter name.

    Attributes:
        factory: Import path of a callable (sync or async) returning the
            service. Its parameters named like services declared before it
            receive them.
        args: Positional arguments.
        kwargs: Keyword arguments.
    """

    factory: ImportPath
    args: list[Any] = []
    kwargs: dict[str, Any] = {}


class WorkerConfig(_Table):
    """``[workers.name]``: a background task bound to the app's lifespan.

    Attributes:
        target: Import path of an async function. Parameters named
            ``manager`` or like a service receive them.
        args: Positional arguments.
        kwargs: Keyword arguments.
        restart: Supervision: restart on failure (the fields of
            ``pachinko.RestartPolicy``). Without it a crash fails the app.
    """

    target: ImportPath
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    restart: RestartPolicy | None = None


class RoomConfig(_Table):
    """``[rooms."PATTERN"]``: what a room, or every room of a pattern, keeps and allows.

    The key is a room name (``lobby``) or a pattern ending in ``*``
    (``"auction:*"``; ``"*"`` is every room). The most specific declaration
    wins, whole: an exact name, then the longest pattern. Compiled into
    ``pachinko.RoomPolicy`` (``install(rooms=...)``).

    Attributes:
        history: Broadcasts kept per room, for clients that reconnect with
            their position (``since``) and late joiners (``last``); 0: none.
        history_ttl: Seconds a kept broadcast lives (omitted: until newer
            ones push it out); needs ``history``.
        presence: Push ``presence`` join/leave events to the room (once per
            user, across processes) and list its members with their info.
        authorize: Import path of ``authorize(resource, room)`` (sync or
            async) returning true when the connection may join (a room no
            declaration names: every join the hooks allow).
    """

    history: Annotated[int, msgspec.Meta(ge=0)] = 0
    history_ttl: _PositiveInt | _PositiveFloat | None = None
    presence: bool = False
    authorize: ImportPath | None = None


class ConfigFile(_Table):
    """A routes.toml file (the root file, or one it includes).

    Attributes:
        include: Other TOML files (relative to this one) merged into it.
        app: How the file is wired into the Falcon app (root file only).
        settings: Limits, security and backend: the fields of
            ``pachinko.Settings`` (root file only).
        rooms: Room policies by room name or pattern (history, presence,
            join authorization).
        types: Message types by name.
        services: Services by name.
        workers: Workers by name.
        hooks: Global hooks of the root router.
        routes: Routes of the root router.
        routers: Nested routers.
    """

    include: list[str] = []
    app: AppConfig | None = None
    settings: Settings | None = None
    rooms: dict[str, RoomConfig] = {}
    types: dict[str, TypeConfig] = {}
    services: dict[str, ServiceConfig] = {}
    workers: dict[str, WorkerConfig] = {}
    hooks: HooksConfig | None = None
    routes: list[RouteConfig] = []
    routers: list[RouterConfig] = []
