"""A live uvicorn server on a free loopback port, and a ``websockets`` client.

:class:`LiveServer` runs uvicorn inside the test's event loop (the app's
manager can be inspected directly); :class:`ServerProcess` runs a command
(``pachinko serve ...``) as a child process. Both bind port 0, so the
kernel picks a free port, and both always stop what they started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from ._stream import DEFAULT_TIMEOUT, HandshakeRefused, MessageStream

__all__ = ["LiveServer", "LiveWebSocket", "ServerProcess", "connect"]

_RUNNING = re.compile(r"Uvicorn running on (https?)://(\S+):(\d+)")


class LiveWebSocket(MessageStream):
    """A real WebSocket client (the ``websockets`` library) with receive timeouts.

    Attributes:
        connection: The ``websockets`` client connection.
        url: The URL it connected to.
    """

    def __init__(self, connection: Any, url: str, timeout: float) -> None:
        super().__init__(timeout)
        self.connection = connection
        self.url = url
        self.label = f"websocket {url}"

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server accepted, if any."""
        return self.connection.subprotocol  # type: ignore[no-any-return]

    async def _next_frame(self) -> str | bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            return await self.connection.recv()  # type: ignore[no-any-return]
        except ConnectionClosed as ex:
            rcvd = ex.rcvd
            raise self._closed(
                rcvd.code if rcvd is not None else None, rcvd.reason if rcvd is not None else ""
            ) from None

    async def send_text(self, text: str) -> None:
        """Send one text frame."""
        await self.connection.send(text)

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame."""
        await self.connection.send(data)

    async def close(self, code: int = 1000) -> None:
        """Close the connection (bounded by the client's close timeout)."""
        await self.connection.close(code)


@contextlib.asynccontextmanager
async def connect(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    subprotocols: Iterable[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_size: int | None = 2**24,
) -> AsyncIterator[LiveWebSocket]:
    """Open a real WebSocket to ``url``; close it on exit.

    Raises:
        HandshakeRefused: The server answered the upgrade with an HTTP error
            (``.status``; uvicorn answers 403 to a refused handshake).
    """
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import InvalidStatus
    from websockets.typing import Subprotocol

    try:
        connection = await ws_connect(
            url,
            additional_headers=dict(headers or {}),
            subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
            open_timeout=timeout,
            close_timeout=timeout,
            max_size=max_size,
            ping_interval=None,
        )
    except InvalidStatus as ex:
        raise HandshakeRefused(url, None, ex.response.status_code) from None
    client = LiveWebSocket(connection, url, timeout)
    try:
        yield client
    finally:
        await connection.close()


class _Listening:
    """The addresses of a server once it listens on ``host`` and ``port``."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """``ws://host:port``."""
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"


class LiveServer(_Listening):
    """Serve a Falcon app with uvicorn on 127.0.0.1 and a free port, in this loop.

    ::

        async with LiveServer(app) as server:
            async with server.websocket("/ws/chat") as ws:
                await ws.send_json({...})

    Args:
        app: The ASGI app.
        host: Interface to bind (loopback by default).
        timeout: Default receive timeout of its clients; also bounds startup
            and shutdown.
        **uvicorn_options: Extra :class:`uvicorn.Config` options
            (``ws_max_size``, ``ws_ping_interval`` ...).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        timeout: float = DEFAULT_TIMEOUT,
        **uvicorn_options: Any,
    ) -> None:
        self.app = app
        self.host = host
        self.timeout = timeout
        self.port = 0
        self._options = {"log_level": "warning", "lifespan": "on", **uvicorn_options}
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveServer:
        import uvicorn

        from ..server import Server

        config = uvicorn.Config(self.app, host=self.host, port=0, **self._options)
        # NOTE: pachinko's Server, as `pachinko serve` runs: at shutdown open
        #   sockets are closed with 1001 before uvicorn's own shutdown.
        self._server = server = Server(config)
        self._task = asyncio.create_task(server.serve())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not server.started:
            if self._task.done():
                self._task.result()  # re-raise a crash
                raise RuntimeError(
                    "uvicorn did not start (see the log above: lifespan "
                    "startup failed or the port could not be bound)"
                )
            if loop.time() > deadline:
                await self.__aexit__(None, None, None)
                raise TimeoutError(f"uvicorn did not start within {self.timeout:g} s")
            await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, task = self._server, self._task
        self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def websocket(
        self, path: str, **kwargs: Any
    ) -> contextlib.AbstractAsyncContextManager[LiveWebSocket]:
        """Open a real WebSocket to ``path`` on this server (see :func:`connect`)."""
        kwargs.setdefault("timeout", self.timeout)
        return connect(self.url + path, **kwargs)

    async def refused(self, path: str, **kwargs: Any) -> int | None:
        """Open a WebSocket that must be refused; return the HTTP status."""
        try:
            async with self.websocket(path, **kwargs):
                pass
        except HandshakeRefused as refused:
            return refused.status
        raise AssertionError(f"expected the handshake for {path} to be refused, it was accepted")


class ServerProcess(_Listening):
    """Run a server command as a child process; find its port in uvicorn's log.

    The command must make uvicorn bind port 0 (``pachinko serve --port 0``)
    and log at ``info`` level (the default): the port is read from the line
    "Uvicorn running on http://127.0.0.1:PORT", and the server is ready once
    ``ready_line`` was logged too (with ``--reload`` the app starts in a
    child process after the first line). The process is terminated (SIGTERM,
    then SIGKILL after ``timeout``) when the context exits.

    Args:
        args: The command, e.g. ``[sys.executable, "-m", "pachinko", "serve",
            "routes.toml", "--port", "0"]``.
        cwd: Working directory.
        env: Extra environment variables.
        timeout: Seconds to wait for the server to start, and to stop.
        ready_line: Log text that says the app is ready.

    Attributes:
        output: Everything the process wrote so far (stdout and stderr).
        returncode: The exit status once it ended.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 20.0,
        ready_line: str = "Application startup complete.",
    ) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.output = ""
        self.returncode: int | None = None
        self.ready_line = ready_line
        self._ready = False
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def _read(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            self.output += line
            found = _RUNNING.search(line)
            if found and not self.port:
                self.host, self.port = found.group(2), int(found.group(3))
            if self.ready_line in line:
                self._ready = True
            if self.port and self._ready:
                self._started.set()

    async def __aenter__(self) -> ServerProcess:
        self._process = await asyncio.create_subprocess_exec(
            *self.args,
            cwd=self.cwd,
            env={**self.env, "PYTHONUNBUFFERED": "1"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        started = asyncio.create_task(self._started.wait())
        try:
            await asyncio.wait(
                {started, self._reader}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            started.cancel()
        if self._started.is_set() and not await self._listening():
            self._started.clear()
        if not self._started.is_set():
            await self.stop()
            why = (
                "exited" if self.returncode is not None else f"did not start in {self.timeout:g} s"
            )
            raise RuntimeError(
                f"server process {why} (status {self.returncode}): {' '.join(self.args)}\n"
                f"{self.output}"
            )
        return self

    async def _listening(self) -> bool:
        # NOTE: with --reload the app's process logs its startup before it
        #   listens on the socket the reloader bound: wait until it accepts.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout
                )
            except OSError:
                if self._process is not None and self._process.returncode is not None:
                    return False
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (e.g. ``signal.SIGINT``, as Ctrl+C)."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(sig)

    async def wait(self, timeout: float | None = None) -> int:
        """Wait (bounded) until the process exits; return its exit status."""
        if self._process is None:
            raise RuntimeError("the server process was not started")
        self.returncode = await asyncio.wait_for(
            self._process.wait(), self.timeout if timeout is None else timeout
        )
        return self.returncode

    async def stop(self) -> int | None:
        """Terminate the process (bounded); return its exit status."""
        process = self._process
        if process is None:
            return self.returncode
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM if sys.platform != "win32" else signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), self.timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, self.timeout)
        self.returncode = process.returncode
        return self.returncode

    def websocket(
        self, path: str, **kwargs: Any
    ) -> contextlib.AbstractAsyncContextManager[LiveWebSocket]:
        """Open a real WebSocket to ``path`` on this server (see :func:`connect`)."""
        return connect(self.url + path, **kwargs)

    async def refused_status(self, path: str, **kwargs: Any) -> int | None:
        """The HTTP status refusing a WebSocket to ``path``, or ``None`` if accepted."""
        try:
            async with self.websocket(path, **kwargs):
                return None
        except HandshakeRefused as refused:
            return refused.status

    async def refused(self, path: str, **kwargs: Any) -> int | None:
        """Open a WebSocket that must be refused; return the HTTP status."""
        status = await self.refused_status(path, **kwargs)
        if status is None:
            raise AssertionError(
                f"expected the handshake for {path} to be refused, it was accepted"
            )
        return status
