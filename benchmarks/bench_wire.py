"""Over the wire: publish -> last delivery to 1,000 real clients, vs a hand-written Falcon loop.

Run:  python benchmarks/bench_wire.py [--clients 1000] [--messages 200] [--rounds 3]
                                      [--client-processes 2] [--ws auto]

Serves the two apps of ``benchmarks/_wire_apps.py`` at the same time, each
by its own uvicorn process on 127.0.0.1 (the same command line, uvicorn's
defaults: uvloop, httptools, ``--ws auto``):

- ``handwritten``: a Falcon ``on_websocket`` responder keeping the room's
  sockets in a set and broadcasting with a plain sequential ``await
  ws.send_text(text)`` loop (no isolation);
- ``pachinko``: one room, ``manager.broadcast_to_room``.

Each server gets ``--clients`` real WebSocket clients (the ``websockets``
asyncio client, on uvloop when it is installed) from ``--client-processes``
child processes of their own (so the clients are not one event loop
competing with the server for one of the two cores), all members of the
room. One more client per server publishes ``--messages`` broadcasts (after
``--warmup`` unmeasured ones), one at a time: the next is sent only once all
clients got the previous one. The two servers take turns message by message
(the order alternating), so both see the same background load. Each client
process reports, per message, the time its last client received it
(``time.monotonic``: CLOCK_MONOTONIC, one clock for every process of the
machine); publish -> last delivery is the latest of those minus the time the
publisher sent it. Also reported: the server process's CPU time per
broadcast (utime + stime from /proc, Linux only; kernel time for loopback
delivery included), and the median over messages of the paired ratio
(pachinko's latency for message n over the hand-written one's).

Each round starts fresh servers and clients. Every wait is bounded
(``--timeout`` seconds); the servers and client processes are stopped on
exit. The open-files limit is raised to what the clients need.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import connect  # noqa: E402

from pachinko.testing import ServerProcess  # noqa: E402

KINDS = ("handwritten", "pachinko")
TEXT = "hello, everyone"


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


def pid_of(server: ServerProcess) -> int:
    # NOTE: ServerProcess has no public pid; the process is uvicorn itself
    #   (started by exec, no shell), so its pid is the server's.
    process = server._process
    if process is None:
        raise RuntimeError("the server process is not running")
    return process.pid


# -- a client process -------------------------------------------------------------


async def client_main(url: str, count: int, total: int, timeout: float) -> None:
    """Connect ``count`` members, report ``ready``, then per message the last receive time."""
    limit = asyncio.Semaphore(50)
    sockets: list[Any] = []

    async def open_one() -> None:
        async with limit:
            sockets.append(await connect(url, compression=None, open_timeout=timeout))

    await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(count))), timeout * 3)
    pending: dict[int, list[float]] = {}
    out = sys.stdout

    async def read(ws: Any) -> None:
        loads = json.loads
        monotonic = time.monotonic
        for _ in range(total):
            raw = await ws.recv()
            now = monotonic()
            n = loads(raw)["n"]
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
        # the whole run is bounded by the coordinator's per-message timeout
        await asyncio.wait_for(asyncio.gather(*readers), timeout * (total + 10))
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


# -- the coordinator ----------------------------------------------------------------


class Clients:
    """The client processes of one server; collects their per-message reports."""

    def __init__(self, url: str, counts: list[int], total: int, timeout: float) -> None:
        self.url = url
        self.counts = counts
        self.total = total
        self.timeout = timeout
        self.processes: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[None]] = []
        self.ready = 0
        self.reports: dict[int, list[float]] = {}
        self.changed = asyncio.Event()

    async def __aenter__(self) -> Clients:
        loop = asyncio.get_running_loop()
        for count in self.counts:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--client",
                self.url,
                "--clients",
                str(count),
                "--total",
                str(self.total),
                "--timeout",
                str(self.timeout),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
            )
            self.processes.append(process)
            self.readers.append(loop.create_task(self._read(process)))
        await self.wait(lambda: self.ready == len(self.counts), self.timeout * 3, "connected")
        return self

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            words = line.split()
            if words == [b"ready"]:
                self.ready += 1
            elif len(words) == 2:
                self.reports.setdefault(int(words[0]), []).append(float(words[1]))
            self.changed.set()
        self.changed.set()

    async def wait(self, done: Any, timeout: float, what: str) -> None:
        async def until() -> None:
            while not done():
                if any(p.returncode is not None for p in self.processes):
                    codes = [p.returncode for p in self.processes]
                    raise RuntimeError(f"a client process exited ({codes}) before {what}")
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
            f"message {n} delivered to all",
        )
        return max(self.reports.pop(n))

    async def __aexit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), self.timeout)
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for reader in self.readers:
            reader.cancel()


def server(kind: str, ws: str) -> ServerProcess:
    return ServerProcess(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(BENCH),
            "--factory",
            f"_wire_apps:{kind}_app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-access-log",
            "--ws",
            ws,
        ],
        cwd=ROOT,
        timeout=30,
    )


async def measure(args: argparse.Namespace) -> dict[str, tuple[list[float], float]]:
    """Per server: latencies (s) of the measured broadcasts, server CPU seconds per broadcast."""
    per, extra = divmod(args.clients, args.client_processes)
    counts = [per + (1 if i < extra else 0) for i in range(args.client_processes)]
    total = args.warmup + args.messages
    async with contextlib.AsyncExitStack() as stack:
        pids: dict[str, int] = {}
        clients: dict[str, Clients] = {}
        publishers: dict[str, Any] = {}
        for kind in KINDS:
            srv = await stack.enter_async_context(server(kind, args.ws))
            pids[kind] = pid_of(srv)
            clients[kind] = await stack.enter_async_context(
                Clients(srv.url + "/ws/member", counts, total, args.timeout)
            )
            publishers[kind] = await stack.enter_async_context(
                connect(srv.url + "/ws/publish", compression=None)
            )
        latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
        cpu = dict.fromkeys(KINDS, 0.0)
        for n in range(total):
            if n == args.warmup:
                cpu = {kind: cpu_seconds(pids[kind]) for kind in KINDS}
            # NOTE: the two servers take turns message by message (the order
            #   alternates), so both see the same background load.
            for kind in KINDS if n % 2 == 0 else KINDS[::-1]:
                sent = time.monotonic()
                await publishers[kind].send(json.dumps({"type": "say", "n": n, "text": TEXT}))
                last = await clients[kind].last_delivery(n)
                if n >= args.warmup:
                    latencies[kind].append(last - sent)
        cpu = {kind: cpu_seconds(pids[kind]) - cpu[kind] for kind in KINDS}
    return {kind: (latencies[kind], cpu[kind] / args.messages) for kind in KINDS}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def coordinate(args: argparse.Namespace) -> None:
    print(
        f"{args.clients} clients in {args.client_processes} processes, one room; "
        f"{args.messages} broadcasts one at a time (+{args.warmup} warm-up); "
        f"uvicorn --ws {args.ws}; publish -> last delivery, ms"
    )
    print(
        f"{'round':>5} {'server':>12} {'p50':>7} {'p90':>7} {'p99':>7} {'cpu/bc':>8}   "
        "ratio p50 / p99 / cpu"
    )
    everything: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpus: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in range(args.rounds):
        got = await measure(args)
        for kind in KINDS:
            lat, cpu = got[kind]
            everything[kind] += lat
            cpus[kind].append(cpu)
            line = (
                f"{r + 1:>5} {kind:>12} {pct(lat, 0.5) * 1e3:>7.2f} {pct(lat, 0.9) * 1e3:>7.2f} "
                f"{pct(lat, 0.99) * 1e3:>7.2f} {cpu * 1e3:>8.2f}"
            )
            if kind == "pachinko":
                base, base_cpu = got["handwritten"]
                paired = statistics.median(o / b for o, b in zip(lat, base, strict=True))
                line += (
                    f"   {pct(lat, 0.5) / pct(base, 0.5):.2f}x / "
                    f"{pct(lat, 0.99) / pct(base, 0.99):.2f}x / {cpu / base_cpu:.2f}x"
                    f"   (paired median {paired:.2f}x)"
                )
            print(line, flush=True)
    if args.rounds > 1:
        base, ours = everything["handwritten"], everything["pachinko"]
        print(
            f"  all rounds: p50 {pct(base, 0.5) * 1e3:.2f} vs {pct(ours, 0.5) * 1e3:.2f} ms "
            f"({pct(ours, 0.5) / pct(base, 0.5):.2f}x), p99 {pct(base, 0.99) * 1e3:.2f} vs "
            f"{pct(ours, 0.99) * 1e3:.2f} ms ({pct(ours, 0.99) / pct(base, 0.99):.2f}x), "
            f"server CPU per broadcast {statistics.median(cpus['handwritten']) * 1e3:.2f} vs "
            f"{statistics.median(cpus['pachinko']) * 1e3:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--ws", default="auto", help="uvicorn's --ws (both servers)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per wait")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_nofile(args.clients + 256)
    try:
        import uvloop  # the servers run on it too (uvicorn's default when installed)
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    if args.client:
        run(client_main(args.client, args.clients, args.total, args.timeout))
    else:
        run(coordinate(args))


if __name__ == "__main__":
    main()
