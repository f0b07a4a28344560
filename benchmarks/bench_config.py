"""routes.toml: compile time, route-match time and hot-reload swap time.

Run:  python benchmarks/bench_config.py   (add --quick for a smoke run)

For configs of 10, 1,000 and 10,000 routes (each built from a handler with a
declared payload type), it prints the load+compile time (total and per
route), the time to match a path against the compiled router (per match,
over paths spread across the whole table) and, for 1,000 routes, the time a
hot reload takes from reading the edited file to the swapped-in router.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import falcon.asgi

from pachinko.config import load_config
from pachinko.config.app import configure
from pachinko.config.reload import Reloader

HANDLERS = """
async def join(resource, ws, payload):
    await resource.send({"type": "joined", "room": payload.room})
"""


def make_config(folder: Path, routes: int, extra: str = "") -> Path:
    (folder / "bench_handlers.py").write_text(HANDLERS)
    lines = [
        "[types.Join.fields]",
        'room = { type = "str", min_length = 1, max_length = 64 }',
        'name = "str"',
        "",
    ]
    for i in range(routes):
        lines += [
            "[[routes]]",
            f'path = "/r{i}/rooms/{{room}}"',
            f'name = "r{i}"',
            'handlers.join = { handler = "bench_handlers:join", payload = "Join" }',
            "",
        ]
    path = folder / f"routes_{routes}.toml"
    path.write_text("\n".join(lines) + extra)
    return path


def best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def bench(sizes: list[int], matches: int, repeat: int) -> None:
    print(f"python {sys.version.split()[0]}")
    print(f"{'routes':>8} {'compile':>10} {'per route':>11} {'match':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in sizes:
            path = make_config(folder, size)
            compile_s = best(lambda p=path: load_config(p), repeat if size < 10_000 else 1)
            router = load_config(path).router
            rng = random.Random(size)
            paths = [f"/r{rng.randrange(size)}/rooms/lobby" for _ in range(matches)]
            assert router.match(paths[0]) is not None

            def match_all(router: Any = router, paths: list[str] = paths) -> None:
                for p in paths:
                    router.match(p)

            match_s = best(match_all, repeat) / matches
            print(
                f"{size:>8} {compile_s * 1e3:>8.1f}ms {compile_s / size * 1e6:>9.1f}us "
                f"{match_s * 1e9:>8.0f}ns"
            )
        asyncio.run(bench_reload(folder, 1000, repeat))


async def bench_reload(folder: Path, size: int, repeat: int) -> None:
    path = make_config(folder, size)
    app = falcon.asgi.App()
    configured = configure(app, path, reload=False)
    reloader = Reloader(configured)
    times = []
    for i in range(repeat):
        path.write_text(path.read_text() + f'\n[[routes]]\npath = "/extra{i}"\n')
        started = time.perf_counter()
        ok = await reloader.reload()
        times.append(time.perf_counter() - started)
        assert ok
        assert configured.mount.router.match(f"/extra{i}") is not None
    swap = []
    for _ in range(1000):
        started = time.perf_counter()
        configured.mount.swap(configured.compiled.router)
        swap.append(time.perf_counter() - started)
    print(
        f"reload of {size} routes (read, compile, diff, swap): best {min(times) * 1e3:.1f}ms, "
        f"median {statistics.median(times) * 1e3:.1f}ms; the swap itself: "
        f"{min(swap) * 1e9:.0f}ns"
    )


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    bench([10, 100] if quick else [10, 1_000, 10_000], 200 if quick else 20_000, 1 if quick else 3)
