"""Prometheus metrics for a pachinko app (the ``metrics`` extra).

::

    import pachinko
    from pachinko.metrics import Metrics

    pachinko.install(app, metrics=Metrics("/metrics"))

:class:`Metrics` is an :class:`~pachinko.observe.Observer`: the runtime and
the connections report to it and never import this module, so an app
without it pays nothing. Every label set is bounded: routes are templates
(``/ws/rooms/{room}``), message types the resource's declared ones, close
codes the protocol's (others grouped), reasons and causes pachinko's own.
See docs/observability.md for every metric.

With several server processes (``pachinko serve --workers N``) the values
live in prometheus-client's multiprocess directory
(``PROMETHEUS_MULTIPROC_DIR``, which ``serve`` manages) and every process's
``/metrics`` answers for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Final

from .errors import ConfigError
from .observe import Observer, message_type

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .connection import Connection

try:
    import prometheus_client
    from prometheus_client import multiprocess
except ImportError as ex:  # pragma: no cover - the extra is installed in the test env
    raise ImportError(
        "pachinko.metrics needs prometheus-client: pip install 'pachinko[metrics]'",
        name=ex.name,
    ) from ex

__all__ = ["HANDLER_BUCKETS", "MULTIPROC_ENV", "Metrics", "close_code_label"]

#: The environment variable naming prometheus-client's multiprocess directory.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

#: Handler latency buckets, in seconds: handlers take microseconds to seconds.
HANDLER_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Close codes a client may choose freely: labelled one by one only where
# the protocol (RFC 6455 and the IANA registry up to 1015) or Falcon (3xxx
# for HTTP statuses it refuses handshakes with) gives them a meaning.
_KNOWN_CODES: Final = frozenset(range(1000, 1016)) | {3403, 3404}

_LIVE_FILE: Final = re.compile(r"gauge_live\w*?_(\d+)\.db")


def close_code_label(code: int) -> str:
    """The ``code`` label of a close code: itself if known, else its class.

    A client picks its own close code: ``4xxx`` (application codes),
    ``3xxx`` (registered ones) and ``other`` group the rest, so that the
    number of series stays bounded whatever clients send.
    """
    if code in _KNOWN_CODES:
        return str(code)
    if 3000 <= code <= 4999:
        return f"{code // 1000}xxx"
    return "other"


class _Type:
    """One route's count of one message type, and its latency histogram."""

    __slots__ = ("count", "counter", "flushed", "seconds")

    def __init__(self, counter: Any, seconds: Any) -> None:
        self.count = 0
        self.flushed = 0
        self.counter = counter
        self.seconds = seconds

    def flush(self) -> None:
        count = self.count
        if count != self.flushed:
            self.counter.inc(count - self.flushed)
            self.flushed = count


class _Route:
    """The label values and metric children of one route and resource class.

    Shared by every connection of the route (no per-connection object).
    """

    __slots__ = (
        "by_key",
        "closed",
        "errors",
        "label",
        "metrics",
        "opened",
        "resource_class",
        "wrapped",
    )

    def __init__(self, metrics: Metrics, label: str, resource_class: type) -> None:
        self.metrics = metrics
        self.label = label
        self.resource_class = resource_class
        self.opened = metrics.connections_opened.labels(label)
        self.by_key: dict[Any, _Type] = {}
        self.closed: dict[int, Any] = {}
        self.errors: dict[str, Any] = {}
        # The connections' fast dispatch table, handlers counted (per table).
        self.wrapped: tuple[Any, dict[type, tuple[Any, int]]] | None = None

    def type_of(self, key: Any) -> _Type:
        """The count and histogram of a message type (made at its first message)."""
        found = self.by_key.get(key)
        if found is None:
            tag = message_type(self.resource_class, key)
            m = self.metrics
            counter = m.messages.labels(self.label, tag)
            # NOTE: two keys of one tag (its Struct, its handler) share one count.
            for other in self.by_key.values():
                if other.counter is counter:
                    found = self.by_key[key] = other
                    return found
            found = self.by_key[key] = _Type(counter, m.handler_seconds.labels(self.label, tag))
            m._types.append(found)
        return found


