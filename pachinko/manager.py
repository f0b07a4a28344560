"""WebSocketConnectionManager: connections, rooms, users and broadcasts.

The manager keeps this process's index (connections by id, rooms and users
to their local connections) and delivers to local connections through each
one's bounded :class:`~pachinko._outbox.Outbox`. Its backend carries
broadcasts to other processes and keeps membership cluster-wide.

PERF: a broadcast encodes the message once, awaits one backend publish
(nothing in-process), then hands the same ``str`` to each recipient's outbox
(:func:`~pachinko._outbox.fan_out`): written at once where the socket takes
it without blocking, queued behind a send under way otherwise; a send that
blocks continues in its connection's own task. See
benchmarks/bench_fanout.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._outbox import DEAD, DROPPED, QUEUED, SENT, Outbox, Ticket, fan_out
from ._wire import encode_frame
from .backends import ConnectionBackend, backend_from_url
from .errors import BackendUnavailable, ConnectionLimitExceeded, PachinkoError

if TYPE_CHECKING:
    from .connection import Connection
    from .observe import Observer
    from .settings import Settings

__all__ = ["Delivery", "WebSocketConnectionManager"]

logger = logging.getLogger("pachinko")

_NO_EXCLUDE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a send or a broadcast did (returned by every send method).

    Local recipients are counted one by one:
    ``recipients == delivered + pending + dropped + failed``.

    Attributes:
        recipients: Local connections the message was meant for.
        delivered: Written to the socket before the call returned. Only
            counted when the call was given a ``timeout`` (it then waits up
            to that long); without one the call never waits for sockets.
        pending: Queued, not yet written when the call returned (they will
            be written unless the connection fails meanwhile).
        dropped: Not queued: the connection's outgoing queue was full (a
            slow consumer; the slow-consumer policy was applied to it).
        failed: The connection had already failed or closed (it is being
            evicted), or its send failed while the call waited.
        remote: Other processes the backend handed the message to (with
            Redis, the receivers of the one PUBLISH; always 0 in-process).
            Their own local outcome is not reported back (at-most-once).
    """

    recipients: int = 0
    delivered: int = 0
    pending: int = 0
    dropped: int = 0
    failed: int = 0
    remote: int = 0

    @property
    def ok(self) -> bool:
        """No local recipient missed the message (none dropped or failed)."""
        return self.dropped == 0 and self.failed == 0


def _excluded(exclude: Iterable[str]) -> frozenset[str]:
    if not exclude:
        return _NO_EXCLUDE
    if isinstance(exclude, str):  # one id, not its characters
        return frozenset((exclude,))
    return frozenset(exclude)


