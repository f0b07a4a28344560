"""The observer interface: what metrics, tracing and logs see of pachinko.

A leaf: the runtime (:mod:`pachinko._serve`, :mod:`pachinko.app`,
:mod:`pachinko.workers`) and the connections (:mod:`pachinko.manager`,
``backends/``) call an :class:`Observer` at the events an operator counts,
and import nothing of what implements it (:mod:`pachinko.metrics`,
:mod:`pachinko.tracing`). Without an observer every call site is one
``if obs is not None`` that is false: nothing else runs.

Subclass :class:`Observer` and override what you need; every method of the
base class does nothing. :class:`Observers` runs several as one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["CONNECTION_EXTRA", "Observer", "Observers", "current_connection", "message_type"]

_T = TypeVar("_T")

#: The connection whose task is running (set at the handshake, in the task
#: serving it): log lines of pachinko and of the application's handlers name
#: it (see :mod:`pachinko.logs`).
current_connection: ContextVar[Connection | None] = ContextVar("pachinko_connection", default=None)

#: ``extra=`` key naming the connection a log line is about when it is
#: logged from another task (a broadcaster closing a slow consumer).
CONNECTION_EXTRA: Final = "pachinko_connection"


class Observer:
    """Sees handshakes, messages, deliveries, backend outages and workers.

    Passed to :func:`pachinko.install` (``metrics=`` / ``tracing=``). Every
    method is called synchronously from the event loop and must not raise
    (nor block: a call costs every message it is on the path of).
    """

    # -- lifecycle ------------------------------------------------------------------

    def installed(self, app: Any) -> None:
        """The observer was installed on ``app`` (a Falcon app): add routes here."""

    def started(self, manager: Any) -> None:
        """The app started (ASGI lifespan startup); ``manager`` is its connection manager."""

    def stopped(self, manager: Any) -> None:
        """The app stopped (ASGI lifespan shutdown)."""

    # -- handshakes and connections ---------------------------------------------------

    def handshake(self, path: str, handshake: Awaitable[_T]) -> Awaitable[_T]:
        """Wrap a handshake (return ``handshake`` or an awaitable running it)."""
        return handshake

    def refused(self, cause: str) -> None:
        """A handshake was refused.

        ``cause``: ``not_found``, ``origin``, ``shutting_down``, ``limit``
        (``max_connections`` or ``max_connections_per_user``), ``refused``
        (``on_connect`` returned False, raised Refuse or closed), ``error``
        (an exception) or ``disconnected`` (the client left).
        """

    def connection(self, conn: Connection, resource_class: type) -> Any:
        """A handshake passed; return the state the other calls get for it."""
        return None

    def opened(self, state: Any) -> None:
        """The handshake was accepted."""

    def closed(self, state: Any, code: int) -> None:
        """An accepted connection ended with close ``code``."""

    def handle(
        self,
        state: Any,
        key: Any,
        handler: Callable[[Any, Any, Any], Awaitable[Any]],
        resource: Any,
        ws: Any,
        payload: Any,
    ) -> Awaitable[Any]:
        """Run a message handler: ``handler(resource, ws, payload)``.

        ``key`` names the message type: the decoded Struct type, or the
        handler function for messages the slow path dispatched (see
        :func:`message_type`).
        """
        return handler(resource, ws, payload)

    def handlers(
        self, state: Any, by_type: dict[type, tuple[Any, int]]
    ) -> dict[type, tuple[Any, int]]:
        """The fast dispatch table (decoded type → (handler, kind)) a connection uses.

        Return ``by_type`` itself, or a copy whose handlers wrap the original
        ones (as :meth:`handle` would run them; called as ``handler(resource,
        ws, payload)`` and awaited). Called once per connection: a wrapper
        costs one call per message, and nothing at all when not asked for.
        """
        return by_type

    def error_reply(self, state: Any, reason: str) -> None:
        """A message was answered with an error reply (``reason``)."""

    def evicted(self, conn: Connection, slow_consumer: bool) -> None:
        """A connection's outbox died: a slow consumer closed, or a failed send."""

    # -- sends --------------------------------------------------------------------------

    def sent(
        self, origin: str, recipients: int, delivered: int, dropped: int, failed: int, remote: int
    ) -> None:
        """A send or broadcast reached this process's connections.

        ``origin`` is ``local`` (sent here) or ``remote`` (from another
        process through the backend); ``delivered`` counts frames written
        or queued, ``remote`` the processes the backend handed it to.
        """

    def carrier(self) -> str | None:
        """Context to publish with a broadcast (a W3C ``traceparent``), or None."""
        return None

    def delivering(self, carrier: str, channel: str) -> contextlib.AbstractContextManager[Any]:
        """Context in which a frame published with ``carrier`` is delivered here."""
        return contextlib.nullcontext()

    # -- backend, workers, recovery -------------------------------------------------------

    def backend_down(self) -> None:
        """The backend lost its connection (an outage begins)."""

    def backend_up(self) -> None:
        """The backend reconnected after an outage."""

    def worker_crashed(self, name: str, restarting: bool) -> None:
        """Worker ``name`` crashed; ``restarting``: its restart policy restarts it."""

    def recovery(self, conn: Connection, hit: bool) -> None:
        """A join asked to recover missed messages: all recovered (hit) or not (miss)."""


