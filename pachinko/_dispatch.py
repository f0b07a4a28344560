"""Build a resource class's dispatch table and decoder, once, at class creation.

Per message the serve loop does one ``decoder.decode(text)``, one dict lookup
by the decoded type and one await. Everything else (type hint resolution,
strict variants of Structs, envelope types, the tagged union) happens here.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal, Union

import attrs
import msgspec

from ._naming import handler_name
from .errors import HandlerDefinitionError

__all__ = ["DispatchTable", "HandlerSpec", "MessageError", "build_table"]

Handler = Callable[[Any, Any, Any], Awaitable[Any]]

#: What the serve loop hands a handler, per decoded type.
AS_DECODED: Final = 0  # the decoded Struct itself (flat shape)
ENVELOPE: Final = 1  # the decoded envelope's ``payload``
RAW_DICT: Final = 2  # the message as a dict (flat shape, untyped handler)

#: Resource methods that are never message handlers.
RESERVED: Final = frozenset({"on_connect", "on_disconnect", "on_unhandled", "on_error"})

_MARK: Final = "__pachinko_messages__"


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
        _check_handler(fn, f"@handles_message({tag!r}) on {_qualname(fn)}")
        marks = (*getattr(fn, _MARK, ()), (tag, strict))
        setattr(fn, _MARK, marks)
        return fn

    return decorate


def _qualname(fn: object) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _check_handler(fn: object, where: str) -> None:
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
        convention: Handler name → (handler, decoder or None), for tags not
            known ahead (``on_{snake_case(tag)}`` methods).
        by_tag: Tag → (handler, per-tag decoder or None) for the slow path.
    """

    decoder: msgspec.json.Decoder[Any] | None
    by_type: dict[type, tuple[Handler, int]]
    specs: dict[str, HandlerSpec]
    convention: dict[str, tuple[Handler, msgspec.json.Decoder[Any] | None]]
    by_tag: dict[str, tuple[Handler, msgspec.json.Decoder[Any] | None]]
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
        entry = self.by_tag.get(tag) or self.convention.get(handler_name(tag))
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


# -- building -----------------------------------------------------------------


