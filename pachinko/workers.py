"""Background workers (interim version; see issue 4)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import msgspec

from .errors import WorkerError

__all__ = ["RestartPolicy", "WorkerController", "worker"]


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Restart a crashed worker with exponential backoff."""

    max_restarts: int = 5
    window: float = 60.0


def worker(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Mark an async function as a worker."""
    if fn is None:
        return lambda f: f
    return fn


class WorkerController:
    """Start workers with injected parameters; stop them with a bound."""

    def __init__(self, *, stop_timeout: float = 5.0, on_crash: Any = None) -> None:
        self.stop_timeout = stop_timeout
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self, *workers: Callable[..., Any], **context: Any) -> None:
        for fn in workers:
            params = inspect.signature(fn).parameters
            missing = [p for p in params if p not in context]
            if missing:
                raise WorkerError(f"worker {fn.__qualname__}: unknown parameter {missing[0]!r}")
            self._tasks.append(asyncio.create_task(fn(**{p: context[p] for p in params})))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.stop_timeout)
