"""Room policies: ``[rooms."PATTERN"]`` tables checked into a ``RoomPolicies``.

Each table becomes a :class:`~pachinko.rooms.RoomPolicy` (history, presence,
and ``authorize`` imported and checked); ``[app]
position_field`` names the field that carries positions. ``configure``
passes the result to ``install(rooms=...)``; the hot reloader gives the new
version to the manager (``set_room_policies``).
"""

from __future__ import annotations

from typing import Final

from ..rooms import RoomPolicies, RoomPolicy
from ._checks import Call, Checker

__all__ = ["room_policies"]

_AUTHORIZE: Final = Call("authorize(resource, room)", 2, is_async=False)


def room_policies(checker: Checker) -> RoomPolicies:
    """Return the policies of every ``[rooms]`` table that checks out."""
    loaded = checker.loaded
    policies: dict[str, RoomPolicy] = {}
    for pattern, (where, decl) in loaded.rooms.items():
        star = pattern.find("*")
        if not pattern or (star != -1 and star != len(pattern) - 1):
            found = repr(pattern) + (f": '*' at position {star}" if pattern else "")
            checker.problem(
                where, "a room name or a pattern ending in '*' ('auction:*', '*')", found
            )
            continue
        if decl.history_ttl is not None and not decl.history:
            checker.problem(
                where,
                "history > 0 with history_ttl (the time kept broadcasts live)",
                f"history_ttl = {decl.history_ttl} and history = {decl.history}",
                extra=("history_ttl",),
            )
            continue
        authorize = None
        if decl.authorize is not None:
            source, path = where
            at = (source, (*path, "authorize"))
            authorize = checker.function_for(at, decl.authorize, _AUTHORIZE)
            if authorize is None:
                continue
        policies[pattern] = RoomPolicy(
            history=decl.history,
            history_ttl=decl.history_ttl,
            presence=decl.presence,
            authorize=authorize,
        )
    return RoomPolicies(policies, position_field=loaded.app.position_field)