class Observers(Observer):
    """Several observers as one (what :func:`pachinko.install` builds for two)."""

    __slots__ = ("observers",)

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = tuple(observers)

    def installed(self, app: Any) -> None:
        for obs in self.observers:
            obs.installed(app)

    def started(self, manager: Any) -> None:
        for obs in self.observers:
            obs.started(manager)

    def stopped(self, manager: Any) -> None:
        for obs in self.observers:
            obs.stopped(manager)

    def handshake(self, path: str, handshake: Awaitable[_T]) -> Awaitable[_T]:
        for obs in reversed(self.observers):
            handshake = obs.handshake(path, handshake)
        return handshake

    def refused(self, cause: str) -> None:
        for obs in self.observers:
            obs.refused(cause)

    def connection(self, conn: Connection, resource_class: type) -> Any:
        return tuple(obs.connection(conn, resource_class) for obs in self.observers)

    def opened(self, state: Any) -> None:
        for obs, own in zip(self.observers, state, strict=True):
            obs.opened(own)

    def closed(self, state: Any, code: int) -> None:
        for obs, own in zip(self.observers, state, strict=True):
            obs.closed(own, code)

    def handle(
        self,
        state: Any,
        key: Any,
        handler: Callable[[Any, Any, Any], Awaitable[Any]],
        resource: Any,
        ws: Any,
        payload: Any,
    ) -> Awaitable[Any]:
        # The first observer's wrapper is the outermost (tracing around metrics).
        for obs, own in zip(reversed(self.observers), reversed(state), strict=True):
            handler = functools.partial(obs.handle, own, key, handler)
        return handler(resource, ws, payload)

    def handlers(
        self, state: Any, by_type: dict[type, tuple[Any, int]]
    ) -> dict[type, tuple[Any, int]]:
        for obs, own in zip(reversed(self.observers), reversed(state), strict=True):
            by_type = obs.handlers(own, by_type)
        return by_type

    def error_reply(self, state: Any, reason: str) -> None:
        for obs, own in zip(self.observers, state, strict=True):
            obs.error_reply(own, reason)

    def evicted(self, conn: Connection, slow_consumer: bool) -> None:
        for obs in self.observers:
            obs.evicted(conn, slow_consumer)

    def sent(
        self, origin: str, recipients: int, delivered: int, dropped: int, failed: int, remote: int
    ) -> None:
        for obs in self.observers:
            obs.sent(origin, recipients, delivered, dropped, failed, remote)

    def carrier(self) -> str | None:
        for obs in self.observers:
            found = obs.carrier()
            if found is not None:
                return found
        return None

    @contextlib.contextmanager
    def delivering(self, carrier: str, channel: str) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for obs in self.observers:
                stack.enter_context(obs.delivering(carrier, channel))
            yield

    def backend_down(self) -> None:
        for obs in self.observers:
            obs.backend_down()

    def backend_up(self) -> None:
        for obs in self.observers:
            obs.backend_up()

    def worker_crashed(self, name: str, restarting: bool) -> None:
        for obs in self.observers:
            obs.worker_crashed(name, restarting)

    def recovery(self, conn: Connection, hit: bool) -> None:
        for obs in self.observers:
            obs.recovery(conn, hit)


def message_type(resource_class: type, key: Any) -> str:
    """The declared message type a :meth:`Observer.handle` ``key`` stands for.

    Always one of the resource class's own types (its tags, or the names of
    its ``on_*`` handlers for tags only known per message): never a string a
    client chose, so a label made from it cannot grow without bound.
    """
    config = getattr(key, "__struct_config__", None)
    tag = getattr(config, "tag", None)
    if isinstance(tag, str):
        return tag
    table = getattr(resource_class, "__pachinko_table__", None)
    if table is not None:
        for tag, spec in table.specs.items():
            if getattr(resource_class, spec.method_name, None) is key:
                return str(tag)
    name = getattr(key, "__name__", "")
    return name[3:] if name.startswith("on_") else name or "unknown"
