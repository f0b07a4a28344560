"""Hooks run in onion order: global, parent, child, handler, child, parent, global."""

from __future__ import annotations

from typing import Any

import pytest

from pachinko import WebSocketResource, WebSocketRouter
from tests.helpers import INTERNAL_ERROR, eventually, expect_close, make_app, recv_json


class Traced(WebSocketResource):
    level = "?"
    log: list[str]  # one list per test (see classes_logging_to)

    async def before_connect(self, req: Any, ws: Any, params: dict[str, Any]) -> None:
        self.log.append(f"{self.level}.before_connect")

    async def after_connect(self, ws: Any) -> None:
        self.log.append(f"{self.level}.after_connect")

    async def before_receive(self, ws: Any, message: str) -> None:
        self.log.append(f"{self.level}.before_receive")
        if "stop-in-" + self.level in message:
            raise PermissionError(f"stopped by {self.level}")

    async def after_receive(self, ws: Any, message: str) -> None:
        self.log.append(f"{self.level}.after_receive")

    async def before_disconnect(self, ws: Any, close_code: int) -> None:
        self.log.append(f"{self.level}.before_disconnect")

    async def on_disconnect(self, ws: Any, close_code: int) -> None:
        self.log.append(f"{self.level}.on_disconnect")


class Parent(Traced):
    level = "parent"


class Child(Traced):
    level = "child"

    async def on_go(self, ws: Any, payload: Any) -> None:
        self.log.append("handler")
        await self.send({"type": "done"})


def classes_logging_to(log: list[str]) -> tuple[type[Parent], type[Child]]:
    """``Parent`` and ``Child`` recording into ``log``."""
    return (
        type("Parent", (Parent,), {"log": log}),
        type("Child", (Child,), {"log": log}),
    )


def global_hooks(router: WebSocketRouter, name: str, log: list[str]) -> None:
    def make(event: str) -> Any:
        async def hook(resource: Any, *args: Any) -> None:
            log.append(f"{name}.{event}")
            if event == "before_receive" and f"stop-in-{name}" in args[1]:
                raise PermissionError(f"stopped by {name}")

        return hook

    for event in (
        "before_connect",
        "after_connect",
        "before_receive",
        "after_receive",
        "before_disconnect",
    ):
        router.add_hook(event, make(event))


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def app(log: list[str]) -> Any:
    parent, child = classes_logging_to(log)
    inner = WebSocketRouter()
    inner.add_route("/p", parent).add_subroute("/c", child)
    outer = WebSocketRouter()
    outer.add_router("/nested", inner)
    global_hooks(outer, "outer", log)
    global_hooks(inner, "inner", log)
    return make_app(outer)


async def test_onion_order(conductor_for: Any, app: Any, log: list[str]) -> None:
    conductor = await conductor_for(app)
    async with conductor.simulate_ws("/ws/nested/p/c") as ws:
        await ws.send_text('{"type": "go"}')
        assert await recv_json(ws) == {"type": "done"}
        # the reply goes out before the after_receive hooks run
        await eventually(lambda: log[-1] == "outer.after_receive")
        assert log == [
            "outer.before_connect",
            "inner.before_connect",
            "parent.before_connect",
            "child.before_connect",
            "child.after_connect",
            "parent.after_connect",
            "inner.after_connect",
            "outer.after_connect",
            "outer.before_receive",
            "inner.before_receive",
            "parent.before_receive",
            "child.before_receive",
            "handler",
            "child.after_receive",
            "parent.after_receive",
            "inner.after_receive",
            "outer.after_receive",
        ]
        log.clear()
    assert log == [
        "outer.before_disconnect",
        "inner.before_disconnect",
        "parent.before_disconnect",
        "child.before_disconnect",
        "child.on_disconnect",
        "parent.on_disconnect",
    ]


@pytest.mark.parametrize("where", ["outer", "parent"])
async def test_exception_in_before_hook_stops_the_step(
    conductor_for: Any, app: Any, log: list[str], where: str
) -> None:
    conductor = await conductor_for(app)
    async with conductor.simulate_ws("/ws/nested/p/c") as ws:
        log.clear()
        await ws.send_text(f'{{"type": "go", "x": "stop-in-{where}"}}')
        assert await expect_close(ws) == INTERNAL_ERROR
    assert "handler" not in log
    assert not any(entry.endswith("after_receive") for entry in log)


async def test_hooks_for_one_resource_class(conductor_for: Any, log: list[str]) -> None:
    parent, child = classes_logging_to(log)
    router = WebSocketRouter()
    router.add_route("/p", parent)
    router.add_route("/c", child)

    async def only_child(resource: Any, ws: Any, message: str) -> None:
        log.append(f"only-child:{resource.level}")

    router.add_hook("before_receive", only_child, resource=child)
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/c") as ws:
        await ws.send_text('{"type": "go"}')
        await recv_json(ws)
    async with conductor.simulate_ws("/ws/p") as ws:
        await ws.send_text('{"type": "go"}')
        await recv_json(ws)  # unknown type for Parent: an error reply
    assert [e for e in log if e.startswith("only-child")] == ["only-child:child"]


def test_unknown_event_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown event 'before_send'"):
        WebSocketRouter().add_hook("before_send", lambda *a: None)  # type: ignore[arg-type,return-value]
