"""AsyncAPI 3.0 documents from a router tree.

One channel per route (its address is the full path, mount prefix included;
template fields become channel parameters). Messages come from the resource
classes: what a resource handles is the application's ``receive`` operation
(client → server), its ``sends`` are the ``send`` operation (server →
client). A message type whose handler declares a reply is a request: an
operation of its own with an AsyncAPI 3.0 ``reply`` (the reply message), and
both messages name their correlation id (``correlationId``). Payload schemas
are msgspec's JSON Schema (:func:`msgspec.json.schema_components`),
adjusted to the JSON Schema draft 07 dialect that AsyncAPI 3.0 schemas use.

Usable without TOML::

    doc = asyncapi.document([("/ws", router)], title="Chat", version="1.0.0")
    print(asyncapi.dumps(doc, "yaml"))

Room history (``rooms=``, given by :func:`document_for_app` and ``pachinko
asyncapi`` from the app's room policies): which room a handler broadcasts to
is decided at run time (room names are data), so no channel is tied to a
room. When some room keeps history, every channel's ``send`` operation
describes what any of its messages may carry: each sent message gets the
optional position field (present when it was broadcast to a history room),
and the ``recovery`` message (what a join with ``since``/``last`` sends
first) is one of the messages sent. The policies themselves are listed in
the document's ``x-pachinko-rooms`` extension.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from ._naming import qualified_name
from ._tree import RouteView, Sent, mounted_routes
from .rooms import RECOVERY_REASONS, PresenceEvent, RoomPolicies, RoomPolicy

if TYPE_CHECKING:
    import falcon.asgi

    from .router import WebSocketRouter

__all__ = ["ASYNCAPI_VERSION", "document", "document_for_app", "dumps"]

ASYNCAPI_VERSION: Final = "3.0.0"

_SCHEMAS: Final = "#/components/schemas/"
_Transform = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
_FIELD: Final = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?}")
_KEY_UNSAFE: Final = re.compile(r"[^\w.\-]+")


def document_for_app(
    app: falcon.asgi.App[Any, Any],
    *,
    title: str = "pachinko app",
    version: str = "1.0.0",
    description: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """Build the AsyncAPI document of every router mounted on ``app``.

    Raises:
        PachinkoError: pachinko is not installed on ``app``.
    """
    from .app import runtime_of

    runtime = runtime_of(app)
    mounts = [(m.prefix, m.router) for m in runtime.mounts]
    return document(
        mounts,
        title=title,
        version=version,
        description=description,
        server=server,
        rooms=runtime.manager.room_policies,
    )


def document(
    mounts: Iterable[tuple[str, WebSocketRouter]] | WebSocketRouter,
    *,
    title: str = "pachinko app",
    version: str = "1.0.0",
    description: str | None = None,
    server: str | None = None,
    rooms: Mapping[str, RoomPolicy] | RoomPolicies | None = None,
) -> dict[str, Any]:
    """Build an AsyncAPI 3.0 document (a plain dict) from router trees.

    Args:
        mounts: ``(prefix, router)`` pairs, or one router (prefix ``/``).
        title: ``info.title``.
        version: ``info.version`` (the version of the described API).
        description: ``info.description``.
        server: A WebSocket URL such as ``ws://localhost:8000``; adds a
            ``servers.default`` entry.
        rooms: The app's room policies: with history, sent messages get the
            position field and every channel the ``recovery`` message (see
            the module docstring); with presence, every channel also the
            ``presence`` event (:class:`~pachinko.rooms.PresenceEvent`).

    Returns:
        The document, ready for :func:`dumps`.
    """
    pairs: Sequence[tuple[str, WebSocketRouter]] = (
        list(mounts) if not hasattr(mounts, "routes") else [("/", mounts)]  # type: ignore[list-item]
    )
    policies = rooms if isinstance(rooms, RoomPolicies) else RoomPolicies(rooms)
    builder = _Builder(policies if policies.any_history else None, policies.any_presence)
    for route in mounted_routes(pairs):
        builder.add_route(route)
    doc: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": version},
        "defaultContentType": "application/json",
    }
    if description:
        doc["info"]["description"] = description
    if server:
        doc["servers"] = {"default": _server(server)}
    if builder.history is not None:
        doc["x-pachinko-rooms"] = _rooms_extension(builder.history)
    doc["channels"] = builder.channels
    doc["operations"] = builder.operations
    components: dict[str, Any] = {"messages": builder.messages}
    schemas = builder.schemas()
    if schemas:
        components["schemas"] = schemas
    doc["components"] = components
    return doc


def dumps(doc: dict[str, Any], fmt: Literal["yaml", "json"] = "yaml") -> str:
    """Serialize a document as YAML (needs PyYAML) or JSON."""
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt != "yaml":
        raise ValueError(f"dumps(): format must be 'yaml' or 'json', got {fmt!r}")
    import yaml

    text: str = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    return text


def _server(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(
            f"server must be a ws:// or wss:// URL such as ws://localhost:8000, got {url!r}"
        )
    server: dict[str, Any] = {"host": parts.netloc, "protocol": parts.scheme}
    if parts.path not in ("", "/"):
        server["pathname"] = parts.path
    return server


def _key(text: str) -> str:
    """A component/channel key matching AsyncAPI's ``^[\\w\\d.\\-_]+$``."""
    return _KEY_UNSAFE.sub("_", text).strip("_") or "root"


