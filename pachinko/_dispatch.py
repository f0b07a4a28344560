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
from msgspec import UNSET

from ._naming import handler_name
from ._wire import ReplyEncoder
from .errors import HandlerDefinitionError

__all__ = ["DispatchTable", "HandlerSpec", "MessageError", "handles_message"]

Handler = Callable[[Any, Any, Any], Awaitable[Any]]

#: What the serve loop hands a handler, per decoded type.
AS_DECODED: Final = 0  # the decoded Struct itself (flat shape)
ENVELOPE: Final = 1  # the decoded envelope's ``payload``
RAW_DICT: Final = 2  # the message as a dict (flat shape, untyped handler)
#: Added to the kind of a handler that declares a reply (a request): the
#: decoded message carries the correlation id in :data:`ID_ATTR`.
REQUEST: Final = 4
#: Added too when the request's decoded Struct is frozen (the id is cleared by
#: ``msgspec.structs.force_setattr``).
FROZEN: Final = 8

#: The attribute of a decoded request that holds its correlation id (``UNSET``
#: when the message has none); on the wire it is the resource's ``id_field``.
ID_ATTR: Final = "pachinko_id"

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
        reply_type: The type of the handler's reply (its return annotation,
            or ``reply=``), ``None`` when the handler declares none.
    """

    tag: str
    method_name: str
    payload_type: type[msgspec.Struct] | None
    strict: bool
    reply_type: Any = None

    @property
    def is_request(self) -> bool:
        """Whether the message type is a request: its handler's return value is the reply."""
        return self.reply_type is not None