def build_table(cls: type, frame_locals: Mapping[str, Any] | None) -> DispatchTable:
    """Compile the dispatch table of resource class ``cls``.

    Raises:
        HandlerDefinitionError: On any handler or schema definition error.
    """
    name = cls.__qualname__
    wire = getattr(cls, "wire", "flat")
    tag_field = getattr(cls, "tag_field", "type")
    if wire not in ("flat", "envelope"):
        raise HandlerDefinitionError(f"{name}.wire must be 'flat' or 'envelope', got {wire!r}")
    if not isinstance(tag_field, str) or not tag_field:
        raise HandlerDefinitionError(f"{name}.tag_field must be a non-empty str, got {tag_field!r}")

    decorated = _collect_decorated(cls)
    convention: dict[str, Any] = {}
    for attr in dir(cls):
        if not attr.startswith("on_") or attr in RESERVED:
            continue
        fn = getattr(cls, attr)
        if not callable(fn) or isinstance(fn, type):
            continue
        if getattr(fn, _MARK, None):
            continue  # decorated: the decorator's tag wins over the name
        _check_handler(fn, f"{name}.{attr}")
        convention[attr] = fn

    # tag -> (method name, strict, declared payload type)
    plan: dict[str, tuple[str, bool, type[msgspec.Struct] | None]] = {}
    for tag, (method, strict) in decorated.items():
        plan[tag] = (method, strict, _payload_type(cls, method, frame_locals))
    schema_types = _schema_members(cls)
    for struct in schema_types:
        tag = _struct_tag(struct, name)
        if wire == "flat":
            field = struct.__struct_config__.tag_field
            if field != tag_field:
                raise HandlerDefinitionError(
                    f"{name}.schema: {struct.__qualname__} is tagged on field {field!r}, "
                    f"but {name}.tag_field is {tag_field!r}"
                )
        if tag in plan:
            method, strict, declared = plan[tag]
        else:
            method = handler_name(tag)
            if method not in convention:
                raise HandlerDefinitionError(
                    f"{name}.schema declares message type {tag!r} ({struct.__qualname__}) but "
                    f"{name} has no handler for it: expected @handles_message({tag!r}) or "
                    f"async def {method}(self, ws, payload)"
                )
            strict, declared = True, _payload_type(cls, method, frame_locals)
        if declared is not None and not issubclass(struct, declared):
            raise HandlerDefinitionError(
                f"{name}.{method}: payload is annotated {declared.__qualname__}, but the schema "
                f"type for {tag!r} is {struct.__qualname__}"
            )
        plan[tag] = (method, strict, struct)
    # Convention handlers annotated with a Struct declare their tag too: a tagged
    # Struct's own tag, else the snake_case name itself (``on_send_message`` →
    # ``send_message``), so that spelling takes the fast path. Other spellings of
    # the same name (``sendMessage``) still reach the handler through the slow path.
    for method in convention:
        declared = _payload_type(cls, method, frame_locals)
        if declared is None:
            continue
        struct_tag = declared.__struct_config__.tag
        if struct_tag is None and wire == "flat" and _has_field(declared, tag_field):
            continue  # NOTE: the Struct reads the tag itself: no tagged variant exists
        tag = method[3:] if struct_tag is None else _struct_tag(declared, name)
        if tag not in plan and handler_name(tag) == method:
            plan[tag] = (method, True, declared)

    variants: dict[tuple[type, bool], Any] = {}
    conventional: dict[str, tuple[Handler, msgspec.json.Decoder[Any] | None]] = {}
    for method, fn in convention.items():
        declared = _payload_type(cls, method, frame_locals)
        dec: msgspec.json.Decoder[Any] | None = None
        if declared is not None:
            inner = _variant(declared, True, variants)
            if wire == "flat" and inner.__struct_config__.tag is not None:
                dec = msgspec.json.Decoder(inner)
            elif wire == "flat":
                # NOTE: the tag is only known per message, so the tag field is an
                #   ordinary str field of this variant.
                dec = msgspec.json.Decoder(
                    msgspec.defstruct(
                        inner.__name__,
                        [(tag_field, str)],
                        bases=(inner,),
                        module=inner.__module__,
                        forbid_unknown_fields=True,
                        kw_only=True,
                    )
                )
            else:
                dec = msgspec.json.Decoder(
                    msgspec.defstruct(
                        f"{name}.{method}:envelope",
                        [(tag_field, str), ("payload", inner)],
                        forbid_unknown_fields=True,
                    )
                )
        conventional[method] = (fn, dec)

    specs: dict[str, HandlerSpec] = {}
    by_type: dict[type, tuple[Handler, int]] = {}
    by_tag: dict[str, tuple[Handler, msgspec.json.Decoder[Any] | None]] = {}
    members: list[type] = []
    for tag, (method, strict, payload) in plan.items():
        fn = getattr(cls, method)
        specs[tag] = HandlerSpec(tag, method, payload, strict)
        if wire == "flat":
            if payload is None:
                member = msgspec.defstruct(
                    f"{name}.{method}:raw",
                    [],
                    tag=tag,
                    tag_field=tag_field,
                    forbid_unknown_fields=False,
                )
                by_tag[tag] = (fn, None)
                by_type[member] = (fn, RAW_DICT)
                members.append(member)
                continue
            member = _variant(payload, strict, variants, tag=tag, tag_field=tag_field)
            by_type[member] = (fn, AS_DECODED)
        else:
            payload_tp: Any = Any if payload is None else _variant(payload, strict, variants)
            fields: list[Any] = (
                [("payload", payload_tp, None)] if payload is None else [("payload", payload_tp)]
            )
            member = msgspec.defstruct(
                f"{name}.{method}:envelope",
                fields,
                tag=tag,
                tag_field=tag_field,
                forbid_unknown_fields=strict,
            )
            by_type[member] = (fn, ENVELOPE)
        members.append(member)
        by_tag[tag] = (fn, msgspec.json.Decoder(member))
    decoder: msgspec.json.Decoder[Any] | None = None
    if members:
        union: Any = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
        decoder = msgspec.json.Decoder(union)
    return DispatchTable(decoder, by_type, specs, conventional, by_tag, wire, tag_field)


def _has_field(struct: type[msgspec.Struct], encoded_name: str) -> bool:
    return any(f.encode_name == encoded_name for f in msgspec.structs.fields(struct))


def _collect_decorated(cls: type) -> dict[str, tuple[str, bool]]:
    """Tag → (method name, strict) from @handles_message, subclasses winning."""
    found: dict[str, tuple[str, bool]] = {}
    for klass in reversed(cls.__mro__):
        local: dict[str, str] = {}
        for attr, value in vars(klass).items():
            for tag, strict in getattr(value, _MARK, ()):
                if tag in local:
                    raise HandlerDefinitionError(
                        f"{klass.__qualname__}: message type {tag!r} has two handlers: "
                        f"{local[tag]} and {attr}"
                    )
                if attr in RESERVED:
                    raise HandlerDefinitionError(
                        f"{klass.__qualname__}.{attr} is a lifecycle method and cannot handle "
                        f"message type {tag!r}"
                    )
                local[tag] = attr
                found[tag] = (attr, strict)
    # a subclass may override a decorated method by name; validate what is there now
    for tag, (attr, _) in found.items():
        _check_handler(getattr(cls, attr), f"{cls.__qualname__}.{attr} (handler of {tag!r})")
    return found


