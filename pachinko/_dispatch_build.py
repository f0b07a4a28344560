"""Compile a resource class's dispatch table and decoder, once, at class creation.

Everything the serve loop must not do per message happens here: type hint
resolution, strict variants of Structs, envelope types, the tagged union
and its decoder. The result is a :class:`~pachinko._dispatch.DispatchTable`.

Steps (one method of :class:`_Builder` each): collect the handlers
(``@handles_message`` and ``on_*`` methods), plan which tags are known ahead
(decorated handlers, the ``schema``, ``on_*`` handlers annotated with a
Struct), give every ``on_*`` handler its decoder for tags only known per
message, then compile the planned tags into the union's members.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import msgspec
from msgspec import UNSET, UnsetType

from ._dispatch import (
    AS_DECODED,
    ENVELOPE,
    FROZEN,
    ID_ATTR,
    MARK,
    RAW_DICT,
    REQUEST,
    RESERVED,
    DispatchTable,
    Handler,
    HandlerSpec,
    check_handler,
)
from ._naming import handler_name
from ._wire import ReplyEncoder
from .errors import HandlerDefinitionError

__all__ = ["build_table"]

Decoder = msgspec.json.Decoder[Any]
#: Tag → (handler method name, strict, payload Struct or None, reply type or None):
#: the tags known ahead.
Plan = dict[str, tuple[str, bool, "type[msgspec.Struct] | None", Any]]

#: The type of a correlation id on the wire.
ID_TYPE: Any = Union[str, int, UnsetType]  # noqa: UP007
#: Return annotations that declare no reply.
_NO_REPLY: Any = (None, type(None), Any, object, typing.NoReturn)


def build_table(cls: type, frame_locals: Mapping[str, Any] | None) -> DispatchTable:
    """Compile the dispatch table of resource class ``cls``.

    ``frame_locals`` are the names local to the function whose body defines
    ``cls`` (for string annotations of handlers), or ``None``.

    Raises:
        HandlerDefinitionError: On any handler or schema definition error.
    """
    builder = _Builder(cls, frame_locals)
    decorated = _collect_decorated(cls)
    named = builder.named_handlers()
    plan = builder.plan(decorated, named)
    by_name = {
        method: (fn, builder.named_decoder(method), builder.reply_type(method) is not None)
        for method, fn in named.items()
    }
    return builder.compile(plan, by_name)


class _Builder:
    """What compiling one class needs at every step: its options and caches."""

    def __init__(self, cls: type, frame_locals: Mapping[str, Any] | None) -> None:
        self.cls = cls
        self.name = cls.__qualname__
        self.frame_locals = frame_locals
        self.wire = getattr(cls, "wire", "flat")
        self.tag_field = getattr(cls, "tag_field", "type")
        if self.wire not in ("flat", "envelope"):
            raise HandlerDefinitionError(
                f"{self.name}.wire must be 'flat' or 'envelope', got {self.wire!r}"
            )
        if not isinstance(self.tag_field, str) or not self.tag_field:
            raise HandlerDefinitionError(
                f"{self.name}.tag_field must be a non-empty str, got {self.tag_field!r}"
            )
        self.id_field = getattr(cls, "id_field", "id")
        if not isinstance(self.id_field, str) or not self.id_field:
            raise HandlerDefinitionError(
                f"{self.name}.id_field must be a non-empty str, got {self.id_field!r}"
            )
        if self.id_field in (self.tag_field, "payload"):
            raise HandlerDefinitionError(
                f"{self.name}.id_field is {self.id_field!r}, a field the message already "
                "has; choose another name (id_field = 'id' by default)"
            )
        # (Struct, strict) -> its variant, shared by every handler of the class
        self.variants: dict[tuple[type, bool], Any] = {}
        self._payload_types: dict[str, type[msgspec.Struct] | None] = {}
        self._reply_types: dict[str, Any] = {}

    def payload_type(self, method: str) -> type[msgspec.Struct] | None:
        """The Struct a handler's ``payload`` is annotated with (resolved once)."""
        if method not in self._payload_types:
            self._payload_types[method] = _payload_type(self.cls, method, self.frame_locals)
        return self._payload_types[method]

    def reply_type(self, method: str, declared: Any = None) -> Any:
        """A handler's reply type: ``declared`` (``reply=``), else its return annotation."""
        if declared is not None:
            return self._check_reply(method, declared)
        if method not in self._reply_types:
            found = _return_type(self.cls, method, self.frame_locals)
            self._reply_types[method] = None if found is None else self._check_reply(method, found)
        return self._reply_types[method]

    def _check_reply(self, method: str, tp: Any) -> Any:
        """A reply Struct must not have a field where the correlation id goes."""
        for struct in _structs_of(tp):
            if _has_field(struct, self.id_field):
                raise HandlerDefinitionError(
                    f"{self.name}.{method}: the reply type {struct.__qualname__} has a field "
                    f"{self.id_field!r}, where the reply's correlation id goes; rename the "
                    f"field (msgspec.field(name=...)) or set {self.name}.id_field"
                )
        return tp

    def _check_request(self, tag: str, method: str, payload: type[msgspec.Struct] | None) -> None:
        """A request's payload must leave the correlation id field free (flat shape)."""
        if payload is None or self.wire != "flat":
            return
        if _has_field(payload, self.id_field) or ID_ATTR in payload.__struct_fields__:
            raise HandlerDefinitionError(
                f"{self.name}.{method}: {tag!r} is a request (its handler declares a reply), "
                f"and its payload type {payload.__qualname__} has a field {self.id_field!r}, "
                f"where the correlation id goes; rename the field "
                f"(msgspec.field(name=...)) or set {self.name}.id_field"
            )

    # -- collecting and planning ---------------------------------------------

    def named_handlers(self) -> dict[str, Handler]:
        """``on_*`` methods that are not decorated (the decorator's tag wins)."""
        named: dict[str, Handler] = {}
        for attr in dir(self.cls):
            if not attr.startswith("on_") or attr in RESERVED:
                continue
            fn = getattr(self.cls, attr)
            if not callable(fn) or isinstance(fn, type) or getattr(fn, MARK, None):
                continue
            check_handler(fn, f"{self.name}.{attr}")
            named[attr] = fn
        return named

    def plan(
        self, decorated: dict[str, tuple[str, bool, Any]], named: Mapping[str, Handler]
    ) -> Plan:
        """The tags known ahead: decorated, then the schema's, then typed ``on_*``."""
        plan: Plan = {}
        for tag, (method, strict, reply) in decorated.items():
            plan[tag] = (method, strict, self.payload_type(method), self.reply_type(method, reply))
        for struct in _schema_members(self.cls):
            tag, entry = self._schema_entry(struct, plan, named)
            plan[tag] = entry
        # Convention handlers annotated with a Struct declare their tag too: a
        # tagged Struct's own tag, else the snake_case name itself
        # (``on_send_message`` → ``send_message``), so that spelling takes the
        # fast path. Other spellings of the same name (``sendMessage``) still
        # reach the handler through the slow path.
        for method in named:
            found = self._named_tag(method)
            if found is not None and found[0] not in plan:
                tag, declared = found
                plan[tag] = (method, True, declared, self.reply_type(method))
        for tag, (method, _, payload, reply) in plan.items():
            if reply is not None:
                self._check_request(tag, method, payload)
        return plan

    def _schema_entry(
        self, struct: type[msgspec.Struct], plan: Plan, named: Mapping[str, Handler]
    ) -> tuple[str, tuple[str, bool, type[msgspec.Struct], Any]]:
        """The plan entry of one ``schema`` member: its tag, handler and type."""
        name = self.name
        tag = _struct_tag(struct, name)
        field = struct.__struct_config__.tag_field
        if self.wire == "flat" and field != self.tag_field:
            raise HandlerDefinitionError(
                f"{name}.schema: {struct.__qualname__} is tagged on field {field!r}, "
                f"but {name}.tag_field is {self.tag_field!r}"
            )
        if tag in plan:
            method, strict, declared, reply = plan[tag]
        else:
            method = handler_name(tag)
            if method not in named:
                raise HandlerDefinitionError(
                    f"{name}.schema declares message type {tag!r} ({struct.__qualname__}) but "
                    f"{name} has no handler for it: expected @handles_message({tag!r}) or "
                    f"async def {method}(self, ws, payload)"
                )
            strict, declared = True, self.payload_type(method)
            reply = self.reply_type(method)
        if declared is not None and not issubclass(struct, declared):
            raise HandlerDefinitionError(
                f"{name}.{method}: payload is annotated {declared.__qualname__}, but the schema "
                f"type for {tag!r} is {struct.__qualname__}"
            )
        return tag, (method, strict, struct, reply)

    def _named_tag(self, method: str) -> tuple[str, type[msgspec.Struct]] | None:
        """The tag a typed ``on_*`` handler declares, with its Struct, if any."""
        declared = self.payload_type(method)
        if declared is None:
            return None
        struct_tag = declared.__struct_config__.tag
        if struct_tag is None and self.wire == "flat" and _has_field(declared, self.tag_field):
            return None  # NOTE: the Struct reads the tag itself: no tagged variant exists
        tag = method[3:] if struct_tag is None else _struct_tag(declared, self.name)
        return (tag, declared) if handler_name(tag) == method else None

    # -- compiling -------------------------------------------------------------

    def named_decoder(self, method: str) -> Decoder | None:
        """The decoder of an ``on_*`` handler for tags only known per message."""
        declared = self.payload_type(method)
        if declared is None:
            return None
        request = self.reply_type(method) is not None
        if request:
            self._check_request(method[3:], method, declared)
        inner = _variant(declared, True, self.variants)
        if self.wire == "flat" and inner.__struct_config__.tag is not None and not request:
            return msgspec.json.Decoder(inner)
        if self.wire == "flat":
            # NOTE: the tag is only known per message, so the tag field is an
            #   ordinary str field of this variant.
            fields: list[Any] = []
            if inner.__struct_config__.tag is None:
                fields.append((self.tag_field, str))
            if request:
                fields.append(self._id_spec())
            return msgspec.json.Decoder(
                msgspec.defstruct(
                    inner.__name__,
                    fields,
                    bases=(inner,),
                    module=inner.__module__,
                    forbid_unknown_fields=True,
                    kw_only=True,
                    rename=self._id_rename() if request else None,
                )
            )
        return msgspec.json.Decoder(
            msgspec.defstruct(
                f"{self.name}.{method}:envelope",
                [
                    (self.tag_field, str),
                    ("payload", inner),
                    *([self._id_spec()] if request else []),
                ],
                forbid_unknown_fields=True,
                rename=self._id_rename() if request else None,
            )
        )

    def _id_specs(self, request: bool) -> list[tuple[str, Any, Any]]:
        return [self._id_spec()] if request else []

    def _id_spec(self) -> tuple[str, Any, Any]:
        """The correlation id field a request's union member gets: absent is UNSET."""
        return (ID_ATTR, ID_TYPE, UNSET)

    def _id_rename(self) -> dict[str, str]:
        return {ID_ATTR: self.id_field}

    def compile(
        self, plan: Plan, by_name: dict[str, tuple[Handler, Decoder | None, bool]]
    ) -> DispatchTable:
        """Build the union's members, their decoders and the table."""
        specs: dict[str, HandlerSpec] = {}
        by_type: dict[type, tuple[Handler, int]] = {}
        by_tag: dict[str, tuple[Handler, Decoder | None, bool]] = {}
        members: list[type] = []
        for tag, (method, strict, payload, reply) in plan.items():
            fn = getattr(self.cls, method)
            specs[tag] = HandlerSpec(tag, method, payload, strict, reply)
            member, kind = self._member(tag, method, strict, payload, reply is not None)
            by_type[member] = (fn, kind)
            decoder_of: Decoder | None = None
            if kind & ~(REQUEST | FROZEN) != RAW_DICT:
                decoder_of = msgspec.json.Decoder(member)
            by_tag[tag] = (fn, decoder_of, reply is not None)
            members.append(member)
        decoder: Decoder | None = None
        if members:
            union: Any = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
            decoder = msgspec.json.Decoder(union)
        requests = any(s.reply_type is not None for s in specs.values()) or any(
            request for _, _, request in by_name.values()
        )
        fast = {s for spec in specs.values() for s in _structs_of(spec.reply_type)}
        reply = ReplyEncoder.build(self.wire, self.tag_field, self.id_field, fast)
        return DispatchTable(
            decoder,
            by_type,
            specs,
            by_tag,
            by_name,
            self.wire,
            self.tag_field,
            self.id_field,
            requests,
            ReplyEncoder.build(self.wire, self.tag_field, self.id_field, fast)
            if requests
            else None,
        )

    def _member(
        self,
        tag: str,
        method: str,
        strict: bool,
        payload: type[msgspec.Struct] | None,
        request: bool,
    ) -> tuple[type, int]:
        """The tagged union member of one planned tag, and what the handler gets.

        A request's member has one more field, the correlation id (UNSET when
        the message has none), so the id is read in the same single decode.
        """
        extra: list[Any] = [self._id_spec()] if request else []
        rename = self._id_rename() if request else None
        flag = REQUEST if request else 0
        if self.wire == "envelope":
            payload_tp: Any = Any if payload is None else _variant(payload, strict, self.variants)
            fields: list[Any] = (
                [("payload", payload_tp, None)] if payload is None else [("payload", payload_tp)]
            )
            member = msgspec.defstruct(
                f"{self.name}.{method}:envelope",
                [*fields, *extra],
                tag=tag,
                tag_field=self.tag_field,
                forbid_unknown_fields=strict,
                rename=rename,
            )
            return member, ENVELOPE | flag
        if payload is None:
            raw = msgspec.defstruct(
                f"{self.name}.{method}:raw",
                extra,
                tag=tag,
                tag_field=self.tag_field,
                forbid_unknown_fields=False,
                rename=rename,
            )
            return raw, RAW_DICT | flag
        variant = _variant(payload, strict, self.variants, tag=tag, tag_field=self.tag_field)
        if request:
            config = variant.__struct_config__
            variant = msgspec.defstruct(
                payload.__name__,
                extra,
                bases=(variant,),
                module=payload.__module__,
                tag=tag,
                tag_field=self.tag_field,
                forbid_unknown_fields=config.forbid_unknown_fields,
                kw_only=True,
                rename=rename,
            )
            if config.frozen:
                flag |= FROZEN
        return variant, AS_DECODED | flag