class _Builder:
    """Collects channels, operations, messages and the types to describe."""

    def __init__(self, history: RoomPolicies | None = None, presence: bool = False) -> None:
        #: The room policies, when some room keeps history (else None).
        self.history = history
        self.presence = presence
        self._presence_ref: dict[str, str] | None = None
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self._types: list[Any] = []
        self._type_index: dict[Any, int] = {}
        # message payloads reference types by index until schemas() names them
        self._pending: list[tuple[Any, Any, int, _Transform | None]] = []

    def _use(
        self,
        tp: Any,
        holder: dict[str, Any] | list[Any],
        key: str | int,
        transform: _Transform | None = None,
    ) -> None:
        index = self._type_index.get(tp)
        if index is None:
            index = self._type_index[tp] = len(self._types)
            self._types.append(tp)
        self._pending.append((holder, key, index, transform))

    def schemas(self) -> dict[str, Any]:
        """Name every used type, fill the pending references, return the schemas."""
        if not self._types:
            return {}
        # NOTE: msgspec >= 0.23 names distinct types that share a module and
        # qualname apart itself (``m.Made``, ``m.Made_2``), nested ones included.
        refs, components = msgspec.json.schema_components(
            self._types, ref_template=_SCHEMAS + "{name}"
        )
        schemas = {name: _draft7(schema) for name, schema in components.items()}
        for holder, key, index, transform in self._pending:
            value = _draft7(refs[index])
            holder[key] = value if transform is None else transform(value, schemas)
        return schemas

    def add_route(self, route: RouteView) -> None:
        address, info = route.path, route.info
        channel_id = self._unique(self.channels, _key(info.name or address))
        channel: dict[str, Any] = {"address": _FIELD.sub(r"{\1}", address)}
        names = _FIELD.findall(address)
        if names:
            channel["parameters"] = {
                name: {
                    "description": f"Value of the `{name}` field of the route template "
                    f"`{info.template}`."
                }
                for name in names
            }
        cls = info.resource_class
        target = getattr(cls or info.target, "__qualname__", repr(info.target))
        channel["description"] = f"WebSocket route `{info.template}` served by `{target}`."
        messages: dict[str, Any] = {}
        receive: list[dict[str, str]] = []
        send: list[dict[str, str]] = []
        requests: list[tuple[str, str, str]] = []
        if cls is not None and hasattr(cls, "message_types"):
            tag_field: str = getattr(cls, "tag_field", "type")
            wire: str = getattr(cls, "wire", "flat")
            id_field: str = getattr(cls, "id_field", "id")
            for received in route.received:
                tag = received.tag
                reply_type = received.reply
                msg_id = self._unique(messages, _key(f"receive.{tag}"))
                payload = self._inbound(
                    received.payload,
                    tag,
                    tag_field,
                    wire,
                    received.strict,
                    None if reply_type is None else id_field,
                )
                if reply_type is not None:
                    payload["correlationId"] = _correlation(id_field)
                ref = self._message(
                    f"{cls.__qualname__}.receive.{tag}",
                    tag,
                    payload,
                    f"Client → server `{tag}`, handled by `{qualified_name(received.handler)}`.",
                    _description(received.payload),
                )
                messages[msg_id] = ref
                if reply_type is None:
                    receive.append({"$ref": f"#/channels/{channel_id}/messages/{msg_id}"})
                    continue
                reply_id = self._unique(messages, _key(f"reply.{tag}"))
                reply_tag = _tag_of(reply_type) or f"{tag} reply"
                messages[reply_id] = self._message(
                    f"{cls.__qualname__}.reply.{tag}",
                    reply_tag,
                    self._reply(reply_type, tag_field, wire, id_field),
                    f"Server → client reply to `{tag}`: the handler's return value, with the "
                    f"request's `{id_field}`.",
                    _description(reply_type),
                )
                requests.append((tag, msg_id, reply_id))
            for sent in route.sent:
                tp = sent.payload
                tag = sent.tag or str(getattr(tp, "__name__", "message"))
                msg_id = self._unique(messages, _key(f"send.{tag}"))
                payload = self._outbound(sent, tag_field, wire)
                ref = self._message(
                    f"{cls.__qualname__}.send.{tag}",
                    tag,
                    payload,
                    f"Server → client `{tag}`, sent by `{cls.__qualname__}`.",
                    _description(tp),
                )
                messages[msg_id] = ref
                send.append({"$ref": f"#/channels/{channel_id}/messages/{msg_id}"})
            if self.history is not None:
                msg_id = self._unique(messages, "send.recovery")
                messages[msg_id] = self._recovery(tag_field, wire)
                send.append({"$ref": f"#/channels/{channel_id}/messages/{msg_id}"})
            if self.presence:
                msg_id = self._unique(messages, "send.presence")
                messages[msg_id] = self._presence_message()
                send.append({"$ref": f"#/channels/{channel_id}/messages/{msg_id}"})
        channel["messages"] = messages
        self.channels[channel_id] = channel
        for tag, msg_id, reply_id in requests:
            key = self._unique(self.operations, _key(f"{channel_id}.request.{tag}"))
            self.operations[key] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"Request `{tag}`: the server answers with a reply",
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{msg_id}"}],
                "reply": {
                    "channel": {"$ref": f"#/channels/{channel_id}"},
                    "messages": [{"$ref": f"#/channels/{channel_id}/messages/{reply_id}"}],
                },
            }
        for action, refs in (("receive", receive), ("send", send)):
            if refs:
                self.operations[self._unique(self.operations, f"{channel_id}.{action}")] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{channel_id}"},
                    "summary": (
                        "Messages the server receives from clients"
                        if action == "receive"
                        else "Messages the server sends to clients"
                    ),
                    "messages": refs,
                }

    def _presence_message(self) -> dict[str, str]:
        """The one component message of presence events, shared by every channel."""
        if self._presence_ref is None:
            payload: dict[str, Any] = {}
            self._use(PresenceEvent, payload, "payload")
            self._presence_ref = self._message(
                "presence",
                "presence",
                payload,
                "Server → client `presence`: a user joined or left a presence room "
                "this connection is in (sent by pachinko).",
                _description(PresenceEvent),
            )
        return self._presence_ref

    def _message(
        self,
        key: str,
        tag: str,
        payload: dict[str, Any],
        summary: str,
        description: str | None = None,
    ) -> dict[str, str]:
        key = self._unique(self.messages, _key(key))
        # NOTE: ``payload`` may still be filled in by schemas(): store the dict itself.
        payload.update(name=tag, title=tag, summary=summary)
        if description:
            payload["description"] = description
        self.messages[key] = payload
        return {"$ref": f"#/components/messages/{key}"}

    def _outbound(self, sent: Sent, tag_field: str, wire: str) -> dict[str, Any]:
        """The ``payload`` entry of a server → client message, as ``send()`` writes it."""
        payload: dict[str, Any] = {}
        tp, tag = sent.payload, sent.tag
        if wire != "envelope" or tag is None:
            if self.history is None:
                self._use(tp, payload, "payload")
            else:
                field, prop = self.history.position_field, _position_schema(self.history)
                self._use(
                    tp,
                    payload,
                    "payload",
                    transform=lambda schema, components: _positioned(
                        schema, components, field, prop
                    ),
                )
            return payload
        # NOTE: an envelope resource sends a tagged Struct as {tag_field: tag,
        #   "payload": its other fields}: the Struct's schema without its tag.
        properties: dict[str, Any] = {tag_field: {"type": "string", "const": tag}, "payload": {}}
        if self.history is not None:
            properties[self.history.position_field] = _position_schema(self.history)
        own_field = _tag_field_of(tp)
        payload["payload"] = {
            "type": "object",
            "properties": properties,
            "required": [tag_field, "payload"],
            "additionalProperties": False,
        }
        self._use(
            tp,
            properties,
            "payload",
            transform=lambda schema, components: _untagged(schema, components, own_field),
        )
        return payload

    def _recovery(self, tag_field: str, wire: str) -> dict[str, str]:
        """The ``recovery`` message in one wire shape (one component per shape)."""
        key = "pachinko.recovery" + ("" if (tag_field, wire) == ("type", "flat") else f".{wire}")
        key = _key(key if tag_field == "type" else f"{key}.{tag_field}")
        if key not in self.messages:
            tag = {"type": "string", "const": "recovery"}
            body = _recovery_schema()
            if wire == "envelope":
                schema: dict[str, Any] = {
                    "type": "object",
                    "properties": {tag_field: tag, "payload": body},
                    "required": [tag_field, "payload"],
                    "additionalProperties": False,
                }
            else:
                schema = {
                    **body,
                    "properties": {tag_field: tag, **body["properties"]},
                    "required": [tag_field, *body["required"]],
                }
            self.messages[key] = {
                "name": "recovery",
                "title": "recovery",
                "summary": "Server → client `recovery`: the outcome of a join that asked for "
                "history (`since` or `last`), sent before the missed messages.",
                "description": _RECOVERY_DESCRIPTION,
                "payload": schema,
            }
        return {"$ref": f"#/components/messages/{key}"}

    def _reply(self, tp: Any, tag_field: str, wire: str, id_field: str) -> dict[str, Any]:
        """The ``payload`` entry of a reply: what ``send()`` writes, plus the id."""
        tag = _tag_of(tp)
        if wire == "envelope" and tag is not None:
            payload = self._outbound(Sent(tp, tag), tag_field, wire)
            _add_id(payload["payload"], id_field, "the request's")  # next to the tag
        else:
            # NOTE: the reply's schema inlined, with the id (an allOf of a closed
            #   schema and the id would accept no reply at all).
            payload = {}
            self._use(
                tp,
                payload,
                "payload",
                transform=lambda schema, components: _with_id(schema, components, id_field),
            )
        payload["correlationId"] = _correlation(id_field)
        return payload

    def _inbound(
        self,
        payload_type: Any,
        tag: str,
        tag_field: str,
        wire: str,
        strict: bool,
        id_field: str | None = None,
    ) -> dict[str, Any]:
        """The ``payload`` entry of a client → server message (a request: with ``id_field``)."""
        tag_schema = {"type": "string", "const": tag}
        if wire == "envelope":
            properties: dict[str, Any] = {tag_field: tag_schema, "payload": {}}
            envelope: dict[str, Any] = {
                "type": "object",
                "properties": properties,
                "required": [tag_field],
            }
            if payload_type is not None:
                envelope["required"].append("payload")
                self._use(payload_type, properties, "payload")
            if strict:
                envelope["additionalProperties"] = False
            if id_field is not None:
                _add_id(envelope, id_field, _REQUEST_ID)
            return {"payload": envelope}
        if payload_type is None:
            untyped: dict[str, Any] = {
                "type": "object",
                "properties": {tag_field: tag_schema},
                "required": [tag_field],
            }
            if id_field is not None:
                _add_id(untyped, id_field, _REQUEST_ID)
            return {"payload": untyped}
        # NOTE: flat messages are the Struct's fields next to the tag field, with
        #   the handler's strictness: the schema is inlined (its nested types stay
        #   references), since an allOf of a closed schema and the tag would
        #   accept no message at all.
        holder: dict[str, Any] = {}
        self._use(
            payload_type,
            holder,
            "payload",
            transform=lambda schema, components: _flat(
                schema, components, tag_field, tag_schema, strict, id_field
            ),
        )
        return holder

    @staticmethod
    def _unique(taken: dict[str, Any], key: str) -> str:
        candidate, n = key, 2
        while candidate in taken:
            candidate, n = f"{key}_{n}", n + 1
        return candidate


