"""The in-process backend forgets history rooms once their TTL has passed.

Room names are chosen by clients: a room with a ``history_ttl`` is forgotten
(frames, epoch, offset) once the TTL has passed since its last broadcast and
no connection of the process is in it, so joining ever new rooms cannot grow
the process without bound. The backend's clock is replaced by a fake one: no
test waits for real time.
"""

from __future__ import annotations

from typing import Any

import pytest

from pachinko.backends.inprocess import InProcessBackend
from pachinko.rooms import Position
from pachinko.testing import AppClient
from tests.apps.history import build_app


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("pachinko.backends.inprocess.monotonic", fake)
    return fake


async def join(ws: Any, room: str, **recovery: Any) -> dict[str, Any]:
    await ws.send_json({"type": "join", "room": room, **recovery})
    message: dict[str, Any] = await ws.expect(type="recovery" if recovery else "joined", room=room)
    return message


async def say(ws: Any, room: str, n: int) -> dict[str, Any]:
    await ws.send_json({"type": "say", "room": room, "n": n})
    message: dict[str, Any] = await ws.expect(type="said", room=room, n=n)
    return message


async def test_rooms_with_a_ttl_are_forgotten_after_it_without_members(clock: Clock) -> None:
    backend = InProcessBackend()
    kept: dict[str, Any] = backend._kept
    async with AppClient(build_app(backend)) as client:
        positions = {}
        for n in range(20):  # "brief:*" keeps 100 for 0.5 s; "feed:*" keeps 1000, no TTL
            async with client.websocket("/ws/history") as ws:
                for room in (f"brief:{n}", f"feed:{n}"):
                    await join(ws, room)
                    positions[room] = (await say(ws, room, n))["_pos"]
        assert len(kept) == 40
        clock.now += 0.4
        async with client.websocket("/ws/history") as ws:
            await join(ws, "brief:live")
            await say(ws, "brief:live", 0)
            assert len(kept) == 41  # nothing expired yet
            clock.now += 0.2
            await say(ws, "brief:live", 1)  # the next broadcast forgets the expired rooms
            assert sorted(kept) == sorted(["brief:live", *(f"feed:{n}" for n in range(20))])
        async with client.websocket("/ws/history") as back:
            # a client back with a position in a forgotten room must refetch
            gone = await join(back, "brief:3", since=positions["brief:3"])
            assert (gone["recovered"], gone["reason"]) == (False, "epoch")
            assert Position.parse(gone["position"]).offset == 0
            kept_on = await join(back, "feed:3", since=positions["feed:3"])
            assert (kept_on["recovered"], kept_on["missed"]) == (True, 0)


async def test_a_room_with_a_member_keeps_its_history_going(clock: Clock) -> None:
    backend = InProcessBackend()
    async with (
        AppClient(build_app(backend)) as client,
        client.websocket("/ws/history") as member,
        client.websocket("/ws/history") as other,
    ):
        await join(member, "brief:kept")
        first = Position.parse((await say(member, "brief:kept", 1))["_pos"])
        clock.now += 10
        await join(other, "brief:other")
        await say(other, "brief:other", 2)  # sweeps: brief:kept has a member
        assert "brief:kept" in backend._kept
        second = Position.parse((await say(member, "brief:kept", 3))["_pos"])
        assert second == Position(first.epoch, first.offset + 1)
        # its old frames still expire by age: a late joiner gets only the new one
        await other.send_json({"type": "join", "room": "brief:kept", "last": 10})
        outcome = await other.expect(type="recovery", room="brief:kept")
        assert (outcome["recovered"], outcome["missed"]) == (True, 1)
        assert (await other.expect(type="said"))["n"] == 3


async def test_a_join_alone_starts_a_history_that_is_forgotten_too(clock: Clock) -> None:
    backend = InProcessBackend()
    async with AppClient(build_app(backend)) as client:
        async with client.websocket("/ws/history") as ws:
            for n in range(10):
                await join(ws, f"brief:j{n}", last=5)  # no broadcast: starts offset 0
        assert len(backend._kept) == 10
        clock.now += 1
        async with client.websocket("/ws/history") as ws:
            await join(ws, "brief:new", last=5)
        assert list(backend._kept) == ["brief:new"]