def _has_field(struct: type[msgspec.Struct], encoded_name: str) -> bool:
    return any(f.encode_name == encoded_name for f in msgspec.structs.fields(struct))


def _collect_decorated(cls: type) -> dict[str, tuple[str, bool, Any]]:
    """Tag → (method name, strict, reply=) from @handles_message, subclasses winning."""
    found: dict[str, tuple[str, bool, Any]] = {}
    for klass in reversed(cls.__mro__):
        local: dict[str, str] = {}
        for attr, value in vars(klass).items():
            for tag, strict, reply in getattr(value, MARK, ()):
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
                found[tag] = (attr, strict, reply)
    # a subclass may override a decorated method by name; validate what is there now
    for tag, (attr, _, _) in found.items():
        check_handler(getattr(cls, attr), f"{cls.__qualname__}.{attr} (handler of {tag!r})")
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
    annotation = _resolve(cls, method, fn, annotation, frame_locals, "payload")
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    return None


def _return_type(cls: type, method: str, frame_locals: Mapping[str, Any] | None) -> Any:
    """The reply type a handler's return annotation declares, or ``None``.

    No annotation, ``None``, ``Any``, ``object`` and ``NoReturn`` declare no
    reply; ``X | None`` declares ``X`` (returning ``None`` sends nothing).
    """
    fn = getattr(cls, method)
    annotation = inspect.signature(fn).return_annotation
    if annotation is inspect.Signature.empty or annotation in ("None", "Any", "typing.Any"):
        return None
    annotation = _resolve(cls, method, fn, annotation, frame_locals, "return")
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if not args:
            return None
        annotation = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    if any(annotation is no for no in _NO_REPLY):
        return None
    return annotation


def _resolve(
    cls: type,
    method: str,
    fn: Any,
    annotation: Any,
    frame_locals: Mapping[str, Any] | None,
    what: str,
) -> Any:
    """Evaluate a string annotation in the handler's namespace."""
    if not isinstance(annotation, str):
        return annotation
    # NOTE: the function's own globals (its module's, or an exec() namespace).
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    namespace: dict[str, Any] = dict(
        getattr(fn, "__globals__", None) or (vars(module) if module else {})
    )
    namespace.update(frame_locals or {})
    namespace.update(vars(cls))
    try:
        return eval(annotation, namespace)
    except Exception as ex:
        raise HandlerDefinitionError(
            f"{cls.__qualname__}.{method}: cannot resolve the {what} annotation "
            f"{annotation!r}: {ex}; define it before the class, at module "
            "level or in the function that defines the class"
        ) from ex


def _structs_of(tp: Any) -> list[type[msgspec.Struct]]:
    """The Structs a reply type names (itself, or the members of a union)."""
    members = typing.get_args(tp) if _is_union(tp) else (tp,)
    return [m for m in members if isinstance(m, type) and issubclass(m, msgspec.Struct)]


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
