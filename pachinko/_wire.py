"""The wire encoding: how a message becomes one WebSocket frame.

A leaf module: the resource (replies), the manager (broadcasts) and the
serve loop (error replies) encode with it, and it imports nothing of
pachinko.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import msgspec
from msgspec import UNSET

__all__ = [
    "ReplyEncoder",
    "encode",
    "encode_envelope",
    "encode_frame",
    "encode_reply",
    "encode_text",
]

_encoder = msgspec.json.Encoder()

#: ``msgspec.json.Encoder().encode``, shared: JSON bytes of any message.
encode = _encoder.encode


def encode_text(message: Any) -> str:
    """Encode a message for a text frame: ``str`` as is, anything else as JSON."""
    if isinstance(message, str):
        return message
    return encode(message).decode()


def encode_envelope(message: Any, tag_field: str) -> str:
    """Encode a message in the envelope shape: ``{tag_field: tag, "payload": {...}}``.

    A tagged Struct is wrapped: its tag names the message, its other fields
    are the payload. Anything else (a dict, a list, an untagged Struct, a
    str) is sent as given: it already is the message the app wrote.
    """
    if isinstance(message, str):
        return message
    config = getattr(type(message), "__struct_config__", None)
    if config is None or config.tag is None:
        return encode(message).decode()
    body = msgspec.to_builtins(message)
    if isinstance(body, dict):
        body.pop(config.tag_field, None)
    tag = config.tag
    return encode({tag_field: tag, "payload": body}).decode()


def encode_frame(message: Any) -> str | bytes:
    """Encode a message once for every recipient.

    ``bytes`` (or ``bytearray``/``memoryview``) become one binary frame, a
    ``str`` one text frame as is, anything else (a Struct, dict or list) one
    JSON text frame.
    """
    if isinstance(message, bytes):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    return encode_text(message)


def encode_reply(message: Any, rid: Any, wire: str, tag_field: str, id_field: str) -> str:
    """Encode a reply (or a server request) carrying the correlation id ``rid``.

    Flat: the message's JSON object with ``id_field`` added; envelope: a
    tagged Struct as ``{tag_field: tag, id_field: rid, "payload": {...}}``, a
    dict with ``id_field`` added. With ``rid`` UNSET (the request carried no
    id) the message is encoded as :meth:`~pachinko.WebSocketResource.send`
    does.

    Raises:
        TypeError: The message is not a JSON object (a Struct or a dict), or it
            has a field ``id_field`` of its own.
    """
    if rid is UNSET:
        if wire == "envelope":
            return encode_envelope(message, tag_field)
        return encode_text(message)
    if isinstance(message, dict):
        if id_field in message:
            raise TypeError(
                f"a reply with a correlation id cannot have a field {id_field!r} of its own "
                f"(got {message!r})"
            )
    elif isinstance(message, msgspec.Struct):
        config = message.__struct_config__
        if _has_field(type(message), id_field):
            raise TypeError(
                f"a reply with a correlation id cannot have a field {id_field!r} of its own: "
                f"{type(message).__qualname__} has one"
            )
        if wire == "envelope" and config.tag is not None:
            body = msgspec.to_builtins(message)
            if isinstance(body, dict):
                body.pop(config.tag_field, None)
            return encode({tag_field: config.tag, id_field: rid, "payload": body}).decode()
    else:
        raise TypeError(
            "a reply with a correlation id must be a msgspec.Struct or a dict (a JSON "
            f"object), got {type(message).__name__}"
        )
    data = encode(message)
    if data[:1] != b"{":
        raise TypeError(
            f"a reply with a correlation id must encode to a JSON object, got {data[:40]!r}"
        )
    head = b"{" + encode(id_field) + b":" + encode(rid)
    # PERF: the id is spliced in front of the encoded object: no dict copy.
    return (head + (b"}" if data == b"{}" else b"," + data[1:])).decode()


@attrs.frozen
class ReplyEncoder:
    """:func:`encode_reply` for one resource class, fast for its declared reply types.

    Built once per class. A flat resource's declared reply Structs (checked at
    class creation to have no field named ``id_field``) take the fast path,
    which the serve loop inlines: ``b"".join((head, encode(rid), b",",
    encode(reply)[1:]))``, the id spliced in front of msgspec's encoding.

    Attributes:
        head: ``{"<id_field>":`` as JSON bytes.
        quick: The reply types of the fast path.
    """

    wire: str
    tag_field: str
    id_field: str
    head: bytes
    quick: frozenset[type]

    @classmethod
    def build(
        cls, wire: str, tag_field: str, id_field: str, fast: Iterable[type[msgspec.Struct]]
    ) -> ReplyEncoder:
        """The encoder of one resource class."""
        # NOTE: a Struct that encodes to ``{}`` (untagged, no fields) takes the slow path
        quick = frozenset(
            t
            for t in fast
            if wire == "flat" and (t.__struct_config__.tag is not None or t.__struct_fields__)
        )
        return cls(wire, tag_field, id_field, b"{" + encode(id_field) + b":", quick)

    def __call__(self, message: Any, rid: Any) -> str:
        """Encode ``message`` as the reply to the request with id ``rid``."""
        if type(message) in self.quick and rid is not UNSET:
            return b"".join((self.head, encode(rid), b",", encode(message)[1:])).decode()
        return encode_reply(message, rid, self.wire, self.tag_field, self.id_field)


def _has_field(struct: type[msgspec.Struct], name: str) -> bool:
    """Whether ``struct`` encodes a field (or its tag) called ``name``."""
    config = struct.__struct_config__
    return name in struct.__struct_encode_fields__ or (
        config.tag is not None and config.tag_field == name
    )
