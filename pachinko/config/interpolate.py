"""``${VAR}`` and ``${VAR:-default}`` in TOML string values.

Only string values are interpolated (never keys). ``$${`` writes a literal
``${``. A string that was interpolated may then be converted to the type its
key expects (``max_connections = "${MAX_CONN:-1000}"`` gives an int).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ._toml import KeyPath

__all__ = ["interpolate"]

_TOKEN: Final = re.compile(
    r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<sep>:-(?P<default>[^}]*))?\}|\$\{"
)


class InterpolationProblem:
    """A variable that could not be substituted (collected into a ConfigError)."""

    __slots__ = ("expected", "found", "path")

    def __init__(self, path: KeyPath, expected: str, found: str) -> None:
        self.path = path
        self.expected = expected
        self.found = found


def interpolate(
    document: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], set[KeyPath], list[InterpolationProblem]]:
    """Substitute variables in every string of ``document``.

    Returns:
        The new document, the key paths whose value was interpolated, and the
        problems found (an unset variable without default, a malformed ``${``).
    """
    touched: set[KeyPath] = set()
    problems: list[InterpolationProblem] = []

    def walk(value: Any, path: KeyPath) -> Any:
        if isinstance(value, str):
            return substitute(value, path)
        if isinstance(value, dict):
            return {key: walk(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, (*path, index)) for index, item in enumerate(value)]
        return value

    def substitute(text: str, path: KeyPath) -> str:
        if "$" not in text:
            return text
        changed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal changed
            token = match.group(0)
            if token == "$${":
                changed = True
                return "${"
            name = match.group("name")
            if name is None:
                problems.append(
                    InterpolationProblem(
                        path, "${NAME} or ${NAME:-default}", f"an unterminated '${{' in {text!r}"
                    )
                )
                return token
            changed = True
            value = environ.get(name)
            # NOTE: as in the shell, ${NAME:-default} also takes the default when
            #   NAME is set but empty.
            if match.group("sep") is not None and not value:
                return match.group("default") or ""
            if value is not None:
                return value
            problems.append(
                InterpolationProblem(
                    path,
                    f"environment variable {name} to be set (or a default: ${{{name}:-...}})",
                    "it is not set",
                )
            )
            return ""

        result = _TOKEN.sub(replace, text)
        if changed:
            touched.add(path)
        return result

    return walk(document, ()), touched, problems
