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
from typing import Any, Final, Literal

import attrs
import msgspec

__all__ = ["DEFAULT_POLICY", "PresenceEvent", "RoomPolicies", "RoomPolicy"]

#: ``authorize(resource, room)``: may this connection join this room?
Authorize = Callable[[Any, str], "bool | Awaitable[bool]"]

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


class PresenceEvent(msgspec.Struct, tag="presence", kw_only=True):
    """A user joined or left a presence room; sent to the room's members.

    ``join`` when the user's first connection (in any process) joins the
    room, ``leave`` when its last one left (after ``presence_linger``), or
    its process died (after the backend's presence TTL). Always in this flat
    shape, whatever the wire of the receiving resource.

    Attributes:
        event: ``"join"`` or ``"leave"``.
        room: The room.
        user: The user id.
        info: The user's public info (``User.info``).
    """

    event: Literal["join", "leave"]
    room: str
    user: str
    info: dict[str, Any]


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


class RoomPolicies(Mapping[str, RoomPolicy]):
    """The room policies of one app: declarations by name or pattern.

    Args:
        declared: Room name or pattern → policy.

    Raises:
        ValueError: A pattern is empty or has ``*`` elsewhere than at its end.
        TypeError: A value is not a :class:`RoomPolicy`.
    """

    __slots__ = ("_cache", "_declared", "_exact", "_prefixes")

    def __init__(self, declared: Mapping[str, RoomPolicy] | None = None) -> None:
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
        return f"RoomPolicies({self._declared!r})"