def _flat(
    ref: dict[str, Any],
    schemas: dict[str, Any],
    tag_field: str,
    tag_schema: dict[str, Any],
    strict: bool,
    id_field: str | None = None,
) -> dict[str, Any]:
    """A flat message: the Struct's schema with the tag field (and the id), inlined."""
    target = ref.get("$ref", "")
    base = schemas.get(target[len(_SCHEMAS) :], {}) if target.startswith(_SCHEMAS) else ref
    base = copy.deepcopy(base)  # NOTE: shared objects would become YAML anchors
    schema = {k: v for k, v in base.items() if k not in ("properties", "required")}
    schema["type"] = "object"
    schema["properties"] = {
        tag_field: tag_schema,
        **{name: prop for name, prop in base.get("properties", {}).items() if name != tag_field},
    }
    schema["required"] = [tag_field, *(r for r in base.get("required", ()) if r != tag_field)]
    if strict:
        schema["additionalProperties"] = False
    else:
        schema.pop("additionalProperties", None)
    if id_field is not None:
        _add_id(schema, id_field, _REQUEST_ID)
    return schema


_REQUEST_ID: Final = "the reply carries it"


def _tag_of(tp: Any) -> str | None:
    tag = getattr(getattr(tp, "__struct_config__", None), "tag", None)
    return tag if isinstance(tag, str) else None


