"""The ConnectionBackend interface: what crosses process boundaries.

The manager always keeps the local index (this process's connections, and
the rooms and users they belong to) and delivers to local connections
itself. A backend adds what other processes need: cluster-wide membership
and presence, and carrying broadcasts to the processes that have members.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..errors import PachinkoError
from ..rooms import Position, RoomPolicy

if TYPE_CHECKING:
    from ..observe import Observer

__all__ = ["BackendHost", "ConnectionBackend", "HistoryRead", "PresenceEntry"]


@dataclass(slots=True)
class HistoryRead:
    """A snapshot of a room's history (:meth:`ConnectionBackend.read_history`).

    Attributes:
        epoch: The history's epoch (``None``: the room has no history yet).
        offset: The offset of the room's last broadcast (0: none yet).
        entries: ``(offset, frame)`` pairs, oldest first: every kept
            broadcast after ``since`` (or the last ``last`` ones).
        complete: ``entries`` starts right after ``since``: nothing between
            was trimmed or expired (always ``True`` for ``last``).
    """

    epoch: str | None
    offset: int
    entries: list[tuple[int, str]] = field(default_factory=list)
    complete: bool = True


class BackendHost(Protocol):
    """What a backend may ask of the manager that started it."""

    @property
    def node_id(self) -> str:
        """This process's id (it prefixes every local connection id)."""
        ...

    def local_rooms(self) -> Mapping[str, Collection[str]]:
        """Room → ids of the local connections in it."""
        ...

    def local_users(self) -> Mapping[str, Collection[str]]:
        """User id → ids of the local connections of that user."""
        ...

    def deliver_room(
        self,
        room: str,
        text: str | bytes,
        exclude: Collection[str],
        position: Position | None = None,
    ) -> None:
        """Queue ``text`` for the local members of ``room``.

        ``position``: the position of a broadcast to a history room (its
        frames must be delivered in the order of their offsets).
        """
        ...

    def deliver_user(self, user_id: str, text: str | bytes) -> None:
        """Queue ``text`` for the local connections of ``user_id``."""
        ...

    def deliver_connection(self, conn_id: str, text: str | bytes) -> None:
        """Queue ``text`` for one local connection."""
        ...

    def deliver_all(self, text: str | bytes, exclude: Collection[str]) -> None:
        """Queue ``text`` for every local connection."""
        ...

    def local_presence(self) -> list[PresenceEntry]:
        """Every local connection in a presence room: (room, user, connection id, info)."""
        ...

    def presence_changed(self, room: str, event: str, user_id: str, info: str) -> None:
        """Announce a presence ``event`` (``"join"``/``"leave"``) the backend decided.

        Called for what the backend found on its own: members of a process
        that died (``leave``), and writes that failed during an outage and
        succeeded on reconnection. ``info`` is the user's info as JSON.
        """
        ...


#: A presence membership: (room, user id, connection id, public info as JSON).
PresenceEntry = tuple[str, str, str, str]


