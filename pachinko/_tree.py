"""Walk a router tree: its routes, the messages of their resources, nested routers.

The CLI's route table, the AsyncAPI document and the routes.toml export read
a tree through this module, which reads it through the router's public
accessors (``routes()``, ``own_routes``, ``nested``, ``hooks``). A walk is
for tools: it runs once, never per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .hooks import HookFn
from .router import RouteInfo, WebSocketRouter, join_paths

__all__ = ["Received", "RouteView", "RouterView", "Sent", "mounted_routes", "router_tree"]


@attrs.frozen
class Received:
    """A message type a resource handles (client → server).

    Attributes:
        tag: The message type tag.
        method: Name of the handler method on the resource class.
        handler: The handler (the class attribute).
        payload: The payload Struct, or ``None``.
        strict: Whether unknown fields are refused.
        reply: The reply type when the handler declares one (a request), or
            ``None``.
    """

    tag: str
    method: str
    handler: Callable[..., Any]
    payload: Any
    strict: bool
    reply: Any = None


@attrs.frozen
class Sent:
    """A message type a resource declares in ``sends`` (server → client).

    Attributes:
        payload: The declared type.
        tag: Its Struct tag if that is a str, else ``None``.
    """

    payload: Any
    tag: str | None


@attrs.frozen
class RouteView:
    """A route with the messages its resource receives and sends.

    Attributes:
        path: The route's path: in full (mount prefix included) from
            :func:`mounted_routes`, as declared (relative to the router or
            the parent route) from :func:`router_tree`.
        info: The registered route.
        received: What the resource class handles (none for a factory).
        sent: What the resource class declares it sends.
        children: Subroutes (from :func:`router_tree` only).
    """

    path: str
    info: RouteInfo
    received: tuple[Received, ...]
    sent: tuple[Sent, ...]
    children: tuple[RouteView, ...] = ()


@attrs.frozen
class RouterView:
    """A router as declared: its hooks, routes and nested routers.

    Attributes:
        prefix: Where it is nested in its parent (``/`` for the root).
        router: The router.
        hooks: Its global hooks, as ``(event, hook, resource class or None)``.
        routes: Its top-level routes, subroutes below them.
        routers: Routers nested in it.
    """

    prefix: str
    router: WebSocketRouter
    hooks: tuple[tuple[str, HookFn, type | None], ...]
    routes: tuple[RouteView, ...]
    routers: tuple[RouterView, ...]


def mounted_routes(mounts: Iterable[tuple[str, WebSocketRouter]]) -> list[RouteView]:
    """Return every route of the mounted trees, in registration order, paths in full."""
    return [
        _view(join_paths(prefix, info.template), info)
        for prefix, router in mounts
        for info in router.routes()
    ]


def router_tree(router: WebSocketRouter, prefix: str = "/") -> RouterView:
    """Return ``router`` as declared: routes, their subroutes, nested routers."""
    own = router.own_routes
    return RouterView(
        prefix,
        router,
        tuple(router.hooks),
        tuple(_subtree(info, info.template, own) for info in own if info.parent is None),
        tuple(router_tree(child, child_prefix) for child_prefix, child in router.nested),
    )


def received(cls: type | None) -> tuple[Received, ...]:
    """Return the message types ``cls`` handles (none if it is not a resource class)."""
    if cls is None or not hasattr(cls, "message_types"):
        return ()
    return tuple(_received(cls, tag, spec) for tag, spec in cls.message_types().items())


def sent(cls: type | None) -> tuple[Sent, ...]:
    """Return the message types ``cls`` declares in ``sends``."""
    if cls is None or not hasattr(cls, "message_types"):
        return ()
    return tuple(Sent(tp, _tag_of(tp)) for tp in getattr(cls, "sends", ()) or ())


def _received(cls: type, tag: str, spec: Any) -> Received:
    method = spec.method_name
    return Received(
        tag, method, getattr(cls, method), spec.payload_type, spec.strict, spec.reply_type
    )


def _view(path: str, info: RouteInfo, children: tuple[RouteView, ...] = ()) -> RouteView:
    cls = info.resource_class
    return RouteView(path, info, received(cls), sent(cls), children)


def _subtree(info: RouteInfo, path: str, own: list[RouteInfo]) -> RouteView:
    children = tuple(
        _subtree(child, "/" + child.template[len(info.template) :].lstrip("/"), own)
        for child in own
        if child.parent is info
    )
    return _view(path, info, children)


def _tag_of(tp: Any) -> str | None:
    tag = getattr(getattr(tp, "__struct_config__", None), "tag", None)
    return tag if isinstance(tag, str) else None
