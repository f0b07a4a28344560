"""The per-connection outgoing queue: bounded, drained by one short-lived task.

A broadcast never awaits a socket: it appends the encoded frame to each
recipient's :class:`Outbox` (O(1), no await) and returns. Each outbox is
drained by its own task, created when the queue goes from empty to
non-empty and ending when it is empty again, so an idle connection holds no
task at all (memory per idle connection stays small) and a stalled socket
only ever delays its own queue.

Slow consumers, bounded twice:

- a full queue (``send_queue_size`` frames) applies the policy: ``"drop"``
  the new frame, or ``"close"`` the connection with
  ``slow_consumer_close_code``;
- a single send that takes longer than ``send_timeout`` seconds closes the
  connection with ``slow_consumer_close_code`` under both policies (the
  client has stopped reading; its socket buffers are full). The manager's
  watchdog checks every ``send_timeout / 4`` seconds (at most 1 s), so a
  stalled send is cut after ``send_timeout`` to ``1.25 * send_timeout``.

Closing a slow consumer is bounded too: its close frame waits behind
everything already written, and a client that does not read may never
take it. If the connection has not ended ``send_timeout`` seconds after
the decision, its TCP connection is reset (see :func:`reset_transport`).

A send that raises (the peer is gone) marks the outbox dead; the manager
evicts the connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from falcon.asgi import WebSocket

__all__ = ["DEAD", "DROPPED", "QUEUED", "Outbox", "Ticket", "reset_transport", "transport_of"]

logger = logging.getLogger("pachinko")

QUEUED: Final = 0
DROPPED: Final = 1
DEAD: Final = 2

# SO_LINGER on, timeout 0: closing the socket resets the connection and
# drops what the kernel still holds for the peer.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


def transport_of(ws: Any) -> Any:
    """The asyncio transport under a Falcon WebSocket, if the server exposes it.

    ASGI has no event to abort a connection. uvicorn (every WebSocket
    implementation of 0.54) hands the app the bound ``send`` method of its
    protocol object, which keeps the connection's ``transport``: reach it
    there. Other servers (or a wrapping middleware): ``None``.
    """
    # NOTE: Falcon keeps the ASGI send callable in a private slot.
    owner = getattr(getattr(ws, "_asgi_send", None), "__self__", None)
    transport = getattr(owner, "transport", None)
    if transport is None or not callable(getattr(transport, "abort", None)):
        return None
    return transport


def reset_transport(transport: Any) -> bool:
    """Reset a connection whose peer will not read; return whether it was open.

    A graceful close would wait for the peer to read the backlog (the
    transport's buffer, then the kernel's, stays queued in FIN-WAIT-1):
    ``SO_LINGER`` 0 makes the kernel drop it and send a RST.
    """
    if transport.is_closing() and not transport.get_write_buffer_size():
        return False  # closing cleanly: nothing left to flush
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
    return True


class Ticket:
    """Counts the deliveries of one broadcast the caller waits for."""

    __slots__ = ("delivered", "failed", "remaining", "waiter")

    def __init__(self) -> None:
        self.remaining = 0
        self.delivered = 0
        self.failed = 0
        self.waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self, ok: bool) -> None:
        """Record one recipient's outcome (written, or lost)."""
        if ok:
            self.delivered += 1
        else:
            self.failed += 1
        self.remaining -= 1
        if self.remaining <= 0 and not self.waiter.done():
            self.waiter.set_result(None)


