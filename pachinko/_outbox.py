"""The per-connection outgoing queue: bounded, drained by one short-lived task.

A broadcast never waits for a socket. :func:`fan_out` writes the frame at
once to every recipient that is idle (nothing queued, no send under way):
one coroutine awaits the members' sends one after the other, and that
coroutine is run by hand, so a send that completes without suspending (the
common case: the frame goes into the transport's buffer) costs what it costs
in a bare ``await ws.send_text()`` loop. When a send suspends (the peer
stopped reading, the transport's buffer is full), the coroutine is handed,
half-run, to a task of that member's outbox (which finishes the send, then
writes what was queued behind it) and a fresh coroutine goes on with the
next members. A busy member gets the frame appended to its bounded queue
instead (O(1)). So a stalled socket only ever delays its own queue, frames
keep their order per connection, and an idle connection holds no task.

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
import contextvars
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Generator, Iterator
from typing import TYPE_CHECKING, Any, Final

from .observe import CONNECTION_EXTRA

if TYPE_CHECKING:
    from falcon.asgi import WebSocket

__all__ = [
    "DEAD",
    "DROPPED",
    "OPENED",
    "QUEUED",
    "SENT",
    "UNOPENED",
    "NoOutbox",
    "Outbox",
    "OutboxRules",
    "Ticket",
    "fan_out",
    "outbox_of",
    "reset_transport",
    "transport_of",
]

logger = logging.getLogger("pachinko")

QUEUED: Final = 0
DROPPED: Final = 1
DEAD: Final = 2
SENT: Final = 3

_NO_QUEUE: Final[deque[Any]] = deque(maxlen=0)  # shared by idle outboxes; always empty

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
    """Counts the deliveries of one broadcast the caller waits for.

    Only frames not written at once (queued, or a send that suspended) are
    counted here; the caller creates :attr:`waiter` after handing out the
    frame, if any is still outstanding.
    """

    __slots__ = ("delivered", "failed", "remaining", "waiter")

    def __init__(self) -> None:
        self.remaining = 0
        self.delivered = 0
        self.failed = 0
        self.waiter: asyncio.Future[None] | None = None

    def settle(self, ok: bool) -> None:
        """Record one recipient's outcome (written, or lost)."""
        if ok:
            self.delivered += 1
        else:
            self.failed += 1
        self.remaining -= 1
        waiter = self.waiter
        if self.remaining <= 0 and waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Resume:
    """Awaitable that finishes a coroutine already started by hand.

    ``coro.send(None)`` returned ``waiting`` (the future it waits for, or
    ``None`` for a bare yield): the awaiting task waits for it in the
    coroutine's place, then keeps driving the coroutine, forwarding
    exceptions (cancellation) into it, as ``await`` would have.
    """

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as ex:  # thrown in by the task: cancellation
                try:
                    waiting = coro.throw(ex)
                except StopIteration:
                    return
                continue
            try:
                waiting = coro.send(None)
            except StopIteration:
                return


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    await _Resume(coro, waiting)


class _Pass:
    """State of one writer coroutine of :func:`fan_out`."""

    __slots__ = ("current", "detached")

    def __init__(self) -> None:
        self.current: Outbox | None = None
        self.detached = False


def fan_out(targets: Collection[Any], frame: str | bytes, ticket: Ticket | None) -> list[int]:
    """Hand ``frame`` to the outbox of each target (a connection), in order.

    Returns the count of each outcome, indexed by QUEUED, DROPPED, DEAD (or
    no outbox) and SENT. Never raises for a socket's failure, and never
    waits: a send that would block continues in its outbox's task.
    """
    # PERF: SENT is what is left once the others are counted: no count per
    #   member written at once, the common case (bench_fanout.py).
    counts = [0, 0, 0, 0]
    remaining = iter(targets)
    while True:
        state = _Pass()
        writer = _write_each(remaining, frame, ticket, counts, state)
        # NOTE: each writer runs in a context of its own, which the task that
        #   adopts it keeps: a send that sets a context variable before it
        #   suspends and resets it after resumes in the same context (as in
        #   an eager task). Only asyncio.current_task() differs: until a send
        #   suspends, its code runs in the caller's task.
        context = contextvars.copy_context()
        try:
            waiting = context.run(writer.send, None)
        except StopIteration:
            counts[SENT] = len(targets) - counts[QUEUED] - counts[DROPPED] - counts[DEAD]
            return counts
        # PERF: the one member whose send suspended takes this coroutine
        #   over in a task; a fresh one continues with the members after it.
        outbox = state.current
        if outbox is None:  # pragma: no cover - nothing else in it awaits
            raise RuntimeError("fan_out(): the writer suspended outside a send")
        state.detached = True
        counts[QUEUED] += 1
        outbox._adopt(writer, waiting, ticket, context)


