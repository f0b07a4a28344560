"""Parse a TOML document and find the line of every key path in it.

``tomllib`` gives values but no positions. :func:`key_lines` makes one pass
over the (already valid) text and records, for every key path, the line
where it is written: table headers, dotted keys, inline tables and array
elements included. Errors then point at the line the user wrote.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Final

__all__ = ["KeyPath", "format_path", "key_lines", "line_of", "parse"]

KeyPath = tuple[str | int, ...]

_BARE: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POS: Final = re.compile(r" \(at line (\d+), column (\d+)\)$")


def format_path(path: KeyPath) -> str:
    """Write a key path as in the file: ``routes[2].handlers.join``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        out += f".{text}" if out else text
    return out


def parse(text: str) -> tuple[dict[str, Any] | None, int | None, str | None]:
    """Parse ``text``; return ``(document, None, None)`` or ``(None, line, message)``."""
    try:
        return tomllib.loads(text), None, None
    except tomllib.TOMLDecodeError as ex:
        message = str(ex)
        found = _TOML_POS.search(message)
        line = int(found.group(1)) if found else None
        return None, line, _TOML_POS.sub("", message)


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest written ancestor."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path of a valid TOML document to its (1-based) line."""
    scanner = _Scanner(text)
    scanner.document()
    return scanner.lines


class _Scanner:
    """A structural TOML reader: keys and nesting only, values are skipped."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self.arrays: dict[KeyPath, int] = {}  # array-of-tables path -> last index

    # -- low level ------------------------------------------------------------

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def skip_space(self, newlines: bool) -> None:
        """Skip blanks and comments (and newlines if asked)."""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.advance()
            elif ch == "#":
                end = self.text.find("\n", self.pos)
                self.advance((len(self.text) if end < 0 else end) - self.pos)
            else:
                return

    def string(self) -> str:
        """Read a string at the cursor; return its (approximate) value."""
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                end = self.pos + 3
                while True:
                    end = self.text.find(quote, end)
                    if quote == '"""' and _escaped(self.text, end):
                        end += 1
                        continue
                    break
                while self.text[end + 3 : end + 4] == quote[0]:  # up to 2 quotes may close it
                    end += 1
                value = self.text[self.pos + 3 : end]
                self.advance(end + 3 - self.pos)
                return value
        quote = self.peek()
        end = self.pos + 1
        while True:
            end = self.text.find(quote, end)
            if quote == '"' and _escaped(self.text, end):
                end += 1
                continue
            break
        raw = self.text[self.pos + 1 : end]
        self.advance(end + 1 - self.pos)
        if quote == '"' and "\\" in raw:  # PERF: only escapes need tomllib
            try:
                parsed: str = tomllib.loads(f'k = "{raw}"')["k"]
            except tomllib.TOMLDecodeError:
                return raw
            return parsed
        return raw

    def key(self) -> list[str]:
        """Read a (dotted) key."""
        parts: list[str] = []
        while True:
            self.skip_space(False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                found = _BARE.match(self.text, self.pos)
                end = found.end() if found else self.pos + 1
                parts.append(self.text[self.pos : end])
                self.advance(end - self.pos)
            self.skip_space(False)
            if self.peek() != ".":
                return parts
            self.advance()

    def mark(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)

    def resolve(self, keys: list[str]) -> KeyPath:
        """Turn header keys into a path, descending into the last array elements."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            if path in self.arrays:
                path = (*path, self.arrays[path])
        return path

    # -- grammar ----------------------------------------------------------------

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_space(True)
            if self.pos >= len(self.text):
                return
            line = self.line
            if self.peek(2) == "[[":
                self.advance(2)
                keys = self.key()
                self.advance(2)
                parent = self.resolve(keys[:-1])
                array = (*parent, keys[-1])
                index = self.arrays.get(array, -1) + 1
                self.arrays[array] = index
                table = (*array, index)
                self.mark(array, line)
                self.mark(table, line)
            elif self.peek() == "[":
                self.advance()
                keys = self.key()
                self.advance()
                table = self.resolve(keys)
                for end in range(1, len(table) + 1):
                    self.mark(table[:end], line)
            else:
                self.key_value(table)

    def key_value(self, base: KeyPath) -> None:
        line = self.line
        path = base
        for part in self.key():
            path = (*path, part)
            self.mark(path, line)
        self.skip_space(False)
        self.advance()  # '='
        self.skip_space(False)
        self.value(path)

    def value(self, path: KeyPath) -> None:
        ch = self.peek()
        if ch in ('"', "'"):
            self.string()
        elif ch == "{":
            self.advance()
            while True:
                self.skip_space(True)
                if self.peek() == "}":
                    self.advance()
                    return
                if self.peek() == ",":
                    self.advance()
                    continue
                self.key_value(path)
        elif ch == "[":
            self.advance()
            index = 0
            while True:
                self.skip_space(True)
                if self.peek() == "]":
                    self.advance()
                    return
                if self.peek() == ",":
                    self.advance()
                    continue
                element = (*path, index)
                self.mark(element, self.line)
                self.value(element)
                index += 1
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}\n#":
                self.advance()


def _escaped(text: str, index: int) -> bool:
    """Whether the character at ``index`` is preceded by an odd run of backslashes."""
    count = 0
    while index - 1 - count >= 0 and text[index - 1 - count] == "\\":
        count += 1
    return count % 2 == 1
