"""What every pachinko test client shares: receives with timeouts, matching, a log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "DEFAULT_TIMEOUT",
    "HandshakeRefused",
    "MessageStream",
    "ReceiveTimeout",
    "WebSocketClosed",
    "matches",
]

#: Seconds any receive waits by default before failing the test.
DEFAULT_TIMEOUT: Final = 5.0

_MISSING: Final = object()


class ReceiveTimeout(AssertionError, TimeoutError):
    """Raised when an expected message or close did not arrive in time."""


class WebSocketClosed(AssertionError, ConnectionError):
    """Raised when the connection closed while a message was expected.

    Attributes:
        code: The close code (``None`` if unknown).
        reason: The close reason.
    """

    def __init__(self, message: str, code: int | None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class HandshakeRefused(ConnectionError):
    """Raised when the server refused the WebSocket handshake.

    Attributes:
        code: The WebSocket close code, when the transport carries it
            (in-process); ``None`` over a real socket.
        status: The HTTP status, when the transport carries it (live: 403
            for a refusal, 404 for an unknown path outside a mount).
    """

    def __init__(self, path: str, code: int | None, status: int | None = None) -> None:
        detail = f"close code {code}" if code is not None else f"HTTP status {status}"
        super().__init__(f"the server refused the WebSocket handshake for {path} ({detail})")
        self.path = path
        self.code = code
        self.status = status


def matches(message: Any, expected: Any) -> bool:
    """Tell whether ``message`` contains ``expected``.

    Mappings match when every expected key is present with a matching value
    (extra keys are ignored, at every depth); lists match element by element
    with the same length; anything else compares with ``==``.
    """
    if isinstance(expected, Mapping):
        if not isinstance(message, Mapping):
            return False
        return all(matches(message.get(key, _MISSING), value) for key, value in expected.items())
    if isinstance(expected, list) and isinstance(message, list):
        return len(expected) == len(message) and all(
            matches(m, e) for m, e in zip(message, expected, strict=True)
        )
    return bool(message == expected)


def decode(frame: str | bytes) -> Any:
    """A text frame's JSON value (the text itself if it is not JSON); bytes as is."""
    if isinstance(frame, bytes):
        return frame
    try:
        return json.loads(frame)
    except ValueError:
        return frame