class ConnectionBackend(abc.ABC):
    """Where rooms, users and broadcasts meet across processes.

    Every method is called by the manager after it updated its local index;
    ``first``/``last`` say whether the local index just gained its first or
    lost its last connection of that room or user (a backend subscribes and
    unsubscribes on those). ``publish_*`` carry an already encoded frame to
    *other* processes and return how many received it; local delivery is the
    manager's job. A frame is a ``str`` (sent as a text frame) or ``bytes``
    (a binary frame); a backend must hand it back with the same type.

    Room history (rooms whose :class:`~pachinko.rooms.RoomPolicy` keeps
    some) is the backend's too: :meth:`publish_history` stores and carries a
    broadcast, :meth:`read_history` reads what was kept. A backend without
    history leaves both as they are (they raise).

    Attributes:
        observer: Set by the manager (:meth:`~pachinko.WebSocketConnectionManager.observe`):
            a backend that can lose its connection reports outages to it
            (``backend_down`` / ``backend_up``), and may carry its
            ``carrier()`` with a publish (trace context). ``None``: off.
    """

    #: The backend delivers history frames to this process's members itself
    #: (through :meth:`BackendHost.deliver_room`, in offset order), instead
    #: of the manager delivering its own broadcasts locally.
    history_echo: bool = False

    #: :meth:`add_connection` and :meth:`remove_connection` are called for
    #: connections without a user too. ``False`` (the in-process and Redis
    #: backends, which record users' connections only): the manager skips
    #: both calls for those (two awaits less per connection).
    records_anonymous: bool = True

    observer: Observer | None = None

    @abc.abstractmethod
    async def start(self, host: BackendHost) -> None:
        """Connect; from now on, deliver remote messages through ``host``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Withdraw this process's presence and disconnect."""

    @abc.abstractmethod
    async def add_connection(self, conn_id: str, user_id: str | None, first: bool) -> None:
        """Record a connection (of ``user_id``, if any)."""

    async def add_user_connection(
        self, conn_id: str, user_id: str, first: bool, limit: int
    ) -> bool:
        """Record a connection of ``user_id`` unless the user already has ``limit``.

        Called instead of :meth:`add_connection` when a per-user limit is
        set; the manager has indexed the connection locally already, and
        forgets it again if this returns ``False``. The check and the
        record must be one atomic step across processes (the Redis backend
        runs one script).

        This default counts :meth:`user_connections` other than ``conn_id``,
        then calls :meth:`add_connection`: atomic within one process only.

        Returns:
            Whether the connection was recorded (``False``: over the limit).
        """
        others = await self.user_connections(user_id)
        others.discard(conn_id)
        if len(others) >= limit:
            return False
        await self.add_connection(conn_id, user_id, first)
        return True

    @abc.abstractmethod
    async def remove_connection(self, conn_id: str, user_id: str | None, last: bool) -> None:
        """Forget a connection."""

    @abc.abstractmethod
    async def join(self, room: str, conn_id: str, first: bool) -> None:
        """Record that ``conn_id`` is a member of ``room``."""

    @abc.abstractmethod
    async def leave(self, room: str, conn_id: str, last: bool) -> None:
        """Record that ``conn_id`` left ``room``."""

    @abc.abstractmethod
    async def members(self, room: str) -> set[str]:
        """Connection ids in ``room``, in every live process."""

    @abc.abstractmethod
    async def rooms(self, prefix: str) -> list[str]:
        """Rooms with at least one live member whose name starts with ``prefix``, sorted."""

    @abc.abstractmethod
    async def user_connections(self, user_id: str) -> set[str]:
        """Connection ids of ``user_id``, in every live process."""

    @abc.abstractmethod
    async def publish_room(self, room: str, text: str | bytes, exclude: Collection[str]) -> int:
        """Carry a room broadcast to other processes; return how many got it."""

    @abc.abstractmethod
    async def publish_user(self, user_id: str, text: str | bytes) -> int:
        """Carry a message for ``user_id`` to other processes."""

    @abc.abstractmethod
    async def publish_connection(self, conn_id: str, text: str | bytes) -> int:
        """Carry a message to the process holding ``conn_id`` (0 if none)."""

    @abc.abstractmethod
    async def publish_all(self, text: str | bytes, exclude: Collection[str]) -> int:
        """Carry a broadcast to every other process."""

    # -- presence (rooms whose policy has presence on) --------------------------------
    #
    # Presence counts users, not connections: a user is present in a room while
    # at least one of its connections (in any process) is. When the count drops
    # to zero the user is *leaving*: still listed, until the manager confirms
    # the leave after ``presence_linger`` seconds, unless a connection of the
    # user joins again meanwhile (then neither a leave nor a join is announced:
    # a reloading page or a flapping client makes no event storm). Each step is
    # one atomic operation, so that of several processes exactly one sees a
    # user arrive or leave.

    async def presence_join(self, room: str, user_id: str, conn_id: str, info: str) -> bool:
        """Record that a connection of ``user_id`` is in ``room`` (``info``: JSON).

        Returns:
            Whether the user just arrived (announce a join): its first
            connection in the room, and it was not leaving.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support presence")

    async def presence_leave(self, room: str, user_id: str, conn_id: str) -> bool:
        """Record that a connection of ``user_id`` left ``room``.

        Returns:
            Whether it was the user's last one: the user is now leaving and
            the caller confirms with :meth:`presence_confirm_leave`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support presence")

    async def presence_confirm_leave(self, room: str, user_id: str) -> str | None:
        """End a leave started by :meth:`presence_leave`.

        Returns:
            The user's info (JSON) if it left (announce a leave), ``None``
            if it came back meanwhile or another process confirmed it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support presence")

    async def presence_members(self, room: str) -> dict[str, str]:
        """Users present in ``room`` (leaving ones included) → their info (JSON)."""
        raise NotImplementedError(f"{type(self).__name__} does not support presence")

    # -- room history --------------------------------------------------------------------

    async def publish_history(
        self,
        room: str,
        head: str,
        tail: str,
        exclude: Collection[str],
        policy: RoomPolicy,
        epoch: str,
    ) -> tuple[Position, str, int]:
        """Give a broadcast to a history room its position, keep it, carry it.

        The frame is ``head + str(position) + tail``; it is kept (at most
        ``policy.history`` of them, for ``policy.history_ttl`` seconds) and
        carried to other processes in one atomic step, so that positions
        and live delivery agree. ``epoch`` is the epoch to start if the room
        has none (a new history).

        Returns:
            The position, the frame, and how many other processes got it.
        """
        raise PachinkoError(f"{type(self).__name__} keeps no room history")

    async def read_history(
        self, room: str, since: int | None, last: int | None, policy: RoomPolicy, epoch: str
    ) -> HistoryRead:
        """Read what ``room`` kept after offset ``since`` (or its ``last`` broadcasts).

        Broadcasts older than ``policy.history_ttl`` are not returned. A room
        without history yet gets one (epoch ``epoch``, offset 0), so that a
        client always learns a position it can recover from. Called after
        :meth:`subscribed`: what is published after the read reaches this
        process.
        """
        raise PachinkoError(f"{type(self).__name__} keeps no room history")

    async def subscribed(self, room: str) -> None:
        """Return once broadcasts to ``room`` published from now on reach this process.

        Called after :meth:`join`, before :meth:`read_history`.

        Raises:
            BackendUnavailable: The backend could not confirm it in time.
        """
        return  # in one process, a join is effective at once
