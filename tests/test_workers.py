"""Workers: started and stopped by the ASGI lifespan, supervised, never silently dead."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import falcon.asgi
import falcon.testing
import pytest

import pachinko
from pachinko import RestartPolicy, WorkerController, WorkerError, worker
from tests.helpers import eventually


def app_with(*workers: Any, **install_options: Any) -> falcon.asgi.App[Any, Any]:
    app = falcon.asgi.App()
    pachinko.install(app, workers=workers, **install_options)
    return app


async def test_workers_start_after_startup_and_are_cancelled_at_shutdown() -> None:
    events: list[Any] = []

    async def ticker(manager: Any, settings: Any, clock: Any) -> None:
        events.append(("started", type(manager).__name__, settings.max_message_size, clock))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    app = app_with(ticker, services={"clock": lambda: "a clock service"})
    assert events == []  # nothing runs before the lifespan startup
    async with falcon.testing.ASGIConductor(app):
        await eventually(lambda: bool(events))
        assert events == [("started", "WebSocketConnectionManager", 65536, "a clock service")]
        assert pachinko.runtime_of(app).workers.running == ["ticker"]
    assert events[-1] == "cancelled"
    assert pachinko.runtime_of(app).workers.running == []


async def test_unknown_parameter_fails_startup_naming_worker_and_parameter() -> None:
    async def needs_db(manager: Any, db: Any) -> None: ...

    with pytest.raises(RuntimeError, match=r"lifespan\.startup\.failed") as info:
        async with falcon.testing.ASGIConductor(app_with(needs_db)):
            pass
    assert (
        "WorkerError: worker 'needs_db': unknown parameter 'db' (available: manager, settings)"
        in str(info.value)
    )


async def test_crash_during_startup_fails_startup_with_the_traceback() -> None:
    started: list[str] = []

    async def healthy() -> None:
        started.append("healthy")
        await asyncio.Event().wait()

    async def broken() -> None:
        raise ConnectionRefusedError("cannot reach the price feed")

    app = app_with(healthy, broken)
    with pytest.raises(RuntimeError) as info:
        async with falcon.testing.ASGIConductor(app):
            pass
    message = str(info.value)
    assert "worker 'broken' crashed during startup" in message
    assert "ConnectionRefusedError: cannot reach the price feed" in message  # the traceback
    # a start() that fails half-way leaves nothing running
    assert pachinko.runtime_of(app).workers.running == []


async def test_crash_after_startup_is_reported_not_silent() -> None:
    crashes: list[tuple[str, BaseException]] = []
    go = asyncio.Event()

    async def later() -> None:
        await go.wait()
        raise ValueError("bad tick")

    app = app_with(later, on_worker_crash=lambda name, exc: crashes.append((name, exc)))
    async with falcon.testing.ASGIConductor(app):
        go.set()
        await eventually(lambda: bool(crashes))
    assert [(name, repr(exc)) for name, exc in crashes] == [("later", "ValueError('bad tick')")]


async def test_restart_with_backoff_then_give_up() -> None:
    delays: list[float] = []
    crashes: list[str] = []
    runs = 0
    now = 0.0

    async def fake_sleep(seconds: float) -> None:
        nonlocal now
        delays.append(seconds)
        now += seconds

    @worker(
        restart=RestartPolicy(max_restarts=3, window=60, backoff=0.5, factor=2, max_backoff=1.5)
    )
    async def flaky() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)
        raise OSError(f"run {runs}")

    controller = WorkerController(
        on_crash=lambda name, exc: crashes.append(f"{name}: {exc}"),
        clock=lambda: now,
        sleep=fake_sleep,
    )
    # crashing on every run, even while restarted, fails the startup
    with pytest.raises(WorkerError, match="worker 'flaky' crashed during startup"):
        await controller.start(flaky)
    assert crashes == []  # reported by start(), not by on_crash
    # after startup the same policy ends with on_crash
    runs, delays[:] = 0, []
    gate = asyncio.Event()

    @worker(
        name="flaky2",
        restart=RestartPolicy(max_restarts=3, window=60, backoff=0.5, factor=2, max_backoff=1.5),
    )
    async def flaky2() -> None:
        nonlocal runs
        await gate.wait()
        runs += 1
        raise OSError(f"run {runs}")

    await controller.start(flaky2)
    gate.set()
    await eventually(lambda: bool(crashes))
    assert runs == 4  # the first run and three restarts
    assert delays == [0.5, 1.0, 1.5]  # exponential, capped
    assert crashes == ["flaky2: run 4"]
    await controller.stop()


async def test_restarts_outside_the_window_do_not_count() -> None:
    now = 0.0
    crashes: list[str] = []
    runs = 0
    gate = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        nonlocal now
        now += 100  # every restart happens long after the previous crash

    @worker(restart=RestartPolicy(max_restarts=1, window=10))
    async def sometimes() -> None:
        nonlocal runs
        await gate.wait()
        runs += 1
        if runs < 5:
            raise OSError("transient")

    controller = WorkerController(
        on_crash=lambda n, e: crashes.append(n), clock=lambda: now, sleep=fake_sleep
    )
    await controller.start(sometimes)
    gate.set()
    await eventually(lambda: runs == 5)
    assert crashes == []
    await controller.stop()


async def test_restart_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()
    runs = 0

    @worker(restart=RestartPolicy(max_restarts=1, backoff=0))
    async def once_flaky() -> None:
        nonlocal runs
        await gate.wait()
        runs += 1
        if runs == 1:
            raise OSError("first run fails")
        await asyncio.Event().wait()

    controller = WorkerController()
    with caplog.at_level(logging.WARNING, logger="pachinko.workers"):
        await controller.start(once_flaky)
        gate.set()
        await eventually(lambda: runs == 2)
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "worker 'once_flaky' crashed (OSError('first run fails')); restart 1 of 1 in 0.00 s"
        in messages
    )
    assert "worker 'once_flaky' restarting" in messages
    await controller.stop()


async def test_stop_is_bounded_even_if_a_worker_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    finished = False

    async def stubborn() -> None:
        nonlocal finished
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows the cancellation
        finished = True

    controller = WorkerController(stop_timeout=0.2)
    await controller.start(stubborn)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.ERROR, logger="pachinko.workers"):
        await controller.stop()
    assert loop.time() - started < 2.0
    assert "worker 'stubborn' ignored cancellation for 0.2 s; abandoned" in caplog.messages
    release.set()
    await eventually(lambda: finished)  # the abandoned task still ran to its end


async def test_start_and_stop_are_idempotent() -> None:
    runs = 0

    async def counter() -> None:
        nonlocal runs
        runs += 1
        await asyncio.Event().wait()

    controller = WorkerController()
    await controller.start(counter)
    await controller.start(counter)
    assert runs == 1
    assert controller.running == ["counter"]
    await controller.stop()
    await controller.stop()
    assert controller.running == []
    await controller.start(counter)
    assert runs == 2
    await controller.stop()


def test_worker_decorator_requires_async() -> None:
    with pytest.raises(TypeError, match="must be an async function"):
        worker(lambda: None)  # type: ignore[type-var]


async def test_two_workers_with_one_name_are_refused() -> None:
    async def a() -> None: ...

    b = worker(name="a")(_other)
    with pytest.raises(WorkerError, match="two workers are named 'a'"):
        await WorkerController().start(a, b)


async def _other() -> None: ...


def test_restart_policy_rejects_bad_values() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="Expected `int` >= 0"):
        msgspec.convert({"max_restarts": -1}, RestartPolicy)
    with pytest.raises(msgspec.ValidationError, match="Object contains unknown field `retries`"):
        msgspec.convert({"retries": 3}, RestartPolicy)


async def test_a_cancelled_start_leaves_nothing_running() -> None:
    cancelled: list[str] = []

    async def slow_to_fail() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("slow_to_fail")
            raise

    controller = WorkerController(startup_grace=10)
    starting = asyncio.create_task(controller.start(slow_to_fail))
    await eventually(lambda: controller.running == ["slow_to_fail"])
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert controller.running == []
    assert cancelled == ["slow_to_fail"]


async def test_an_earlier_worker_crashing_during_a_later_start_goes_to_on_crash() -> None:
    crashes: list[str] = []
    gate = asyncio.Event()

    async def first() -> None:
        await gate.wait()
        raise OSError("first broke")

    async def second() -> None:
        gate.set()  # makes ``first`` crash while start(second) is still running
        await asyncio.Event().wait()

    controller = WorkerController(on_crash=lambda name, exc: crashes.append(f"{name}: {exc}"))
    await controller.start(first)
    await controller.start(second)  # not failed by the crash of ``first``
    assert crashes == ["first: first broke"]
    assert controller.running == ["second"]
    await controller.stop()


async def test_a_stray_cancelled_error_is_a_crash_not_a_silent_stop() -> None:
    crashes: list[tuple[str, str]] = []
    gate = asyncio.Event()

    async def waits_on_a_cancelled_task() -> None:
        await gate.wait()
        helper = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        helper.cancel()
        await helper  # raises CancelledError, but nobody cancelled this worker

    controller = WorkerController(
        on_crash=lambda name, exc: crashes.append((name, type(exc).__name__))
    )
    await controller.start(waits_on_a_cancelled_task)
    gate.set()
    await eventually(lambda: bool(crashes))
    assert crashes == [("waits_on_a_cancelled_task", "CancelledError")]
    await controller.stop()


async def test_a_worker_that_returns_is_logged_and_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0

    @worker(restart=True)
    async def one_shot() -> None:
        nonlocal runs
        runs += 1

    controller = WorkerController()
    with caplog.at_level(logging.INFO, logger="pachinko.workers"):
        await controller.start(one_shot)
    assert runs == 1
    assert controller.running == []
    assert "worker 'one_shot' finished" in caplog.messages


async def test_restart_through_the_lifespan_with_real_tiny_backoff() -> None:
    runs = 0

    @worker(restart=RestartPolicy(max_restarts=2, window=60, backoff=0.01, factor=2))
    async def recovers() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.02)
        if runs <= 2:
            raise OSError(f"run {runs}")
        await asyncio.Event().wait()

    crashes: list[str] = []
    app = app_with(recovers, on_worker_crash=lambda name, exc: crashes.append(name))
    async with falcon.testing.ASGIConductor(app):
        await eventually(lambda: runs == 3)
        assert pachinko.runtime_of(app).workers.running == ["recovers"]
    assert crashes == []
    assert pachinko.runtime_of(app).workers.running == []


async def test_a_worker_ignoring_cancellation_does_not_hang_the_lifespan_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    finished = False

    async def stubborn() -> None:
        nonlocal finished
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue
        finished = True

    app = app_with(stubborn, settings=pachinko.Settings(shutdown_timeout=0.2))
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="pachinko.workers"):
        async with falcon.testing.ASGIConductor(app):
            started = loop.time()
    assert loop.time() - started < 3.0
    assert "worker 'stubborn' ignored cancellation for 0.2 s; abandoned" in caplog.messages
    release.set()
    await eventually(lambda: finished)


async def test_a_service_cannot_shadow_the_manager() -> None:
    async def uses_manager(manager: Any) -> None: ...

    # checked by install(), not first at startup; a ConfigError is a ValueError
    with pytest.raises(pachinko.ConfigError) as info:
        app_with(uses_manager, services={"manager": lambda: "not the manager"})
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        "services: 'manager' is reserved for the app's own object "
        "(injected into workers by that name); rename the service"
    )


async def test_a_worker_failing_while_stopping_is_logged_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    supervisors: list[asyncio.Task[Any]] = []

    @worker(restart=RestartPolicy(backoff=0))
    async def messy() -> None:
        nonlocal runs
        runs += 1
        supervisors.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("cleanup failed")  # replaces the CancelledError

    crashes: list[str] = []
    controller = WorkerController(on_crash=lambda name, exc: crashes.append(name))
    await controller.start(messy)
    with caplog.at_level(logging.ERROR, logger="pachinko.workers"):
        await controller.stop()
    assert "worker 'messy' failed while stopping" in caplog.messages
    # the task that would restart it has ended (stop() waited for it), so no
    # restart can come later: the count is final
    assert [task.done() for task in supervisors] == [True]
    assert runs == 1  # not restarted
    assert crashes == []
    assert controller.running == []


async def test_services_are_closed_at_shutdown_newest_first() -> None:
    closed: list[str] = []

    class Pool:
        async def aclose(self) -> None:
            closed.append("pool")

    class Client:
        def close(self) -> None:
            closed.append("client")

    class Broken:
        def close(self) -> None:
            raise RuntimeError("cannot close")

    async def uses(pool: Any, client: Any) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            closed.append("worker stopped")

    app = app_with(
        uses, services={"pool": Pool, "broken": Broken, "client": Client, "plain": lambda: 42}
    )
    async with falcon.testing.ASGIConductor(app):
        await eventually(lambda: pachinko.runtime_of(app).workers.running == ["uses"])
    # workers first (they use the services), then the services, newest first
    assert closed == ["worker stopped", "client", "pool"]
    assert pachinko.runtime_of(app).services == {}


async def test_services_created_before_a_failed_startup_are_closed() -> None:
    closed: list[str] = []

    class Pool:
        async def aclose(self) -> None:
            closed.append("pool")

    async def needs_missing(missing: Any) -> None: ...

    app = app_with(needs_missing, services={"pool": Pool})
    with pytest.raises(RuntimeError, match="unknown parameter 'missing'"):
        async with falcon.testing.ASGIConductor(app):
            pass
    assert closed == ["pool"]
