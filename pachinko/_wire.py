"""The wire encoding: how a message becomes one WebSocket frame.

A leaf module: the resource (replies), the manager (broadcasts) and the
serve loop (error replies) encode with it, and it imports nothing of
pachinko.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["encode", "encode_envelope", "encode_frame", "encode_text"]

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
