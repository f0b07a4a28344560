"""Resolve ``module:attribute`` import paths, failing precisely.

Four distinct failures, each with its own message: the path is malformed;
the module (or one of its packages) does not exist; the module has no such
attribute; or the user's own module raised while being imported (its
ImportError, SyntaxError or any other exception is kept unchanged, with its
traceback, as the failure's ``cause``).
"""

from __future__ import annotations

import importlib
import re
import traceback
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ImportFailure", "Importer", "import_path", "is_import_path"]

_PATH: Final = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


class ImportFailure(Exception):
    """An import path could not be resolved (collected into a ConfigError).

    Attributes:
        expected: What a valid path would have given.
        found: What happened instead.
        cause: The user's own exception, when their module failed to import.
        module: That module's name (with ``cause``).
    """

    def __init__(
        self,
        expected: str,
        found: str,
        cause: BaseException | None = None,
        module: str | None = None,
    ) -> None:
        super().__init__(f"expected {expected}, found {found}")
        self.expected = expected
        self.found = found
        self.cause = cause
        self.module = module


class Importer:
    """:func:`import_path` that runs a failing module once per configuration.

    NOTE: Python forgets a module whose import raised, so every path naming
    it would run it (and fail) again: its failure is kept and raised again.
    """

    def __init__(self, check: Callable[[str], ImportFailure | None] | None = None) -> None:
        self.failed: dict[str, ImportFailure] = {}
        #: Called first with each path; a failure it returns is raised instead.
        self.check = check

    def __call__(self, path: str) -> Any:
        """Like :func:`import_path`."""
        module = path.partition(":")[0] if isinstance(path, str) else ""
        known = self.failed.get(module)
        if known is not None:
            raise known
        refused = self.check(path) if self.check is not None and is_import_path(path) else None
        if refused is not None:
            raise refused
        try:
            return import_path(path)
        except ImportFailure as ex:
            if ex.module is not None:
                self.failed[ex.module] = ex
            raise


def is_import_path(text: str) -> bool:
    """Whether ``text`` looks like ``package.module:attribute``."""
    return _PATH.fullmatch(text) is not None


def import_path(path: str) -> Any:
    """Import ``package.module:attribute.sub`` and return the attribute.

    Raises:
        ImportFailure: With one of the four messages described above.
    """
    if not isinstance(path, str) or not is_import_path(path):
        raise ImportFailure("an import path 'package.module:attribute'", repr(path))
    module_name, _, attrs = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as ex:
        # NOTE: only a missing module *on the path itself* (or one of its
        #   packages) is "not found"; a module the user's code imports is their error.
        missing = ex.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise ImportFailure(
                f"an importable module {module_name!r}", f"no module named {missing!r}"
            ) from None
        raise _user_error(module_name, ex) from ex
    except Exception as ex:  # the user's module raised while importing: keep it whole
        raise _user_error(module_name, ex) from ex
    value: Any = module
    walked = module_name
    for attr in attrs.split("."):
        try:
            value = getattr(value, attr)
        except AttributeError:
            raise ImportFailure(
                f"an attribute {attr!r} in {walked!r}", f"{walked!r} has no attribute {attr!r}"
            ) from None
        walked = f"{walked}:{attr}" if walked == module_name else f"{walked}.{attr}"
    return value


def _user_error(module_name: str, ex: BaseException) -> ImportFailure:
    # NOTE: the import machinery's frames (and ours) say nothing to the user:
    #   show the traceback from their module on, as Python would for a script.
    shown = traceback.TracebackException.from_exception(ex)
    shown.stack = traceback.StackSummary.from_list(
        [
            frame
            for frame in shown.stack
            if not (
                frame.filename.startswith("<frozen")
                or frame.filename == __file__
                or frame.filename.endswith(("importlib/__init__.py", "importlib\\__init__.py"))
            )
        ]
    )
    text = "".join(shown.format()).rstrip()
    return ImportFailure(
        f"module {module_name!r} to import cleanly",
        f"{type(ex).__name__} raised while importing it:\n{text}",
        ex,
        module_name,
    )
