"""OpenTelemetry tracing for a pachinko app (the ``tracing`` extra).

::

    import pachinko
    from pachinko.tracing import Tracing

    pachinko.install(app, tracing=Tracing())  # the global TracerProvider

Spans:

- ``WebSocket {route}`` (kind SERVER) for every handshake: ``on_connect``
  and the ``before_connect`` hooks run inside it (a refusal sets
  ``pachinko.refused`` to its cause);
- ``{route} {type}`` (kind SERVER) for every handled message, the handler's
  own spans nested inside; each is the root of its own trace (a connection
  lives for hours) with a link to its connection's handshake span;
- ``deliver {kind}:{name}`` (kind CONSUMER) on a process that receives a
  broadcast through Redis, the child of the span that published it: the
  publisher's ``traceparent`` travels with the frame (only while tracing).

Attributes: ``pachinko.route`` (the template), ``pachinko.message.type``,
``pachinko.connection.id``, ``url.path`` (handshakes).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .observe import Observer, message_type

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as ex:  # pragma: no cover - the extra is installed in the test env
    raise ImportError(
        "pachinko.tracing needs opentelemetry-api: pip install 'pachinko[tracing]'",
        name=ex.name,
    ) from ex

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Tracing"]

_T = TypeVar("_T")
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_TRACEPARENT: Final = "traceparent"


class _Traced:
    """One connection's route, id and handshake span (to link messages to)."""

    __slots__ = ("conn_id", "link", "names", "resource_class", "route")

    def __init__(self, conn: Connection, resource_class: type, link: trace.Link | None) -> None:
        self.route = conn.route
        self.conn_id = conn.id
        self.resource_class = resource_class
        self.link = link
        self.names: dict[Any, tuple[str, str]] = {}

    def name_of(self, key: Any) -> tuple[str, str]:
        found = self.names.get(key)
        if found is None:
            tag = message_type(self.resource_class, key)
            found = self.names[key] = (f"{self.route} {tag}", tag)
        return found


class Tracing(Observer):
    """Trace handshakes, messages and cross-process broadcasts with OpenTelemetry.

    Args:
        tracer_provider: Where spans go; default: OpenTelemetry's global
            provider (configured by the application or its launcher).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        from . import __version__

        self.tracer = trace.get_tracer("pachinko", __version__, tracer_provider)

    async def _handshake(self, path: str, handshake: Awaitable[_T]) -> _T:
        with self.tracer.start_as_current_span(
            f"WebSocket {path}",
            kind=trace.SpanKind.SERVER,
            attributes={"url.path": path},
        ):
            return await handshake

    def handshake(self, path: str, handshake: Awaitable[_T]) -> Awaitable[_T]:
        return self._handshake(path, handshake)

    def refused(self, cause: str) -> None:
        trace.get_current_span().set_attribute("pachinko.refused", cause)

    def connection(self, conn: Connection, resource_class: type) -> _Traced:
        span = trace.get_current_span()  # the handshake's
        context = span.get_span_context()
        if context.is_valid:
            span.update_name(f"WebSocket {conn.route}")
            span.set_attribute("pachinko.route", conn.route)
            span.set_attribute("pachinko.connection.id", conn.id)
        return _Traced(conn, resource_class, trace.Link(context) if context.is_valid else None)

    def handlers(
        self, state: _Traced, by_type: dict[type, tuple[Any, int]]
    ) -> dict[type, tuple[Any, int]]:
        return {
            key: (functools.partial(self.handle, state, key, handler), kind)
            for key, (handler, kind) in by_type.items()
        }

    async def handle(
        self,
        state: _Traced,
        key: Any,
        handler: Callable[[Any, Any, Any], Awaitable[Any]],
        resource: Any,
        ws: Any,
        payload: Any,
    ) -> Any:
        name, tag = state.name_of(key)
        with self.tracer.start_as_current_span(
            name,
            context=otel_context.Context(),  # a trace of its own, linked to the handshake
            kind=trace.SpanKind.SERVER,
            links=(state.link,) if state.link is not None else None,
            attributes={
                "pachinko.route": state.route,
                "pachinko.message.type": tag,
                "pachinko.connection.id": state.conn_id,
            },
        ):
            return await handler(resource, ws, payload)  # a request handler's reply

    def carrier(self) -> str | None:
        if not trace.get_current_span().get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get(_TRACEPARENT)

    @contextlib.contextmanager
    def delivering(self, carrier: str, channel: str) -> Iterator[None]:
        parent = _PROPAGATOR.extract({_TRACEPARENT: carrier})
        with self.tracer.start_as_current_span(
            f"deliver {channel}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={"pachinko.channel": channel},
        ):
            yield
