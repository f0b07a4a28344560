"""Read a routes.toml and the files it includes into one checked model.

Each file is parsed, interpolated and checked on its own, so every error
names the file it is in, with the key path and line as written there. The
files are then merged: ``routes``, ``routers`` and hook lists are appended in
include order (the including file first); ``rooms``, ``types``, ``services``
and ``workers`` must not be declared twice; ``app`` and ``settings`` belong to
the root file only.
"""

from __future__ import annotations

import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import msgspec

from ..settings import Settings
from ._toml import KeyPath, format_path, key_lines, line_of, parse
from .errors import ConfigFileError, Issue
from .interpolate import interpolate
from .model import (
    AppConfig,
    ConfigFile,
    HooksConfig,
    RoomConfig,
    RouteConfig,
    RouterConfig,
    ServiceConfig,
    TypeConfig,
    WorkerConfig,
)
from .validate import check

__all__ = ["Loaded", "Report", "Source", "load", "load_text"]


@attrs.frozen
class Source:
    """One file of a configuration: its name as shown and its key lines."""

    name: str
    path: Path | None
    lines: dict[KeyPath, int] = attrs.field(eq=False, repr=False)


class Report:
    """Collects issues; :meth:`raise_if_any` raises them all together."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.causes: list[BaseException] = []

    def add(
        self,
        source: Source,
        path: KeyPath,
        expected: str,
        found: str,
        cause: BaseException | None = None,
    ) -> None:
        """Record a problem at ``path`` of ``source``."""
        self.issues.append(
            Issue(source.name, format_path(path), line_of(source.lines, path), expected, found)
        )
        if cause is not None:
            self.causes.append(cause)

    def raise_if_any(self) -> None:
        """Raise :class:`ConfigFileError` with every issue, if there is one."""
        if self.issues:
            error = ConfigFileError(self.issues)
            raise error from (self.causes[0] if self.causes else None)


Located = tuple[Source, KeyPath]


@attrs.define
class Loaded:
    """The merged, checked configuration (not compiled yet).

    Every item keeps the file and key path it was written at, for errors.
    """

    root: Source
    sources: list[Source]
    app: AppConfig
    settings: Settings
    rooms: dict[str, tuple[Located, RoomConfig]]
    types: dict[str, tuple[Located, TypeConfig]]
    services: dict[str, tuple[Located, ServiceConfig]]
    workers: dict[str, tuple[Located, WorkerConfig]]
    hooks: list[tuple[Located, str, str]]  # (where, event, import path)
    routes: list[tuple[Located, RouteConfig]]
    routers: list[tuple[Located, RouterConfig]]
    broken: set[tuple[str, str]] = attrs.field(factory=set)

    @property
    def files(self) -> list[Path]:
        """Every file read (for hot reload)."""
        return [s.path for s in self.sources if s.path is not None]


def load(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    report: Report | None = None,
) -> Loaded:
    """Read, interpolate, check and merge ``path`` and its includes.

    The file's directory is added at the end of ``sys.path`` (if it is not
    there yet) so its import paths can name modules next to it. At the end,
    it never shadows an installed package; a local file named like one is
    reported by the compiler.

    Args:
        path: The root file.
        environ: Variables for interpolation (default ``os.environ``).
        report: Collect problems here instead of raising (the compiler
            adds its own, then raises them all).

    Raises:
        ConfigFileError: With every problem of every file (without ``report``).
    """
    own = report is None
    report = report or Report()
    display = os.fspath(path)
    folder = str(Path(display).resolve().parent)
    if folder not in sys.path:
        # NOTE: appended, not inserted first: a local channels_redis.py must not
        #   replace the installed package for the whole process.
        sys.path.append(folder)
    loaded = _Merger(report, os.environ if environ is None else environ)
    loaded.file(Path(display), display, None, ())
    if own:
        report.raise_if_any()
    return loaded.result()


def load_text(
    text: str,
    name: str = "<string>",
    environ: Mapping[str, str] | None = None,
    report: Report | None = None,
) -> Loaded:
    """Like :func:`load` for a document in a string (includes are relative to cwd)."""
    own = report is None
    report = report or Report()
    merger = _Merger(report, os.environ if environ is None else environ)
    merger.document(text, Source(name, None, {}), Path.cwd(), root=True)
    if own:
        report.raise_if_any()
    return merger.result()


class _Merger:
    def __init__(self, report: Report, environ: Mapping[str, str]) -> None:
        self.report = report
        self.environ = environ
        self.sources: list[Source] = []
        self.app: AppConfig | None = None
        self.settings: Settings | None = None
        self.rooms: dict[str, tuple[Located, RoomConfig]] = {}
        self.types: dict[str, tuple[Located, TypeConfig]] = {}
        self.services: dict[str, tuple[Located, ServiceConfig]] = {}
        self.workers: dict[str, tuple[Located, WorkerConfig]] = {}
        self.hooks: list[tuple[Located, str, str]] = []
        self.routes: list[tuple[Located, RouteConfig]] = []
        self.routers: list[tuple[Located, RouterConfig]] = []
        self.seen: set[Path] = set()
        self.broken: set[tuple[str, str]] = set()

    def result(self) -> Loaded:
        return Loaded(
            self.sources[0],
            self.sources,
            self.app or AppConfig(),
            self.settings or Settings(),
            self.rooms,
            self.types,
            self.services,
            self.workers,
            self.hooks,
            self.routes,
            self.routers,
            self.broken,
        )

    def file(
        self, path: Path, display: str, includer: Located | None, chain: tuple[Path, ...]
    ) -> None:
        try:
            resolved = path.resolve()
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as ex:
            where, key = includer or (Source(display, None, {}), ())
            found = ex.strerror if isinstance(ex, OSError) and ex.strerror else str(ex)
            self.report.add(where, key, f"a readable UTF-8 TOML file {display!r}", found)
            if includer is None:
                # NOTE: the root file is still a source (deleted under --reload:
                #   the reloader keeps watching it and reloads it once it is back).
                self.sources.append(Source(display, path, {}))
            return
        if resolved in chain:
            where, key = includer or (Source(display, None, {}), ())
            cycle = " -> ".join(str(p.name) for p in (*chain, resolved))
            self.report.add(where, key, "includes without a cycle", cycle)
            return
        if resolved in self.seen:
            return  # included twice along different branches: merge it once
        self.seen.add(resolved)
        source = Source(display, path, {})
        self.document(text, source, path.parent, root=includer is None, chain=(*chain, resolved))

    def document(
        self, text: str, source: Source, base: Path, *, root: bool, chain: tuple[Path, ...] = ()
    ) -> None:
        report = self.report
        raw, line, message = parse(text)
        if raw is None:
            report.issues.append(Issue(source.name, "", line, "valid TOML", str(message)))
            self.sources.append(source)
            return
        source = attrs.evolve(source, lines=key_lines(text))
        self.sources.append(source)
        raw, touched, problems = interpolate(raw, self.environ)
        _settings_off(raw)
        for problem in problems:
            report.add(source, problem.path, problem.expected, problem.found)
        config = self.checked(raw, source, frozenset(touched))
        if problems:
            return
        self.merge(config, source, root)
        for index, include in enumerate(config.include):
            target = Path(include)
            if not target.is_absolute():
                target = base / target
            display = (
                include
                if source.path is None
                else os.path.join(os.path.dirname(source.name), include)
            )
            self.file(target, display, (source, ("include", index)), chain)

    def checked(
        self, raw: dict[str, Any], source: Source, lenient: frozenset[KeyPath]
    ) -> ConfigFile:
        """Check ``raw`` item by item; keep what is valid so later stages report too.

        A broken route or router is left out; a broken type, service or
        worker keeps its name (so references to it are not reported again);
        a broken table (settings, app, hooks) falls back to its defaults.
        """
        fields = {f.encode_name: f for f in msgspec.structs.fields(ConfigFile)}
        hints = typing.get_type_hints(ConfigFile, include_extras=True)
        kept: dict[str, Any] = {}
        for key, value in raw.items():
            field = fields.get(key)
            if (
                field is None
                or not isinstance(value, list | dict)
                or key in ("include", "app", "settings", "hooks")
            ):
                cleaned, found = check({key: value}, ConfigFile, (), lenient)
                self.report_all(source, found)
                if not found:
                    kept[key] = cleaned[key]
                continue
            item_type = typing.get_args(hints[field.name])[-1]
            if isinstance(value, list):
                items: list[Any] = []
                for index, item in enumerate(value):
                    cleaned, found = check(item, item_type, (key, index), lenient)
                    self.report_all(source, found)
                    if not found:
                        items.append(cleaned)
                kept[key] = items
            else:
                table: dict[str, Any] = {}
                for name, item in value.items():
                    cleaned, found = check(item, item_type, (key, name), lenient)
                    self.report_all(source, found)
                    if found:
                        self.broken.add((key, name))
                    else:
                        table[name] = cleaned
                kept[key] = table
        try:
            return msgspec.convert(kept, ConfigFile)
        except msgspec.ValidationError as ex:  # NOTE: check() should have caught it
            self.report.add(source, (), "a valid routes.toml", str(ex))
            return ConfigFile()

    def report_all(self, source: Source, problems: list[Any]) -> None:
        for problem in problems:
            self.report.add(source, problem.path, problem.expected, problem.found)

    def merge(self, config: ConfigFile, source: Source, root: bool) -> None:
        report = self.report
        for key in ("app", "settings"):
            if getattr(config, key) is not None and not root:
                report.add(
                    source, (key,), f"[{key}] in the root file only", f"[{key}] in an included file"
                )
        if root:
            self.app = config.app
            self.settings = config.settings
        for section in ("rooms", "types", "services", "workers"):
            merged: dict[str, Any] = getattr(self, section)
            for name, item in getattr(config, section).items():
                if name in merged:
                    (other, other_path), _ = merged[name]
                    line = line_of(other.lines, other_path)
                    at = other.name if line is None else f"{other.name}:{line}"
                    report.add(
                        source,
                        (section, name),
                        f"a {section[:-1]} name used once",
                        f"{format_path((section, name))} declared already at {at}",
                    )
                    continue
                merged[name] = ((source, (section, name)), item)
        self.hooks.extend(_hooks(config.hooks, source, ("hooks",)))
        for index, route in enumerate(config.routes):
            self.routes.append(((source, ("routes", index)), route))
        for index, router in enumerate(config.routers):
            self.routers.append(((source, ("routers", index)), router))


def _hooks(
    hooks: HooksConfig | None, source: Source, path: KeyPath
) -> list[tuple[Located, str, str]]:
    """Flatten a hooks table into (where, event, import path)."""
    if hooks is None:
        return []
    out: list[tuple[Located, str, str]] = []
    for field in msgspec.structs.fields(hooks):
        value = getattr(hooks, field.name)
        if isinstance(value, str):
            out.append(((source, (*path, field.name)), field.name, value))
        else:
            out.extend(
                ((source, (*path, field.name, i)), field.name, v) for i, v in enumerate(value)
            )
    return out


router_hooks = _hooks


def _settings_off(raw: dict[str, Any]) -> None:
    """``[settings]`` keys that accept none take ``false`` for it (TOML has no null)."""
    settings = raw.get("settings")
    if not isinstance(settings, dict):
        return
    hints = typing.get_type_hints(Settings)
    for key, value in settings.items():
        tp = hints.get(key)
        if (
            value is False
            and tp is not None
            and type(None) in typing.get_args(tp)
            and bool not in typing.get_args(tp)
        ):
            settings[key] = None