def _correlation(id_field: str) -> dict[str, str]:
    return {
        "description": f"The correlation id: the request's `{id_field}`, echoed by its reply.",
        "location": f"$message.payload#/{id_field}",
    }


def _add_id(schema: dict[str, Any], id_field: str, note: str) -> None:
    """Add the optional correlation id property to an object schema (in place)."""
    properties = schema.setdefault("properties", {})
    properties[id_field] = {
        "type": ["string", "integer"],
        "description": f"Optional correlation id ({note}).",
    }


def _with_id(ref: dict[str, Any], schemas: dict[str, Any], id_field: str) -> dict[str, Any]:
    """A reply's schema, inlined, with the correlation id property."""
    target = ref.get("$ref", "")
    base = schemas.get(target[len(_SCHEMAS) :], {}) if target.startswith(_SCHEMAS) else ref
    schema = copy.deepcopy(base)  # NOTE: shared objects would become YAML anchors
    if schema.get("type") == "object" or "properties" in schema:
        _add_id(schema, id_field, "the request's")
    return schema


def _untagged(ref: dict[str, Any], schemas: dict[str, Any], field: str | None) -> dict[str, Any]:
    """A tagged Struct's schema without its tag ``field`` (an envelope's payload), inlined."""
    target = ref.get("$ref", "")
    base = schemas.get(target[len(_SCHEMAS) :], {}) if target.startswith(_SCHEMAS) else ref
    base = copy.deepcopy(base)  # NOTE: shared objects would become YAML anchors
    schema = {k: v for k, v in base.items() if k not in ("properties", "required")}
    schema["properties"] = {k: v for k, v in base.get("properties", {}).items() if k != field}
    schema["required"] = [r for r in base.get("required", ()) if r != field]
    return schema


