"""Import what a routes.toml names and check it, collecting every problem.

The compiler's parts (:mod:`._plans`, :mod:`._types`, :mod:`._routes`,
:mod:`._resources`) share one :class:`Checker` per compilation: one importer
(a module that fails to import runs once and is reported once, at the first
key naming it) and one report.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import attrs

from ..hooks import HOOK_SIGNATURES
from ._toml import KeyPath, format_path, line_of
from .imports import Importer, ImportFailure
from .loader import Loaded, Located, Report

__all__ = ["Call", "Checker", "object_kind", "parameter_names"]


@attrs.frozen
class Call:
    """How pachinko will call a configured function: what it is checked against.

    Attributes:
        text: The call as error messages show it: ``(resource, ws, payload)``.
        arity: Positional arguments passed.
        is_async: Whether it must be an async function.
        kwargs: Keyword arguments passed too.
    """

    text: str
    arity: int
    is_async: bool = True
    kwargs: tuple[str, ...] = ()

    @classmethod
    def of_hook(cls, event: str) -> Call:
        """Return the call of a hook of ``event``."""
        signature = HOOK_SIGNATURES[event]
        return cls(signature.call, len(signature.params))


class Checker:
    """Resolves import paths and checks what they name; problems go to the report."""

    def __init__(self, loaded: Loaded, report: Report) -> None:
        self.loaded = loaded
        self.report = report
        self.importer = Importer(self.shadowed)
        self._shadows: dict[str, ImportFailure | None] = {}
        #: Modules that raised while importing: the failure, every key naming them.
        self._broken_modules: dict[str, tuple[ImportFailure, list[Located]]] = {}

    def problem(
        self,
        where: Located,
        expected: str,
        found: str,
        cause: BaseException | None = None,
        extra: KeyPath = (),
    ) -> None:
        """Report a problem at ``where`` (and the keys ``extra`` below it)."""
        source, path = where
        self.report.add(source, (*path, *extra), expected, found, cause)

    def imported(self, where: Located, path: str) -> Any:
        """Return what ``path`` names, or ``None`` (reported) if it cannot be imported."""
        try:
            return self.importer(path)
        except ImportFailure as ex:
            self.import_failed(where, ex)
            return None

    def import_failed(self, where: Located, ex: ImportFailure) -> None:
        """Report ``ex`` (a module that raised: once, by :meth:`report_broken_modules`)."""
        if ex.module is None:
            self.problem(where, ex.expected, ex.found, ex.cause)
        else:
            self._broken_modules.setdefault(ex.module, (ex, []))[1].append(where)

    def function_for(self, where: Located, path: str, call: Call) -> Any:
        """Return the function ``path`` names if it can be called as ``call``, else ``None``."""
        fn = self.imported(where, path)
        if fn is None:
            return None
        if call.is_async and not inspect.iscoroutinefunction(fn):
            kind = "a regular function" if inspect.isfunction(fn) else object_kind(fn)
            self.problem(where, f"an async function {call.text}", f"{kind} {path}")
            return None
        if not callable(fn):
            self.problem(where, f"a function {call.text}", f"{object_kind(fn)} {path}")
            return None
        try:
            inspect.signature(fn).bind(*([None] * call.arity), **dict.fromkeys(call.kwargs))
        except (TypeError, ValueError):
            found = f"{path}{_signature_text(fn)}"
            self.problem(where, f"a function that can be called as {call.text}", found)
            return None
        return fn

    def check_arguments(
        self,
        where: Located,
        key: str,
        path: str,
        target: Any,
        args: Any,
        kwargs: Any,
        provided: set[str],
        what: str,
    ) -> None:
        """Report now a call of ``target`` that would fail at startup or connect time.

        ``provided`` names the parameters pachinko fills itself (``what``
        says from where: services, injected values).
        """
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError as ex:
            self.problem(where, f"arguments that {path} accepts", str(ex), extra=(key,))
            return
        missing = [
            name
            for name, param in signature.parameters.items()
            if name not in bound.arguments
            and name not in provided
            and param.default is inspect.Parameter.empty
            and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        ]
        if missing:
            names = ", ".join(sorted(provided)) or "none"
            self.problem(
                where,
                f"a value for every parameter of {path} (from args, kwargs or {what}: {names})",
                f"no value for {', '.join(map(repr, missing))}",
                extra=(key,),
            )

    def shadowed(self, path: str) -> ImportFailure | None:
        """The failure to report when a module next to the root file is not the one imported.

        The file's folder is last on ``sys.path``: an installed package (or a
        module another app already imported) of the same name wins, and
        importing it instead would fail obscurely or run the wrong code.
        """
        top = path.partition(":")[0].partition(".")[0]
        if top not in self._shadows:
            self._shadows[top] = self._shadow_failure(top)
        return self._shadows[top]

    def _shadow_failure(self, top: str) -> ImportFailure | None:
        root = self.loaded.root.path
        if root is None or not top.isidentifier():
            return None
        local = _local_module(root.resolve().parent, top)
        if local is None:
            return None
        origin = _origin(top)
        if origin is None or origin == local.resolve():
            return None
        name = local.name if local.name != "__init__.py" else f"{top}/"
        return ImportFailure(
            f"module {top!r} to be {name} next to {root.name}",
            f"{top!r} is {origin}, which comes first on sys.path or was imported already "
            f"(rename the local {name})",
            module=top,
        )

    def report_broken_modules(self) -> None:
        """Report one problem per module that failed to import, at the first key naming it."""
        order = {source.name: index for index, source in enumerate(self.loaded.sources)}
        for ex, places in self._broken_modules.values():
            places.sort(key=lambda p: (order.get(p[0].name, 0), line_of(p[0].lines, p[1]) or 0))
            first, *others = places
            found = ex.found
            if others:
                head, newline, trace = found.partition("\n")
                found = f"{head.rstrip(':')} (also named by {_places(others)})"
                found += f":{newline}{trace}" if newline else ""
            self.problem(first, ex.expected, found, ex.cause)


def object_kind(value: Any) -> str:
    """Describe a Python object for a message: ``a class``, ``a function``, ``a dict``."""
    if isinstance(value, type):
        return "a class"
    if inspect.ismodule(value):
        return "a module"
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return "a function"
    return f"a {type(value).__name__}"


def parameter_names(target: Any) -> tuple[str, ...]:
    """Return the names of ``target``'s parameters (none if it has no signature)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return ()
    return tuple(signature.parameters)


def _signature_text(fn: Any) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _places(places: list[Located]) -> str:
    """``routes[1].handler (app.toml:7), ...``: the other keys naming a module."""
    out = []
    for source, path in places:
        line = line_of(source.lines, path)
        at = f"{source.name}:{line}" if line is not None else source.name
        out.append(f"{format_path(path)} ({at})")
    return ", ".join(out)


def _local_module(folder: Path, top: str) -> Path | None:
    """The module file (or package ``__init__``) named ``top`` in ``folder``, if any."""
    candidates = (folder / f"{top}.py", folder / top / "__init__.py")
    return next((p for p in candidates if p.is_file()), None)


def _origin(top: str) -> Path | None:
    """Where the top-level module ``top`` is (or would be) imported from."""
    module = sys.modules.get(top)
    try:
        spec = module.__spec__ if module is not None else importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin is not None and spec.has_location:
        return Path(spec.origin).resolve()
    locations = list(spec.submodule_search_locations or ())
    return Path(locations[0]).resolve() if locations else None
