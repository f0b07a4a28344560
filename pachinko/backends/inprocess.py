"""InProcessBackend: one process, nothing to carry (the embedded default)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Collection
from time import monotonic

from ..errors import PachinkoError
from ..rooms import Position, RoomPolicy
from .base import BackendHost, ConnectionBackend, HistoryRead

__all__ = ["InProcessBackend"]


class _Kept:
    """The history of one room: its epoch, last offset and kept frames."""

    __slots__ = ("entries", "epoch", "offset", "touched", "ttl")

    def __init__(self, epoch: str, size: int) -> None:
        self.epoch = epoch
        self.offset = 0
        self.entries: deque[tuple[int, float, str]] = deque(maxlen=size)
        self.ttl: float | None = None  # the TTL it is filed under in _expiry
        self.touched = 0.0  # monotonic time of its last broadcast or start


class InProcessBackend(ConnectionBackend):
    """Rooms, users and broadcasts within this process only.

    Membership is the manager's local index; nothing leaves the process.
    Use :class:`~pachinko.backends.redis.RedisBackend` to serve with several
    worker processes.

    Room history is kept in this process's memory (a bounded deque per room
    that was broadcast to); it is lost with the process, and a restarted
    process starts new epochs. A room with a ``history_ttl`` is forgotten
    (frames, epoch and offset) once its TTL has passed since its last
    broadcast and it has no member in this process, so rooms named by
    clients cannot grow the process without bound; a client coming back
    with a position in it is told ``recovered: false, reason: "epoch"``.
    """

    records_anonymous = False

    def __init__(self) -> None:
        self._host: BackendHost | None = None
        self._kept: dict[str, _Kept] = {}
        # presence: room -> user -> its connections in the room; user -> info;
        # users whose last connection left and whose leave is not confirmed.
        self._present: dict[str, dict[str, set[str]]] = {}
        self._info: dict[str, dict[str, str]] = {}
        self._leaving: dict[str, set[str]] = {}
        # TTL -> rooms filed under it, least recently broadcast to first
        # (one group per TTL value: the oldest of each group expires first).
        self._expiry: dict[float, OrderedDict[str, None]] = {}

    @property
    def host(self) -> BackendHost:
        if self._host is None:
            raise PachinkoError("InProcessBackend is not started: the manager starts it")
        return self._host

    async def start(self, host: BackendHost) -> None:
        self._host = host

    async def close(self) -> None:
        self._host = None

    async def add_connection(self, conn_id: str, user_id: str | None, first: bool) -> None:
        pass

    async def remove_connection(self, conn_id: str, user_id: str | None, last: bool) -> None:
        pass

    async def join(self, room: str, conn_id: str, first: bool) -> None:
        pass

    async def leave(self, room: str, conn_id: str, last: bool) -> None:
        pass

    async def members(self, room: str) -> set[str]:
        return set(self.host.local_rooms().get(room, ()))

    async def rooms(self, prefix: str) -> list[str]:
        return sorted(
            r for r, ids in self.host.local_rooms().items() if ids and r.startswith(prefix)
        )

    async def user_connections(self, user_id: str) -> set[str]:
        return set(self.host.local_users().get(user_id, ()))

    async def publish_room(self, room: str, text: str | bytes, exclude: Collection[str]) -> int:
        return 0

    async def publish_user(self, user_id: str, text: str | bytes) -> int:
        return 0

    async def publish_connection(self, conn_id: str, text: str | bytes) -> int:
        return 0

    async def publish_all(self, text: str | bytes, exclude: Collection[str]) -> int:
        return 0

    # -- presence ----------------------------------------------------------------------

    async def presence_join(self, room: str, user_id: str, conn_id: str, info: str) -> bool:
        users = self._present.setdefault(room, {})
        conns = users.get(user_id)
        self._info.setdefault(room, {})[user_id] = info
        if conns:
            conns.add(conn_id)
            return False
        users[user_id] = {conn_id}
        leaving = self._leaving.get(room)
        if leaving is not None and user_id in leaving:
            leaving.discard(user_id)  # back before its leave was confirmed
            return False
        return True

    async def presence_leave(self, room: str, user_id: str, conn_id: str) -> bool:
        users = self._present.get(room)
        conns = users.get(user_id) if users is not None else None
        if conns is None or conn_id not in conns:
            return False
        conns.discard(conn_id)
        if conns:
            return False
        del users[user_id]  # type: ignore[union-attr]
        self._leaving.setdefault(room, set()).add(user_id)
        return True

    async def presence_confirm_leave(self, room: str, user_id: str) -> str | None:
        leaving = self._leaving.get(room)
        if leaving is None or user_id not in leaving:
            return None
        leaving.discard(user_id)
        if not leaving:
            del self._leaving[room]
        infos = self._info.get(room, {})
        info = infos.pop(user_id, "{}")
        if not infos:
            self._info.pop(room, None)
            self._present.pop(room, None)
        return info

    async def presence_members(self, room: str) -> dict[str, str]:
        return dict(self._info.get(room, {}))

    # PERF: neither method awaits: a join that reads the history and a
    #   broadcast that appends to it never interleave in one process.
    async def publish_history(
        self,
        room: str,
        head: str,
        tail: str,
        exclude: Collection[str],
        policy: RoomPolicy,
        epoch: str,
    ) -> tuple[Position, str, int]:
        now = monotonic()
        self._forget_expired(now)
        kept = self._kept.get(room)
        if kept is None or kept.entries.maxlen != policy.history:
            kept = self._renew(room, kept, epoch, policy.history)
        offset = kept.offset = kept.offset + 1
        position = Position(kept.epoch, offset)
        frame = f"{head}{kept.epoch}:{offset}{tail}"
        kept.entries.append((offset, now, frame))
        self._touch(room, kept, policy.history_ttl, now)
        return position, frame, 0

    def _touch(self, room: str, kept: _Kept, ttl: float | None, now: float) -> None:
        """File ``room`` as broadcast to now (under its TTL)."""
        kept.touched = now
        if kept.ttl != ttl:  # a new room, or its policy changed (a reload)
            if kept.ttl is not None:
                self._expiry[kept.ttl].pop(room, None)
            kept.ttl = ttl
        if ttl is not None:
            group = self._expiry.get(ttl)
            if group is None:
                group = self._expiry[ttl] = OrderedDict()
            group[room] = None
            group.move_to_end(room)

    def _forget_expired(self, now: float) -> None:
        # PERF: looks at the oldest room of each TTL group only: O(1) per
        #   broadcast (a handful of distinct TTLs), amortized over the rooms forgotten.
        for ttl, group in self._expiry.items():
            while group:
                room = next(iter(group))
                kept = self._kept.get(room)
                if kept is not None and kept.ttl == ttl:
                    if kept.touched + ttl > now:
                        break
                    host = self._host
                    if host is not None and host.local_rooms().get(room):
                        kept.touched = now  # members follow it: keep its epoch going
                        group.move_to_end(room)
                        continue
                    del self._kept[room]
                del group[room]

    def _renew(self, room: str, kept: _Kept | None, epoch: str, size: int) -> _Kept:
        fresh = _Kept(epoch if kept is None else kept.epoch, size)
        if kept is not None:  # the policy changed (a reload): keep what fits
            fresh.offset = kept.offset
            fresh.entries.extend(kept.entries)
            fresh.ttl, fresh.touched = kept.ttl, kept.touched
        self._kept[room] = fresh
        return fresh

    async def read_history(
        self, room: str, since: int | None, last: int | None, policy: RoomPolicy, epoch: str
    ) -> HistoryRead:
        now = monotonic()
        self._forget_expired(now)
        kept = self._kept.get(room)
        if kept is None or kept.entries.maxlen != policy.history:
            kept = self._renew(room, kept, epoch, policy.history)
        if kept.touched == 0.0 or kept.ttl != policy.history_ttl:
            self._touch(room, kept, policy.history_ttl, now)  # its history starts
        entries = kept.entries
        ttl = policy.history_ttl
        if ttl is not None:
            cutoff = monotonic() - ttl
            while entries and entries[0][1] < cutoff:
                entries.popleft()
        if since is not None:
            found = [(o, f) for o, _, f in entries if o > since]
            complete = since >= kept.offset or (bool(found) and found[0][0] == since + 1)
            return HistoryRead(kept.epoch, kept.offset, found, complete)
        count = min(last or 0, len(entries))
        tail = [(o, f) for o, _, f in list(entries)[len(entries) - count :]] if count else []
        return HistoryRead(kept.epoch, kept.offset, tail, True)
