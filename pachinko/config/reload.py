"""Hot reload of a routes.toml in development.

A change to the file (or a file it includes) is loaded and compiled off the
serving path; if that succeeds, the new router is swapped in atomically
(``Mount.swap``): open connections keep the resource they have, new
connections get the new routes and schemas. Workers whose declaration
changed are restarted; the others keep running. ``[rooms]`` applies from the
next broadcast and the next join (see :meth:`Reloader.reload`). An invalid edit keeps the
previous version serving and logs every error with its location. Every
reload is logged with what changed.

What is *not* reloaded: Python code (modules are imported once; restart the
process, e.g. ``pachinko serve --reload`` or ``uvicorn --reload``), services
(created once at startup), ``[settings]`` and ``[app]``: a change there is
logged as needing a restart. A ``[rooms]`` change of ``presence`` applies
to joins after the reload: connections already in the room keep what they
joined with until they leave (their presence entries included).

Files are watched with ``watchfiles`` when it is installed (the ``serve``
extra), else by polling their modification times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..errors import ConfigError
from ..rooms import RoomPolicies
from ._env import RELOAD_POLL_ENV
from ._plans import ServiceBox, worker_callable
from .compiler import Compiled, load_config

if TYPE_CHECKING:
    from .._serve import Mount
    from ..app import Runtime

__all__ = ["Reloader", "Served", "describe_changes"]

logger = logging.getLogger("pachinko.config")


class Served(Protocol):
    """What the reloader swaps versions of (:class:`~pachinko.config.Configured` is one)."""

    #: The configuration file.
    path: str
    #: The version served; the reloader replaces it.
    compiled: Compiled

    @property
    def mount(self) -> Mount:
        """The mount serving the compiled router."""

    @property
    def runtime(self) -> Runtime:
        """The app's pachinko runtime."""


def describe_changes(old: Compiled, new: Compiled) -> dict[str, list[str]]:
    """What differs between two compiled configurations, by kind.

    Returns:
        Keys ``routes``, ``types``, ``rooms``, ``workers``, ``services``,
        ``hooks``, ``restart`` (changes that need a process restart); each a list of
        ``+name`` (added), ``-name`` (removed), ``~name`` (changed).
    """

    def routes(c: Compiled) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for info in c.router.routes():
            target = info.target
            decl = getattr(target, "__pachinko_declaration__", None) or (
                target.__module__,
                target.__qualname__,
            )
            out[info.template] = (info.name, decl, info.args, info.kwargs)
        return out

    def table(items: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: msgspec.to_builtins(decl, builtin_types=(object,))
            for name, (_, decl) in items.items()
        }

    changes = {
        "routes": _diff(routes(old), routes(new)),
        "types": _diff(table(old.loaded.types), table(new.loaded.types)),
        "rooms": _diff(table(old.loaded.rooms), table(new.loaded.rooms)),
        "workers": _diff(table(old.loaded.workers), table(new.loaded.workers)),
        "services": _diff(table(old.loaded.services), table(new.loaded.services)),
        "hooks": _diff(
            {f"{e}:{p}": None for _, e, p in old.loaded.hooks},
            {f"{e}:{p}": None for _, e, p in new.loaded.hooks},
        ),
        "restart": [],
    }
    for key in ("settings", "app"):
        if getattr(old.loaded, key) != getattr(new.loaded, key):
            changes["restart"].append(f"[{key}]")
    if changes["services"]:
        changes["restart"].extend(f"services: {c}" for c in changes["services"])
    return changes


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = [f"+{k}" for k in new if k not in old]
    out += [f"-{k}" for k in old if k not in new]
    out += [f"~{k}" for k in new if k in old and _canon(old[k]) != _canon(new[k])]
    return out


def _canon(value: Any) -> Any:
    try:
        return msgspec.json.encode(value, order="sorted")
    except (TypeError, msgspec.EncodeError):
        return repr(value)