class MessageStream:
    """Receiving side of a test client: every receive has a timeout.

    Subclasses implement :meth:`_next_frame`. Every message received is kept
    in :attr:`received` (decoded from JSON when it is JSON), including the
    ones :meth:`expect` skipped.

    Attributes:
        timeout: Default seconds a receive waits.
        received: Every message received so far, in order.
        close_code: The close code once the connection closed.
    """

    label: str = "websocket"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.received: list[Any] = []
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._last_id = 0

    async def _next_frame(self) -> str | bytes:
        """Return the next frame; raise :class:`WebSocketClosed` once closed."""
        raise NotImplementedError

    async def _frame(self, timeout: float | None, what: str) -> str | bytes:
        wait = self.timeout if timeout is None else timeout
        try:
            frame = await asyncio.wait_for(self._next_frame(), wait)
        except TimeoutError:
            raise ReceiveTimeout(
                f"{self.label}: no {what} within {wait:g} s; received so far: {self._recent()}"
            ) from None
        self.received.append(decode(frame))
        return frame

    def _closed(self, code: int | None, reason: str) -> WebSocketClosed:
        """Record the server's close and return the error to raise."""
        self.close_code, self.close_reason = code, reason
        return WebSocketClosed(
            f"{self.label}: closed by the server with code {code} {reason!r}; "
            f"received before: {self._recent()}",
            code,
            reason,
        )

    async def send_text(self, text: str) -> None:
        """Send one text frame."""
        raise NotImplementedError

    async def send_json(self, message: Any) -> None:
        """Send ``message`` as JSON in one text frame."""
        await self.send_text(json.dumps(message))

    async def request(
        self,
        message: Mapping[str, Any],
        /,
        *,
        timeout: float | None = None,
        id: str | int | None = None,
        id_field: str = "id",
    ) -> Any:
        """Send ``message`` with a correlation id; return the answer carrying it.

        The id is ``id`` if given, else the next of this client's own
        (1, 2, 3 ...). The answer is the first message with that id: the
        handler's reply, or an error reply (``type`` ``"error"``). Other
        messages received meanwhile are skipped (and kept in
        :attr:`received`). One request at a time per client: to keep many in
        flight, send them with :meth:`send_json` and collect the answers.

        Raises:
            ReceiveTimeout: No answer within ``timeout`` seconds.
            WebSocketClosed: The connection closed first.
        """
        if id is None:
            self._last_id += 1
            id = self._last_id
        await self.send_json({**message, id_field: id})
        return await self.expect({id_field: id}, timeout=timeout)

    async def answer(
        self, request: Mapping[str, Any], message: Mapping[str, Any], /, *, id_field: str = "id"
    ) -> None:
        """Answer a server's request (``resource.request()``): ``message`` with its id.

        Raises:
            AssertionError: ``request`` carries no id.
        """
        if id_field not in request:
            raise AssertionError(f"{self.label}: {request!r} carries no {id_field!r} to answer")
        await self.send_json({**message, id_field: request[id_field]})

    def _recent(self, count: int = 5) -> str:
        if not self.received:
            return "nothing"
        shown = [repr(m) for m in self.received[-count:]]
        more = len(self.received) - len(shown)
        return ("... " if more else "") + ", ".join(shown)

    async def receive_text(self, timeout: float | None = None) -> str:
        """Receive one text frame."""
        return await self._text(timeout)

    async def _text(self, timeout: float | None) -> str:
        frame = await self._frame(timeout, "message")
        if isinstance(frame, bytes):
            raise AssertionError(f"{self.label}: expected a text frame, got {len(frame)} bytes")
        return frame

    async def receive_bytes(self, timeout: float | None = None) -> bytes:
        """Receive one binary frame."""
        frame = await self._frame(timeout, "message")
        if not isinstance(frame, bytes):
            raise AssertionError(f"{self.label}: expected a binary frame, got text {frame!r}")
        return frame

    async def receive_json(self, timeout: float | None = None) -> Any:
        """Receive one text frame and decode its JSON."""
        text = await self._text(timeout)
        try:
            return json.loads(text)
        except ValueError:
            raise AssertionError(f"{self.label}: expected JSON, got {text!r}") from None

    async def expect(
        self, expected: Any = None, /, *, timeout: float | None = None, **fields: Any
    ) -> Any:
        """Receive until a message matches; return it.

        ``expected`` (a dict, matched with :func:`matches`) and ``fields``
        (``type="message"``) are combined. Non-matching messages are skipped
        (they stay in :attr:`received`), so periodic messages such as
        heartbeats do not break a test. The timeout covers the whole wait.

        Raises:
            ReceiveTimeout: No matching message in time (the message lists
                what arrived instead).
            WebSocketClosed: The connection closed first.
        """
        pattern: dict[str, Any] = dict(expected or {})
        pattern.update(fields)
        wait = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        start = len(self.received)
        while True:
            left = deadline - loop.time()
            if left <= 0:
                skipped = self.received[start:]
                raise ReceiveTimeout(
                    f"{self.label}: no message matching {pattern!r} within {wait:g} s; "
                    f"received instead: {skipped!r}"
                )
            try:
                await self._frame(left, f"message matching {pattern!r}")
            except ReceiveTimeout:
                continue
            if matches(self.received[-1], pattern):
                return self.received[-1]

    async def expect_next(
        self, expected: Any = None, /, *, timeout: float | None = None, **fields: Any
    ) -> Any:
        """Receive the next message and check that it matches; return it."""
        pattern: dict[str, Any] = dict(expected or {})
        pattern.update(fields)
        await self._frame(timeout, "message")
        message = self.received[-1]
        if not matches(message, pattern):
            raise AssertionError(
                f"{self.label}: expected a message matching {pattern!r}, got {message!r}"
            )
        return message

    async def expect_silence(
        self, expected: Any = None, /, *, within: float = 0.2, **fields: Any
    ) -> None:
        """Check that no message (matching ``expected``/``fields``) arrives ``within`` s."""
        pattern: dict[str, Any] = dict(expected or {})
        pattern.update(fields)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (left := deadline - loop.time()) > 0:
            try:
                await self._frame(left, "message")
            except (ReceiveTimeout, WebSocketClosed):
                return
            if matches(self.received[-1], pattern):
                raise AssertionError(
                    f"{self.label}: expected no message matching {pattern!r}, "
                    f"got {self.received[-1]!r}"
                )

    async def expect_close(self, timeout: float | None = None) -> int | None:
        """Wait until the server closes the connection; return the close code.

        Messages that arrive first are kept in :attr:`received`.
        """
        wait = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise ReceiveTimeout("")
                await self._frame(left, "close")
            except WebSocketClosed as closed:
                return closed.code
            except ReceiveTimeout:
                raise ReceiveTimeout(
                    f"{self.label}: the server did not close within {wait:g} s; received: "
                    f"{self._recent()}"
                ) from None
