"""Across processes over Redis: deliveries/s, publisher CPU per broadcast, PUBLISH count.

Run:  python benchmarks/bench_redis.py [--processes 2] [--messages 2000] [--receivers 50]
      python benchmarks/bench_redis.py --processes 4
      python benchmarks/bench_redis.py --window 1 --messages 500    (latency)
      python benchmarks/bench_redis.py --gap 0.002 --alone 2000     (a paced publisher)

Starts a private ``redis-server`` on a free loopback port (or uses
$REDIS_URL) and ``--processes`` uvicorn processes serving the pachinko app
of ``benchmarks/_wire_apps.py`` with a RedisBackend (one room, ``lobby``).
Process 1 only publishes: one client sends ``--messages`` broadcasts to it
as fast as the flow control allows (at most ``--window`` broadcasts not yet
delivered everywhere). Each of the other processes has ``--receivers``
members of the room, real WebSocket clients (the ``websockets`` library) in
a client process of their own (benchmarks/_clients.py).

Reported:

- delivered messages per second (all receivers; every message must arrive:
  a lost one stops the run with an error), and per receiving process;
- latency of every delivery (publisher's send to receive, CLOCK_MONOTONIC);
- CPU time (utime + stime, /proc) per broadcast of the publishing process
  (receive the client's frame, decode, dispatch, encode, PUBLISH), per
  delivery of the receiving processes (pub/sub message in, fan-out to the
  local members), and of redis-server per broadcast (``INFO cpu``; only
  meaningful for the private server);
- for reference, the CPU time of a bare redis-py ``PUBLISH`` of the same
  size, one at a time, in this process (measured before the servers start);
- then the publishing process alone (no receivers, ``--publisher-rounds``
  rounds taking turns): one client sends ``--alone`` broadcasts as fast as
  the server takes them (or ``--gap`` seconds apart), to pachinko and to a
  hand-written Falcon app whose publisher does one redis-py PUBLISH per
  message (_wire_apps.py); CPU per broadcast of each, and the ratio;
- the number of PUBLISH calls (``INFO commandstats``), which must equal the
  number of broadcasts whatever the number of processes and receivers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio  # noqa: E402
from _clients import Clients, app_server, cpu_seconds, pid_of, raise_nofile, run  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from pachinko.testing import ServerProcess  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


async def redis_stats(url: str) -> tuple[int, float]:
    """PUBLISH calls so far, and redis-server's CPU seconds (user + sys)."""
    async with redis.asyncio.Redis.from_url(url) as client:
        commands = await client.info("commandstats")
        cpu = await client.info("cpu")
    calls = int(commands.get("cmdstat_publish", {}).get("calls", 0))
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def bare_publish(url: str, count: int) -> float:
    """CPU seconds of this process per bare redis-py ``PUBLISH`` (one at a time)."""
    data = "node\n\nt\n" + json.dumps({"type": "said", "n": 1, "text": "m1", "at": 1.0})
    async with redis.asyncio.Redis.from_url(url) as client:
        await client.publish("bench-nobody", data)
        start = time.process_time()
        for _ in range(count):
            await client.publish("bench-nobody", data)
        return (time.process_time() - start) / count


def server(backend: str, kind: str = "pachinko") -> ServerProcess:
    return app_server(kind, env={"BENCH_BACKEND": backend})


