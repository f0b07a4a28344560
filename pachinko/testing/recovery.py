"""Follow a history room from the client's side: positions, recoveries, gaps.

A :class:`RoomFollower` reads what a client receives from one history room,
keeps the position of the last message (what the client sends back with
``since`` when it reconnects) and checks, as it goes, that the offsets it
sees only grow by one within an epoch: a gap or a duplicate fails at once,
with the offsets around it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..rooms import POSITION_FIELD, Position
from ._stream import MessageStream

__all__ = ["RoomFollower"]


class RoomFollower:
    """What a client got from one history room, across its reconnections.

    Args:
        room: The room (matched against ``recovery`` messages).
        field: The position field (``RoomPolicies.position_field``).
        tag_field: The message type field of the resource.
        belongs: Whether a positioned message belongs to this room (default:
            every positioned message does; give one when the client is in
            several history rooms, e.g. ``lambda m: m["room"] == "a"``).

    Attributes:
        messages: Every message of the room, in the order received, without
            the position field.
        positions: Their positions.
        recoveries: The ``recovery`` messages received for the room.
    """

    def __init__(
        self,
        room: str,
        *,
        field: str = POSITION_FIELD,
        tag_field: str = "type",
        belongs: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.room = room
        self.field = field
        self.tag_field = tag_field
        self.belongs = belongs
        self.messages: list[dict[str, Any]] = []
        self.positions: list[Position] = []
        self.recoveries: list[dict[str, Any]] = []
        # The position the next message must follow (None: any).
        self._last: Position | None = None

    @property
    def position(self) -> str | None:
        """The position to reconnect with (``since=``): the last message's, or
        the room's as the last ``recovery`` message gave it (``None``: no
        position known yet)."""
        return None if self._last is None else str(self._last)

    @property
    def offsets(self) -> list[int]:
        """The offsets received, in order."""
        return [p.offset for p in self.positions]

    def feed(self, message: Any) -> bool:
        """Take one received message; return whether it was the room's.

        Raises:
            AssertionError: A positioned message is not the next one: same
                epoch, offset not exactly one more than the last one, unless a
                recovery said the client must start over.
        """
        if not isinstance(message, dict):
            return False
        if message.get(self.tag_field) == "recovery":
            body = message.get("payload", message)
            if body.get("room") == self.room:
                self.recoveries.append(body)
                if not body.get("recovered") or not body.get("missed"):
                    # nothing replayed (or told to start over): the next
                    # message follows the room's position
                    position = body.get("position")
                    self._last = Position.parse(position) if position else None
                return True
            return False
        raw = message.get(self.field)
        if raw is None or (self.belongs is not None and not self.belongs(message)):
            return False
        position = Position.parse(raw)
        previous = self._last
        if (
            previous is not None
            and previous.epoch == position.epoch
            and position.offset != previous.offset + 1
        ):
            kind = "duplicate" if position.offset <= previous.offset else "gap"
            raise AssertionError(
                f"room {self.room!r}: {kind}: {position} after {previous} "
                f"(last offsets: {self.offsets[-5:]})"
            )
        self._last = position
        self.positions.append(position)
        self.messages.append({k: v for k, v in message.items() if k != self.field})
        return True

    def feed_all(self, messages: Iterable[Any]) -> int:
        """Feed each message; return how many were the room's."""
        return sum(self.feed(m) for m in messages)

    async def follow(
        self, ws: MessageStream, count: int, *, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Receive from ``ws`` until ``count`` more messages of the room came; return them.

        Other messages are skipped (they stay in ``ws.received``).
        """
        start = len(self.messages)
        while len(self.messages) - start < count:
            self.feed(await ws.receive_json(timeout))
        return self.messages[start:]

    async def recovery(self, ws: MessageStream, *, timeout: float | None = None) -> dict[str, Any]:
        """Receive until the room's next ``recovery`` message; return its body."""
        seen = len(self.recoveries)
        while len(self.recoveries) == seen:
            self.feed(await ws.receive_json(timeout))
        return self.recoveries[-1]

    def assert_exactly(
        self, expected: Sequence[Any], key: Callable[[dict[str, Any]], Any] | None = None
    ) -> None:
        """Check that the room's messages are exactly ``expected``, in order.

        ``key`` maps each message to what is compared (default: the message
        without its position field).

        Raises:
            AssertionError: Says which are missing, which came twice and
                where the order differs.
        """
        got = [key(m) if key else m for m in self.messages]
        want = list(expected)
        if got == want:
            return
        missing = [m for m in want if m not in got]
        twice = [m for i, m in enumerate(got) if m in got[:i]]
        raise AssertionError(
            f"room {self.room!r}: expected {len(want)} messages, got {len(got)}; "
            f"missing {missing[:10]!r}, twice {twice[:10]!r}; first received {got[:5]!r}"
        )
