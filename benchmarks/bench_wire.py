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
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from _clients import Clients, app_server, cpu_seconds, pid_of, raise_nofile, run  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from pachinko.testing import ServerProcess  # noqa: E402

KINDS = ("handwritten", "pachinko")
TEXT = "hello, everyone"


def server(kind: str, ws: str) -> ServerProcess:
    return app_server(kind, "--ws", ws)


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
    args = parser.parse_args()
    raise_nofile(2 * args.clients + 256)
    run(coordinate(args))


if __name__ == "__main__":
    main()
