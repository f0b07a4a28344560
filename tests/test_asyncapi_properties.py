"""Property: any resource built from msgspec Structs gives a valid AsyncAPI 3.0 document."""

from __future__ import annotations

import datetime as dt
import json
import keyword
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import jsonschema
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pachinko
from pachinko import asyncapi

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "asyncapi-3.0.0-schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)

names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and n not in ("type", "kind", "payload")
)
tags = st.from_regex(r"[a-z][a-zA-Z0-9.]{0,10}", fullmatch=True)
scalars = st.sampled_from(
    [
        str,
        int,
        float,
        bool,
        dt.datetime,
        dt.date,
        uuid.UUID,
        bytes,
        Any,
        Annotated[str, msgspec.Meta(min_length=1, max_length=5, pattern="^[a-z]+$")],
        Annotated[int, msgspec.Meta(ge=0, le=10)],
        Annotated[float, msgspec.Meta(gt=0.5)],
        Literal["a", "b"],
    ]
)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        inner.map(lambda t: list[t]),  # type: ignore[valid-type]
        inner.map(lambda t: dict[str, t]),  # type: ignore[valid-type]
        inner.map(lambda t: Optional[t]),  # type: ignore[valid-type]  # noqa: UP045
        st.tuples(inner, inner).map(lambda p: tuple[p[0], p[1]]),  # type: ignore[valid-type]
    )


field_types = st.recursive(scalars, containers, max_leaves=4)


@st.composite
def structs(draw: st.DrawFn, tag: str | None = None, tag_field: str = "type") -> type:
    fields = draw(st.dictionaries(names, field_types, max_size=4))
    nested = draw(st.booleans())
    items: list[Any] = list(fields.items())
    if nested:
        inner = msgspec.defstruct(f"Inner{draw(names)}", [("x", int)])
        items.append(("inner", Optional[inner]))  # noqa: UP045
    return msgspec.defstruct(
        f"M_{draw(names)}",
        items,
        tag=tag,
        tag_field=tag_field if tag else None,
        forbid_unknown_fields=draw(st.booleans()),
    )


@st.composite
def resources(draw: st.DrawFn) -> type[pachinko.WebSocketResource]:
    wire = draw(st.sampled_from(["flat", "envelope"]))
    tag_field = draw(st.sampled_from(["type", "kind"]))
    tag_list = draw(st.lists(tags, min_size=1, max_size=4, unique=True))
    namespace: dict[str, Any] = {"wire": wire, "tag_field": tag_field}
    for index, tag in enumerate(tag_list):
        payload = draw(structs(tag if wire == "flat" else None, tag_field))

        async def handler(self: Any, ws: Any, payload: Any) -> None: ...

        handler.__annotations__ = {"payload": payload}
        namespace[f"handler_{index}"] = pachinko.handles_message(tag, strict=draw(st.booleans()))(
            handler
        )
    namespace["sends"] = tuple(draw(st.lists(structs(draw(tags)), max_size=3)))
    return type("Generated", (pachinko.WebSocketResource,), namespace)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(resources(), min_size=1, max_size=3), st.sampled_from(["/", "/ws", "/a/b"]))
def test_every_generated_api_is_valid_asyncapi(
    classes: list[type[pachinko.WebSocketResource]],
    prefix: str,
) -> None:
    router = pachinko.WebSocketRouter()
    for index, cls in enumerate(classes):
        router.add_route(f"/r{index}/{{room}}", cls, name=f"r{index}" if index % 2 else None)
    doc = asyncapi.document([(prefix, router)])
    problems = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in VALIDATOR.iter_errors(doc)]
    assert problems == []
    # every reference resolves inside the document
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node: Any = doc
        for key in ref[2:].split("/"):
            node = node[key]
    assert len(doc["channels"]) == len(classes)
    received = sum(
        len(op["messages"]) for name, op in doc["operations"].items() if op["action"] == "receive"
    )
    assert received == sum(len(cls.message_types()) for cls in classes)
