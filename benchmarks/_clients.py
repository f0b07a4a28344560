"""Real WebSocket clients in child processes, for the over-the-wire benchmarks.

``Clients(url, counts, total, timeout)`` starts one child process per entry of
``counts`` (this file run as a script); each connects that many clients (the
``websockets`` asyncio client, on uvloop when it is installed) to ``url``,
prints ``ready``, then reads ``total`` messages on every client. The
messages are JSON objects with an integer ``n`` (the broadcast's number) and
optionally ``at`` (the publisher's ``time.monotonic()`` when it sent it).

A child reports ``n t`` once every one of its clients got message ``n``
(``t``: the latest receive time, ``time.monotonic``: CLOCK_MONOTONIC, one
clock for every process of the machine) and, at the end, the latency of every
delivery that carried ``at``. Spreading the clients over processes keeps the
client side from being one event loop competing with the servers for one
core. Every wait is bounded; the children are killed if they outlive the
context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pachinko.testing import ServerProcess

__all__ = ["Clients", "app_server", "cpu_seconds", "pid_of", "raise_nofile", "run"]

BENCH = Path(__file__).resolve().parent


def app_server(kind: str, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    """A uvicorn process serving ``_wire_apps:{kind}_app`` on a free loopback port."""
    from pachinko.testing import ServerProcess

    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH),
        "--factory", f"_wire_apps:{kind}_app",
        "--host", "127.0.0.1", "--port", "0", "--no-access-log", *extra,
    ]  # fmt: skip
    return ServerProcess(command, cwd=BENCH.parent, env=env, timeout=30)


def raise_nofile(need: int) -> None:
    """Raise the soft limit of open files to at least ``need`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            raise SystemExit(f"open files: need {need}, the hard limit is {hard}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_of(server: Any) -> int:
    """The pid of a running ``pachinko.testing.ServerProcess``."""
    # NOTE: ServerProcess has no public pid; the process is uvicorn itself
    #   (started by exec, no shell), so its pid is the server's.
    process = server._process
    if process is None:
        raise RuntimeError("the server process is not running")
    return int(process.pid)


def run(main: Any) -> None:
    """Run a coroutine on uvloop if installed (uvicorn's default loop), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


# -- a child process ------------------------------------------------------------------


async def child(url: str, count: int, total: int, timeout: float) -> None:
    from websockets.asyncio.client import connect

    limit = asyncio.Semaphore(50)
    sockets: list[Any] = []

    async def open_one() -> None:
        async with limit:
            sockets.append(await connect(url, compression=None, open_timeout=timeout))

    await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(count))), timeout * 3)
    pending: dict[int, list[float]] = {}
    latencies: list[float] = []
    out = sys.stdout

    async def read(ws: Any) -> None:
        loads = json.loads
        monotonic = time.monotonic
        for _ in range(total):
            raw = await ws.recv()
            now = monotonic()
            message = loads(raw)
            n = message["n"]
            if message.get("at"):
                latencies.append(now - message["at"])
            entry = pending.get(n)
            if entry is None:
                entry = pending[n] = [0, now]
            entry[0] += 1
            entry[1] = max(entry[1], now)
            if entry[0] == count:
                del pending[n]
                out.write(f"{n} {entry[1]!r}\n")
                out.flush()

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    out.write("ready\n")
    out.flush()
    try:
        # NOTE: the coordinator bounds each message by `timeout`; this only
        #   keeps an orphaned child from living forever.
        await asyncio.wait_for(asyncio.gather(*readers), timeout * (total + 10))
        out.write("latencies " + json.dumps([round(x, 7) for x in latencies]) + "\n")
        out.flush()
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


# -- the coordinator side ---------------------------------------------------------------


class Clients:
    """The client processes of one server, and what they reported.

    Attributes:
        reports: Per message number, the last receive time in each child that
            has all of it so far.
        completed: How many messages every client got.
        latencies: Every delivery's latency (seconds), once the children ended.
    """

    def __init__(self, url: str, counts: list[int], total: int, timeout: float) -> None:
        self.url = url
        self.counts = counts
        self.total = total
        self.timeout = timeout
        self.processes: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[None]] = []
        self.ready = 0
        self.completed = 0
        self.reports: dict[int, list[float]] = {}
        self.latencies: list[float] = []
        self.changed = asyncio.Event()

    async def __aenter__(self) -> Clients:
        loop = asyncio.get_running_loop()
        for count in self.counts:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                self.url,
                str(count),
                str(self.total),
                str(self.timeout),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,  # the latencies line
            )
            self.processes.append(process)
            self.readers.append(loop.create_task(self._read(process)))
        try:
            await self.wait(lambda: self.ready == len(self.counts), self.timeout * 3, "connected")
        except BaseException:
            await self.__aexit__(*sys.exc_info())
            raise
        return self

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        if process.stdout is None:
            return
        async for line in process.stdout:
            word, _, rest = line.decode().strip().partition(" ")
            if word == "ready":
                self.ready += 1
            elif word == "latencies":
                self.latencies += json.loads(rest)
            elif word.isdigit():
                reports = self.reports.setdefault(int(word), [])
                reports.append(float(rest))
                if len(reports) == len(self.counts):
                    self.completed += 1
            self.changed.set()
        self.changed.set()

    async def wait(
        self, done: Callable[[], bool], timeout: float, what: str, *, ending: bool = False
    ) -> None:
        """Wait until ``done()``; raise after ``timeout`` seconds, or if a child ended first
        (unless ``ending``)."""

        async def until() -> None:
            while not done():
                if not ending and any(reader.done() for reader in self.readers):
                    codes = [p.returncode for p in self.processes]
                    raise RuntimeError(f"a client process ended (status {codes}) before {what}")
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise RuntimeError(f"not {what} within {timeout:g} s") from None

    async def last_delivery(self, n: int) -> float:
        """Wait until every client got message ``n``; the latest receive time."""
        await self.wait(
            lambda: len(self.reports.get(n, ())) == len(self.counts),
            self.timeout,
            f"message {n} delivered to every client",
        )
        return max(self.reports[n])

    async def finish(self) -> None:
        """Wait (bounded) until the children reported their latencies and ended."""
        await self.wait(
            lambda: all(reader.done() for reader in self.readers),
            self.timeout,
            "the client processes ended",
            ending=True,
        )

    async def __aexit__(self, *exc: object) -> None:
        failed = bool(exc) and exc[0] is not None
        for process in self.processes:
            if process.returncode is None and not failed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), self.timeout)
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for reader in self.readers:
            reader.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one client process (see the module doc)")
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("total", type=int)
    parser.add_argument("timeout", type=float)
    options = parser.parse_args()
    raise_nofile(options.count + 256)
    run(child(options.url, options.count, options.total, options.timeout))
