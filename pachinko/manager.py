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
import inspect
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ._outbox import (
    DEAD,
    DROPPED,
    OPENED,
    QUEUED,
    SENT,
    UNOPENED,
    Outbox,
    OutboxRules,
    Ticket,
    fan_out,
    outbox_of,
)
from ._wire import encode, encode_frame
from .backends import ConnectionBackend, HistoryRead, backend_from_url
from .backends.base import PresenceEntry
from .connection import User
from .errors import BackendUnavailable, ConnectionLimitExceeded, JoinRefused, PachinkoError
from .rooms import Position, PresenceEvent, Recovery, RoomPolicies, RoomPolicy

if TYPE_CHECKING:
    from .connection import Connection
    from .observe import Observer
    from .settings import Settings

__all__ = ["Delivery", "WebSocketConnectionManager"]

logger = logging.getLogger("pachinko")

_NO_EXCLUDE: frozenset[str] = frozenset()

_encode_info = msgspec.json.Encoder().encode
_decode_info = msgspec.json.Decoder(dict[str, Any]).decode


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


class _Holder:
    """Live frames of a room held for one connection while it recovers."""

    __slots__ = ("conn", "frames")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.frames: list[tuple[Position, str | bytes]] = []


def _recovery_request(
    policy: RoomPolicy, since: str | None, last: int | None
) -> tuple[Position | None, str | None]:
    """The position a recovery asks for, or why it cannot be served (a reason)."""
    if not policy.history:
        return None, "no_history"
    if since is not None:
        try:
            return Position.parse(since), None
        except ValueError:
            return None, "malformed"
    if isinstance(last, bool) or not isinstance(last, int):
        return None, "malformed"
    return None, None


def _verdict(
    room: str, wanted: Position | None, read: HistoryRead
) -> tuple[Recovery, list[tuple[int, str]]]:
    """Compare a client's position with what the room kept: what to replay."""
    now = None if read.epoch is None else Position(read.epoch, read.offset)
    reason = None
    if wanted is not None:
        if read.epoch != wanted.epoch:
            # NOTE: a room that never kept anything has no epoch: only a
            #   client that has seen nothing of it (offset 0) is up to date.
            if read.epoch is not None or wanted.offset != 0:
                reason = "epoch"
        elif wanted.offset > read.offset:
            reason = "future"
        elif not read.complete:
            reason = "trimmed"
    if reason is not None:
        return Recovery(room, False, 0, now, reason), []
    return Recovery(room, True, len(read.entries), now), read.entries


# Struct type → the JSON names of its fields (and tag field): checked once per type.
_struct_names: dict[type, frozenset[str]] = {}


def _names_of(cls: type) -> frozenset[str]:
    names = _struct_names.get(cls)
    if names is None:
        info = msgspec.structs.fields(cls)
        found = {f.encode_name for f in info}
        config = getattr(cls, "__struct_config__", None)
        if config is not None and config.tag is not None:
            found.add(config.tag_field)
        names = _struct_names[cls] = frozenset(found)
    return names


_OBJECT_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])


