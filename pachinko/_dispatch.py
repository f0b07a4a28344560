"""A resource class's dispatch: the compiled table, its errors, the handler mark.

Per message the serve loop does one ``decoder.decode(text)``, one dict lookup
by the decoded type and one await; :meth:`DispatchTable.dispatch_slow`
classifies what the fast decoder rejected. The table is compiled once, when
the class is created, by :mod:`pachinko._dispatch_build`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import msgspec

from ._naming import handler_name
from .errors import HandlerDefinitionError

__all__ = ["DispatchTable", "HandlerSpec", "MessageError", "handles_message"]

Handler = Callable[[Any, Any, Any], Awaitable[Any]]

#: What the serve loop hands a handler, per decoded type.
AS_DECODED: Final = 0  # the decoded Struct itself (flat shape)
ENVELOPE: Final = 1  # the decoded envelope's ``payload``
RAW_DICT: Final = 2  # the message as a dict (flat shape, untyped handler)

#: Resource methods that are never message handlers.
RESERVED: Final = frozenset({"on_connect", "on_disconnect", "on_unhandled", "on_error"})

MARK: Final = "__pachinko_messages__"


@attrs.frozen
class HandlerSpec:
    """One message type a resource handles.

    Attributes:
        tag: The message type, as it appears in the tag field.
        method_name: Name of the handler method on the resource class.
        payload_type: The Struct the payload is decoded into, or ``None`` when
            the handler takes the raw JSON value.
        strict: Whether unknown fields are rejected (at every depth).
    """

    tag: str
    method_name: str
    payload_type: type[msgspec.Struct] | None
    strict: bool


class MessageError:
    """Why an inbound message could not be dispatched.

    Attributes:
        reason: Machine-readable reason: ``invalid_json``, ``invalid_message``,
            ``unknown_type`` or ``validation_error``.
        detail: Human-readable explanation (msgspec's message for validation).
        path: JSON path of the offending value (``$.payload.room``), if any.
        raw: The message as received.
    """

    __slots__ = ("detail", "path", "raw", "reason")

    def __init__(self, reason: str, detail: str, path: str | None, raw: str) -> None:
        self.reason = reason
        self.detail = detail
        self.path = path
        self.raw = raw

    def to_message(self, tag_field: str = "type", wire: str = "flat") -> dict[str, Any]:
        """Return the error reply sent to the client, in the resource's wire shape.

        Flat: ``{"type": "error", "reason": ..., "detail": ..., "path": ...}``;
        envelope: ``{"type": "error", "payload": {"reason": ..., ...}}``.
        """
        body = {"reason": self.reason, "detail": self.detail, "path": self.path}
        if wire == "envelope":
            return {tag_field: "error", "payload": body}
        return {tag_field: "error", **body}

    def __repr__(self) -> str:
        return f"MessageError({self.reason!r}, {self.detail!r}, path={self.path!r})"


def handles_message(tag: str, *, strict: bool = True) -> Callable[[Handler], Handler]:
    """Register the decorated method as the handler of message type ``tag``.

    The method is called as ``await handler(self, ws, payload)``. If the
    ``payload`` parameter is annotated with a :class:`msgspec.Struct`, the
    payload is validated and decoded into it; otherwise the handler receives
    the raw JSON value. The decorator wins over the ``on_{tag}`` convention.

    Args:
        tag: The message type (value of the resource's tag field).
        strict: Reject unknown fields at every depth (default ``True``).

    Raises:
        HandlerDefinitionError: The method is not ``async`` or cannot be
            called with ``(self, ws, payload)``.
    """
    if not isinstance(tag, str) or not tag:
        raise HandlerDefinitionError(f"handles_message(): tag must be a non-empty str, got {tag!r}")

    def decorate(fn: Handler) -> Handler:
        check_handler(fn, f"@handles_message({tag!r}) on {_qualname(fn)}")
        marks = (*getattr(fn, MARK, ()), (tag, strict))
        setattr(fn, MARK, marks)
        return fn

    return decorate


def _qualname(fn: object) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def check_handler(fn: object, where: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        kind = "a regular function" if callable(fn) else type(fn).__name__
        raise HandlerDefinitionError(f"{where}: handler must be an async function, got {kind}")
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        raise HandlerDefinitionError(
            f"{where}: handler must accept (self, ws, payload), "
            f"its signature is {inspect.signature(fn)}"
        ) from None


@attrs.frozen
class DispatchTable:
    """The compiled dispatch of one resource class.

    Attributes:
        decoder: Decodes every message whose tag is known, or ``None`` when
            no tag is known ahead (convention handlers without types).
        by_type: Decoded type → (handler, AS_DECODED | ENVELOPE | RAW_DICT).
        specs: Tag → :class:`HandlerSpec`, for introspection and docs.
        by_tag: Tag → (handler, per-tag decoder or None) for the slow path.
        by_name: Handler name → (handler, decoder or None), for tags not
            known ahead (``on_{snake_case(tag)}`` methods).
    """

    decoder: msgspec.json.Decoder[Any] | None
    by_type: dict[type, tuple[Handler, int]]
    specs: dict[str, HandlerSpec]
    by_tag: dict[str, tuple[Handler, msgspec.json.Decoder[Any] | None]]
    by_name: dict[str, tuple[Handler, msgspec.json.Decoder[Any] | None]]
    wire: str
    tag_field: str

    def dispatch_slow(self, raw: str) -> tuple[Handler, Any] | MessageError:
        """Classify a message the fast decoder rejected (or decode without one).

        Returns the handler and payload if the message is valid after all
        (a convention handler for a tag that was not known ahead), else a
        :class:`MessageError`.
        """
        try:
            obj = msgspec.json.decode(raw)
        except msgspec.DecodeError as ex:
            return MessageError("invalid_json", str(ex), None, raw)
        except RecursionError:
            return MessageError("invalid_json", TOO_DEEP, None, raw)
        tf = self.tag_field
        if not isinstance(obj, dict):
            return MessageError(
                "invalid_message", f"Expected a JSON object, got {_json_kind(obj)}", "$", raw
            )
        if tf not in obj:
            return MessageError(
                "invalid_message", f"Object missing required field `{tf}`", f"$.{tf}", raw
            )
        tag = obj[tf]
        if not isinstance(tag, str):
            return MessageError(
                "invalid_message", f"Expected `str`, got {_json_kind(tag)}", f"$.{tf}", raw
            )
        entry = self.by_tag.get(tag) or self.by_name.get(handler_name(tag))
        if entry is None:
            return MessageError("unknown_type", f"Unknown message type {tag!r}", f"$.{tf}", raw)
        fn, decoder = entry
        if self.wire == "envelope":
            extra = set(obj) - {tf, "payload"}
            if extra and self.specs.get(tag, _LENIENT).strict:
                return MessageError(
                    "validation_error",
                    f"Object contains unknown field `{sorted(extra)[0]}`",
                    "$",
                    raw,
                )
        if decoder is None:
            payload = obj.get("payload") if self.wire == "envelope" else obj
            return fn, payload
        try:
            decoded = decoder.decode(raw)
        except msgspec.ValidationError as ex:
            detail, path = _split_msgspec_error(str(ex))
            return MessageError("validation_error", detail, path, raw)
        except RecursionError:
            return MessageError("invalid_json", TOO_DEEP, None, raw)
        return fn, decoded.payload if self.wire == "envelope" else decoded


#: ``detail`` of the error reply to JSON nested deeper than msgspec decodes.
#: NOTE: msgspec raises RecursionError at Python's recursion limit: about
#: 1000 levels on Python 3.11, a few thousand on 3.12, about 10000 on 3.13.
TOO_DEEP: Final = "JSON nested too deeply"

_LENIENT = HandlerSpec("", "", None, False)
_MISSING_FIELD = re.compile(r"Object missing required field `([^`]*)`")


def _json_kind(value: object) -> str:
    if value is None:
        return "`null`"
    kinds = {bool: "bool", int: "int", float: "float", str: "str", list: "array", dict: "object"}
    return f"`{kinds.get(type(value), type(value).__name__)}`"


def _split_msgspec_error(message: str) -> tuple[str, str | None]:
    """``"Expected `int`, got `str` - at `$.room`"`` → (detail, ``"$.room"``)."""
    detail, sep, path = message.rpartition(" - at `")
    if not sep:
        detail, path = message, "$"
    else:
        path = path.rstrip("`")
    missing = _MISSING_FIELD.fullmatch(detail)
    if missing:
        path = f"{path}.{missing.group(1)}"
    return detail, path