class Outbox:
    """The bounded outgoing queue of one connection.

    Args:
        ws: The Falcon WebSocket frames are written to.
        size: Frames buffered at most.
        policy: ``"drop"`` or ``"close"`` when the queue is full.
        close_code: Close code for slow consumers.
        send_timeout: Seconds a single send may take.
        on_dead: Called once (synchronously) when the outbox dies, whatever
            the cause: the manager evicts the connection.
        busy: The manager's set of outboxes with a send under way (its
            watchdog calls :meth:`expire` on them).
    """

    __slots__ = (
        "_closer",
        "_inflight",
        "_open",
        "_task",
        "busy",
        "close_code",
        "closed_with",
        "dead",
        "evicted",
        "on_dead",
        "policy",
        "queue",
        "send_timeout",
        "size",
        "started",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        size: int,
        policy: str,
        close_code: int,
        send_timeout: float,
        on_dead: Callable[[], None],
        busy: set[Outbox],
    ) -> None:
        self.ws = ws
        self.size = size
        self.policy = policy
        self.close_code = close_code
        self.send_timeout = send_timeout
        self.on_dead = on_dead
        self.busy = busy
        self.started = 0.0
        self._inflight: Ticket | None = None
        self.queue: deque[tuple[str | bytes, Ticket | None]] = deque()
        self.dead = False
        # Killed by abort() (a slow consumer, a failed send), not closed at shutdown.
        self.evicted = False
        # The code the slow-consumer policy closed it with (None: not closed so).
        self.closed_with: int | None = None
        self._open = False
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def offer(self, frame: str | bytes, ticket: Ticket | None = None) -> int:
        """Queue ``frame`` (``str``: a text frame, ``bytes``: a binary frame).

        Returns QUEUED, DROPPED (queue full) or DEAD.
        """
        if self.dead:
            return DEAD
        queue = self.queue
        if len(queue) >= self.size:
            if self.policy == "close":
                self.abort(
                    self.close_code,
                    f"Slow consumer: outgoing queue full ({self.size} messages)",
                )
            return DROPPED
        queue.append((frame, ticket))
        if ticket is not None:
            ticket.remaining += 1
        if self._task is None and self._open:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return QUEUED

    def start(self) -> None:
        """Start writing (the handshake was accepted); flush what was queued."""
        self._open = True
        if self.queue and self._task is None and not self.dead:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        queue = self.queue
        send_text = self.ws.send_text
        now = asyncio.get_running_loop().time
        self.busy.add(self)
        try:
            while queue:
                frame, ticket = queue.popleft()
                self._inflight = ticket
                # PERF: no asyncio.timeout() per send (~6 µs, bench_fanout.py):
                #   the manager's watchdog expires sends that started too long ago.
                self.started = now()
                try:
                    if isinstance(frame, str):
                        await send_text(frame)
                    else:
                        await self.ws.send_data(frame)
                except Exception as ex:
                    self.started = 0.0
                    self._inflight = None
                    if ticket is not None:
                        ticket.settle(False)
                    logger.debug("send failed, evicting the connection: %r", ex)
                    self._task = None
                    self.abort(None, "")
                    return
                self.started = 0.0
                self._inflight = None
                if ticket is not None:
                    ticket.settle(True)
        finally:
            self.busy.discard(self)
            if self._task is asyncio.current_task():
                self._task = None

    def expire(self, now: float) -> None:
        """Apply the send timeout (called by the manager's watchdog)."""
        started = self.started
        if started and now - started > self.send_timeout:
            self.started = 0.0
            ticket, self._inflight = self._inflight, None
            if ticket is not None:
                ticket.settle(False)
            self.abort(self.close_code, f"Slow consumer: a send took over {self.send_timeout:g} s")

    def abort(self, code: int | None, reason: str) -> None:
        """Kill the outbox: drop the queue, stop writing, close with ``code``.

        ``code`` ``None`` means the socket already failed: nothing is sent.
        """
        if self.dead:
            return
        self.dead = self.evicted = True
        self._fail_inflight()
        self._fail_queued()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if code is not None:
            logger.warning("closing a slow consumer with %d: %s", code, reason)
            self.closed_with = code
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.send_timeout
            transport = transport_of(self.ws)
            if transport is not None:
                # Whatever the client does, the connection ends by the deadline.
                loop.call_at(deadline, self._expire_close, transport)
            self._closer = loop.create_task(self._close(code, reason, deadline))
        self.on_dead()

    def _expire_close(self, transport: Any) -> None:
        if reset_transport(transport):
            logger.warning(
                "slow consumer did not take its close frame within %g s: connection reset",
                self.send_timeout,
            )

    async def aclose(self, code: int, reason: str) -> None:
        """Stop accepting frames, flush the queue (bounded), close the socket."""
        if self.dead:
            return
        self.dead = True
        task = self._task
        if task is not None:
            try:
                async with asyncio.timeout(self.send_timeout):
                    await asyncio.shield(task)
            except (TimeoutError, asyncio.CancelledError):
                self._fail_inflight()
                task.cancel()
            except Exception:
                logger.debug("flush before close failed", exc_info=True)
        self._fail_queued()
        await self._close(code, reason, asyncio.get_running_loop().time() + self.send_timeout)

    def discard(self) -> None:
        """Forget everything: the connection has ended."""
        self.dead = True
        self._fail_inflight()
        self._fail_queued()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _fail_inflight(self) -> None:
        # The send under way is abandoned (its task is cancelled): the caller
        # waiting on its ticket learns it failed now, not at its timeout.
        ticket, self._inflight = self._inflight, None
        self.started = 0.0
        if ticket is not None:
            ticket.settle(False)

    def _fail_queued(self) -> None:
        for _, ticket in self.queue:
            if ticket is not None:
                ticket.settle(False)
        self.queue.clear()

    async def _close(self, code: int, reason: str, deadline: float) -> None:
        # NOTE: bounded: closing a stalled socket may itself wait on the peer.
        with contextlib.suppress(Exception):
            async with asyncio.timeout_at(deadline):
                await self.ws.close(code, reason)