def split_object(message: Any, field: str, key: str, room: str) -> tuple[str, str]:
    """Encode ``message`` (a JSON object) once, split where its position goes.

    The frame of each broadcast is ``head + "epoch:offset" + tail``: the
    object with one more member, ``key`` (``field`` JSON-encoded), last.

    Raises:
        TypeError: ``message`` is not a JSON object (a dict, a Struct
            encoded as an object, or a str holding one).
        ValueError: It already has a field called ``field``.
    """
    where = f"broadcast_to_room({room!r}): room {room!r} keeps history, so"
    if isinstance(message, dict):
        if field in message:
            raise ValueError(
                f"{where} the message may not have a field {field!r} (reserved for the "
                "position; see RoomPolicies(position_field=...))"
            )
        text = encode(message).decode()
    elif isinstance(message, msgspec.Struct):
        text = encode(message).decode()
        if not text.startswith("{"):
            raise TypeError(
                f"{where} its messages must be JSON objects; got a {type(message).__name__} "
                "encoded as an array (array_like)"
            )
        if field in _names_of(type(message)):
            raise ValueError(
                f"{where} {type(message).__name__} may not have a field {field!r} (reserved "
                "for the position; see RoomPolicies(position_field=...))"
            )
    elif isinstance(message, str):
        try:
            keys = _OBJECT_KEYS.decode(message)
        except msgspec.DecodeError:
            raise TypeError(
                f"{where} its messages must be JSON objects; got a str that is not one: "
                f"{message[:60]!r}"
            ) from None
        if field in keys:
            raise ValueError(
                f"{where} the message may not have a field {field!r} (reserved for the "
                "position; see RoomPolicies(position_field=...))"
            )
        text = message.strip()
    else:
        raise TypeError(
            f"{where} its messages must be JSON objects (a dict, a Struct or a str holding "
            f"one); got {type(message).__name__}"
        )
    body = text[:-1].rstrip()
    if body == "{":
        return f'{{{key}:"', '"}'
    return f'{body},{key}:"', '"}'


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
        rooms: Room policies by room name or pattern: history, presence,
            join authorization (``{"auction:*": RoomPolicy(history=100,
            history_ttl=600)}``; see :mod:`pachinko.rooms`).

    Attributes:
        room_policies: The app's :class:`~pachinko.rooms.RoomPolicies`.
        identity_fixed: A connection's user cannot change once registered
            (set when the app authenticates at the handshake).

    Raises:
        ConfigError: ``settings.backend`` names an unknown scheme, or Redis
            without the ``redis`` package.
    """

    def __init__(
        self,
        settings: Settings,
        backend: ConnectionBackend | None = None,
        rooms: Mapping[str, RoomPolicy] | RoomPolicies | None = None,
    ) -> None:
        self.settings = settings
        self.backend: ConnectionBackend = (
            backend if backend is not None else backend_from_url(settings.backend)
        )
        self.identity_fixed = False
        # Local presence memberships: room -> ids of the connections counted
        # there (a leave ends what the join started, whatever the policy is now).
        self._present_in: dict[str, set[str]] = {}
        # (room, user) -> the pending confirmation of that user's leave
        self._lingering: dict[tuple[str, str], asyncio.TimerHandle] = {}
        #: The room policies (read-only; :meth:`set_room_policies` replaces them).
        self.room_policies = RoomPolicies()
        self._history = False
        self._position_key = ""
        # Connections recovering a room: room → id → frames held meanwhile.
        self._holding: dict[str, dict[str, _Holder]] = {}
        # Connections that recovered a room from a backend that echoes history
        # (Redis): room → id → (epoch, last offset replayed). Live frames up to
        # that offset may still come in on the subscription: they are skipped.
        self._floors: dict[str, dict[str, tuple[str, int]]] = {}
        self._epoch = secrets.token_hex(6)  # the next new history's epoch
        self.set_room_policies(rooms)
        self._node_id = secrets.token_hex(8)
        self._id_prefix = self._node_id + "."
        self._counter = itertools.count(1)
        self._connections: dict[str, Connection] = {}
        self._rooms: dict[str, dict[str, Connection]] = {}
        self._users: dict[str, dict[str, Connection]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy: set[Outbox] = set()
        # One set of rules (and one bound method) for every outbox.
        self._outbox_rules = OutboxRules(
            settings.send_queue_size,
            settings.slow_consumer,
            settings.slow_consumer_close_code,
            settings.send_timeout,
            self._evict,
            self._busy,
        )
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

    def set_room_policies(self, rooms: Mapping[str, RoomPolicy] | RoomPolicies | None) -> None:
        """Replace the room policies (``install(rooms=...)`` sets them).

        Raises:
            ValueError, TypeError: A bad pattern or policy (see RoomPolicies).
        """
        policies = rooms if isinstance(rooms, RoomPolicies) else RoomPolicies(rooms)
        self.room_policies = policies
        # PERF: checked once per broadcast: a room without history pays one
        #   attribute read when no policy keeps any (bench_fanout.py).
        self._history = policies.any_history
        self._position_key = encode(policies.position_field).decode()
        # PERF: joins and leaves look policies up only if some room has one.
        self._authorize_rooms = policies.any_authorize
        self._presence = policies.any_presence

    # -- identity and lifecycle ------------------------------------------------

    @property
    def node_id(self) -> str:
        """This process's id in the cluster (prefix of its connection ids)."""
        return self._node_id

    def new_connection_id(self) -> str:
        """Return a connection id unique across processes."""
        # PERF: the prefix joined once and hex() (not an f-string's format):
        #   ~0.3 µs less per handshake (bench_connect.py).
        return self._id_prefix + hex(next(self._counter))[2:]

    async def start(self) -> None:
        """Start the backend and the send watchdog (ASGI lifespan startup)."""
        await self.backend.start(self)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Close the backend (ASGI lifespan shutdown, after the sockets)."""
        # Leaves still lingering are confirmed now: this process will not be
        # there to do it later.
        lingering, self._lingering = self._lingering, {}
        for (room, user), handle in lingering.items():
            handle.cancel()
            await self._confirm_leave(room, user)
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
        pending = self.register(conn)
        if pending is not None:
            await pending

    def register(self, conn: Connection) -> Awaitable[None] | None:
        """:meth:`connect` in two steps: index ``conn`` here now; return the backend's step.

        Returns ``None`` when the backend has nothing to record (an
        anonymous connection, see ``records_anonymous``), else an awaitable
        that records it and undoes the local step if that fails.

        PERF: the serve loop's handshake awaits nothing for an anonymous
        connection (bench_connect.py).

        Raises:
            ConnectionLimitExceeded: ``max_connections`` is reached.
        """
        settings = self.settings
        limit = settings.max_connections
        if limit is not None and len(self._connections) >= limit:
            raise ConnectionLimitExceeded(f"Connection limit reached ({limit} open connections)")
        # PERF: the outbox itself is made for the first frame (NoOutbox).
        conn.outbox = UNOPENED
        self._connections[conn.id] = conn
        user = conn._user
        if user is None:
            if not self.backend.records_anonymous:
                return None
            return self._record(conn, None, False)
        members = self._users.get(user.id)
        first = members is None
        if members is None:
            members = self._users[user.id] = {}
        members[conn.id] = conn
        return self._record(conn, user.id, first)

    async def _record(self, conn: Connection, user: str | None, first: bool) -> None:
        """The backend's step of :meth:`register` (undone here if it fails)."""
        per_user = self.settings.max_connections_per_user
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
        outbox = conn.outbox
        if outbox is UNOPENED:
            conn.outbox = OPENED
        elif type(outbox) is Outbox:
            outbox.start()

    async def disconnect(self, conn: Connection) -> None:
        """Deregister ``conn``: leave its rooms, here and in the backend.

        Idempotent; called once the connection's ``on_disconnect`` ran.
        """
        pending = self.deregister(conn)
        if pending is not None:
            await pending

    def deregister(self, conn: Connection) -> Awaitable[None] | None:
        """:meth:`disconnect` in two steps: forget ``conn`` here now; return the backend's step.

        Returns ``None`` when the backend has nothing to forget (an
        anonymous connection in no room, see ``records_anonymous``), else
        an awaitable that leaves its rooms and removes it in the backend.
        Idempotent.
        """
        outbox = conn.outbox
        if outbox is None:
            return None
        conn.outbox = None
        if type(outbox) is Outbox:
            outbox.discard()
        if not conn.rooms and conn._user is None:
            # PERF: in no room, no user: _unindex() has one entry to drop
            #   (bench_connect.py).
            self._connections.pop(conn.id, None)
            if not self.backend.records_anonymous:
                return None
        else:
            self._unindex(conn)
        rooms = list(conn.rooms)
        if isinstance(conn.rooms, set):
            conn.rooms.clear()
        return self._forget(conn, rooms)

    async def _forget(self, conn: Connection, rooms: list[str]) -> None:
        """The backend's step of :meth:`deregister`."""
        backend = self.backend
        present = self._present_in
        for room in rooms:
            await backend.leave(room, conn.id, room not in self._rooms)
            if present and conn._user is not None and conn.id in present.get(room, ()):
                await self._presence_leave(room, conn._user.id, conn.id)
        user = conn.user_id
        await backend.remove_connection(conn.id, user, user is None or user not in self._users)

    def _unindex(self, conn: Connection) -> None:
        cid = conn.id
        self._connections.pop(cid, None)
        holding = self._holding
        for room in conn.rooms:
            members = self._rooms.get(room)
            if members is not None and members.pop(cid, None) is not None and not members:
                del self._rooms[room]
            if holding:
                held = holding.get(room)
                if held is not None and held.pop(cid, None) is not None and not held:
                    del holding[room]
            self._drop_floor(room, cid)
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
            outbox = outbox_of(conn)
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

    async def join_room(
        self,
        conn: Connection | str,
        room: str,
        *,
        since: str | None = None,
        last: int | None = None,
        notify: bool = True,
    ) -> Recovery | None:
        """Add a local connection (or its id) to ``room``; no-op if a member.

        With ``since`` (the position ``"epoch:offset"`` of the last message
        the client got from the room) or ``last`` (a number of messages), the
        connection first gets the broadcasts it missed (or the last ones
        kept), in order, then the live ones: none missing, none twice, even
        with broadcasts arriving meanwhile. Preceded (``notify``) by a
        ``recovery`` message telling the client the outcome (see
        :class:`~pachinko.rooms.Recovery` and docs/connections.md).

        Returns:
            ``None`` for a plain join; the :class:`~pachinko.rooms.Recovery`
            when ``since`` or ``last`` was given. A position that is
            malformed, from another epoch or ahead of the room, or history
            that is gone, gives ``recovered=False`` (the join still
            happens): never an exception.

        Every join is authorized first (a recovering one too): the room's
        policy ``authorize``, then the connection's ``authorize_join``
        checks (router hooks and resource methods); each must return true.
        In a presence room, the user's first connection (in any process)
        announces a ``join`` to the room.

        Raises:
            BackendUnavailable: The backend is unreachable (the connection
                did not join).
            JoinRefused: A check refused (the receive loop answers with an
                error reply, reason ``forbidden``); nothing changed.
        """
        if not isinstance(room, str) or not room:
            raise ValueError(f"join_room(): room must be a non-empty str, got {room!r}")
        c = self._resolve(conn, "join_room()")
        if since is not None or last is not None:
            return await self._join_recovering(c, room, since, last, notify)
        await self._join(c, room)
        return None

    async def _join(self, c: Connection, room: str) -> None:
        rooms = c.rooms
        if room in rooms:
            return
        if self._authorize_rooms or c.authorizers:
            await self._authorize(c, room)
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
        if self._presence and c._user is not None and self._has_presence(room):
            await self._presence_join(room, c._user, c.id)

    async def _authorize(self, conn: Connection, room: str) -> None:
        """Run the join checks of ``room`` for ``conn``; raise JoinRefused if one refuses."""
        if self._authorize_rooms:
            check = self.room_policies.lookup(room).authorize
            if check is not None:
                allowed = check(conn.resource, room)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
                if not allowed:
                    raise JoinRefused(room)
        for own in conn.authorizers:
            if not await own(room):
                raise JoinRefused(room)

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
        self._drop_floor(room, c.id)
        await self.backend.leave(room, c.id, room not in self._rooms)
        present = self._present_in
        if present and c._user is not None and c.id in present.get(room, ()):
            await self._presence_leave(room, c._user.id, c.id)

    async def members(self, room: str) -> set[str]:
        """Connection ids in ``room``, in every (live) process."""
        return await self.backend.members(room)

    # -- presence -----------------------------------------------------------------------

    def _has_presence(self, room: str) -> bool:
        return self.room_policies.lookup(room).presence

    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        """Users present in ``room``, in every (live) process: user id → public info.

        Only rooms whose policy has ``presence`` on keep this list (for
        others it is empty); a user is listed once however many connections
        it has, and only connections with a user count.

        Raises:
            BackendUnavailable: The backend (Redis) is unreachable.
        """
        found = await self.backend.presence_members(room)
        return {user: _decode_info(info) for user, info in sorted(found.items())}

    async def _presence_join(self, room: str, user: User, cid: str) -> None:
        self._present_in.setdefault(room, set()).add(cid)
        info = _encode_info(user.info).decode()
        arrived = await self.backend.presence_join(room, user.id, cid, info)
        if arrived:
            await self._announce(room, "join", user.id, user.info)

    async def _presence_leave(self, room: str, user_id: str, cid: str) -> None:
        present = self._present_in.get(room)
        if present is not None:
            present.discard(cid)
            if not present:
                del self._present_in[room]
        if not await self.backend.presence_leave(room, user_id, cid):
            return
        linger = self.settings.presence_linger
        key = (room, user_id)
        if not linger:
            await self._confirm_leave(room, user_id)
        elif key not in self._lingering:
            loop = asyncio.get_running_loop()
            self._lingering[key] = loop.call_later(linger, self._linger_over, room, user_id)

    def _linger_over(self, room: str, user_id: str) -> None:
        if self._lingering.pop((room, user_id), None) is not None:
            self._spawn(self._confirm_leave(room, user_id))

    async def _confirm_leave(self, room: str, user_id: str) -> None:
        info = await self.backend.presence_confirm_leave(room, user_id)
        if info is not None:
            await self._announce(room, "leave", user_id, _decode_info(info))

    async def _announce(self, room: str, event: Any, user_id: str, info: dict[str, Any]) -> None:
        try:
            await self.broadcast_to_room(
                room, PresenceEvent(event=event, room=room, user=user_id, info=info)
            )
        except BackendUnavailable as ex:
            # NOTE: like any broadcast during an outage, the event is lost
            #   (at-most-once); the member list itself is rewritten on
            #   reconnection, so a client that re-reads it is right again.
            logger.warning("presence %s of %r in room %r not sent: %s", event, user_id, room, ex)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def rooms(self, prefix: str = "") -> list[str]:
        """Rooms with members (in any process) whose name starts with ``prefix``."""
        return await self.backend.rooms(prefix)

    async def user_connections(self, user_id: str) -> set[str]:
        """Connection ids of ``user_id``, in every (live) process."""
        return await self.backend.user_connections(user_id)

    async def set_user(self, conn: Connection | str, user: User | str | None) -> None:
        """Set the user a local connection belongs to (``None``: no user).

        Raises:
            PachinkoError: The connection's identity came from the app's
                ``authenticate`` (it cannot change), or the connection is in
                a presence room and the user id would change.
        """
        c = self._resolve(conn, "set_user()") if isinstance(conn, str) else conn
        new = User(user) if isinstance(user, str) else user
        if new == c._user:
            return
        if c.outbox is None:
            c._user = new
            return
        old = self._change_user(c, new)
        if old != c.user_id:
            await self._tell_backend_user(c.id, self._reindex_user(c, old))

    def _user_changed(self, conn: Connection, new: User | None) -> None:
        # Connection.user was assigned after registration (a sync setter):
        # re-index at once, tell the backend in the background.
        old = self._change_user(conn, new)
        if old != conn.user_id:
            moves = self._reindex_user(conn, old)
            if moves:
                self._spawn(self._tell_backend_user(conn.id, moves))

    def _change_user(self, conn: Connection, new: User | None) -> str | None:
        """Check and make the change of a registered connection's user; return the old id."""
        old = conn.user_id
        new_id = None if new is None else new.id
        if new_id != old:
            if self.identity_fixed:
                raise PachinkoError(
                    f"{conn!r}: the user of a connection is set once, by the app's "
                    f"authenticate at the handshake (got a change to {new_id!r})"
                )
            present = sorted(r for r, ids in self._present_in.items() if conn.id in ids)
            if present:
                raise PachinkoError(
                    f"{conn!r}: its user cannot change while it is in a presence room "
                    f"({', '.join(present)}); leave them first"
                )
        conn._user = new
        return old

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
        if self._history:
            policy = self.room_policies.lookup(room)
            if policy.history:
                return await self._broadcast_kept(room, message, exclude, timeout, policy)
        text = encode_frame(message)
        excluded = _excluded(exclude)
        remote = await self.backend.publish_room(room, text, excluded)
        return await self._to_members(room, text, excluded, timeout, remote)

    async def _to_members(
        self,
        room: str,
        frame: str | bytes,
        excluded: Collection[str],
        timeout: float | None,
        remote: int,
    ) -> Delivery:
        """Write ``frame`` to this process's members of ``room`` but ``excluded``."""
        members = self._rooms.get(room)
        if not members:
            return Delivery(remote=remote)
        if excluded:
            targets: Collection[Connection] = [
                c for cid, c in members.items() if cid not in excluded
            ]
        else:
            targets = list(members.values())
        return await self._fanout(targets, frame, timeout, remote)

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

    # -- room history ---------------------------------------------------------------------

    async def _broadcast_kept(
        self,
        room: str,
        message: Any,
        exclude: Iterable[str],
        timeout: float | None,
        policy: RoomPolicy,
    ) -> Delivery:
        """Broadcast to a history room: positioned, kept, carried in one step."""
        head, tail = split_object(
            message, self.room_policies.position_field, self._position_key, room
        )
        excluded = _excluded(exclude)
        backend = self.backend
        position, frame, remote = await backend.publish_history(
            room, head, tail, excluded, policy, self._epoch
        )
        self._used(position.epoch)
        members = self._rooms.get(room)
        if backend.history_echo:
            # NOTE: the backend delivers to this process's members too, from
            #   the one ordered stream of the room, so that every member sees
            #   the offsets in order (a reply to this process's command and
            #   another process's publish may arrive in either order).
            n = sum(1 for cid in members if cid not in excluded) if members else 0
            return Delivery(recipients=n, pending=n, remote=remote)
        if self._holding:
            self._hold(room, position, frame, excluded)
        return await self._to_members(room, frame, excluded, timeout, remote)

    async def _read_history(
        self, room: str, wanted: Position | None, last: int | None, policy: RoomPolicy
    ) -> HistoryRead:
        """What ``room`` kept after ``wanted`` (or its ``last`` broadcasts)."""
        read = await self.backend.read_history(
            room,
            None if wanted is None else wanted.offset,
            None if wanted is not None else max(0, min(last or 0, policy.history)),
            policy,
            self._epoch,
        )
        self._used(read.epoch)
        return read

    def _used(self, epoch: str | None) -> None:
        if epoch == self._epoch:  # a new history took it: the next one is fresh
            self._epoch = secrets.token_hex(6)

    def _hold(
        self, room: str, position: Position, frame: str | bytes, exclude: Collection[str]
    ) -> None:
        held = self._holding.get(room)
        if held:
            for cid, holder in held.items():
                if cid not in exclude:
                    holder.frames.append((position, frame))

    async def _join_recovering(
        self, c: Connection, room: str, since: str | None, last: int | None, notify: bool
    ) -> Recovery:
        resource = c.resource
        tag_field = getattr(resource, "tag_field", "type")
        wire = getattr(resource, "wire", "flat")
        if room in c.rooms:
            return self._tell(c, Recovery(room, False, reason="member"), notify, tag_field, wire)
        policy = self.room_policies.lookup(room)
        wanted, reason = _recovery_request(policy, since, last)
        if reason is not None:
            await self._join(c, room)
            return self._tell(c, Recovery(room, False, reason=reason), notify, tag_field, wire)
        if self._authorize_rooms or c.authorizers:
            await self._authorize(c, room)  # before anything is held or sent
        # Hold the room's live frames for this connection from now on, read
        # the history, send it, then the held frames not in it: no gap, no
        # duplicate whatever arrives meanwhile.
        holder, first = self._start_holding(c, room)
        backend = self.backend
        try:
            await backend.join(room, c.id, first)
            await backend.subscribed(room)
            read = await self._read_history(room, wanted, last, policy)
        except BaseException:
            self._unhold(room, c)
            cast("set[str]", c.rooms).discard(room)  # a set since _start_holding
            await backend.leave(room, c.id, room not in self._rooms and room not in self._holding)
            raise
        outcome, entries = _verdict(room, wanted, read)
        self._tell(c, outcome, notify, tag_field, wire)
        for _, frame in entries:
            fan_out((c,), frame, None)
        # PERF: from here to the end, no await: the held frames are flushed
        #   and the connection becomes a member in one step.
        self._unhold(room, c)
        upto = read.offset
        for position, live in holder.frames:
            if position.epoch != read.epoch or position.offset > upto:
                fan_out((c,), live, None)
        if c.outbox is not None and not c.outbox.dead:
            self._admit_recovered(c, room, read.epoch if backend.history_echo else None, upto)
            if self._presence and c._user is not None and self._has_presence(room):
                await self._presence_join(room, c._user, c.id)
        return outcome

    def _start_holding(self, c: Connection, room: str) -> tuple[_Holder, bool]:
        """Hold ``room``'s live frames for ``c``; return the holder and if it is the first."""
        holder = _Holder(c)
        held = self._holding.get(room)
        if held is None:
            held = self._holding[room] = {}
        held[c.id] = holder
        if isinstance(c.rooms, set):
            c.rooms.add(room)
        else:
            c.rooms = {room}
        return holder, room not in self._rooms and len(held) == 1

    def _admit_recovered(self, c: Connection, room: str, epoch: str | None, upto: int) -> None:
        """Make ``c`` a member of ``room``; ``epoch``: the replayed history's, if echoed."""
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = {}
        members[c.id] = c
        if epoch is not None:
            # NOTE: the subscription and the history read are two Redis
            #   connections: a broadcast published after the SUBSCRIBE but
            #   before the read is in the replay and may reach the listener
            #   only now. It is skipped up to the offset replayed; the
            #   subscription keeps publish order, so the first newer frame
            #   retires the floor.
            self._floors.setdefault(room, {})[c.id] = (epoch, upto)

    def _drop_floor(self, room: str, cid: str) -> None:
        floors = self._floors.get(room)
        if floors is not None and floors.pop(cid, None) is not None and not floors:
            del self._floors[room]

    def _past_floors(
        self, room: str, position: Position, exclude: Collection[str]
    ) -> Collection[str]:
        """``exclude`` plus the recovered members that already have ``position``."""
        floors = self._floors.get(room)
        if not floors:
            return exclude
        skip = set(exclude)
        for cid, (epoch, upto) in list(floors.items()):
            if epoch == position.epoch and position.offset <= upto:
                skip.add(cid)
            else:
                del floors[cid]
        if not floors:
            del self._floors[room]
        return skip

    def _unhold(self, room: str, c: Connection) -> None:
        held = self._holding.get(room)
        if held is not None and held.pop(c.id, None) is not None and not held:
            del self._holding[room]

    def _tell(
        self, c: Connection, outcome: Recovery, notify: bool, tag_field: str, wire: str
    ) -> Recovery:
        if notify:
            fan_out((c,), encode(outcome.to_message(tag_field, wire)).decode(), None)
        if self.observer is not None:
            self.observer.recovery(c, outcome.recovered)
        return outcome

    async def history(
        self, room: str, *, since: str | None = None, last: int | None = None
    ) -> tuple[Recovery, list[str]]:
        """Read a history room's kept broadcasts without joining (server code).

        Returns the outcome (as for a join with ``since``/``last``) and the
        frames (JSON text, each with its position).
        """
        policy = self.room_policies.lookup(room)
        if not policy.history:
            return Recovery(room, False, reason="no_history"), []
        wanted = None
        if since is not None:
            try:
                wanted = Position.parse(since)
            except ValueError:
                return Recovery(room, False, reason="malformed"), []
        read = await self._read_history(room, wanted, last, policy)
        outcome, entries = _verdict(room, wanted, read)
        return outcome, [frame for _, frame in entries]

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

    def deliver_room(
        self,
        room: str,
        text: str | bytes,
        exclude: Collection[str],
        position: Position | None = None,
    ) -> None:
        """Write a frame from another process to the local members of ``room``."""
        members = self._rooms.get(room)
        if position is not None and self._floors:
            exclude = self._past_floors(room, position, exclude)
        if members:
            if exclude:
                self._deliver([c for cid, c in members.items() if cid not in exclude], text)
            else:
                self._deliver(list(members.values()), text)
        if position is not None and self._holding:
            self._hold(room, position, text, exclude)

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

    def local_presence(self) -> list[PresenceEntry]:
        """Every local connection with a user in a presence room."""
        found = []
        for room, ids in self._present_in.items():
            for cid in ids:
                conn = self._connections.get(cid)
                if conn is not None and conn._user is not None:
                    user = conn._user
                    found.append((room, user.id, cid, _encode_info(user.info).decode()))
        return found

    def presence_changed(self, room: str, event: str, user_id: str, info: str) -> None:
        """Announce a presence event the backend decided (a dead process's members)."""
        self._spawn(self._announce(room, event, user_id, _decode_info(info)))
