"""WebSocketRouter: Falcon-style templates, compiled into a segment trie.

Templates follow Falcon's syntax (``/rooms/{room}``, ``/items/{id:int}``,
``/files/{rest:path}``, ``/v{major:int}.{minor:int}``) and reuse Falcon's
converter classes. Matching walks one trie node per path segment with a dict
lookup for literal segments, so its cost depends on the path's depth, not on
the number of routes (Falcon's own compiled router tests literal siblings one
after another).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final
from urllib.parse import quote

import attrs
from falcon.routing import converters as _falcon_converters

from .errors import RouteError
from .hooks import HOOK_EVENTS, HookFn, has_own_hooks

__all__ = ["Route", "RouteInfo", "WebSocketRouter"]

_FIELD: Final = re.compile(r"{(?P<name>[^}:(]*)(?::(?P<conv>[^}(]*)(?:\((?P<args>[^}]*)\))?)?}")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

ConverterMap = dict[str, type[_falcon_converters.BaseConverter]]


def _builtin_converters() -> ConverterMap:
    return dict(_falcon_converters.BUILTIN)


def _parse_converter_args(where: str, argstr: str) -> tuple[list[Any], dict[str, Any]]:
    """Parse ``3, min=1`` into literal positional and keyword arguments."""
    try:
        call = ast.parse(f"f({argstr})", mode="eval").body
        if not isinstance(call, ast.Call):
            raise SyntaxError(argstr)
        args = [ast.literal_eval(node) for node in call.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError) as ex:
        raise RouteError(
            f"{where}: converter arguments must be Python literals, got ({argstr})"
        ) from ex
    return args, kwargs


def _require_str(call: str, what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{call}(): {what} must be a str, got {type(value).__name__}")


def join_paths(prefix: str, path: str) -> str:
    """Join two template parts with exactly one ``/`` between them.

    A trailing slash of ``path`` is kept (``/a`` and ``/a/`` are different
    routes, as in Falcon); a ``path`` of ``/`` (a router's root) is the
    prefix itself.
    """
    if not path.strip("/"):
        return prefix or "/"
    return prefix.rstrip("/") + "/" + path.lstrip("/")


def split_path(path: str) -> list[str]:
    """Split a request path (below the mount) into segments, as Falcon does.

    Leading slashes are dropped, a trailing slash leaves an empty last
    segment: ``/a/`` is ``["a", ""]``, ``/`` is ``[""]``.
    """
    return path.lstrip("/").split("/")


class _Field:
    """One ``{name:conv(args)}`` field of a template."""

    __slots__ = ("converter", "name")

    def __init__(self, name: str, converter: _falcon_converters.BaseConverter | None) -> None:
        self.name = name
        self.converter = converter


class _Segment:
    """A path segment containing one or more fields."""

    __slots__ = ("fields", "key", "pattern", "raw", "simple")

    def __init__(self, raw: str, fields: list[_Field], key: str) -> None:
        self.raw = raw
        self.fields = fields
        self.key = key  # shape of the segment without field names: detects conflicts
        self.simple = len(fields) == 1 and _FIELD.fullmatch(raw) is not None
        if self.simple:
            self.pattern = None
        else:
            parts: list[str] = []
            pos = 0
            for match in _FIELD.finditer(raw):
                parts.append(re.escape(raw[pos : match.start()]))
                parts.append(f"(?P<{match.group('name')}>.+)")
                pos = match.end()
            parts.append(re.escape(raw[pos:]))
            self.pattern = re.compile("".join(parts) + r"\Z")

    def match(self, text: str, params: dict[str, Any]) -> bool:
        if self.pattern is None:
            values = {self.fields[0].name: text}
        else:
            found = self.pattern.match(text)
            if found is None:
                return False
            values = found.groupdict()
        for field in self.fields:
            value: Any = values[field.name]
            if field.converter is not None:
                value = field.converter.convert(value)
                if value is None:
                    return False
            params[field.name] = value
        return True


class _Node:
    __slots__ = ("dynamic", "entry", "literals", "rest")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.dynamic: list[tuple[_Segment, _Node]] = []
        self.rest: tuple[_Field, _Node] | None = None  # a trailing {name:path}
        self.entry: Any = None


@attrs.frozen
class RouteInfo:
    """A registered route, as listed by :meth:`WebSocketRouter.routes`.

    Attributes:
        template: The full template below the mount prefix.
        name: The route's name, or ``None``.
        target: The resource class or factory.
        args: Positional arguments for the target.
        kwargs: Keyword arguments for the target.
        parent: The enclosing route of a subroute, or ``None``.
        router: The router the route was added to.
    """

    template: str
    name: str | None
    target: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    parent: RouteInfo | None
    router: WebSocketRouter = attrs.field(repr=False, eq=False)

    @property
    def resource_class(self) -> type | None:
        """The target if it is a class, else ``None`` (a factory)."""
        return self.target if isinstance(self.target, type) else None

    @property
    def chain(self) -> tuple[RouteInfo, ...]:
        """This route's ancestors and itself, outermost first."""
        return (*self.parent.chain, self) if self.parent else (self,)

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of the template's fields, in order."""
        return tuple(m.group("name") for m in _FIELD.finditer(self.template))


class Route:
    """Handle returned by :meth:`WebSocketRouter.add_route`, for subroutes."""

    __slots__ = ("_info", "_router")

    def __init__(self, router: WebSocketRouter, info: RouteInfo) -> None:
        self._router = router
        self._info = info

    @property
    def info(self) -> RouteInfo:
        """What was registered."""
        return self._info

    def add_subroute(
        self,
        path: str,
        target: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        **kwargs: Any,
    ) -> Route:
        """Add a nested resource below this route.

        A connection to the joined path builds this route's resource first,
        runs its ``on_connect``, then builds ``target`` with the keyword
        arguments returned by the parent's ``get_child_context()``; the
        child handles the messages. Both share the connection's ``state``
        unless the parent's context supplies another ``state``.
        """
        _require_str("add_subroute", "path", path)
        template = join_paths(self._info.template, path)
        return self._router._register(template, target, args, kwargs, name, self._info)


class WebSocketRouter:
    """Route WebSocket connections to per-connection resources.

    Args:
        resource_factory: Called as ``resource_factory(target, *args,
            **kwargs)`` to build each resource (sync or async); defaults to
            calling ``target`` itself. Use it for dependency injection.
        converters: Extra field converters by name, as Falcon's
            ``router_options.converters``.
    """

    def __init__(
        self,
        *,
        resource_factory: Callable[..., Any] | None = None,
        converters: dict[str, type[_falcon_converters.BaseConverter]] | None = None,
    ) -> None:
        self.resource_factory = resource_factory
        self._converters = _builtin_converters()
        self._converters.update(converters or {})
        self._routes: list[RouteInfo] = []
        self._children: list[tuple[str, WebSocketRouter]] = []
        self._parent: WebSocketRouter | None = None
        self._prefix = "/"
        self._hooks: list[tuple[str, HookFn, type | None]] = []
        # On the root: (router, event, resource class) -> hooks_for() as a tuple,
        #   resolved once per route and class; emptied when a hook or router is added.
        self._hook_cache: dict[tuple[WebSocketRouter, str, type], tuple[HookFn, ...]] = {}
        # On the root: (router, resource class) -> whether no hook applies at all.
        self._hookless_cache: dict[tuple[WebSocketRouter, type], bool] = {}
        # Prefixes the root was mounted at (any app): only for url_for() here;
        #   an app's own URLs come from its Mount, which holds its prefix.
        self._mount_prefixes: set[str] = set()
        # On the root: what each mount worked out from the hooks (its plans),
        #   forgotten when a hook or router is added (mounts serving it).
        self._plan_caches: list[dict[Any, Any]] = []
        # The root router of a tree holds the compiled table, updated on each add.
        self._trie = _Node()
        self._shapes: dict[str, str] = {}
        self._names: dict[str, RouteInfo] = {}
        self._entries: dict[int, RouteInfo] = {}
        self._ordered: list[RouteInfo] = []

    # -- registration --------------------------------------------------------

    def add_route(
        self,
        path: str,
        target: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        **kwargs: Any,
    ) -> Route:
        """Route connections to ``path`` to a new ``target(*args, **kwargs)``.

        Args:
            path: A Falcon-style template such as ``/rooms/{room}``.
            target: A :class:`~pachinko.WebSocketResource` subclass or any
                callable returning one.
            *args: Positional arguments for ``target``.
            name: Name for :meth:`url_for`; unique within the router tree.
            **kwargs: Keyword arguments for ``target``.

        Returns:
            A :class:`Route`, whose ``add_subroute`` nests resources.

        Raises:
            RouteError: The template is malformed, conflicts with a route
                already registered, or the name is taken.
            TypeError: ``path`` is not a str or ``target`` is not callable.
        """
        _require_str("add_route", "path", path)
        return self._register(join_paths("/", path), target, args, kwargs, name, None)

    def add_router(self, prefix: str, router: WebSocketRouter) -> None:
        """Nest ``router`` under ``prefix``; its hooks run inside this router's.

        Raises:
            RouteError: ``router`` is already nested, or one of its routes
                conflicts with a route of this tree.
            TypeError: ``prefix`` is not a str or ``router`` not a router.
        """
        _require_str("add_router", "prefix", prefix)
        if not isinstance(router, WebSocketRouter):
            raise TypeError(
                f"add_router({prefix!r}): expected a WebSocketRouter, got {type(router).__name__}"
            )
        if router._parent is not None or router is self or router is self.root:
            raise RouteError(f"add_router({prefix!r}): the router is already part of a tree")
        prefix = join_paths("/", prefix)
        self._parse(prefix)
        full = join_paths(self._full_prefix(), prefix)
        self.root._add_entries(
            [(info, join_paths(full, sub)) for sub, info in router._relative_routes("/")]
        )
        router._parent = self
        router._prefix = prefix
        self._children.append((prefix, router))
        router._forget_hooks()
        self.root._forget_hooks()

    def add_hook(self, event: str, hook: HookFn, *, resource: type | None = None) -> None:
        """Register a global hook for ``event`` (optionally for one resource class).

        Raises:
            ValueError: ``event`` is not one of :data:`pachinko.hooks.HOOK_EVENTS`.
        """
        if event not in HOOK_EVENTS:
            raise ValueError(
                f"add_hook(): unknown event {event!r}; expected one of {', '.join(HOOK_EVENTS)}"
            )
        self._hooks.append((event, hook, resource))
        self.root._forget_hooks()

    def _forget_hooks(self) -> None:
        """Empty the resolved hooks (a hook or a router was added)."""
        self._hook_cache.clear()
        self._hookless_cache.clear()
        for plans in self._plan_caches:
            plans.clear()

    def _register(
        self,
        template: str,
        target: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        parent: RouteInfo | None,
    ) -> Route:
        if not callable(target):
            # NOTE: a TypeError, as Falcon's add_route() raises for a wrong type.
            raise TypeError(
                f"add_route({template!r}): target must be a resource class or factory, "
                f"got {target!r}"
            )
        info = RouteInfo(template, name, target, tuple(args), dict(kwargs), parent, self)
        self._parse(template)  # validate early: errors point at the add_route call
        self.root._add_entries([(info, self._full_prefix())])
        self._routes.append(info)
        return Route(self, info)

    def _full_prefix(self) -> str:
        if self._parent is None:
            return "/"
        return join_paths(self._parent._full_prefix(), self._prefix)

    def _relative_routes(self, prefix: str) -> Iterator[tuple[str, RouteInfo]]:
        for info in self._routes:
            yield prefix, info
        for child_prefix, child in self._children:
            yield from child._relative_routes(join_paths(prefix, child_prefix))

    def _add_entries(self, items: list[tuple[RouteInfo, str]]) -> None:
        """Check then insert routes into this (root) router's trie; all or nothing."""
        staged: list[tuple[int, RouteInfo, list[tuple[str | _Segment | _Field, str]], str]] = []
        shapes: dict[str, str] = {}
        names: dict[str, str] = {}
        entries: dict[int, RouteInfo] = {}
        for info, prefix in items:
            template = join_paths(prefix, info.template)
            parent = info.parent and (
                entries.get(id(info.parent)) or self._entries[id(info.parent)]
            )
            entry = attrs.evolve(info, template=template, parent=parent)
            entries[id(info)] = entry
            segments = self._parse(template, info.router._converters)
            shape = "/" + "/".join(key for _, key in segments)
            other = self._shapes.get(shape) or shapes.get(shape)
            if other is not None:
                raise RouteError(
                    f"route {template!r} conflicts with {other!r}: both match the same paths",
                    kind="conflict",
                )
            shapes[shape] = template
            if info.name is not None:
                other = (
                    self._names[info.name].template
                    if info.name in self._names
                    else names.get(info.name)
                )
                if other is not None:
                    raise RouteError(
                        f"route name {info.name!r} is used twice: by {other!r} and {template!r}",
                        kind="name",
                    )
                names[info.name] = template
            staged.append((id(info), entry, segments, shape))
        for key, entry, segments, shape in staged:
            _insert(self._trie, segments, entry)
            self._shapes[shape] = entry.template
            if entry.name is not None:
                self._names[entry.name] = entry
            self._entries[key] = entry
            self._ordered.append(entry)

    # -- introspection -------------------------------------------------------

    def routes(self) -> list[RouteInfo]:
        """Every route of the tree, in registration order, templates in full."""
        return list(self.root._ordered)

    @property
    def own_routes(self) -> list[RouteInfo]:
        """Routes added to this router itself, templates relative to it."""
        return list(self._routes)

    @property
    def nested(self) -> list[tuple[str, WebSocketRouter]]:
        """Routers nested with :meth:`add_router`, as ``(prefix, router)``."""
        return list(self._children)

    @property
    def hooks(self) -> list[tuple[str, HookFn, type | None]]:
        """Global hooks of this router, as ``(event, hook, resource class or None)``."""
        return list(self._hooks)

    @property
    def root(self) -> WebSocketRouter:
        """The outermost router of the tree."""
        return self._parent.root if self._parent else self

    def hooks_for(self, event: str, resource_class: type) -> list[HookFn]:
        """Global hooks of ``event`` that apply to ``resource_class``, outermost first."""
        outer = self._parent.hooks_for(event, resource_class) if self._parent else []
        return outer + [
            fn
            for ev, fn, only in self._hooks
            if ev == event and (only is None or issubclass(resource_class, only))
        ]

    def _hooks_of(self, event: str, resource_class: type) -> tuple[HookFn, ...]:
        """:meth:`hooks_for` as a tuple, resolved once per (event, class).

        PERF: a handshake asks for six events; walking the router tree and
        filtering by class each time was about a fifth of a connection's cost
        (benchmarks/bench_connect.py).
        """
        cache = self.root._hook_cache
        key = (self, event, resource_class)
        found = cache.get(key)
        if found is None:
            found = cache[key] = tuple(self.hooks_for(event, resource_class))
        return found

    def _hookless(self, resource_class: type) -> bool:
        """Whether no hook of any event applies to ``resource_class`` (cached).

        No global hook here or in an outer router, and no method named after
        an event on the class. PERF: a handshake of a class without hooks
        then resolves none of the seven events (benchmarks/bench_connect.py).
        """
        cache = self.root._hookless_cache
        key = (self, resource_class)
        found = cache.get(key)
        if found is None:
            found = cache[key] = not has_own_hooks(resource_class) and not any(
                self._hooks_of(event, resource_class) for event in HOOK_EVENTS
            )
        return found

    # -- matching ------------------------------------------------------------

    def match(self, path: str) -> tuple[RouteInfo, dict[str, Any]] | None:
        """Find the route for ``path`` (below the mount prefix) and its params.

        As in Falcon's router, leading slashes are ignored and a trailing
        slash matters: ``/a/`` matches the template ``/a/``, not ``/a``.
        """
        segments = split_path(path)
        params: dict[str, Any] = {}
        entry = _find(self.root._trie, segments, 0, params)
        if entry is None:
            return None
        return entry, params

    def url_for(self, name: str, /, **params: Any) -> str:
        """Build the URL path of the route called ``name``, mount prefix included.

        Values are converted with ``str()`` and percent-encoded. The prefix
        is the one the router is mounted at; a router mounted at several
        prefixes (on one app or several) cannot tell which one is meant: ask
        the app (``pachinko.runtime_of(app).url_for(...)``), the
        mount (what :func:`~pachinko.mount` returns) or a resource.
        A router never mounted gives the path below the mount.

        Raises:
            RouteError: No such route, a field value is missing, or the
                router is mounted at more than one prefix.
        """
        path = self._path_for(name, params)
        prefixes = self.root._mount_prefixes
        if len(prefixes) > 1:
            raise RouteError(
                f"url_for({name!r}): the router is mounted at "
                f"{' and '.join(map(repr, sorted(prefixes)))}, so the prefix is ambiguous; "
                "ask the app instead: pachinko.runtime_of(app).url_for(...), "
                "mount.url_for(...), or self.url_for(...) in a resource"
            )
        return join_paths(next(iter(prefixes)), path) if prefixes else path

    def _path_for(self, name: str, params: dict[str, Any]) -> str:
        """The path of the route called ``name``, below the mount prefix."""
        root = self.root
        try:
            info = root._names[name]
        except KeyError:
            known = ", ".join(sorted(root._names)) or "none"
            raise RouteError(f"url_for(): no route named {name!r} (known: {known})") from None
        missing = [f for f in info.field_names if f not in params]
        if missing:
            raise RouteError(
                f"url_for({name!r}): missing value for {', '.join(missing)} "
                f"in template {info.template!r}"
            )

        def fill(match: re.Match[str]) -> str:
            value = params[match.group("name")]
            safe = "/" if match.group("conv") == "path" else ""
            return quote(str(value), safe=safe)

        return _FIELD.sub(fill, info.template)

    def _parse(
        self, template: str, converters: ConverterMap | None = None
    ) -> list[tuple[str | _Segment | _Field, str]]:
        """Split ``template`` into literal strings, field segments and a path field."""
        converters = converters or self._converters
        where = f"route {template!r}"
        if not template.startswith("/"):
            raise RouteError(f"{where}: templates must start with '/'")
        if re.search(r"\s", template):
            raise RouteError(f"{where}: templates may not contain whitespace")
        raw_segments = split_path(template)
        if template.startswith("//"):
            raise RouteError(f"{where}: empty segment ('//')")
        seen: set[str] = set()
        parsed: list[tuple[str | _Segment | _Field, str]] = []
        last = len(raw_segments) - 1
        for index, raw in enumerate(raw_segments):
            if not raw and index != last:
                raise RouteError(f"{where}: empty segment ('//')")
            if "{" not in raw and "}" not in raw:
                parsed.append((raw, raw))
                continue
            fields: list[_Field] = []
            key = raw
            for match in _FIELD.finditer(raw):
                fname, conv, argstr = match.group("name", "conv", "args")
                if not _IDENTIFIER.match(fname):
                    raise RouteError(f"{where}: field name {fname!r} is not a Python identifier")
                if fname in seen:
                    raise RouteError(f"{where}: field {fname!r} appears twice")
                seen.add(fname)
                converter = None
                if conv is not None:
                    if conv not in converters:
                        raise RouteError(
                            f"{where}: unknown converter {conv!r} "
                            f"(known: {', '.join(sorted(converters))})"
                        )
                    args, kwargs = _parse_converter_args(where, argstr or "")
                    try:
                        converter = converters[conv](*args, **kwargs)
                    except (TypeError, ValueError) as ex:
                        raise RouteError(f"{where}: converter {conv!r}: {ex}") from ex
                    if conv == "path":
                        if match.group(0) != raw or index != last:
                            raise RouteError(
                                f"{where}: a 'path' field must be the whole last segment"
                            )
                        parsed.append((_Field(fname, converter), "{path}"))
                        break
                fields.append(_Field(fname, converter))
                key = key.replace(match.group(0), "{" + (match.group(0)[len(fname) + 1 :]))
            else:
                stripped = _FIELD.sub("", raw)
                if "{" in stripped or "}" in stripped:
                    raise RouteError(f"{where}: unbalanced braces in segment {raw!r}")
                parsed.append((_Segment(raw, fields, key), key))
        return parsed

    def _mounted(self, prefix: str, *plans: dict[Any, Any]) -> None:
        """Record a mount at ``prefix``; ``plans``: its caches to empty when a hook is added."""
        self._mount_prefixes.add(prefix)
        self._plan_caches.extend(plans)


def _insert(
    node: _Node, segments: Iterable[tuple[str | _Segment | _Field, str]], entry: Any
) -> None:
    for part, _key in segments:
        if isinstance(part, str):
            node = node.literals.setdefault(part, _Node())
        elif isinstance(part, _Field):
            node.rest = (part, node.rest[1] if node.rest else _Node())
            node = node.rest[1]
        else:
            # NOTE: segments are shared only when written the same, field names
            #   included: `/a/{x}/b` and `/a/{y}/c` keep their own names (Falcon
            #   refuses the pair).
            for existing, child in node.dynamic:
                if existing.raw == part.raw:
                    node = child
                    break
            else:
                child = _Node()
                node.dynamic.append((part, child))
                node.dynamic.sort(key=_specificity)
                node = child
    node.entry = entry


def _specificity(pair: tuple[_Segment, _Node]) -> int:
    """Order of trial among a node's field segments (stable for equal ranks).

    As in Falcon, segments with literal text or several fields come before a
    single field. A single field with a converter comes before a bare one
    (Falcon refuses the two side by side).
    """
    segment = pair[0]
    if not segment.simple:
        return 0
    return 1 if segment.fields[0].converter is not None else 2


def _find(node: _Node, segments: list[str], index: int, params: dict[str, Any]) -> Any:
    if index == len(segments):
        return node.entry
    text = segments[index]
    child = node.literals.get(text)
    if child is not None:
        found = _find(child, segments, index + 1, params)
        if found is not None:
            return found
    for segment, child in node.dynamic:
        trial: dict[str, Any] = {}
        if segment.match(text, trial):
            found = _find(child, segments, index + 1, params)
            if found is not None:
                params.update(trial)
                return found
    if node.rest is not None:
        field, child = node.rest
        if child.entry is not None:
            value: Any = segments[index:]
            value = field.converter.convert(value) if field.converter else "/".join(value)
            params[field.name] = value
            return child.entry
    return None
