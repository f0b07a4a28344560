"""``pachinko serve`` facing misbehaving clients: real processes, raw loopback sockets.

Each test bounds its waits; the numbers of sockets are small (20, not 200).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pachinko.testing import ServerProcess

PYTHON = sys.executable
GOING_AWAY = 1001
INVALID_PAYLOAD = 1007
URI_TOO_LONG = 414
HEADERS_TOO_LARGE = 431
BAD_REQUEST = 400

pytestmark = pytest.mark.live

HANDLERS = """
import asyncio
import logging
import os
from pathlib import Path

log = logging.getLogger("hardening_app")
log.info("handlers imported")  # an application's own INFO line


async def echo(resource, ws, payload):
    await resource.send({"type": "echo", "v": payload.v})


class Probe:
    def close(self):  # services are closed by the lifespan shutdown
        log.warning("lifespan shutdown ran")


async def boom(manager):
    # crashes once the test writes the file (deterministic, after startup)
    flag = Path(os.environ["BOOM_FILE"])
    while not flag.exists():
        await asyncio.sleep(0.05)
    raise RuntimeError("worker exploded")
"""

ROUTES = """
[app]
prefix = "/ws"

[settings]
handshake_timeout = {handshake_timeout}
max_handshake_size = 16384
shutdown_timeout = 2

[services.probe]
factory = "hardening_handlers:Probe"

[types.Ping.fields]
v = "int"

[[routes]]
path = "/echo"
handlers.ping = {{ handler = "hardening_handlers:echo", payload = "Ping" }}
{extra}
"""

WORKER = """
[workers.boom]
target = "hardening_handlers:boom"
"""


def project(tmp_path: Path, handshake_timeout: float = 1.0, extra: str = "") -> Path:
    (tmp_path / "hardening_handlers.py").write_text(HANDLERS)
    (tmp_path / "routes.toml").write_text(
        ROUTES.format(handshake_timeout=handshake_timeout, extra=extra)
    )
    return tmp_path


def serve(*args: str) -> list[str]:
    return [PYTHON, "-m", "pachinko", "serve", *args, "--port", "0"]


def handshake(path: str = "/ws/echo", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (mask 0: the payload is sent as is)."""
    assert len(payload) < 126
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + b"\0\0\0\0" + payload


@contextlib.asynccontextmanager
async def raw(server: ServerProcess) -> AsyncIterator[tuple[asyncio.StreamReader, Any]]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader, bound: float = 15.0) -> bytes:
    """Read until the server closes the connection (EOF or reset); return what it sent."""
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(bound):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def open_websocket(server: ServerProcess) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(handshake())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


# -- 5. slow and oversized handshakes --------------------------------------------------


async def test_idle_and_trickling_handshakes_are_closed_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    async with ServerProcess(serve(), cwd=project(tmp_path, handshake_timeout=1.0)) as server:
        # a WebSocket that completed its handshake is not affected
        ws_reader, ws_writer = await open_websocket(server)
        idle = [await asyncio.open_connection(server.host, server.port) for _ in range(10)]
        trickling = [await asyncio.open_connection(server.host, server.port) for _ in range(10)]
        request = handshake()

        async def trickle(writer: Any) -> None:
            with contextlib.suppress(ConnectionError):
                for byte in request[:-1]:  # never complete
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.1)

        senders = [asyncio.create_task(trickle(w)) for _, w in trickling]
        try:
            outcomes = await asyncio.gather(
                *(closed_by_server(r) for r, _ in [*idle, *trickling]), return_exceptions=True
            )
        finally:
            for task in senders:
                task.cancel()
            for _, writer in [*idle, *trickling]:
                writer.close()
        # each one closed by the server (not by the 15 s bound), with no answer
        assert outcomes == [b""] * 20, outcomes
        assert server.output.count("handshake not completed within 1 s") == 20
        # the open WebSocket still works after the handshake timeout has passed
        ws_writer.write(frame(0x1, b'{"type":"ping","v":7}'))
        reply = await asyncio.wait_for(ws_reader.read(100), 5)
        assert reply[2:] == b'{"type":"echo","v":7}'
        ws_writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (handshake(path="/ws/" + "p" * 8192), URI_TOO_LONG),
        (handshake(extra="X-Big: " + "a" * 9000 + "\r\n"), HEADERS_TOO_LARGE),
        (handshake(extra="X-Big: " + "a" * 64 * 1024 + "\r\n"), HEADERS_TOO_LARGE),
        (handshake(extra="".join(f"X-{i}: v\r\n" for i in range(200))), HEADERS_TOO_LARGE),
    ],
    ids=["8k-path", "9k-header", "64k-header", "200-headers"],
)
async def test_oversized_handshakes_are_answered_and_closed(
    tmp_path: Path, request_bytes: bytes, status: int
) -> None:
    # handshake_timeout is long here: the answer comes at once, not from the timeout
    async with (
        ServerProcess(serve(), cwd=project(tmp_path, handshake_timeout=60)) as server,
        raw(server) as (reader, writer),
    ):
        writer.write(request_bytes)
        answer = await closed_by_server(reader, bound=10)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:100]
        # refused by websockets' parser, or by the head limit if it came in pieces
        assert re.search(
            r"pachinko\.server: .* - (WebSocket handshake refused|request head over 16384)",
            server.output,
        ), server.output