async def _write_each(
    targets: Iterator[Any],
    frame: str | bytes,
    ticket: Ticket | None,
    counts: list[int],
    state: _Pass,
) -> None:
    """Write ``frame`` to each idle target now, queue it for the busy ones.

    Run by hand by :func:`fan_out`. If a send suspends, this coroutine
    becomes that member's writer (``state.detached``): it finishes the send,
    writes the member's queue and stops (the other members went on without
    it).
    """
    text = isinstance(frame, str)
    for conn in targets:
        outbox = conn.outbox
        if outbox is None:
            counts[DEAD] += 1
            continue
        if not outbox._idle or outbox.dead:
            if type(outbox) is NoOutbox:
                # The first frame: the outbox is made now (idle once the
                # handshake was accepted: written at once, as any idle one).
                outbox = outbox_of(conn)
            if not outbox._idle or outbox.dead:
                counts[outbox.offer(frame, ticket)] += 1
                continue
        outbox._idle = False  # a re-entrant offer() queues behind this frame
        state.current = outbox
        ws = outbox.ws
        try:
            if text:
                await ws.send_text(frame)
            else:
                await ws.send_data(frame)
        except BaseException as ex:
            if state.detached:
                outbox._send_failed(ticket, ex)
                return
            outbox._idle = True
            if not isinstance(ex, Exception):
                raise
            # NOTE: never propagate a socket's failure into the broadcaster.
            logger.debug("send failed, evicting the connection: %r", ex)
            outbox.abort(None, "")
            counts[DEAD] += 1
            continue
        if state.detached:
            await outbox._sent(ticket)
            return
        outbox._idle = True
        if outbox.queue:  # queued by a re-entrant offer() during the send
            outbox._spawn()


class NoOutbox:
    """A registered connection's outbox before its first frame: nothing allocated.

    PERF: most connections get no broadcast for a long time (many never
    do); :data:`UNOPENED` and :data:`OPENED` stand in for their outbox
    until the first frame, which :func:`outbox_of` gives them: 128 B less
    per idle connection (bench_connect.py, tracemalloc). They read as a
    live, idle outbox that no frame was offered to.
    """

    __slots__ = ("opened",)

    dead: Final = False
    evicted: Final = False
    closed_with: Final = None
    # NOTE: never idle: fan_out() takes the branch that calls outbox_of().
    _idle: Final = False

    def __init__(self, opened: bool) -> None:
        self.opened = opened

    def __repr__(self) -> str:
        return f"<NoOutbox {'opened' if self.opened else 'unopened'}>"


#: The outbox of a connection registered and not yet accepted.
UNOPENED: Final = NoOutbox(False)
#: The outbox of an accepted connection that no frame was offered to yet.
OPENED: Final = NoOutbox(True)


def outbox_of(conn: Any) -> Outbox | None:
    """The connection's real outbox, created now if it had none yet (``None``: unregistered)."""
    outbox = conn.outbox
    if type(outbox) is NoOutbox:
        real = Outbox(conn.ws, conn.manager._outbox_rules, conn)
        if outbox.opened:
            real.start()
        conn.outbox = outbox = real
    return outbox  # type: ignore[no-any-return]


class OutboxRules:
    """What every outbox of one manager shares: its settings and the manager's hooks.

    Args:
        size: Frames buffered at most.
        policy: ``"drop"`` or ``"close"`` when the queue is full.
        close_code: Close code for slow consumers.
        send_timeout: Seconds a single send may take.
        evict: Called once (synchronously) with an outbox's ``owner`` when
            the outbox dies, whatever the cause: the manager evicts the
            connection.
        busy: The manager's set of outboxes with a send under way (its
            watchdog calls :meth:`Outbox.expire` on them).
    """

    __slots__ = ("busy", "close_code", "evict", "policy", "send_timeout", "size")

    def __init__(
        self,
        size: int,
        policy: str,
        close_code: int,
        send_timeout: float,
        evict: Callable[[Any], None],
        busy: set[Outbox],
    ) -> None:
        self.size = size
        self.policy = policy
        self.close_code = close_code
        self.send_timeout = send_timeout
        self.evict = evict
        self.busy = busy


