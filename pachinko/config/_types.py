"""Declared ``[types]`` into Structs, and the payload types routes name.

The Structs themselves are built by :mod:`.schema`; this module places its
problems in the file that declared each type, and looks up the type a
handler's ``payload`` or a route's ``sends`` names.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._checks import Checker, object_kind
from ._toml import KeyPath
from .imports import is_import_path
from .loader import Located, Source
from .schema import compile_types

__all__ = ["declared_structs", "payload_struct"]


def declared_structs(checker: Checker) -> dict[str, Any]:
    """Return a Struct for every declared type that checks out, by name."""
    loaded = checker.loaded
    by_name: dict[str, tuple[KeyPath, Any]] = {}
    sources: dict[str, Source] = {}
    for name, ((source, path), decl) in loaded.types.items():
        if not name.isidentifier():
            checker.problem((source, path), "a type name that is a Python identifier", repr(name))
            continue
        by_name[name] = (path, decl)
        sources[name] = source
    structs, problems = compile_types(by_name, checker.importer)
    for problem in problems:
        # a problem's path starts with the type's own path: find its file
        name = str(problem.path[1]) if len(problem.path) > 1 else ""
        source = sources.get(name, loaded.root)
        if problem.failure is not None:
            checker.import_failed((source, problem.path), problem.failure)
        else:
            checker.report.add(source, problem.path, problem.expected, problem.found)
    return structs


def payload_struct(checker: Checker, structs: dict[str, Any], where: Located, name: str) -> Any:
    """Return the Struct ``name`` names (a declared type or an import path), else ``None``."""
    if name in structs:
        return structs[name]
    loaded = checker.loaded
    if name in loaded.types or ("types", name) in loaded.broken:
        return None  # the type has errors, reported where it is declared
    if is_import_path(name):
        return _imported_struct(checker, where, name)
    declared = [*loaded.types, *(n for k, n in loaded.broken if k == "types")]
    known = ", ".join(declared) or "none declared"
    checker.problem(where, f"a declared type ({known}) or an import path to a Struct", repr(name))
    return None


def _imported_struct(checker: Checker, where: Located, name: str) -> Any:
    value = checker.imported(where, name)
    if value is None:
        return None
    if isinstance(value, type) and issubclass(value, msgspec.Struct):
        return value
    checker.problem(where, "a msgspec.Struct subclass", f"{object_kind(value)} {name}")
    return None
