"""Wiring, routing and the connection lifecycle through a real Falcon app."""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi
import falcon.testing
import pytest
from falcon.errors import WebSocketDisconnected

import pachinko
from pachinko import Refuse, RouteError, WebSocketResource, WebSocketRouter
from tests.helpers import (
    FORBIDDEN,
    INTERNAL_ERROR,
    NOT_FOUND,
    expect_close,
    make_app,
    recv_json,
)


class Echo(WebSocketResource):
    def __init__(self, label: str = "echo", *, suffix: str = "") -> None:
        self.label = label + suffix

    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        self.params = params
        return True

    async def on_echo(self, ws: Any, payload: Any) -> None:
        await self.send(
            {
                "type": "echo",
                "label": self.label,
                "params": self.params,
                "payload": payload.get("value"),
            }
        )


async def test_install_on_plain_app_returns_manager() -> None:
    app = falcon.asgi.App()
    manager = pachinko.install(app)
    assert isinstance(manager, pachinko.WebSocketConnectionManager)
    assert pachinko.install(app) is manager  # idempotent
    assert pachinko.runtime_of(app).manager is manager
    with pytest.raises(pachinko.PachinkoError, match="already installed"):
        pachinko.install(app, settings=pachinko.Settings(max_message_size=10))


async def test_routes_params_converters_and_constructor_args(conductor_for: Any) -> None:
    router = WebSocketRouter()
    router.add_route("/rooms/{room}", Echo, "room", suffix="!")
    router.add_route("/items/{item_id:int}", Echo, "item")
    router.add_route("/items/new", Echo, "literal")
    conductor = await conductor_for(make_app(router))
    cases = [
        ("/ws/rooms/blue", "room!", {"room": "blue"}),
        ("/ws/items/42", "item", {"item_id": 42}),
        ("/ws/items/new", "literal", {}),
    ]
    for path, label, params in cases:
        async with conductor.simulate_ws(path) as ws:
            await ws.send_text('{"type": "echo", "value": 1}')
            reply = await recv_json(ws)
            assert (reply["label"], reply["params"]) == (label, params)


@pytest.mark.parametrize("path", ["/ws/items/abc", "/ws/nowhere", "/ws", "/ws/rooms"])
async def test_unknown_paths_below_the_prefix_close_3404(conductor_for: Any, path: str) -> None:
    router = WebSocketRouter()
    router.add_route("/rooms/{room}", Echo)
    router.add_route("/items/{item_id:int}", Echo)
    conductor = await conductor_for(make_app(router))
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws(path):
            pass
    assert info.value.code == NOT_FOUND


async def test_paths_outside_the_prefix_are_falcons(conductor_for: Any) -> None:
    router = WebSocketRouter()
    router.add_route("/", Echo)
    app = make_app(router)

    class Page:
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.media = {"page": True}

    app.add_route("/page", Page())
    conductor = await conductor_for(app)
    assert (await conductor.simulate_get("/page")).json == {"page": True}
    # /wsx is not below /ws
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws("/wsx"):
            pass
    assert info.value.code == NOT_FOUND
    # plain HTTP to the WebSocket prefix
    result = await conductor.simulate_get("/ws")
    assert result.status_code == 426
    assert result.headers["upgrade"] == "websocket"
    async with conductor.simulate_ws("/ws") as ws:
        await ws.send_text('{"type": "echo"}')
        assert (await recv_json(ws))["label"] == "echo"