async def test_a_request_head_over_max_handshake_size_sent_slowly_gets_431(
    tmp_path: Path,
) -> None:
    async with (
        ServerProcess(serve(), cwd=project(tmp_path, handshake_timeout=60)) as server,
        raw(server) as (reader, writer),
    ):
        writer.write(handshake()[:-2])  # the head is not finished...
        for _ in range(5):  # ... and grows in many short lines past 16384 bytes
            writer.write(b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(40)))
            await writer.drain()
        answer = await closed_by_server(reader, bound=10)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


# -- 3. graceful shutdown after bad handshakes ------------------------------------------


async def test_sigterm_after_bad_handshakes_runs_the_whole_graceful_shutdown(
    tmp_path: Path,
) -> None:
    async with ServerProcess(serve(), cwd=project(tmp_path, handshake_timeout=60)) as server:
        ws_reader, ws_writer = await open_websocket(server)
        bad = []
        for request in (
            handshake(path="/ws/" + "p" * 8192),
            handshake(extra="X-Big: " + "a" * 9000 + "\r\n"),
        ):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(request)
            bad.append((reader, writer))
        half = await asyncio.open_connection(server.host, server.port)
        half[1].write(handshake()[:40])  # a half-finished handshake stays open
        for reader, _ in bad:
            await closed_by_server(reader, bound=10)
        await half[1].drain()
        server.send_signal(signal.SIGTERM)
        closing = await asyncio.wait_for(ws_reader.read(100), 10)
        assert closing[:4] == b"\x88" + bytes([len(closing) - 2]) + struct.pack("!H", GOING_AWAY)
        assert await server.wait() in (0, -signal.SIGTERM)
        for _, writer in [*bad, half, (ws_reader, ws_writer)]:
            writer.close()
    assert "AssertionError" not in server.output
    assert "lifespan shutdown ran" in server.output
    assert "Application shutdown complete." in server.output


# -- 4. invalid UTF-8 ------------------------------------------------------------------


async def test_invalid_utf8_closes_1007_with_one_log_line(tmp_path: Path) -> None:
    async with ServerProcess(serve(), cwd=project(tmp_path)) as server:
        reader, writer = await open_websocket(server)
        writer.write(frame(0x1, b"\xff\xfe"))
        closing = await closed_by_server(reader, bound=10)
        assert closing[:4] == b"\x88\x02" + struct.pack("!H", INVALID_PAYLOAD)
        writer.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while "1007" not in server.output:  # the log line may follow the close frame
            assert loop.time() < deadline, server.output
            await asyncio.sleep(0.05)
    lines = [line for line in server.output.splitlines() if "UTF-8" in line]
    assert len(lines) == 1, server.output
    assert re.fullmatch(
        r'INFO: +pachinko\.server: 127\.0\.0\.1:\d+ - "WebSocket /ws/echo" 1007: '
        r"invalid UTF-8 in a text frame",
        lines[0],
    )
    assert "Traceback" not in server.output
    assert "ERROR" not in server.output


# -- 2. logging --------------------------------------------------------------------------


async def test_serve_logs_a_reload_in_uvicorns_format_with_the_loggers_name(
    tmp_path: Path,
) -> None:
    async with ServerProcess(serve("--reload"), cwd=project(tmp_path)) as server:
        config = tmp_path / "routes.toml"
        text = config.read_text()
        config.write_text(text.replace('path = "/echo"', 'path = "/echo2"'))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while "pachinko.config: reloaded" not in server.output:
            assert loop.time() < deadline, server.output
            await asyncio.sleep(0.1)
    assert "INFO:     hardening_app: handlers imported" in server.output
    assert re.search(
        r"^INFO: +pachinko\.config: reloaded \S*routes\.toml in [\d.]+ ms: routes \+/echo2 -/echo$",
        server.output,
        re.MULTILINE,
    ), server.output


async def test_serve_logs_a_worker_crash_with_its_traceback(tmp_path: Path) -> None:
    flag = tmp_path / "boom"
    async with ServerProcess(
        serve(), cwd=project(tmp_path, extra=WORKER), env={"BOOM_FILE": str(flag)}
    ) as server:
        flag.write_text("")
        assert await server.wait(20) in (0, -signal.SIGTERM)  # the crash stops the server
    output = server.output
    assert re.search(
        r"^CRITICAL: +pachinko\.workers: worker 'boom' crashed; shutting the server down",
        output,
        re.MULTILINE,
    ), output
    assert "RuntimeError: worker exploded" in output  # with its traceback
    assert "WARNING:  hardening_app: lifespan shutdown ran" in output


