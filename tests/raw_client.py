"""A WebSocket client on a raw socket that reads only when told to.

Real clients (``websockets``, browsers) keep reading into their own buffers;
this one reads nothing unless a test calls :meth:`RawClient.read_until`. Its
socket has a small receive buffer, so a server that keeps sending fills the
kernel's buffers quickly: exactly a client that stopped reading. Frames are
parsed with the ``websockets`` library's sans-I/O protocol.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri


class RawClient:
    """One WebSocket connection over a non-blocking socket.

    Attributes:
        texts: Text frames received so far.
        close_code: Code of the close frame received, if any.
        ended: The server ended the TCP connection (EOF or reset).
        reset: It was reset (``ConnectionResetError``), not closed cleanly.
    """

    def __init__(self, url: str, rcvbuf: int = 4096) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setblocking(False)
        self.texts: list[str] = []
        self.close_code: int | None = None
        self.ended = False
        self.reset = False

    async def open(self, host: str, port: int) -> None:
        """Connect and complete the handshake."""
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, (host, port))
        self.protocol.send_request(self.protocol.connect())
        await self._flush()
        while self.protocol.state.name == "CONNECTING":
            await self._read_once()

    async def send(self, text: str) -> None:
        """Send one text frame (raises ``OSError`` once the server reset it)."""
        self.protocol.send_text(text.encode())
        await self._flush()

    async def read_until(self, done: Callable[[], bool]) -> None:
        """Read (and answer a close frame) until ``done()`` or the connection ended."""
        while not done() and not self.ended:
            await self._read_once()

    async def recv(self) -> str:
        """Read the next text frame."""
        seen = len(self.texts)
        await self.read_until(lambda: len(self.texts) > seen)
        if len(self.texts) == seen:
            raise ConnectionError(f"connection ended (close code {self.close_code})")
        return self.texts[seen]

    def close(self) -> None:
        self.sock.close()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        for data in self.protocol.data_to_send():
            if data:
                await loop.sock_sendall(self.sock, data)

    async def _read_once(self) -> None:
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        except ConnectionResetError:
            self.ended = self.reset = True
            return
        if data:
            self.protocol.receive_data(data)
        else:
            self.ended = True
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode == Opcode.TEXT:
                    self.texts.append(event.data.decode())
                elif event.opcode == Opcode.CLOSE and self.protocol.close_rcvd is not None:
                    self.close_code = self.protocol.close_rcvd.code
        if not self.ended:
            try:
                await self._flush()  # the answer to a close frame
            except OSError:
                self.ended = self.reset = True
