"""A send abandoned half-way is reported as failed at once, through a real app.

A broadcast given a ``timeout`` waits for its local sends. When a member's
send is under way and the member goes away (it disconnects, or the
slow-consumer policy closes it), that send will never complete: the caller
must learn it failed right then, not wait for its whole timeout and hear
"pending".
"""

from __future__ import annotations

import asyncio

from pachinko import runtime_of
from pachinko.testing import AppClient
from tests.apps.ticker import ticker_app
from tests.helpers import POLICY_VIOLATION, StalledClient, eventually

LONG = 60.0  # the broadcast's own timeout: the test fails long before it


async def test_a_member_that_leaves_during_a_send_counts_as_failed_at_once() -> None:
    app = ticker_app()
    manager = runtime_of(app).manager
    async with (
        AppClient(app, timeout=5.0) as client,
        client.websocket("/ws/ticks") as ann,
        StalledClient(app, "/ws/ticks") as gone,
    ):
        await ann.send_json({"type": "join", "room": "r"})
        await ann.expect(type="joined")
        await gone.join("r")
        gone.stalled = True
        broadcast = asyncio.ensure_future(
            manager.broadcast_to_room("r", {"type": "tick", "n": 0}, timeout=LONG)
        )
        assert (await ann.expect(type="tick"))["n"] == 0
        # the stalled member's send is under way (blocked in its socket)
        await asyncio.wait_for(gone.blocked.wait(), 5)
        # NOTE: a broadcast that did not wait for that send would also report
        #   it below as pending, not failed: the result proves the wait.
        assert not broadcast.done()  # waits for the stalled member's send
        gone.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})
        result = await asyncio.wait_for(broadcast, 5)
        assert (result.recipients, result.delivered, result.pending) == (2, 1, 0)
        assert (result.dropped, result.failed, result.ok) == (0, 1, False)
        await eventually(lambda: len(manager) == 1)


async def test_a_member_closed_by_the_policy_during_a_send_counts_as_failed_at_once() -> None:
    app = ticker_app(
        send_queue_size=2,
        slow_consumer="close",
        slow_consumer_close_code=POLICY_VIOLATION,
        send_timeout=LONG,
    )
    manager = runtime_of(app).manager
    async with (
        AppClient(app, timeout=5.0) as client,
        client.websocket("/ws/ticks") as ann,
        StalledClient(app, "/ws/ticks") as slow,
    ):
        await ann.send_json({"type": "join", "room": "r"})
        await ann.expect(type="joined")
        await slow.join("r")
        slow.stalled = True
        first = asyncio.ensure_future(
            manager.broadcast_to_room("r", {"type": "tick", "n": 0}, timeout=LONG)
        )
        assert (await ann.expect(type="tick"))["n"] == 0
        # the first send is under way, so the queue holds the next two
        await asyncio.wait_for(slow.blocked.wait(), 5)
        for n in (1, 2):  # fill the slow member's queue
            await manager.broadcast_to_room("r", {"type": "tick", "n": n})
            assert (await ann.expect(type="tick"))["n"] == n
        assert not first.done()
        # no room for this one: the policy closes the slow member
        overflow = await manager.broadcast_to_room("r", {"type": "tick", "n": 3})
        assert (overflow.recipients, overflow.dropped) == (2, 1)
        result = await asyncio.wait_for(first, 5)
        assert (result.delivered, result.pending, result.failed) == (1, 0, 1)
        assert (await ann.expect(type="tick"))["n"] == 3
        slow.release.set()
        await eventually(lambda: slow.close_code == POLICY_VIOLATION)