class MessageError:
    """Why an inbound message could not be dispatched.

    Attributes:
        reason: Machine-readable reason: ``invalid_json``, ``invalid_message``,
            ``unknown_type``, ``validation_error``, ``bad_id``, ``unavailable``
            or ``handler_error``.
        detail: Human-readable explanation (msgspec's message for validation).
        path: JSON path of the offending value (``$.payload.room``), if any.
        raw: The message as received.
        id: The correlation id of the message (a str or int), or ``None``
            when it carried none (or the resource declares no replies).
    """

    __slots__ = ("detail", "id", "path", "raw", "reason")

    def __init__(
        self,
        reason: str,
        detail: str,
        path: str | None,
        raw: str,
        id: str | int | None = None,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.path = path
        self.raw = raw
        self.id = id

    def to_message(
        self, tag_field: str = "type", wire: str = "flat", id_field: str = "id"
    ) -> dict[str, Any]:
        """Return the error reply sent to the client, in the resource's wire shape.

        Flat: ``{"type": "error", "reason": ..., "detail": ..., "path": ...}``;
        envelope: ``{"type": "error", "payload": {"reason": ..., ...}}``. When
        the message carried a correlation id, the reply carries it in
        ``id_field``, next to the tag.
        """
        body = {"reason": self.reason, "detail": self.detail, "path": self.path}
        head: dict[str, Any] = {tag_field: "error"}
        if self.id is not None:
            head[id_field] = self.id
        if wire == "envelope":
            head["payload"] = body
            return head
        head.update(body)
        return head

    def __repr__(self) -> str:
        rid = "" if self.id is None else f", id={self.id!r}"
        return f"MessageError({self.reason!r}, {self.detail!r}, path={self.path!r}{rid})"


def handles_message(
    tag: str, *, strict: bool = True, reply: Any = None
) -> Callable[[Handler], Handler]:
    """Register the decorated method as the handler of message type ``tag``.

    The method is called as ``await handler(self, ws, payload)``. If the
    ``payload`` parameter is annotated with a :class:`msgspec.Struct`, the
    payload is validated and decoded into it; otherwise the handler receives
    the raw JSON value. The decorator wins over the ``on_{tag}`` convention.

    A handler that declares a reply (``reply=`` or a return annotation such
    as ``-> BidAccepted``) makes ``tag`` a request: the message may carry a
    correlation id, and the handler's return value is sent as the reply,
    with that id.

    Args:
        tag: The message type (value of the resource's tag field).
        strict: Reject unknown fields at every depth (default ``True``).
        reply: The reply type (wins over the return annotation).

    Raises:
        HandlerDefinitionError: The method is not ``async`` or cannot be
            called with ``(self, ws, payload)``.
    """
    if not isinstance(tag, str) or not tag:
        raise HandlerDefinitionError(f"handles_message(): tag must be a non-empty str, got {tag!r}")

    def decorate(fn: Handler) -> Handler:
        check_handler(fn, f"@handles_message({tag!r}) on {_qualname(fn)}")
        marks = (*getattr(fn, MARK, ()), (tag, strict, reply))
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
        by_type: Decoded type → (handler, AS_DECODED | ENVELOPE | RAW_DICT,
            plus REQUEST for a handler that declares a reply).
        specs: Tag → :class:`HandlerSpec`, for introspection and docs.
        by_tag: Tag → (handler, per-tag decoder or None, is a request) for the
            slow path.
        by_name: Handler name → (handler, decoder or None, is a request), for
            tags not known ahead (``on_{snake_case(tag)}`` methods).
        wire: ``"flat"`` or ``"envelope"``.
        tag_field: The field holding the message type.
        id_field: The field holding a correlation id.
        requests: Whether any handler declares a reply (only then is
            ``id_field`` read at all).
        reply: Encodes a handler's return value as the reply with its id.
    """

    decoder: msgspec.json.Decoder[Any] | None
    by_type: dict[type, tuple[Handler, int]]
    specs: dict[str, HandlerSpec]
    by_tag: dict[str, tuple[Handler, msgspec.json.Decoder[Any] | None, bool]]
    by_name: dict[str, tuple[Handler, msgspec.json.Decoder[Any] | None, bool]]
    wire: str
    tag_field: str
    id_field: str = "id"
    requests: bool = False
    reply: ReplyEncoder | None = None

    def dispatch_slow(self, raw: str) -> tuple[Handler, Any, Any] | MessageError:
        """Classify a message the fast decoder rejected (or decode without one).

        Returns the handler, the payload and the correlation id if the message
        is valid after all (a convention handler for a tag that was not known
        ahead), else a :class:`MessageError`. The id is ``None`` when the
        handler declares no reply, ``msgspec.UNSET`` for a request without one.
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
        rid: Any = None
        if self.requests and self.id_field in obj:
            rid = obj[self.id_field]
            if type(rid) is not str and type(rid) is not int:
                return MessageError(
                    "bad_id",
                    f"Expected `str | int`, got {_json_kind(rid)}",
                    f"$.{self.id_field}",
                    raw,
                )
        if tf not in obj:
            return MessageError(
                "invalid_message", f"Object missing required field `{tf}`", f"$.{tf}", raw, rid
            )
        tag = obj[tf]
        if not isinstance(tag, str):
            return MessageError(
                "invalid_message", f"Expected `str`, got {_json_kind(tag)}", f"$.{tf}", raw, rid
            )
        entry = self.by_tag.get(tag) or self.by_name.get(handler_name(tag))
        if entry is None:
            return MessageError(
                "unknown_type", f"Unknown message type {tag!r}", f"$.{tf}", raw, rid
            )
        fn, decoder, request = entry
        if self.wire == "envelope":
            extra = set(obj) - {tf, "payload"}
            if request:
                extra.discard(self.id_field)
            if extra and self.specs.get(tag, _LENIENT).strict:
                return MessageError(
                    "validation_error",
                    f"Object contains unknown field `{sorted(extra)[0]}`",
                    "$",
                    raw,
                    rid,
                )
        if decoder is None:
            payload = obj.get("payload") if self.wire == "envelope" else obj
            return fn, payload, (UNSET if rid is None else rid) if request else None
        try:
            decoded = decoder.decode(raw)
        except msgspec.ValidationError as ex:
            detail, path = _split_msgspec_error(str(ex))
            return MessageError("validation_error", detail, path, raw, rid)
        except RecursionError:
            return MessageError("invalid_json", TOO_DEEP, None, raw, rid)
        if self.wire == "envelope":
            payload = decoded.payload
        else:
            payload = decoded
            if request and rid is not None:
                # the id is the message's, not the payload's: the handler's Struct
                # never carries it on (re-encoding it would leak the id)
                msgspec.structs.force_setattr(decoded, ID_ATTR, UNSET)
        return fn, payload, (UNSET if rid is None else rid) if request else None


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
