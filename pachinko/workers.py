"""Background workers bound to the app's lifespan, with opt-in supervision.

A worker is an ``async`` function. The :class:`WorkerController` calls it with
its parameters injected by name from a context (the app passes ``manager``,
``settings`` and every declared service) and keeps a strong reference to its
task.

Fault transparency is the default: a worker that raises before
:meth:`WorkerController.start` returns makes ``start()`` raise (so the ASGI
lifespan startup fails with the traceback); one that raises later is handed
to ``on_crash`` (the app's default logs it at CRITICAL and asks the server to
shut down). A worker never dies silently. With a :class:`RestartPolicy` it is
restarted with exponential backoff until it crashes more than
``max_restarts`` times within ``window`` seconds; then the fault-transparent
path applies.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, overload

import attrs
import msgspec

from .errors import WorkerError

if TYPE_CHECKING:
    from .observe import Observer

__all__ = ["RestartPolicy", "WorkerController", "shutdown_server", "worker"]

logger = logging.getLogger("pachinko.workers")

WorkerFn = Callable[..., Awaitable[Any]]
CrashHandler = Callable[[str, BaseException], Any]
_W = TypeVar("_W", bound=WorkerFn)

_SPEC = "__pachinko_worker__"
# Event loop iterations start() gives new workers to fail (startup_grace=0).
_STARTUP_ITERATIONS = 5


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Restart a crashed worker with exponential backoff, up to a limit.

    The n-th restart waits ``min(backoff * factor ** (n - 1), max_backoff)``
    seconds. A crash that would be the ``max_restarts + 1``-th within
    ``window`` seconds is not restarted: the crash is reported as if there
    were no policy.

    Attributes:
        max_restarts: Restarts allowed within ``window``.
        window: Seconds over which restarts are counted.
        backoff: Delay before the first restart, in seconds.
        factor: Multiplier of the delay for each further restart.
        max_backoff: Longest delay, in seconds.
    """

    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    window: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    factor: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    max_backoff: Annotated[float, msgspec.Meta(ge=0)] = 30.0

    def delay(self, restart: int) -> float:
        """Seconds to wait before restart number ``restart`` (1-based)."""
        return float(min(self.backoff * self.factor ** (restart - 1), self.max_backoff))


@attrs.frozen
class _WorkerSpec:
    name: str
    restart: RestartPolicy | None


@attrs.define
class _Startup:
    """One :meth:`WorkerController.start` call: crashes before it returns fail it."""

    open: bool = True
    failure: tuple[str, BaseException] | None = None


@overload
def worker(fn: _W, /) -> _W: ...


@overload
def worker(
    fn: None = None, /, *, name: str | None = None, restart: RestartPolicy | bool | None = None
) -> Callable[[_W], _W]: ...


def worker(
    fn: _W | None = None,
    /,
    *,
    name: str | None = None,
    restart: RestartPolicy | bool | None = None,
) -> _W | Callable[[_W], _W]:
    """Declare an async function as a worker (bare or with options).

    Args:
        fn: The worker function.
        name: Name used in logs and errors (default: the function's name).
        restart: A :class:`RestartPolicy`, ``True`` for the default policy,
            or ``None``/``False`` for none (a crash fails the app).

    Raises:
        TypeError: ``fn`` is not an ``async`` function.
    """

    def decorate(target: _W) -> _W:
        checked: Any = target  # NOTE: iscoroutinefunction() would narrow _W away
        if not inspect.iscoroutinefunction(checked):
            raise TypeError(
                f"@worker: {getattr(target, '__qualname__', target)!r} must be an async "
                f"function, got {type(target).__name__}"
            )
        policy = RestartPolicy() if restart is True else (restart or None)
        setattr(target, _SPEC, _WorkerSpec(name or target.__name__, policy))
        return target

    return decorate(fn) if fn is not None else decorate