def _schema_members(cls: type) -> list[type[msgspec.Struct]]:
    schema = getattr(cls, "schema", None)
    if schema is None:
        return []
    members = typing.get_args(schema) if _is_union(schema) else (schema,)
    out: list[type[msgspec.Struct]] = []
    for member in members:
        if not (isinstance(member, type) and issubclass(member, msgspec.Struct)):
            raise HandlerDefinitionError(
                f"{cls.__qualname__}.schema must be a msgspec.Struct or a union of them, "
                f"found {member!r}"
            )
        out.append(member)
    return out


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _struct_tag(struct: type[msgspec.Struct], owner: str) -> str:
    tag = struct.__struct_config__.tag
    if not isinstance(tag, str):
        raise HandlerDefinitionError(
            f"{owner}.schema: {struct.__qualname__} needs a str tag "
            f"(class {struct.__name__}(msgspec.Struct, tag='...')), found {tag!r}"
        )
    return tag


def _payload_type(
    cls: type, method: str, frame_locals: Mapping[str, Any] | None
) -> type[msgspec.Struct] | None:
    """The Struct a handler's ``payload`` parameter is annotated with, if any."""
    fn = getattr(cls, method)
    params = list(inspect.signature(fn).parameters.values())
    annotation = params[2].annotation if len(params) >= 3 else inspect.Parameter.empty
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        # NOTE: the function's own globals (its module's, or an exec() namespace).
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        namespace: dict[str, Any] = dict(
            getattr(fn, "__globals__", None) or (vars(module) if module else {})
        )
        namespace.update(frame_locals or {})
        namespace.update(vars(cls))
        try:
            annotation = eval(annotation, namespace)
        except Exception as ex:
            raise HandlerDefinitionError(
                f"{cls.__qualname__}.{method}: cannot resolve the payload annotation "
                f"{params[2].annotation!r}: {ex}; define it before the class, at module "
                "level or in the function that defines the class"
            ) from ex
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    return None


def _variant(
    struct: type[msgspec.Struct],
    strict: bool,
    cache: dict[tuple[type, bool], Any],
    *,
    tag: str | None = None,
    tag_field: str | None = None,
) -> Any:
    """Return ``struct`` or a subclass with the wanted strictness (and tag), deeply.

    NOTE: msgspec sets ``forbid_unknown_fields`` per Struct class, so strict
    handling of a lenient user Struct needs a strict subclass; nested Struct
    fields get strict subclasses too. The handler still receives an instance
    of (a subclass of) the user's type.
    """
    config = struct.__struct_config__
    wanted_tag = config.tag if tag is None else tag
    wanted_field = config.tag_field if tag_field is None else tag_field
    key = (struct, strict)
    if tag is None and key in cache:
        return cache[key]
    fields = msgspec.structs.fields(struct)
    new_types = [_variant_type(f.type, strict, cache) for f in fields]
    same = (
        config.forbid_unknown_fields == strict
        and config.tag == wanted_tag
        and config.tag_field == wanted_field
        and all(n is f.type for n, f in zip(new_types, fields, strict=True))
    )
    if same:
        result: Any = struct
    else:
        specs: list[Any] = []
        for f, tp in zip(fields, new_types, strict=True):
            if f.default is not msgspec.NODEFAULT:
                specs.append((f.name, tp, f.default))
            elif f.default_factory is not msgspec.NODEFAULT:
                specs.append((f.name, tp, msgspec.field(default_factory=f.default_factory)))
            else:
                specs.append((f.name, tp))
        rename = {f.name: f.encode_name for f in fields if f.encode_name != f.name}
        result = msgspec.defstruct(
            struct.__name__,
            specs,
            bases=(struct,),
            module=struct.__module__,
            forbid_unknown_fields=strict,
            tag=wanted_tag,
            tag_field=wanted_field,
            rename=rename or None,
            kw_only=True,
        )
    if tag is None:
        cache[key] = result
    return result


def _variant_type(tp: Any, strict: bool, cache: dict[tuple[type, bool], Any]) -> Any:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _variant(tp, strict, cache)
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        new = _variant_type(args[0], strict, cache)
        return tp if new is args[0] else typing.Annotated[(new, *tp.__metadata__)]
    if origin is Literal:
        return tp
    new_args = tuple(_variant_type(a, strict, cache) for a in args)
    if all(n is a for n, a in zip(new_args, args, strict=True)):
        return tp
    if origin in (Union, types.UnionType):
        return Union[new_args]  # noqa: UP007
    return tp.__class_getitem__(new_args) if hasattr(tp, "__class_getitem__") else origin[new_args]
