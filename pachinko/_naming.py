"""Names: the ``on_{tag}`` rule for convention-based handlers, qualified names."""

from __future__ import annotations

import functools
import re

__all__ = ["handler_name", "qualified_name", "snake_case"]

# NOTE: three passes, in this order: split "HTTPRequest" before the last
#   capital of an acronym, split "sendMessage" at a lower/digit→upper change,
#   then fold every run of non-alphanumerics (".", "-", " ", "__") into one "_".
_ACRONYM_END = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_HUMP = re.compile(r"([a-z0-9])([A-Z])")
_NON_ALNUM = re.compile(r"[^0-9a-zA-Z]+")


@functools.lru_cache(maxsize=1024)
def snake_case(tag: str) -> str:
    """Return the snake_case form of a message tag.

    ``sendMessage`` → ``send_message``, ``HTTPRequest`` → ``http_request``,
    ``chat.message`` → ``chat_message``. Leading and trailing separators are
    dropped, so the result is empty for a tag without letters or digits.
    """
    text = _ACRONYM_END.sub(r"\1_\2", tag)
    text = _CAMEL_HUMP.sub(r"\1_\2", text)
    return _NON_ALNUM.sub("_", text).strip("_").lower()


def handler_name(tag: str) -> str:
    """Return the conventional handler method name for ``tag`` (``on_...``)."""
    return "on_" + snake_case(tag)


def qualified_name(obj: object) -> str:
    """Return ``module:qualname`` of ``obj``, as tools print a handler or a class.

    Without a qualname, its repr; without a module (or for a builtin), the
    qualname alone.
    """
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or repr(obj)
    return f"{module}:{name}" if module and module != "builtins" else name