def _spec(fn: WorkerFn) -> _WorkerSpec:
    spec = getattr(fn, _SPEC, None)
    if spec is None:
        if not inspect.iscoroutinefunction(fn):
            raise WorkerError(
                f"worker {getattr(fn, '__qualname__', fn)!r} must be an async function"
            )
        spec = _WorkerSpec(getattr(fn, "__name__", repr(fn)), None)
    return spec


def _bind(fn: WorkerFn, spec: _WorkerSpec, context: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``fn`` from ``context``, by parameter name."""
    kwargs: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            return dict(context)
        if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
            raise WorkerError(
                f"worker {spec.name!r}: parameter {param.name!r} cannot be injected "
                "(workers take keyword parameters named after the context)"
            )
        if param.name in context:
            kwargs[param.name] = context[param.name]
        elif param.default is param.empty:
            available = ", ".join(sorted(context)) or "nothing"
            raise WorkerError(
                f"worker {spec.name!r}: unknown parameter {param.name!r} (available: {available})"
            )
    return kwargs


def shutdown_server(name: str, exc: BaseException) -> None:
    """The app's default crash handler: log, then ask the server to stop.

    It sends SIGTERM to this process: uvicorn (and the other ASGI servers)
    shut down gracefully on it, running the lifespan shutdown.
    """
    logger.critical("worker %r crashed; shutting the server down (SIGTERM)", name, exc_info=exc)
    os.kill(os.getpid(), signal.SIGTERM)


class WorkerController:
    """Start, supervise and stop background workers.

    Args:
        stop_timeout: Seconds :meth:`stop` waits for cancelled workers.
        on_crash: Called as ``on_crash(name, exc)`` when a worker crashes
            after :meth:`start` returned (and is not restarted). Default:
            log at CRITICAL only.
        startup_grace: Seconds :meth:`start` waits for immediate failures
            (0: a few event loop iterations).
        clock: Monotonic clock (injectable for tests).
        sleep: Async sleep (injectable for tests).
    """

    def __init__(
        self,
        *,
        stop_timeout: float = 5.0,
        on_crash: CrashHandler | None = None,
        startup_grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.stop_timeout = stop_timeout
        self.on_crash = on_crash or _log_crash
        self.startup_grace = startup_grace
        self._clock = clock
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Told of every crash (metrics); set by the app's runtime.
        self.observer: Observer | None = None
        # Tasks that ignored cancellation: still referenced so they are not
        # garbage-collected mid-run.
        self._abandoned: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> list[str]:
        """Names of the workers whose task is still running."""
        return [name for name, task in self._tasks.items() if not task.done()]

    async def start(self, *workers: WorkerFn, **context: Any) -> None:
        """Start ``workers`` with their parameters injected from ``context``.

        Workers already running (same name) are left alone, so calling it
        twice is harmless.

        Raises:
            WorkerError: A parameter cannot be injected, two workers share a
                name, or a worker crashed while starting (the original
                exception is chained). Nothing is left running then.
        """
        plans: list[tuple[_WorkerSpec, WorkerFn, dict[str, Any]]] = []
        names: set[str] = set()
        for fn in workers:
            spec = _spec(fn)
            if spec.name in names:
                raise WorkerError(f"two workers are named {spec.name!r}")
            names.add(spec.name)
            if spec.name in self.running:
                continue
            plans.append((spec, fn, _bind(fn, spec, context)))
        if not plans:
            return
        startup = _Startup()
        started: list[str] = []
        try:
            for spec, fn, kwargs in plans:
                self._tasks[spec.name] = asyncio.create_task(
                    self._supervise(spec, fn, kwargs, startup), name=f"pachinko-worker-{spec.name}"
                )
                started.append(spec.name)
            # NOTE: "during startup" means before start() returns: the new
            #   tasks get a few event loop iterations (or startup_grace seconds).
            if self.startup_grace > 0:
                await asyncio.sleep(self.startup_grace)
            else:
                for _ in range(_STARTUP_ITERATIONS):
                    await asyncio.sleep(0)
        except BaseException:
            # start() itself was cancelled: leave nothing running.
            startup.open = False
            await self._stop_names(started)
            raise
        startup.open = False
        if startup.failure is not None:
            name, exc = startup.failure
            await self._stop_names(started)
            raise WorkerError(f"worker {name!r} crashed during startup: {exc!r}") from exc
        logger.info("started workers: %s", ", ".join(started))

    async def start_worker(self, fn: WorkerFn, **context: Any) -> None:
        """Start one more worker (used by hot reload)."""
        await self.start(fn, **context)

    async def stop_worker(self, name: str) -> None:
        """Stop one worker by name (used by hot reload)."""
        await self._stop_names([name])

    async def stop(self) -> None:
        """Cancel every worker and wait at most ``stop_timeout`` seconds.

        A worker that swallows the cancellation is logged and abandoned:
        ``stop()`` still returns in time. Calling it again is harmless.
        """
        await self._stop_names(list(self._tasks))

    async def _stop_names(self, names: list[str]) -> None:
        tasks = {name: self._tasks.pop(name) for name in names if name in self._tasks}
        pending = [task for task in tasks.values() if not task.done()]
        for task in pending:
            task.cancel()
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=self.stop_timeout)
        for name, task in tasks.items():
            if task in still:
                logger.error(
                    "worker %r ignored cancellation for %.1f s; abandoned",
                    name,
                    self.stop_timeout,
                )
                self._abandoned.add(task)
                task.add_done_callback(self._abandoned.discard)
        stopped = [name for name, task in tasks.items() if task not in still]
        if stopped:
            logger.info("stopped workers: %s", ", ".join(stopped))

    async def _supervise(
        self, spec: _WorkerSpec, fn: WorkerFn, kwargs: dict[str, Any], startup: _Startup
    ) -> None:
        task = asyncio.current_task()
        crashes: list[float] = []
        while True:
            try:
                await fn(**kwargs)
            except asyncio.CancelledError as exc:
                if task is None or task.cancelling():
                    raise  # stop() (or the loop) cancelled us
                # NOTE: a CancelledError nobody asked this task for (e.g. from
                #   an awaited task that was cancelled) ends the worker: a crash.
                error: BaseException = exc
            except Exception as exc:
                if task is not None and task.cancelling():
                    # NOTE: it failed while being stopped: report it, never restart it.
                    logger.error("worker %r failed while stopping", spec.name, exc_info=exc)
                    return
                error = exc
            else:
                logger.info("worker %r finished", spec.name)
                return
            policy = spec.restart
            now = self._clock()
            if policy is not None:
                crashes = [t for t in crashes if now - t < policy.window]
            if policy is None or len(crashes) >= policy.max_restarts:
                if self.observer is not None:
                    self.observer.worker_crashed(spec.name, False)
                self._crashed(spec, error, len(crashes), startup)
                return
            crashes.append(now)
            if self.observer is not None:
                self.observer.worker_crashed(spec.name, True)
            delay = policy.delay(len(crashes))
            logger.warning(
                "worker %r crashed (%r); restart %d of %d in %.2f s",
                spec.name,
                error,
                len(crashes),
                policy.max_restarts,
                delay,
                exc_info=error,
            )
            await self._sleep(delay)
            logger.warning("worker %r restarting", spec.name)

    def _crashed(
        self, spec: _WorkerSpec, exc: BaseException, restarts: int, startup: _Startup
    ) -> None:
        if startup.open:
            if startup.failure is None:
                startup.failure = (spec.name, exc)
            return
        if restarts:
            logger.error(
                "worker %r crashed again after %d restarts; giving up", spec.name, restarts
            )
        try:
            self.on_crash(spec.name, exc)
        except Exception:
            logger.exception("crash handler failed for worker %r", spec.name)


def _log_crash(name: str, exc: BaseException) -> None:
    logger.critical("worker %r crashed", name, exc_info=exc)