def test_url_for_includes_prefix_and_encodes() -> None:
    router = WebSocketRouter()
    router.add_route("/rooms/{room}", Echo, name="room")
    route = router.add_route("/teams/{team}", Echo, name="team")
    route.add_subroute("/members/{member:int}", Echo, name="member")
    make_app(router, prefix="/live")
    assert router.url_for("room", room="a b/c?") == "/live/rooms/a%20b%2Fc%3F"
    assert router.url_for("member", team="x", member=3) == "/live/teams/x/members/3"
    with pytest.raises(RouteError, match=r"no route named 'nope' \(known: member, room, team\)"):
        router.url_for("nope")
    with pytest.raises(RouteError, match="missing value for team"):
        router.url_for("team")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("/a/{x:nope}", "route '/a/{x:nope}': unknown converter 'nope'"),
        ("/a/{x}/{x}", "route '/a/{x}/{x}': field 'x' appears twice"),
        ("/a/{1x}", "route '/a/{1x}': field name '1x' is not a Python identifier"),
        ("/a//b", "route '/a//b': empty segment ('//')"),
        ("/a/{rest:path}/b", "route '/a/{rest:path}/b': a 'path' field must be the whole last"),
        ("/a/{x:int(min=)}", "route '/a/{x:int(min=)}': converter arguments must be"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(RouteError) as info:
        WebSocketRouter().add_route(template, Echo)
    assert str(info.value).startswith(message)


def test_conflicts_and_duplicate_names() -> None:
    router = WebSocketRouter()
    router.add_route("/rooms/{room}", Echo, name="room")
    with pytest.raises(RouteError, match=r"conflicts with '/rooms/\{room\}'"):
        router.add_route("/rooms/{other}", Echo)
    with pytest.raises(RouteError, match="route name 'room' is used twice"):
        router.add_route("/x", Echo, name="room")
    router.add_route("/rooms/{room:int}", Echo)  # a converter makes it different
    assert [r.template for r in router.routes()] == ["/rooms/{room}", "/rooms/{room:int}"]


async def test_no_resource_built_for_unmatched_routes(conductor_for: Any) -> None:
    built: list[str] = []

    def factory(label: str) -> Any:
        def make() -> Echo:
            built.append(label)
            return Echo(label)

        return make

    router = WebSocketRouter()
    for i in range(50):
        router.add_route(f"/r{i}", factory(f"r{i}"))
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/r7") as ws:
        await ws.send_text('{"type": "echo"}')
        await recv_json(ws)
    assert built == ["r7"]


@pytest.mark.parametrize("is_async", [False, True])
async def test_resource_factory_injects_dependencies(conductor_for: Any, is_async: bool) -> None:
    calls: list[tuple[Any, ...]] = []

    def sync_factory(target: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((target, args, kwargs))
        return target(*args, suffix="+di", **kwargs)

    async def async_factory(target: Any, *args: Any, **kwargs: Any) -> Any:
        return sync_factory(target, *args, **kwargs)

    router = WebSocketRouter(resource_factory=async_factory if is_async else sync_factory)
    router.add_route("/e", Echo, "base")
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/e") as ws:
        await ws.send_text('{"type": "echo"}')
        assert (await recv_json(ws))["label"] == "base+di"
    assert calls == [(Echo, ("base",), {})]


class Parent(WebSocketResource):
    def __init__(self) -> None:
        self.events: list[str] = []

    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        self.state["team"] = params["team"]
        return params["team"] != "closed"

    def get_child_context(self) -> dict[str, Any]:
        return {"greeting": f"hello {self.state['team']}"}


class Child(WebSocketResource):
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        self.params = params
        return True

    async def on_who(self, ws: Any, payload: Any) -> None:
        await self.send(
            {
                "type": "who",
                "greeting": self.greeting,
                "state": dict(self.state),
                "params": self.params,
            }
        )


async def test_nested_resources_share_state_and_context(conductor_for: Any) -> None:
    router = WebSocketRouter()
    router.add_route("/teams/{team}", Parent).add_subroute("/chat/{channel}", Child)
    conductor = await conductor_for(make_app(router))
    async with conductor.simulate_ws("/ws/teams/blue/chat/general") as ws:
        await ws.send_text('{"type": "who"}')
        assert await recv_json(ws) == {
            "type": "who",
            "greeting": "hello blue",
            "state": {"team": "blue"},
            "params": {"team": "blue", "channel": "general"},
        }
    # the parent refuses: the child is never built
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws("/ws/teams/closed/chat/general"):
            pass
    assert info.value.code == FORBIDDEN


async def test_nested_routers(conductor_for: Any) -> None:
    admin = WebSocketRouter()
    admin.add_route("/stats/{kind}", Echo, "stats", name="stats")
    router = WebSocketRouter()
    router.add_router("/admin", admin)
    admin.add_route("/late", Echo, "late")  # added after nesting
    make_app(router)
    app = make_app(router, prefix="/other")
    conductor = await conductor_for(app)
    # mounted at /ws and /other: each app builds its own URLs (tests/test_routing.py)
    assert pachinko.runtime_of(app).url_for("stats", kind="cpu") == "/other/admin/stats/cpu"
    async with conductor.simulate_ws("/other/admin/late") as ws:
        await ws.send_text('{"type": "echo"}')
        assert (await recv_json(ws))["label"] == "late"


# -- lifecycle ----------------------------------------------------------------


class Lifecycle(WebSocketResource):
    log: list[tuple[str, Any]] = []

    async def on_connect(self, req: Any, ws: Any, **params: Any) -> bool:
        mode = req.get_param("mode")
        if mode == "refuse":
            return False
        if mode == "custom":
            raise Refuse(4001, "no token")
        if mode == "proto":
            await ws.accept(subprotocol="chat.v2")
        if mode == "crash":
            raise RuntimeError("on_connect failed")
        return True

    async def on_disconnect(self, ws: Any, close_code: int) -> None:
        self.log.append(("disconnect", close_code))

    async def on_ping(self, ws: Any, payload: Any) -> None:
        if payload.get("crash"):
            raise ValueError("crash in handler")
        if payload.get("close"):
            await ws.close(4000)
            return
        await self.send({"type": "pong", "subprotocol": None})


@pytest.fixture
def lifecycle_app() -> Any:
    Lifecycle.log = []
    router = WebSocketRouter()
    router.add_route("/life", Lifecycle)
    return make_app(router)


@pytest.mark.parametrize(("mode", "code"), [("refuse", FORBIDDEN), ("crash", INTERNAL_ERROR)])
async def test_on_connect_refusal(
    conductor_for: Any, lifecycle_app: Any, mode: str, code: int
) -> None:
    conductor = await conductor_for(lifecycle_app)
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws("/ws/life", query_string=f"mode={mode}"):
            pass
    assert info.value.code == code
    assert Lifecycle.log == []  # never accepted: no on_disconnect


async def test_refuse_with_own_code_accepts_then_closes(
    conductor_for: Any, lifecycle_app: Any
) -> None:
    conductor = await conductor_for(lifecycle_app)
    # the close may reach the simulated client before or after it saw the accept
    try:
        async with conductor.simulate_ws("/ws/life", query_string="mode=custom") as ws:
            code = await expect_close(ws)
    except WebSocketDisconnected as ex:
        code = ex.code
    assert code == 4001
    assert Lifecycle.log == []


async def test_subprotocol_from_on_connect(conductor_for: Any, lifecycle_app: Any) -> None:
    conductor = await conductor_for(lifecycle_app)
    async with conductor.simulate_ws(
        "/ws/life", query_string="mode=proto", subprotocols=["chat.v1", "chat.v2"]
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        await ws.send_text('{"type": "ping"}')
        assert (await recv_json(ws))["type"] == "pong"


@pytest.mark.parametrize(
    ("how", "code"),
    [("client", 1000), ("client-4100", 4100), ("server", 4000), ("crash", INTERNAL_ERROR)],
)
async def test_on_disconnect_runs_exactly_once(
    conductor_for: Any, lifecycle_app: Any, how: str, code: int
) -> None:
    conductor = await conductor_for(lifecycle_app)
    async with conductor.simulate_ws("/ws/life") as ws:
        await ws.send_text('{"type": "ping"}')
        await recv_json(ws)
        if how == "client":
            await ws.close()
        elif how == "client-4100":
            await ws.close(4100)
        elif how == "server":
            await ws.send_text('{"type": "ping", "close": true}')
            assert await expect_close(ws) == 4000
        else:
            await ws.send_text('{"type": "ping", "crash": true}')
            assert await expect_close(ws) == INTERNAL_ERROR
    assert Lifecycle.log == [("disconnect", code)]


async def test_on_disconnect_runs_on_shutdown(lifecycle_app: Any) -> None:
    async with falcon.testing.ASGIConductor(lifecycle_app) as conductor:
        ws_cm = conductor.simulate_ws("/ws/life")
        ws = await ws_cm.__aenter__()
        await ws.send_text('{"type": "ping"}')
        await recv_json(ws)
        await pachinko.runtime_of(lifecycle_app).shutdown()
        assert await expect_close(ws) == 1001
        await ws_cm.__aexit__(None, None, None)
    assert Lifecycle.log == [("disconnect", 1001)]


async def test_two_apps_do_not_interfere(conductor_for: Any) -> None:
    seen: list[str] = []

    def router_with_hook(label: str) -> WebSocketRouter:
        router = WebSocketRouter()
        router.add_route("/e", Echo, label)

        async def hook(resource: Any, ws: Any, message: str) -> None:
            seen.append(label)

        router.add_hook("before_receive", hook)
        return router

    app_a = make_app(router_with_hook("a"), settings=pachinko.Settings(max_message_size=1000))
    app_b = make_app(router_with_hook("b"), settings=pachinko.Settings(max_message_size=20))
    a, b = await conductor_for(app_a), await conductor_for(app_b)
    async with a.simulate_ws("/ws/e") as ws_a, b.simulate_ws("/ws/e") as ws_b:
        await ws_a.send_text('{"type": "echo", "value": "xxxxxxxxxxxx"}')
        assert (await recv_json(ws_a))["label"] == "a"
        await ws_b.send_text('{"type": "echo", "value": "xxxxxxxxxxxx"}')
        assert await expect_close(ws_b) == 1009
    assert seen == ["a"]
    assert pachinko.runtime_of(app_a).manager is not pachinko.runtime_of(app_b).manager


def test_a_router_tree_can_be_walked() -> None:
    async def hook(resource: Any, ws: Any, message: str) -> None: ...

    admin = WebSocketRouter()
    admin.add_route("/stats", Echo, name="stats")
    router = WebSocketRouter()
    router.add_route("/a", Echo)
    router.add_router("/admin", admin)
    router.add_hook("before_receive", hook, resource=Echo)
    assert [r.template for r in router.own_routes] == ["/a"]
    assert [(prefix, child) for prefix, child in router.nested] == [("/admin", admin)]
    assert router.hooks == [("before_receive", hook, Echo)]
    assert [r.template for r in router.routes()] == ["/a", "/admin/stats"]
    assert admin.root is router