class WebSocketConnectionManager:
    """Registry of this process's connections; rooms, users, broadcasts.

    One per app (``install(app)`` returns it; ``runtime_of(app).manager``,
    ``resource.manager`` and a worker's ``manager`` parameter reach it).
    Connections register themselves at the handshake and deregister when
    they close: never call :meth:`connect` or :meth:`disconnect` yourself.

    Args:
        settings: Limits and the slow-consumer policy.
        backend: Where rooms and broadcasts meet across processes; default
            built from ``settings.backend`` (``memory://``: in-process).

    Raises:
        ConfigError: ``settings.backend`` names an unknown scheme, or Redis
            without the ``redis`` package.
    """

    def __init__(self, settings: Settings, backend: ConnectionBackend | None = None) -> None:
        self.settings = settings
        self.backend: ConnectionBackend = (
            backend if backend is not None else backend_from_url(settings.backend)
        )
        self._node_id = secrets.token_hex(8)
        self._counter = itertools.count(1)
        self._connections: dict[str, Connection] = {}
        self._rooms: dict[str, dict[str, Connection]] = {}
        self._users: dict[str, dict[str, Connection]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy: set[Outbox] = set()
        self._on_dead = self._evict  # one bound method for every outbox
        self._watchdog: asyncio.Task[None] | None = None
        #: Sees connections, messages and deliveries (metrics, tracing); see
        #: :meth:`observe`. ``None``: nothing is observed (and nothing costs).
        self.observer: Observer | None = None

    def observe(self, observer: Observer | None) -> None:
        """Report to ``observer`` from now on (``install(metrics=..., tracing=...)``)."""
        self.observer = observer
        self.backend.observer = observer

    def outbox_stats(self) -> tuple[int, int]:
        """Connections with a send under way, and the frames queued behind them."""
        busy = list(self._busy)
        return len(busy), sum(len(outbox.queue) for outbox in busy)

    # -- identity and lifecycle ------------------------------------------------

    @property
    def node_id(self) -> str:
        """This process's id in the cluster (prefix of its connection ids)."""
        return self._node_id

    def new_connection_id(self) -> str:
        """Return a connection id unique across processes."""
        return f"{self._node_id}.{next(self._counter):x}"

    async def start(self) -> None:
        """Start the backend and the send watchdog (ASGI lifespan startup)."""
        await self.backend.start(self)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Close the backend (ASGI lifespan shutdown, after the sockets)."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.wait([watchdog])
        await self.backend.close()

    async def _watch(self) -> None:
        """Close connections whose current send has taken over ``send_timeout``."""
        interval = min(self.settings.send_timeout / 4, 1.0)
        loop = asyncio.get_running_loop()
        busy = self._busy
        while True:
            await asyncio.sleep(interval)
            if busy:
                now = loop.time()
                for outbox in list(busy):
                    outbox.expire(now)

    def __len__(self) -> int:
        """Open connections registered in this process."""
        return len(self._connections)

    # -- registration (called by the serve loop) ----------------------------------

    async def connect(self, conn: Connection) -> None:
        """Register ``conn`` before the handshake is accepted.

        Raises:
            ConnectionLimitExceeded: ``max_connections`` (this process) or
                ``max_connections_per_user`` (every process) is reached;
                the handshake is refused with 1013.
        """
        settings = self.settings
        limit = settings.max_connections
        if limit is not None and len(self._connections) >= limit:
            raise ConnectionLimitExceeded(f"Connection limit reached ({limit} open connections)")
        user = conn.user_id
        conn.outbox = Outbox(
            conn.ws,
            settings.send_queue_size,
            settings.slow_consumer,
            settings.slow_consumer_close_code,
            settings.send_timeout,
            self._on_dead,
            self._busy,
            conn,
        )
        self._connections[conn.id] = conn
        first = False
        if user is not None:
            members = self._users.get(user)
            first = members is None
            if members is None:
                members = self._users[user] = {}
            members[conn.id] = conn
        per_user = settings.max_connections_per_user
        added = True
        try:
            if per_user is not None and user is not None:
                added = await self._add_limited(conn, user, first, per_user)
            else:
                await self.backend.add_connection(conn.id, user, first)
        except BaseException:
            conn.outbox = None
            self._unindex(conn)
            raise
        if not added and user is not None:
            conn.outbox = None
            self._unindex(conn)
            # drop the user's subscription the attempt made, if it was the only one
            await self.backend.remove_connection(conn.id, user, user not in self._users)
            raise ConnectionLimitExceeded(
                f"Connection limit per user reached ({per_user} open connections)"
            )

    async def _add_limited(self, conn: Connection, user: str, first: bool, limit: int) -> bool:
        """Record a connection of ``user`` if under ``limit`` (in every process)."""
        try:
            # NOTE: one atomic step in the backend (a script on Redis): a
            #   count followed by a separate write let concurrent handshakes
            #   of one user all pass.
            return await self.backend.add_user_connection(conn.id, user, first, limit)
        except BackendUnavailable as ex:
            # NOTE: fail open: the limit is checked on this process only
            #   while the backend is unreachable (chat keeps working).
            logger.warning("per-user limit checked locally only: %s", ex)
            if len(self._users.get(user, ())) > limit:  # the local index counts conn
                return False
            await self.backend.add_connection(conn.id, user, first)
            return True

    def opened(self, conn: Connection) -> None:
        """Start writing to ``conn``: its handshake was accepted."""
        if conn.outbox is not None:
            conn.outbox.start()

    async def disconnect(self, conn: Connection) -> None:
        """Deregister ``conn``: leave its rooms, here and in the backend.

        Idempotent; called once the connection's ``on_disconnect`` ran.
        """
        outbox = conn.outbox
        if outbox is None:
            return
        conn.outbox = None
        outbox.discard()
        self._unindex(conn)
        rooms = list(conn.rooms)
        if isinstance(conn.rooms, set):
            conn.rooms.clear()
        backend = self.backend
        for room in rooms:
            await backend.leave(room, conn.id, room not in self._rooms)
        user = conn.user_id
        await backend.remove_connection(conn.id, user, user is None or user not in self._users)

    def _unindex(self, conn: Connection) -> None:
        cid = conn.id
        self._connections.pop(cid, None)
        for room in conn.rooms:
            members = self._rooms.get(room)
            if members is not None and members.pop(cid, None) is not None and not members:
                del self._rooms[room]
        user = conn.user_id
        if user is not None:
            conns = self._users.get(user)
            if conns is not None and conns.pop(cid, None) is not None and not conns:
                del self._users[user]

    def _evict(self, conn: Connection) -> None:
        # The outbox died (send failed, slow consumer): no more deliveries. The
        # backend learns it in disconnect(), when the connection's loop ends.
        self._unindex(conn)
        if self.observer is not None:
            self.observer.evicted(conn, getattr(conn.outbox, "closed_with", None) is not None)

    async def close_all(self, code: int = 1001, reason: str = "Server shutting down") -> None:
        """Close every local connection with ``code`` (shutdown: 1001).

        Queued messages are flushed first, each connection bounded by
        ``send_timeout``; the connections deregister as their loops end.
        """
        closing = []
        for conn in list(self._connections.values()):
            outbox = conn.outbox
            if outbox is not None:
                closing.append(outbox.aclose(code, reason))
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    # -- rooms and users ------------------------------------------------------------

    def _resolve(self, conn: Connection | str, action: str) -> Connection:
        if isinstance(conn, str):
            found = self._connections.get(conn)
            if found is None:
                raise PachinkoError(f"{action}: no open connection {conn!r} in this process")
            return found
        if conn.outbox is None:
            raise PachinkoError(
                f"{action}: {conn!r} is not registered (rooms can be joined once the "
                "handshake is accepted: from after_connect or a handler, not on_connect)"
            )
        return conn

    async def join_room(self, conn: Connection | str, room: str) -> None:
        """Add a local connection (or its id) to ``room``; no-op if a member."""
        if not isinstance(room, str) or not room:
            raise ValueError(f"join_room(): room must be a non-empty str, got {room!r}")
        c = self._resolve(conn, "join_room()")
        rooms = c.rooms
        if room in rooms:
            return
        if isinstance(rooms, set):
            rooms.add(room)
        else:
            c.rooms = {room}  # the first join (see Connection.rooms)
        if c.outbox is not None and c.outbox.dead:
            return  # evicted: it will leave everything on disconnect
        members = self._rooms.get(room)
        first = members is None
        if members is None:
            members = self._rooms[room] = {}
        members[c.id] = c
        await self.backend.join(room, c.id, first)

    async def leave_room(self, conn: Connection | str, room: str) -> None:
        """Remove a local connection (or its id) from ``room``; no-op if not a member."""
        c = self._resolve(conn, "leave_room()")
        rooms = c.rooms
        if room not in rooms or not isinstance(rooms, set):
            return
        rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None and members.pop(c.id, None) is not None and not members:
            del self._rooms[room]
        await self.backend.leave(room, c.id, room not in self._rooms)

    async def members(self, room: str) -> set[str]:
        """Connection ids in ``room``, in every (live) process."""
        return await self.backend.members(room)

    async def rooms(self, prefix: str = "") -> list[str]:
        """Rooms with members (in any process) whose name starts with ``prefix``."""
        return await self.backend.rooms(prefix)

    async def user_connections(self, user_id: str) -> set[str]:
        """Connection ids of ``user_id``, in every (live) process."""
        return await self.backend.user_connections(user_id)

    async def set_user(self, conn: Connection | str, user_id: str | None) -> None:
        """Set the user a local connection belongs to (``None``: no user)."""
        c = self._resolve(conn, "set_user()") if isinstance(conn, str) else conn
        old = c.user_id
        if old == user_id:
            return
        c._user_id = user_id
        if c.outbox is not None:
            await self._move_user(c, old)

    def _user_changed(self, conn: Connection, old: str | None) -> None:
        # Connection.user_id was assigned after registration (a sync setter):
        # re-index at once, tell the backend in the background.
        moves = self._reindex_user(conn, old)
        if moves:
            task = asyncio.get_running_loop().create_task(self._tell_backend_user(conn.id, moves))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _move_user(self, conn: Connection, old: str | None) -> None:
        await self._tell_backend_user(conn.id, self._reindex_user(conn, old))

    def _reindex_user(self, conn: Connection, old: str | None) -> list[tuple[bool, str, bool]]:
        """Move ``conn`` from ``old`` to its user id in the local index.

        Returns the backend calls to make: (add?, user, first-or-last).
        """
        cid = conn.id
        moves: list[tuple[bool, str, bool]] = []
        if old is not None:
            conns = self._users.get(old)
            if conns is not None and conns.pop(cid, None) is not None:
                if not conns:
                    del self._users[old]
                moves.append((False, old, old not in self._users))
        new = conn.user_id
        if new is not None and conn.outbox is not None and not conn.outbox.dead:
            conns = self._users.get(new)
            first = conns is None
            if conns is None:
                conns = self._users[new] = {}
            conns[cid] = conn
            moves.append((True, new, first))
        return moves

    async def _tell_backend_user(self, cid: str, moves: list[tuple[bool, str, bool]]) -> None:
        backend = self.backend
        for add, user, edge in moves:
            if add:
                await backend.add_connection(cid, user, edge)
            else:
                await backend.remove_connection(cid, user, edge)

    # -- sending ------------------------------------------------------------------------

    async def send_to_connection(
        self, conn_id: str, message: Any, *, timeout: float | None = None
    ) -> Delivery:
        """Send ``message`` to one connection, local or in another process.

        ``message`` is a Struct, dict or list (sent as JSON), a str (a text
        frame as is) or bytes (a binary frame).
        """
        text = encode_frame(message)
        conn = self._connections.get(conn_id)
        if conn is not None:
            return await self._fanout((conn,), text, timeout, 0)
        remote = await self.backend.publish_connection(conn_id, text)
        return Delivery(remote=remote)

    async def send_to_user(
        self, user_id: str, message: Any, *, timeout: float | None = None
    ) -> Delivery:
        """Send ``message`` to every connection of ``user_id``, in every process."""
        text = encode_frame(message)
        remote = await self.backend.publish_user(user_id, text)
        conns = self._users.get(user_id)
        return await self._fanout(list(conns.values()) if conns else (), text, timeout, remote)

    async def broadcast_to_room(
        self,
        room: str,
        message: Any,
        *,
        exclude: Iterable[str] = (),
        timeout: float | None = None,
    ) -> Delivery:
        """Send ``message`` to every member of ``room``, in every process.

        Args:
            room: The room.
            message: A Struct, dict or list (JSON), a str (a text frame as is)
                or bytes (a binary frame); encoded once.
            exclude: Connection ids that must not receive it (or one id).
            timeout: If given, wait up to this many seconds for the local
                sends to complete (see :class:`Delivery`); never longer.

        Raises:
            BackendUnavailable: The backend (Redis) is unreachable; nothing
                was sent.
        """
        text = encode_frame(message)
        excluded = _excluded(exclude)
        remote = await self.backend.publish_room(room, text, excluded)
        members = self._rooms.get(room)
        if not members:
            return Delivery(remote=remote)
        if excluded:
            targets: Collection[Connection] = [
                c for cid, c in members.items() if cid not in excluded
            ]
        else:
            targets = list(members.values())
        return await self._fanout(targets, text, timeout, remote)

    async def broadcast_to_all(
        self,
        message: Any,
        *,
        exclude: Iterable[str] = (),
        timeout: float | None = None,
        local: bool = False,
    ) -> Delivery:
        """Send ``message`` to every connection, in every process.

        With ``local=True``, only to this process's connections (e.g. a
        per-process worker reporting on its own process); nothing goes
        through the backend.
        """
        text = encode_frame(message)
        excluded = _excluded(exclude)
        remote = 0 if local else await self.backend.publish_all(text, excluded)
        targets = [c for cid, c in self._connections.items() if cid not in excluded]
        return await self._fanout(targets, text, timeout, remote)

    async def _fanout(
        self, targets: Collection[Connection], text: str | bytes, timeout: float | None, remote: int
    ) -> Delivery:
        ticket = Ticket() if timeout is not None else None
        counts = fan_out(targets, text, ticket)
        queued = counts[QUEUED]
        delivered = counts[SENT]
        failed = counts[DEAD]
        if ticket is not None and queued:
            if ticket.remaining > 0:
                waiter = ticket.waiter = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(waiter)
                except TimeoutError:
                    pass
            delivered += ticket.delivered
            failed += ticket.failed
            queued -= ticket.delivered + ticket.failed
        if self.observer is not None:
            self.observer.sent(
                "local", len(targets), delivered + queued, counts[DROPPED], failed, remote
            )
        return Delivery(len(targets), delivered, queued, counts[DROPPED], failed, remote)

    # -- iteration ----------------------------------------------------------------------

    async def connections(self, room: str | None = None) -> AsyncIterator[Connection]:
        """Iterate over a snapshot of this process's connections (of ``room``)."""
        if room is None:
            snapshot = list(self._connections.values())
        else:
            snapshot = list(self._rooms.get(room, {}).values())
        for conn in snapshot:
            yield conn

    def get(self, conn_id: str) -> Connection | None:
        """The local connection with this id, or ``None``."""
        return self._connections.get(conn_id)

    # -- BackendHost: remote deliveries -------------------------------------------------

    def local_rooms(self) -> Mapping[str, Collection[str]]:
        """Room → ids of its local members."""
        return {room: list(members) for room, members in self._rooms.items()}

    def local_users(self) -> Mapping[str, Collection[str]]:
        """User → ids of its local connections."""
        return {user: list(conns) for user, conns in self._users.items()}

    def deliver_room(self, room: str, text: str | bytes, exclude: Collection[str]) -> None:
        """Write a frame from another process to the local members of ``room``."""
        members = self._rooms.get(room)
        if members:
            if exclude:
                self._deliver([c for cid, c in members.items() if cid not in exclude], text)
            else:
                self._deliver(list(members.values()), text)

    def deliver_user(self, user_id: str, text: str | bytes) -> None:
        """Write a frame from another process to the local connections of a user."""
        conns = self._users.get(user_id)
        if conns:
            self._deliver(list(conns.values()), text)

    def deliver_connection(self, conn_id: str, text: str | bytes) -> None:
        """Write a frame from another process to one local connection."""
        conn = self._connections.get(conn_id)
        if conn is not None:
            self._deliver((conn,), text)

    def deliver_all(self, text: str | bytes, exclude: Collection[str]) -> None:
        """Write a frame from another process to every local connection."""
        self._deliver([c for cid, c in self._connections.items() if cid not in exclude], text)

    def _deliver(self, targets: Collection[Connection], text: str | bytes) -> None:
        counts = fan_out(targets, text, None)
        if self.observer is not None:
            delivered = counts[SENT] + counts[QUEUED]
            self.observer.sent("remote", len(targets), delivered, counts[DROPPED], counts[DEAD], 0)