class Outbox:
    """The bounded outgoing queue of one connection.

    Args:
        ws: The Falcon WebSocket frames are written to.
        rules: The manager's :class:`OutboxRules`, shared by its outboxes.
        owner: The connection (passed to ``rules.evict``).
    """

    # PERF: the settings live in the shared OutboxRules: 40 B less per
    #   connection (bench_connect.py, tracemalloc).
    __slots__ = (
        "_closer",
        "_idle",
        "_inflight",
        "_task",
        "closed_with",
        "dead",
        "evicted",
        "owner",
        "queue",
        "rules",
        "started",
        "ws",
    )

    def __init__(self, ws: WebSocket, rules: OutboxRules, owner: Any = None) -> None:
        self.ws = ws
        self.rules = rules
        self.owner = owner
        self.started = 0.0
        self._inflight: Ticket | None = None
        # PERF: an empty deque is ~620 B (bench_connect.py): idle connections
        #   share one that is never appended to; offer() gives its own.
        self.queue: deque[tuple[str | bytes, Ticket | None]] = _NO_QUEUE
        self.dead = False
        # Killed by abort() (a slow consumer, a failed send), not closed at shutdown.
        self.evicted = False
        # The code the slow-consumer policy closed it with (None: not closed so).
        self.closed_with: int | None = None
        # NOTE: True when the handshake was accepted, no send is under way and
        #   nothing is queued (so no task): a frame offered now may be written
        #   at once. Idle implies an empty queue.
        self._idle = False
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def offer(self, frame: str | bytes, ticket: Ticket | None = None) -> int:
        """Queue ``frame`` behind the send under way (see :func:`fan_out`).

        Returns QUEUED, DROPPED (queue full) or DEAD.
        """
        if self.dead:
            return DEAD
        queue = self.queue
        if queue is _NO_QUEUE:
            queue = self.queue = deque()
        elif len(queue) >= (rules := self.rules).size:
            if rules.policy == "close":
                self.abort(
                    rules.close_code,
                    f"Slow consumer: outgoing queue full ({rules.size} messages)",
                )
            return DROPPED
        queue.append((frame, ticket))
        if ticket is not None:
            ticket.remaining += 1
        if self._idle:  # pragma: no cover - fan_out() writes to idle outboxes itself
            self._spawn()
        return QUEUED

    def on_dead(self) -> None:
        """The outbox died: the manager evicts the connection."""
        self.rules.evict(self.owner)

    def start(self) -> None:
        """Start writing (the handshake was accepted); flush what was queued."""
        if self.dead or self._task is not None:
            return
        self._idle = True
        if self.queue:
            self._spawn()

    def _spawn(self) -> None:
        self._idle = False
        self._task = asyncio.get_running_loop().create_task(self._drain())

    def _adopt(
        self,
        writer: Coroutine[Any, Any, None],
        waiting: Any,
        ticket: Ticket | None,
        context: contextvars.Context,
    ) -> None:
        """Take over ``writer``, suspended in a send to this outbox (see fan_out())."""
        if ticket is not None:
            ticket.remaining += 1
        self._inflight = ticket
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self.rules.busy.add(self)
        self._task = loop.create_task(_resume(writer, waiting), context=context)

    async def _sent(self, ticket: Ticket | None) -> None:
        """The adopted send completed: settle it, then write the queue."""
        self.started = 0.0
        self._inflight = None
        if ticket is not None:
            ticket.settle(True)
        await self._drain()

    def _send_failed(self, ticket: Ticket | None, ex: BaseException) -> None:
        """The adopted send raised (or was cancelled: re-raised)."""
        if not isinstance(ex, Exception):
            self.rules.busy.discard(self)
            raise ex
        self.started = 0.0
        self._inflight = None
        if ticket is not None:
            ticket.settle(False)
        logger.debug("send failed, evicting the connection: %r", ex)
        self.rules.busy.discard(self)
        self._task = None
        self.abort(None, "")

    async def _drain(self) -> None:
        queue = self.queue
        send_text = self.ws.send_text
        now = asyncio.get_running_loop().time
        self.rules.busy.add(self)
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
            self.rules.busy.discard(self)
            if self._task is asyncio.current_task():
                self._task = None
                if not self.dead:
                    self._idle = True

    def expire(self, now: float) -> None:
        """Apply the send timeout (called by the manager's watchdog)."""
        started = self.started
        rules = self.rules
        if started and now - started > rules.send_timeout:
            self.started = 0.0
            ticket, self._inflight = self._inflight, None
            if ticket is not None:
                ticket.settle(False)
            self.abort(
                rules.close_code, f"Slow consumer: a send took over {rules.send_timeout:g} s"
            )

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
            logger.warning(
                "closing a slow consumer with %d: %s",
                code,
                reason,
                extra={CONNECTION_EXTRA: self.owner},
            )
            self.closed_with = code
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.rules.send_timeout
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
                self.rules.send_timeout,
                extra={CONNECTION_EXTRA: self.owner},
            )

    async def aclose(self, code: int, reason: str) -> None:
        """Stop accepting frames, flush the queue (bounded), close the socket."""
        if self.dead:
            return
        self.dead = True
        task = self._task
        if task is not None:
            try:
                async with asyncio.timeout(self.rules.send_timeout):
                    await asyncio.shield(task)
            except (TimeoutError, asyncio.CancelledError):
                self._fail_inflight()
                task.cancel()
            except Exception:
                logger.debug("flush before close failed", exc_info=True)
        self._fail_queued()
        await self._close(code, reason, asyncio.get_running_loop().time() + self.rules.send_timeout)

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