async def test_log_config_replaces_pachinkos_logging(tmp_path: Path) -> None:
    # uvicorn's lines stay (ServerProcess reads the port from them); the app's
    # INFO line is hidden by the file's root level, its WARNING shown bare.
    (tmp_path / "logging.json").write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"bare": {"format": "%(levelname)s|%(name)s|%(message)s"}},
                "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "bare"}},
                "root": {"handlers": ["err"], "level": "WARNING"},
                "loggers": {"uvicorn": {"level": "INFO"}},
            }
        )
    )
    async with ServerProcess(
        serve("--log-config", "logging.json"), cwd=project(tmp_path)
    ) as server:
        server.send_signal(signal.SIGTERM)
        await server.wait()
    assert "INFO|uvicorn.error|Application startup complete." in server.output
    assert "handlers imported" not in server.output
    assert "WARNING|hardening_app|lifespan shutdown ran" in server.output


# -- in-process: uvicorn's protocol classes, pachinko's Server and Config ----------------


class FakeTransport:
    """Just enough of an asyncio transport for uvicorn's protocols."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = self.aborted = False
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol


async def test_smallest_reproduction_of_uvicorns_shutdown_assert() -> None:
    """Upstream defect (uvicorn 0.54, websockets-sansio): shutdown() after a handshake
    websockets could not parse raises AssertionError (``assert not self.eof_sent``).
    If this test fails, uvicorn fixed it: update docs/deployment.md."""
    import uvicorn
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from uvicorn.server import ServerState

    from pachinko import server as pachinko_server

    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    config = uvicorn.Config(app, ws="websockets-sansio", log_level="critical")
    config.load()
    bad = handshake(path="/" + "p" * 8192)
    plain = WebSocketsSansIOProtocol(config, ServerState(), {})
    plain.connection_made(FakeTransport())  # type: ignore[arg-type]
    plain.data_received(bad)
    assert plain.transport.written == b""  # no answer, and the socket stays open
    with pytest.raises(AssertionError):
        plain.shutdown()

    guarded_class = pachinko_server.WebSocketsSansIOProtocol
    assert guarded_class is not None
    guarded = guarded_class(config, ServerState(), {})
    transport = FakeTransport()
    guarded.connection_made(transport)
    guarded.data_received(bad)
    assert transport.written.startswith(b"HTTP/1.1 414 ")
    assert transport.closed
    guarded.shutdown()  # no exception


async def test_server_shutdown_survives_a_connection_whose_shutdown_raises() -> None:
    """pachinko's Server with uvicorn's own (unguarded) protocol: the lifespan shutdown runs."""
    import falcon.asgi

    from pachinko.server import Config, Server

    shutdown_ran = asyncio.Event()

    class Lifespan:
        async def process_shutdown(self, scope: Any, event: Any) -> None:
            shutdown_ran.set()

    app = falcon.asgi.App(middleware=[Lifespan()])
    config = Config(
        app, host="127.0.0.1", port=0, ws="websockets-sansio", lifespan="on", log_level="critical"
    )
    server = Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake(path="/" + "p" * 8192))
    await writer.drain()
    async with asyncio.timeout(10):  # until uvicorn's WebSocket protocol has it
        while not any(
            type(c).__name__ == "WebSocketsSansIOProtocol" for c in server.server_state.connections
        ):
            await asyncio.sleep(0.01)
    server.should_exit = True
    async with asyncio.timeout(10):
        await task  # before the fix: AssertionError from uvicorn's shutdown loop
    assert shutdown_ran.is_set()
    writer.close()


async def test_pongs_to_a_client_that_does_not_read_are_coalesced() -> None:
    import pachinko
    from pachinko.server import Config, Server

    got_message = asyncio.Event()

    class Echo(pachinko.WebSocketResource):
        @pachinko.handles_message("mark")
        async def mark(self, ws: Any, payload: dict[str, Any]) -> None:
            got_message.set()

    router = pachinko.WebSocketRouter()
    router.add_route("/echo", Echo)
    app = falcon_app(router)
    config = Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="critical")
    server = Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, handshake())
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 1)
        assert head.startswith(b"HTTP/1.1 101")
        ping = frame(0x9, b"x" * 125)
        # 12 MiB of pongs: more than the kernel's socket buffers hold
        for _ in range(100):
            await loop.sock_sendall(sock, ping * 1000)
        await loop.sock_sendall(sock, frame(0x1, b'{"type":"mark"}'))
        async with asyncio.timeout(30):
            await got_message.wait()  # every ping before it was handled
        [protocol] = [c for c in server.server_state.connections if hasattr(c, "held_pong")]
        # uvicorn alone buffers every pong (megabytes here); pachinko holds one
        assert protocol.transport.get_write_buffer_size() < 1024 * 1024
        assert protocol.held_pong is not None
        sock.close()
    finally:
        server.should_exit = True
        async with asyncio.timeout(15):
            await task


def falcon_app(router: Any) -> Any:
    import falcon.asgi

    import pachinko

    app = falcon.asgi.App()
    pachinko.mount(app, "/ws", router, settings=pachinko.Settings(allowed_origins=("*",)))
    return app
