"""Route matching cost against the number of routes, next to Falcon's router.

Run:  python benchmarks/bench_router.py

For 10, 1,000 and 10,000 routes of the shape ``/svc{i}/rooms/{room}``:
time to add them all (per route) and time to match the first and the last
one (per match), for pachinko's trie and for Falcon's ``CompiledRouter``
(which compiles to a chain of comparisons between literal siblings).
"""

from __future__ import annotations

import time
from typing import Any

from falcon.routing import CompiledRouter

from pachinko import WebSocketResource, WebSocketRouter


class Resource(WebSocketResource):
    pass


def per_call(fn: Any, path: str, repeat: int = 20000) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            fn(path)
        best = min(best, (time.perf_counter() - started) / repeat * 1e6)
    return best


def main() -> None:
    print(
        f"{'routes':>7} {'router':>9} {'add µs/route':>13} {'match first µs':>15} "
        f"{'match last µs':>14}"
    )
    for n in (10, 1000, 10000):
        ours = WebSocketRouter()
        started = time.perf_counter()
        for i in range(n):
            ours.add_route(f"/svc{i}/rooms/{{room}}", Resource)
        add_ours = (time.perf_counter() - started) / n * 1e6

        falcons = CompiledRouter()
        started = time.perf_counter()
        for i in range(n):
            falcons.add_route(f"/svc{i}/rooms/{{room}}", object())
        falcons.find("/svc0/rooms/x")  # Falcon compiles lazily, on the first find
        add_falcon = (time.perf_counter() - started) / n * 1e6

        first, last = "/svc0/rooms/lobby", f"/svc{n - 1}/rooms/lobby"
        for name, add, fn in (
            ("pachinko", add_ours, ours.match),
            ("falcon", add_falcon, falcons.find),
        ):
            print(
                f"{n:>7} {name:>9} {add:>13.1f} {per_call(fn, first):>15.2f} "
                f"{per_call(fn, last):>14.2f}"
            )


if __name__ == "__main__":
    main()