class Metrics(Observer):
    """Count what an app's connections do, for Prometheus.

    Args:
        path: Where :func:`pachinko.install` adds the ``/metrics`` route on
            the app (``None``: no route; expose ``registry`` yourself).
        registry: Where the metrics are registered. Default: a registry of
            this object's own, so two apps in one process (two ``Metrics``)
            never collide. Pass ``prometheus_client.REGISTRY`` to serve them
            with your own metrics; one ``Metrics`` may also be installed on
            several apps (their counts are summed).
        namespace: Prefix of every metric name.
        buckets: Handler latency histogram buckets, in seconds.
        sample_interval: Seconds between samples of the outbox gauges and
            the backend's time spent down, and between flushes of the
            message counts (all also done at every scrape of this process).
        latency_every: Time one handled message in this many, per route and
            type (1: every message). The counts are exact.

    Raises:
        ConfigError: ``registry`` already has metrics of these names (a
            second ``Metrics`` with the same namespace on a shared registry).
    """

    def __init__(
        self,
        path: str | None = "/metrics",
        *,
        registry: prometheus_client.CollectorRegistry | None = None,
        namespace: str = "pachinko",
        buckets: Sequence[float] = HANDLER_BUCKETS,
        sample_interval: float = 1.0,
        latency_every: int = 16,
    ) -> None:
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ConfigError(f"Metrics: path must be a str starting with '/', got {path!r}")
        self.path = path
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        if not isinstance(latency_every, int) or latency_every < 1:
            raise ConfigError(f"Metrics: latency_every must be an int >= 1, got {latency_every!r}")
        self.sample_interval = sample_interval
        self.latency_every = latency_every
        self._types: list[_Type] = []
        self._routes: dict[tuple[str, type], _Route] = {}
        self._managers: list[Any] = []
        self._sampler: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        try:
            self._define(namespace, tuple(buckets))
        except ValueError as ex:  # prometheus-client: "Duplicated timeseries ..."
            raise ConfigError(
                f"Metrics: {ex}. Another Metrics(namespace={namespace!r}) is registered on this "
                "registry: install that one object on every app (counts are summed), or give "
                "each its own registry or namespace"
            ) from ex

    def _define(self, ns: str, buckets: tuple[float, ...]) -> None:
        # Every metric shares the namespace and the registry.
        c = partial(prometheus_client.Counter, namespace=ns, registry=self.registry)
        g = partial(prometheus_client.Gauge, namespace=ns, registry=self.registry)
        h = partial(prometheus_client.Histogram, namespace=ns, registry=self.registry)
        self.connections_open = g(
            "connections_open", "Open WebSocket connections", ["route"], multiprocess_mode="livesum"
        )
        self.connections_opened = c("connections_opened", "Accepted handshakes", ["route"])
        self.connections_closed = c(
            "connections_closed",
            "Closed connections by close code (unknown codes grouped: 3xxx, 4xxx, other)",
            ["route", "code"],
        )
        self.handshakes_refused = c("handshakes_refused", "Refused handshakes by cause", ["cause"])
        self.messages = c(
            "messages", "Messages handled, by route and declared type", ["route", "type"]
        )
        self.handler_seconds = h(
            "handler_seconds", "Time in message handlers", ["route", "type"], buckets=buckets
        )
        self.error_replies = c(
            "error_replies", "Messages answered with an error reply, by reason", ["route", "reason"]
        )
        self.sends = c(
            "sends",
            "Sends and broadcasts reaching this process's connections (origin: local or remote)",
            ["origin"],
        )
        self.deliveries = c(
            "deliveries",
            "Deliveries by outcome (delivered: written or queued; remote: processes handed to)",
            ["outcome"],
        )
        self.slow_consumer_closes = c(
            "slow_consumer_closes", "Connections closed as slow consumers"
        )
        self.failed_sends = c("failed_sends", "Connections evicted by a failed send")
        self.outbox_busy = g(
            "outbox_busy",
            "Connections with a send under way (sampled)",
            multiprocess_mode="livesum",
        )
        self.outbox_queued = g(
            "outbox_queued",
            "Frames queued behind sends under way (sampled)",
            multiprocess_mode="livesum",
        )
        self.backend_available = g(
            "backend_up",
            "1 while the backend is reachable (the lowest of every process)",
            multiprocess_mode="livemin",
        )
        self.backend_outages = c("backend_outages", "Backend connection losses")
        self.backend_reconnects = c("backend_reconnects", "Backend reconnections after an outage")
        self.backend_down_seconds = c("backend_down_seconds", "Time the backend was unreachable")
        self.worker_crashes = c("worker_crashes", "Worker crashes", ["worker"])
        self.worker_restarts = c(
            "worker_restarts", "Worker restarts by a restart policy", ["worker"]
        )
        self.recoveries = c(
            "recoveries",
            "Recovery requests after a reconnect (result: hit or miss)",
            ["route", "result"],
        )

    # -- lifecycle ------------------------------------------------------------------

    def installed(self, app: Any) -> None:
        if self.path is not None:
            app.add_route(self.path, _Endpoint(self))

    def started(self, manager: Any) -> None:
        self._managers.append(manager)
        self.backend_available.set(0 if getattr(manager.backend, "available", True) is False else 1)
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            forget_dead_processes(directory)
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_every())

    def stopped(self, manager: Any) -> None:
        with contextlib.suppress(ValueError):
            self._managers.remove(manager)
        if not self._managers and self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        self.sample()
        directory = os.environ.get(MULTIPROC_ENV)
        if directory and not self._managers:
            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]

    async def _sample_every(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval)
            self.sample()

    def sample(self) -> None:
        """Flush the message counts; update the outbox gauges and the backend's time down."""
        for counted in self._types:
            counted.flush()
        busy = queued = 0
        for manager in self._managers:
            b, q = manager.outbox_stats()
            busy += b
            queued += q
        self.outbox_busy.set(busy)
        self.outbox_queued.set(queued)
        since = self._down_since
        if since is not None:
            now = monotonic()
            self.backend_down_seconds.inc(now - since)
            self._down_since = now

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (every process's, in multiprocess mode)."""
        self.sample()
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            registry = prometheus_client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return prometheus_client.generate_latest(registry)
        return prometheus_client.generate_latest(self.registry)

    # -- connections ------------------------------------------------------------------

    def refused(self, cause: str) -> None:
        self.handshakes_refused.labels(cause).inc()

    def connection(self, conn: Connection, resource_class: type) -> _Route:
        key = (conn.route, resource_class)
        found = self._routes.get(key)
        if found is None:
            found = self._routes[key] = _Route(self, conn.route, resource_class)
        return found

    def opened(self, state: _Route) -> None:
        state.opened.inc()
        self.connections_open.labels(state.label).inc()

    def closed(self, state: _Route, code: int) -> None:
        child = state.closed.get(code)
        if child is None:
            child = state.closed[code] = self.connections_closed.labels(
                state.label, close_code_label(code)
            )
        child.inc()
        self.connections_open.labels(state.label).dec()

    def handlers(
        self, state: _Route, by_type: dict[type, tuple[Any, int]]
    ) -> dict[type, tuple[Any, int]]:
        # PERF: one table per route and class (not per connection): a handler
        #   wrapped in a plain function counting into a plain int, the whole
        #   per-message cost of metrics (bench_dispatch.py, "0 + metrics").
        wrapped = state.wrapped
        if wrapped is None or wrapped[0] is not by_type:
            every = self.latency_every
            table = {
                key: (_counting(state.type_of(key), handler, every), kind)
                for key, (handler, kind) in by_type.items()
            }
            wrapped = state.wrapped = (by_type, table)
        return wrapped[1]

    def handle(
        self,
        state: _Route,
        key: Any,
        handler: Callable[[Any, Any, Any], Awaitable[Any]],
        resource: Any,
        ws: Any,
        payload: Any,
    ) -> Awaitable[Any]:
        # NOTE: the slow path's handlers (tags only known per message).
        # PERF: a plain int per route and type, flushed into the counter by
        #   sample(): prometheus-client's inc() takes a lock (~200 ns); and
        #   one message in `latency_every` is timed (two clock reads and a
        #   histogram observe cost ~0.5 µs, a fifth of a message's whole
        #   dispatch). The others get the handler's own coroutine: no frame
        #   of ours. bench_dispatch.py: metrics on within 10 % of off.
        counted = state.by_key.get(key) or state.type_of(key)
        count = counted.count = counted.count + 1
        if count % self.latency_every:
            return handler(resource, ws, payload)
        return _timed(counted.seconds, handler(resource, ws, payload))

    def error_reply(self, state: _Route, reason: str) -> None:
        child = state.errors.get(reason)
        if child is None:
            child = state.errors[reason] = self.error_replies.labels(state.label, reason)
        child.inc()

    def evicted(self, conn: Connection, slow_consumer: bool) -> None:
        (self.slow_consumer_closes if slow_consumer else self.failed_sends).inc()

    def sent(
        self, origin: str, recipients: int, delivered: int, dropped: int, failed: int, remote: int
    ) -> None:
        self.sends.labels(origin).inc()
        deliveries = self.deliveries
        if delivered:
            deliveries.labels("delivered").inc(delivered)
        if dropped:
            deliveries.labels("dropped").inc(dropped)
        if failed:
            deliveries.labels("failed").inc(failed)
        if remote:
            deliveries.labels("remote").inc(remote)

    # -- backend, workers, recovery -------------------------------------------------------

    def backend_down(self) -> None:
        self.backend_outages.inc()
        self.backend_available.set(0)
        self._down_since = monotonic()

    def backend_up(self) -> None:
        self.backend_reconnects.inc()
        self.backend_available.set(1)
        since, self._down_since = self._down_since, None
        if since is not None:
            self.backend_down_seconds.inc(monotonic() - since)

    def worker_crashed(self, name: str, restarting: bool) -> None:
        self.worker_crashes.labels(name).inc()
        if restarting:
            self.worker_restarts.labels(name).inc()

    def recovery(self, conn: Connection, hit: bool) -> None:
        self.recoveries.labels(conn.route, "hit" if hit else "miss").inc()


def _counting(
    counted: _Type, handler: Callable[[Any, Any, Any], Awaitable[Any]], every: int
) -> Callable[[Any, Any, Any], Awaitable[Any]]:
    """``handler``, counted; one call in ``every`` timed."""

    def counting(resource: Any, ws: Any, payload: Any) -> Awaitable[Any]:
        count = counted.count = counted.count + 1
        if count % every:
            return handler(resource, ws, payload)
        return _timed(counted.seconds, handler(resource, ws, payload))

    return counting


async def _timed(histogram: Any, handling: Awaitable[Any]) -> Any:
    start = perf_counter()
    try:
        return await handling  # a request handler's reply
    finally:
        histogram.observe(perf_counter() - start)


class _Endpoint:
    """The ``/metrics`` route: Prometheus' text format."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def on_get(self, req: Any, resp: Any) -> None:
        resp.content_type = prometheus_client.CONTENT_TYPE_LATEST
        resp.data = self.metrics.exposition()


def forget_dead_processes(directory: str | os.PathLike[str]) -> list[int]:
    """Drop the live gauges of processes that are gone (a crashed worker's).

    prometheus-client keeps a file per process; a process that exits
    cleanly marks itself dead, one that crashed leaves its open-connection
    count behind. Returns the pids forgotten.
    """
    gone = []
    for path in Path(directory).glob("gauge_live*.db"):
        found = _LIVE_FILE.fullmatch(path.name)
        if found is None:
            continue
        pid = int(found.group(1))
        if pid != os.getpid() and not _alive(pid):
            multiprocess.mark_process_dead(pid, os.fspath(directory))  # type: ignore[no-untyped-call]
            gone.append(pid)
    return sorted(set(gone))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` if missing and empty it of a previous run's files.

    Called by ``pachinko serve`` before its worker processes start: values
    left by a previous run would otherwise be added to this one's.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path