async def publisher_cpu(
    url: str, backend: str, kind: str, messages: int, gap: float, timeout: float
) -> float:
    """CPU seconds per broadcast of a ``kind`` server publishing ``messages``.

    They are sent as fast as the server takes them, or ``gap`` seconds apart.
    """
    async with server(backend, kind) as srv, connect(srv.url + "/ws/publish") as sender:
        pid = pid_of(srv)
        published, _ = await redis_stats(url)
        cpu = cpu_seconds(pid)
        for n in range(messages):
            payload = {"type": "say", "n": n, "text": f"m{n}", "at": time.monotonic()}
            await sender.send(json.dumps(payload))
            if gap:
                await asyncio.sleep(gap)
        deadline = time.monotonic() + timeout
        while (await redis_stats(url))[0] < published + messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: not {messages} PUBLISH calls within {timeout:g} s")
            await asyncio.sleep(0.01)
        return (cpu_seconds(pid) - cpu) / messages


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def bench(url: str, args: argparse.Namespace) -> None:
    backend = f"{url}?prefix=bench{os.getpid()}"
    messages, receivers, window = args.messages, args.receivers, args.window
    bare = await bare_publish(url, messages)
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(server(backend)) for _ in range(args.processes)]
        pids = [pid_of(s) for s in servers]
        groups = [
            await stack.enter_async_context(
                Clients(s.url + "/ws/member", [receivers], messages, args.timeout)
            )
            for s in servers[1:]
        ]
        sender = await stack.enter_async_context(
            connect(servers[0].url + "/ws/publish", compression=None)
        )
        # NOTE: membership reaches Redis before `ready`; give the subscriptions
        #   of the receiving processes a moment to settle before measuring.
        await asyncio.sleep(0.2)
        published, redis_cpu = await redis_stats(url)
        cpu = [cpu_seconds(pid) for pid in pids]
        start = time.perf_counter()
        for n in range(messages):
            # NOTE: flow control: at most `window` broadcasts not yet delivered
            #   everywhere, below the outgoing queue size (256), so that this
            #   measures delivery, not the slow-consumer policy.
            if n >= window:
                for group in groups:
                    await group.wait(
                        lambda g=group, k=n - window: g.completed > k,
                        args.timeout,
                        f"broadcast {n - window} delivered",
                    )
            payload = {"type": "say", "n": n, "text": f"m{n}", "at": time.monotonic()}
            await sender.send(json.dumps(payload))
        for group in groups:
            await group.wait(
                lambda g=group: g.completed == messages,
                args.timeout,
                "every broadcast delivered",
            )
        elapsed = time.perf_counter() - start
        cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu, strict=True)]
        after, redis_after = await redis_stats(url)
        published, redis_cpu = after - published, redis_after - redis_cpu
        for group in groups:
            await group.finish()
    latencies = [x for group in groups for x in group.latencies]
    delivered = messages * receivers * len(groups)
    receiving = statistics.mean(cpu[1:]) / (messages * receivers)
    print(
        f"{args.processes} processes: {messages} broadcasts from process 1 to {receivers} "
        f"receivers in each of the other {len(groups)} (at most {window} in flight)"
    )
    print(
        f"  delivered       {delivered} in {elapsed:.2f} s = {delivered / elapsed:,.0f} "
        f"messages/s ({delivered / elapsed / len(groups):,.0f} per receiving process)"
    )
    print(
        f"  latency         p50 {pct(latencies, 0.5) * 1e3:.2f} ms, "
        f"p99 {pct(latencies, 0.99) * 1e3:.2f} ms"
    )
    print(
        f"  CPU             publishing process {cpu[0] / messages * 1e6:.0f} µs per broadcast; "
        f"receiving processes {receiving * 1e6:.1f} µs per delivery; "
        f"redis-server {redis_cpu / messages * 1e6:.0f} µs per broadcast"
    )
    print(
        f"  reference       a bare redis-py PUBLISH costs {bare * 1e6:.0f} µs of CPU here: "
        f"the publishing process spends {cpu[0] / messages / bare:.1f}x that per broadcast"
    )
    print(f"  PUBLISH calls   {published} (broadcasts: {messages})")
    # the publisher alone against a hand-written one, taking turns (noise)
    ours, theirs = [], []
    for _ in range(args.publisher_rounds):
        for kind, into in (("pachinko", ours), ("handwritten", theirs)):
            into.append(await publisher_cpu(url, backend, kind, args.alone, args.gap, args.timeout))
    if ours:
        mine, base = statistics.median(ours), statistics.median(theirs)
        print(
            f"  publisher alone {args.alone} broadcasts "
            + (f"{args.gap * 1e3:g} ms apart" if args.gap else "as fast as it takes them")
            + ", no receivers, "
            f"median of {len(ours)}: pachinko {mine * 1e6:.0f} µs of CPU per broadcast, "
            f"hand-written Falcon + redis-py {base * 1e6:.0f} µs ({mine / base:.2f}x)"
        )


async def main(args: argparse.Namespace) -> None:
    if os.environ.get("REDIS_URL"):
        await bench(os.environ["REDIS_URL"], args)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it or set REDIS_URL")
    with tempfile.TemporaryDirectory() as directory:
        redis_server = RedisServer(binary, Path(directory))
        await redis_server.start()
        try:
            await bench(redis_server.url, args)
        finally:
            redis_server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="uvicorn processes (>= 2)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--receivers", type=int, default=50, help="per receiving process")
    parser.add_argument("--window", type=int, default=100, help="broadcasts in flight")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per wait")
    parser.add_argument(
        "--publisher-rounds", type=int, default=3, help="rounds of the publisher-alone comparison"
    )
    parser.add_argument(
        "--alone", type=int, default=10000, help="broadcasts per publisher-alone round"
    )
    parser.add_argument(
        "--gap", type=float, default=0.0, help="seconds between publisher-alone broadcasts"
    )
    options = parser.parse_args()
    if options.processes < 2:
        parser.error("--processes: expected at least 2 (one publishes, the others receive)")
    raise_nofile(options.processes * options.receivers + 256)
    run(main(options))