def _description(tp: Any) -> str | None:
    """The payload type's own docstring (``[types.Name] description`` in TOML)."""
    doc = vars(tp).get("__doc__") if isinstance(tp, type) else None
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _tag_field_of(tp: Any) -> str | None:
    config = getattr(tp, "__struct_config__", None)
    return getattr(config, "tag_field", None)


def _draft7(schema: Any) -> Any:
    """Rewrite msgspec's JSON Schema (2020-12) into the draft 07 dialect.

    ``prefixItems`` becomes an ``items`` array (and ``items: false`` becomes
    ``additionalItems: false``); an OpenAPI-style ``discriminator`` object
    becomes AsyncAPI's discriminator (the property name).
    """
    if isinstance(schema, list):
        return [_draft7(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _draft7(value) for key, value in schema.items()}
    if "prefixItems" in out:
        out["items"] = out.pop("prefixItems")
        if schema.get("items") is False:
            out["additionalItems"] = False
        elif "items" in schema and schema["items"] is not False:
            out["additionalItems"] = _draft7(schema["items"])
    discriminator = out.get("discriminator")
    if isinstance(discriminator, dict):
        out["discriminator"] = discriminator.get("propertyName", "type")
    return out


_RECOVERY_DESCRIPTION: Final = (
    "A join with `since` (the position of the last message the client got) or `last` "
    "(the last N kept messages) is answered by this message, then the `missed` messages "
    "in order, then the live stream, with no gap and no duplicate. `recovered: false`: "
    "nothing was replayed (see `reason`); the client refetches its state and continues "
    "from `position`."
)


def _recovery_schema() -> dict[str, Any]:
    """The body of a ``recovery`` message (:meth:`pachinko.Recovery.to_message`)."""
    return {
        "type": "object",
        "properties": {
            "room": {"type": "string"},
            "recovered": {"type": "boolean"},
            "missed": {"type": "integer", "minimum": 0},
            "position": {
                "type": ["string", "null"],
                "description": "The room's position when its history was read "
                "(`epoch:offset`): after the missed messages the client is there.",
            },
            "reason": {
                "enum": [*RECOVERY_REASONS, None],
                "description": "Why `recovered` is false: "
                + "; ".join(f"`{k}`: {v}" for k, v in RECOVERY_REASONS.items())
                + ".",
            },
        },
        "required": ["room", "recovered", "missed", "position", "reason"],
        "additionalProperties": False,
    }


def _kept(policy: RoomPolicy) -> str:
    ttl = "" if policy.history_ttl is None else f" for {policy.history_ttl:g} s"
    return f"last {policy.history}{ttl}"


def _position_schema(policies: RoomPolicies) -> dict[str, Any]:
    """The optional position field of a message sent by a resource of a history app."""
    rooms = ", ".join(
        f"`{pattern}` ({_kept(policy)})" for pattern, policy in policies.items() if policy.history
    )
    return {
        "type": "string",
        "pattern": "^[^:]+:[0-9]+$",
        "maxLength": 64,
        "description": "Position of this message in its room's history, `epoch:offset`. "
        f"Present when the message was broadcast to a room that keeps history ({rooms}); "
        "a client that reconnects joins again with the last one as `since`.",
    }


def _positioned(
    ref: dict[str, Any], schemas: dict[str, Any], field: str, prop: dict[str, Any]
) -> dict[str, Any]:
    """A sent object's schema with the optional position field, inlined."""
    target = ref.get("$ref", "")
    base = schemas.get(target[len(_SCHEMAS) :], {}) if target.startswith(_SCHEMAS) else ref
    if base.get("type") != "object":
        return ref  # not an object: a broadcast to a history room refuses it
    schema = copy.deepcopy(base)  # NOTE: shared objects would become YAML anchors
    schema["properties"] = {**schema.get("properties", {}), field: copy.deepcopy(prop)}
    return schema


def _rooms_extension(policies: RoomPolicies) -> dict[str, Any]:
    """``x-pachinko-rooms``: the position field and the rooms that keep history."""
    rooms: dict[str, Any] = {}
    for pattern, policy in policies.items():
        if policy.history:
            rooms[pattern] = {"history": policy.history}
            if policy.history_ttl is not None:
                rooms[pattern]["historyTtl"] = policy.history_ttl
    return {"positionField": policies.position_field, "history": rooms}