class Reloader:
    """Watch a configured app's files and swap in new versions.

    Args:
        configured: What :func:`~pachinko.config.configure` did.
        environ: Variables for ``${VAR}`` (default: ``os.environ``).
        poll_interval: Seconds between checks when polling.
        force_polling: Poll even if ``watchfiles`` is installed.
    """

    def __init__(
        self,
        configured: Served,
        *,
        environ: Mapping[str, str] | None = None,
        poll_interval: float = 0.25,
        force_polling: bool | None = None,
    ) -> None:
        self.configured = configured
        self.environ = environ
        self.poll_interval = poll_interval
        if force_polling is None:
            force_polling = os.environ.get(RELOAD_POLL_ENV, "") not in ("", "0")
        self.force_polling = force_polling
        self.reloads = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        # What the files looked like when the served version was read: a
        # change made before the watcher starts is not missed.
        self._stamps = _stamps(self.files)
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def files(self) -> list[Path]:
        """The files currently watched (the root file and its includes)."""
        return [p.resolve() for p in self.configured.compiled.loaded.files]

    async def start(self) -> None:
        """Start watching (idempotent)."""
        if self._task is None:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="pachinko-config-reload")

    async def stop(self) -> None:
        """Stop watching; returns within a second even if the watcher hangs."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
            await asyncio.wait_for(task, 1.0)

    async def _run(self) -> None:
        if _stamps(self.files) != self._stamps:
            await self.reload()
        while not self._stop.is_set():
            try:
                if self.force_polling:
                    raise ImportError("polling forced")
                import watchfiles
            except ImportError:
                await self._poll()
                return
            files = set(self.files)
            folders = sorted({str(p.parent) for p in files})
            async for _ in watchfiles.awatch(
                *folders,
                watch_filter=_only(files),
                stop_event=self._stop,
                debounce=100,
                step=20,
            ):
                await self.reload()
                if set(self.files) != files:
                    break  # an include was added or removed: watch the new set

    async def _poll(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.poll_interval)
            if _stamps(self.files) != self._stamps:
                await self.reload()

    async def reload(self) -> bool:
        """Load, compile and swap in the file now.

        Room policies (``[rooms]``) are replaced in the manager: the next
        broadcast and the next join use them. What a room keeps already is
        not rewritten: a smaller ``history`` trims it at the room's next
        broadcast, a room whose history is turned off stops giving positions
        (a client that joins with one is told ``no_history``) and one whose
        history is turned on starts it (offset 1) at its next broadcast.
        ``[app] position_field`` needs a restart, like the rest of ``[app]``.

        Returns:
            True if the new version is served (or nothing changed), False if
            it was invalid and the previous version keeps serving.
        """
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> bool:
        configured = self.configured
        old = configured.compiled
        started = time.perf_counter()
        self._stamps = _stamps(self.files)  # read before loading: a later write is seen
        try:
            new = load_config(configured.path, self.environ, ServiceBox())
        except ConfigError as ex:
            self.failures += 1
            logger.error(
                "reload of %s failed, still serving the previous version:\n%s", configured.path, ex
            )
            return False
        except Exception:  # a bug must not stop the watcher: keep serving
            self.failures += 1
            logger.exception(
                "reload of %s failed, still serving the previous version", configured.path
            )
            return False
        changes = describe_changes(old, new)
        added = [c[1:] for c in changes["services"] if c.startswith("+")]
        if added:
            self.failures += 1
            logger.error(
                "reload of %s refused, still serving the previous version: new services (%s) "
                "are created at startup only; restart the server",
                configured.path,
                ", ".join(added),
            )
            return False
        new.box.services = configured.runtime.services
        if changes["rooms"]:
            configured.runtime.manager.set_room_policies(
                RoomPolicies(new.rooms, position_field=old.rooms.position_field)
            )
        configured.mount.swap(new.router)
        configured.compiled = new
        await self._restart_workers(old, new, changes["workers"])
        elapsed = (time.perf_counter() - started) * 1000
        self.reloads += 1
        summary = (
            "; ".join(
                f"{kind} {' '.join(items)}"
                for kind, items in changes.items()
                if items and kind != "restart"
            )
            or "no change"
        )
        logger.info("reloaded %s in %.1f ms: %s", configured.path, elapsed, summary)
        if changes["restart"]:
            logger.warning(
                "%s: %s changed; restart the server to apply it",
                configured.path,
                ", ".join(changes["restart"]),
            )
        return True

    async def _restart_workers(self, old: Compiled, new: Compiled, changes: list[str]) -> None:
        """Restart the workers whose declaration changed; leave the others running."""
        if not changes:
            return
        runtime = self.configured.runtime
        controller: Any = runtime.workers
        context = {"manager": runtime.manager, "settings": runtime.settings, **runtime.services}
        names = [c[1:] for c in changes]
        previous = {name: worker_callable(plan) for name, plan in old.workers.items()}
        declared = [
            w for w in runtime.declared_workers if getattr(w, "__name__", None) not in previous
        ]
        fresh = {name: worker_callable(plan) for name, plan in new.workers.items()}
        runtime.declared_workers = [*declared, *fresh.values()]
        if hasattr(controller, "stop_worker") and hasattr(controller, "start_worker"):
            for name in names:
                if name in old.workers:
                    await controller.stop_worker(name)
                if name in fresh:
                    await controller.start_worker(fresh[name], **context)
            return
        # NOTE: this WorkerController cannot stop one worker: restart them all.
        logger.warning(
            "restarting every worker (the controller cannot restart one): %s", ", ".join(changes)
        )
        await controller.stop()
        await controller.start(*runtime.declared_workers, **context)


def _only(files: set[Path]) -> Any:
    """A watchfiles filter keeping changes to ``files`` only."""

    def keep(_change: Any, path: str) -> bool:
        return Path(path).resolve() in files

    return keep


def _stamps(files: list[Path]) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            out.append(None)
            continue
        out.append((stat.st_mtime_ns, stat.st_size))
    return out
