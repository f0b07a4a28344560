"""Where a connection's time goes: bytecodes per function, or a driver for valgrind.

Run:  python benchmarks/profile_connect.py opcodes [--connections 100]
      python benchmarks/profile_connect.py drive {none,hand,ours} [--connections 1000]

The apps and the connection are bench_connect.py's (connect, one message,
its answer, close; Falcon's ``max_receive_queue=0``).

``opcodes``: the bytecodes executed per connection by each function
(``sys.settrace`` with opcode events; Python 3.11 or newer), for the
hand-written app and for pachinko: a count that does not drift with the
machine, unlike a time.

``drive``: warm both apps up, then run ``--connections`` connections of
one (``none``: none), and nothing else. Instructions, cache misses and
branch mispredictions per connection are the difference between two runs
under valgrind, e.g. with ``PYTHONHASHSEED=0``::

    valgrind --tool=cachegrind --cache-sim=yes --branch-sim=yes \\
        python benchmarks/profile_connect.py drive ours --connections 1000

minus the same with ``none``, divided by the count.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import sys
from types import FrameType
from typing import Any

from _asgi import Lifespan
from bench_connect import handwritten_app, one_connection, pachinko_app


async def drive(which: str, count: int) -> None:
    """Warm both apps up, then connect ``count`` times to one of them."""
    hand, ours = handwritten_app(), pachinko_app()
    async with Lifespan(hand), Lifespan(ours):
        for _ in range(200):
            await one_connection(hand)
            await one_connection(ours)
        gc.collect()
        gc.disable()  # no collection lands in one run and not the other
        app = {"hand": hand, "ours": ours}.get(which)
        if app is not None:
            for _ in range(count):
                await one_connection(app)


async def opcodes(which: str, count: int) -> collections.Counter[str]:
    """Bytecodes executed per function over ``count`` connections."""
    app = handwritten_app() if which == "hand" else pachinko_app()
    counts: collections.Counter[str] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_qualname}"] += 1
        return trace

    async with Lifespan(app):
        for _ in range(50):
            await one_connection(app)
        sys.settrace(trace)
        try:
            for _ in range(count):
                await one_connection(app)
        finally:
            sys.settrace(None)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["opcodes", "drive"])
    parser.add_argument("app", nargs="?", default="ours", choices=["none", "hand", "ours"])
    parser.add_argument("--connections", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "drive":
        asyncio.run(drive(args.app, args.connections or 1000))
        return
    count = args.connections or 100
    for which in ("hand", "ours"):
        counts = asyncio.run(opcodes(which, count))
        print(f"{which}: {sum(counts.values()) / count:.0f} bytecodes per connection")
        for name, n in counts.most_common(40):
            print(f"  {n / count:7.1f}  {name}")


if __name__ == "__main__":
    main()
