"""Room policies: what a room (or a pattern of rooms) keeps and allows.

A policy is declared per room name or per pattern of names and found again
for every room by :meth:`RoomPolicies.lookup`:

- ``"lobby"`` names one room;
- ``"auction:*"`` names every room whose name starts with ``auction:``;
- ``"*"`` names every room (the default policy).

The most specific declaration wins, whole (policies are not merged): an
exact name before any pattern, then the pattern with the longest prefix. A
room that no declaration names gets :data:`DEFAULT_POLICY` (no history, no
presence, every join allowed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Final

import attrs

__all__ = [
    "DEFAULT_POLICY",
    "POSITION_FIELD",
    "RECOVERY_REASONS",
    "Position",
    "Recovery",
    "RoomPolicies",
    "RoomPolicy",
]

#: ``authorize(resource, room)``: may this connection join this room?
Authorize = Callable[[Any, str], "bool | Awaitable[bool]"]

#: The default name of the field that carries a broadcast's position.
POSITION_FIELD: Final = "_pos"

# A position on the wire is at most this long ("epoch:offset"): anything
# longer is malformed (a forged position cannot make the server allocate).
_MAX_POSITION: Final = 64

# The largest offset (a Redis stream ID's sequence is a 64-bit integer).
_MAX_OFFSET: Final = 2**63 - 1

# NOTE: room names are chosen by clients; the lookup cache is bounded so
#   that unique names cannot grow it without limit.
_CACHE_SIZE: Final = 4096


def _non_negative_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"RoomPolicy.{attribute.name} must be an int >= 0 (got {value!r})")


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"RoomPolicy.{attribute.name} must be a number > 0 or None (got {value!r})"
        )


def _callable_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"RoomPolicy.{attribute.name} must be callable or None (got {value!r})")


@attrs.frozen
class RoomPolicy:
    """What one room (or every room of a pattern) keeps and allows.

    Attributes:
        history: Broadcasts kept per room for late joiners and recovery
            (0: none, the default).
        history_ttl: Seconds a kept broadcast lives (``None``: until pushed
            out by newer ones). Only meaningful with ``history``.
        presence: Push join/leave events to the room and list its members
            with their public info.
        authorize: ``authorize(resource, room)`` returning (or awaiting to)
            ``True`` when the connection may join; ``None`` allows every join.
    """

    history: int = attrs.field(default=0, validator=_non_negative_int)
    history_ttl: float | None = attrs.field(default=None, validator=_positive_or_none)
    presence: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    authorize: Authorize | None = attrs.field(default=None, validator=_callable_or_none)

    def __attrs_post_init__(self) -> None:
        if self.history_ttl is not None and not self.history:
            raise ValueError(
                f"RoomPolicy.history_ttl needs history > 0 (got history={self.history!r}, "
                f"history_ttl={self.history_ttl!r})"
            )


#: The policy of a room that no declaration names.
DEFAULT_POLICY: Final = RoomPolicy()


def _check_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a room pattern must be a non-empty str (got {pattern!r})")
    star = pattern.find("*")
    if star != -1 and star != len(pattern) - 1:
        raise ValueError(
            f"room pattern {pattern!r}: '*' may only end a pattern ('auction:*'), "
            f"found at position {star}"
        )
    return pattern


@attrs.frozen
class Position:
    """Where a broadcast stands in its room's history.

    On the wire a position is the string ``"epoch:offset"``
    (``"5f0c2a91:42"``): ``offset`` counts the room's broadcasts (1, 2, ...;
    0 before the first) and only grows; ``epoch`` names one life of the
    history and changes when the history was lost (Redis flushed, the
    process restarted), so an offset is only meaningful with its epoch.

    Attributes:
        epoch: The history's epoch (no ``:``).
        offset: The broadcast's offset (>= 0).
    """

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: Any) -> Position:
        """Read ``"epoch:offset"`` as a client sent it.

        Raises:
            ValueError: Not a str, too long, no ``:``, an empty epoch, or an
                offset that is not a decimal integer >= 0.
        """
        if not isinstance(text, str):
            raise ValueError(f"a position must be a str 'epoch:offset', got {type(text).__name__}")
        if len(text) > _MAX_POSITION:
            raise ValueError(f"a position is at most {_MAX_POSITION} characters, got {len(text)}")
        epoch, colon, offset = text.rpartition(":")
        if not colon or not epoch or ":" in epoch:
            raise ValueError(f"expected a position 'epoch:offset', got {text!r}")
        if not offset.isascii() or not offset.isdigit():
            raise ValueError(f"position {text!r}: the offset must be an integer >= 0")
        value = int(offset)
        if value > _MAX_OFFSET:
            raise ValueError(f"position {text!r}: the offset is over {_MAX_OFFSET}")
        return cls(epoch, value)


#: Why a recovery did not happen (``Recovery.reason``): documented outcomes.
RECOVERY_REASONS: Final = {
    "malformed": "the position is not 'epoch:offset'",
    "no_history": "the room keeps no history",
    "epoch": "the history the position belongs to was lost (unknown epoch)",
    "future": "the offset is ahead of the room's last broadcast",
    "trimmed": "messages after the position are no longer kept (count or age)",
    "member": "the connection was already a member of the room",
}


@attrs.frozen
class Recovery:
    """The outcome of a join that asked for history (``since=`` or ``last=``).

    Attributes:
        room: The room joined.
        recovered: Every message after the client's position was (or will
            be, in order, before any live one) sent to it; with ``last=``,
            the kept messages asked for were. ``False``: nothing was
            replayed; the client must refetch its state (see ``reason``).
        missed: Messages replayed to the connection.
        position: The room's position when the history was read (``None``
            when the room has no history yet).
        reason: Why ``recovered`` is ``False`` (a key of
            :data:`RECOVERY_REASONS`), else ``None``.
    """

    room: str
    recovered: bool
    missed: int = 0
    position: Position | None = None
    reason: str | None = None

    def to_message(self, tag_field: str = "type", wire: str = "flat") -> dict[str, Any]:
        """The ``recovery`` message sent to the client, in its wire shape.

        Flat: ``{"type": "recovery", "room": ..., "recovered": ..., "missed":
        ..., "position": "epoch:offset" | null, "reason": ... | null}``;
        envelope: ``{"type": "recovery", "payload": {...}}``.
        """
        body = {
            "room": self.room,
            "recovered": self.recovered,
            "missed": self.missed,
            "position": None if self.position is None else str(self.position),
            "reason": self.reason,
        }
        if wire == "envelope":
            return {tag_field: "recovery", "payload": body}
        return {tag_field: "recovery", **body}


class RoomPolicies(Mapping[str, RoomPolicy]):
    """The room policies of one app: declarations by name or pattern.

    Args:
        declared: Room name or pattern → policy.
        position_field: Name of the field each broadcast to a history room
            carries its position in (reserved: a message that has a field
            of that name is refused at the broadcast).

    Raises:
        ValueError: A pattern is empty or has ``*`` elsewhere than at its end,
            or ``position_field`` is empty.
        TypeError: A value is not a :class:`RoomPolicy`.
    """

    __slots__ = ("_cache", "_declared", "_exact", "_prefixes", "position_field")

    def __init__(
        self,
        declared: Mapping[str, RoomPolicy] | None = None,
        *,
        position_field: str = POSITION_FIELD,
    ) -> None:
        if not isinstance(position_field, str) or not position_field:
            raise ValueError(
                f"RoomPolicies: position_field must be a non-empty str (got {position_field!r})"
            )
        self.position_field = position_field
        self._declared: dict[str, RoomPolicy] = {}
        self._exact: dict[str, RoomPolicy] = {}
        prefixes: list[tuple[str, RoomPolicy]] = []
        for pattern, policy in (declared or {}).items():
            _check_pattern(pattern)
            if not isinstance(policy, RoomPolicy):
                raise TypeError(
                    f"room policy for {pattern!r} must be a RoomPolicy (got {policy!r})"
                )
            self._declared[pattern] = policy
            if pattern.endswith("*"):
                prefixes.append((pattern[:-1], policy))
            else:
                self._exact[pattern] = policy
        # longest prefix first: the first that matches is the most specific
        self._prefixes = sorted(prefixes, key=lambda item: len(item[0]), reverse=True)
        self._cache: dict[str, RoomPolicy] = {}

    def lookup(self, room: str) -> RoomPolicy:
        """The policy of ``room``: the most specific declaration, else the default."""
        policy = self._exact.get(room)
        if policy is not None:
            return policy
        cache = self._cache
        policy = cache.get(room)
        if policy is not None:
            return policy
        policy = DEFAULT_POLICY
        for prefix, candidate in self._prefixes:
            if room.startswith(prefix):
                policy = candidate
                break
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[room] = policy
        return policy

    @property
    def any_history(self) -> bool:
        """Whether some declaration keeps history (else no room has any)."""
        return any(policy.history for policy in self._declared.values())

    @property
    def any_presence(self) -> bool:
        """Whether some declaration has presence on."""
        return any(policy.presence for policy in self._declared.values())

    @property
    def any_authorize(self) -> bool:
        """Whether some declaration checks joins."""
        return any(policy.authorize is not None for policy in self._declared.values())

    def __getitem__(self, pattern: str) -> RoomPolicy:
        return self._declared[pattern]

    def __iter__(self) -> Iterator[str]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def __repr__(self) -> str:
        return f"RoomPolicies({self._declared!r}, position_field={self.position_field!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoomPolicies):
            return NotImplemented
        return self._declared == other._declared and self.position_field == other.position_field

    __hash__ = None  # type: ignore[assignment]
