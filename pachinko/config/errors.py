"""ConfigFileError: every problem of a configuration, reported at once."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ..errors import ConfigError

__all__ = ["ConfigFileError", "Issue"]


@attrs.frozen
class Issue:
    """One problem in a configuration file.

    Attributes:
        file: The file, as given (or as found through ``include``).
        path: The key path as written, e.g. ``routes[2].handlers.join``
            (empty for a problem with the file as a whole).
        line: The 1-based line where the key is written, if known.
        expected: What was expected there.
        found: What was found instead.
    """

    file: str
    path: str
    line: int | None
    expected: str
    found: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} expected {self.expected}, found {self.found}"


class ConfigFileError(ConfigError):
    """Raised when a routes.toml file (or a file it includes) is invalid.

    ``issues`` lists every problem found; ``str()`` shows them all.
    """

    def __init__(self, issues: Iterable[Issue]) -> None:
        # NOTE: sorted by file then line: read top to bottom like the file.
        ordered = list(issues)
        files = list(dict.fromkeys(issue.file for issue in ordered))
        ordered.sort(key=lambda i: (files.index(i.file), i.line or 0))
        self.issues: tuple[Issue, ...] = tuple(ordered)
        super().__init__(self._render())

    def _render(self) -> str:
        files = list(dict.fromkeys(issue.file for issue in self.issues))
        count = len(self.issues)
        head = f"{count} error{'s' if count != 1 else ''} in {', '.join(files)}"
        return head + "".join(f"\n  {issue}" for issue in self.issues)
