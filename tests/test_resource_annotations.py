"""Payload annotations naming Structs local to a function resolve, whatever the class machinery."""

from __future__ import annotations

import abc
from typing import Any

import msgspec
import pytest

from pachinko import HandlerDefinitionError, WebSocketResource, WebSocketRouter
from tests.helpers import make_app, recv_json


class CountingBase(WebSocketResource):
    """An intermediate base with its own __init_subclass__ (an extra frame)."""

    created: list[str] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        CountingBase.created.append(cls.__name__)
        super().__init_subclass__(**kwargs)


class AbstractBase(WebSocketResource, metaclass=abc.ABCMeta):
    """ABCMeta.__new__ is Python code: another frame between class and base."""


def make_resource(base: type[WebSocketResource]) -> type[WebSocketResource]:
    class P(msgspec.Struct, tag="p"):
        value: int

    class R(base):  # type: ignore[valid-type,misc]
        async def on_p(self, ws: Any, payload: P) -> None:
            await self.send({"type": "got", "value": payload.value * 2})

    return R


@pytest.mark.parametrize("base", [CountingBase, AbstractBase, WebSocketResource])
async def test_function_local_structs_resolve_below_any_base(
    base: type[WebSocketResource], conductor_for: Any
) -> None:
    # used to fail: "HandlerDefinitionError: cannot resolve the payload annotation 'P'"
    resource = make_resource(base)
    spec = resource.message_types()["p"]
    assert spec.payload_type is not None
    assert spec.payload_type.__name__ == "P"
    router = WebSocketRouter()
    router.add_route("/p", resource)
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/p") as ws:
        await ws.send_text('{"type": "p", "value": 21}')
        assert await recv_json(ws) == {"type": "got", "value": 42}


def test_a_class_nested_in_a_class_resolves_the_outer_body() -> None:
    def make() -> type[WebSocketResource]:
        class Outer:
            class Q(msgspec.Struct, tag="q"):
                value: int

            class R(CountingBase):
                async def on_q(self, ws: Any, payload: Q) -> None: ...  # noqa: F821

        return Outer.R

    spec = make().message_types()["q"]
    assert spec.payload_type is not None
    assert spec.payload_type.__name__ == "Q"


def test_an_unresolvable_annotation_names_the_fix() -> None:
    def make() -> None:
        class R(CountingBase):
            async def on_x(self, ws: Any, payload: Later) -> None: ...

        class Later(msgspec.Struct, tag="x"):
            value: int

    with pytest.raises(HandlerDefinitionError) as info:
        make()
    assert str(info.value) == (
        "test_an_unresolvable_annotation_names_the_fix.<locals>.make.<locals>.R.on_x: "
        "cannot resolve the payload annotation 'Later': "
        "name 'Later' is not defined; define it before the class, at module level or in "
        "the function that defines the class"
    )
