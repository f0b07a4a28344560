"""Misuse of the routing and wiring API raises builtin-derived errors, as Falcon's does."""

from __future__ import annotations

from typing import Any

import falcon.asgi
import pytest

import pachinko
from pachinko import ConfigError, PachinkoError, RouteError, WebSocketResource, WebSocketRouter


class Resource(WebSocketResource):
    pass


def test_a_target_that_is_not_callable_is_a_type_error() -> None:
    router = WebSocketRouter()
    with pytest.raises(TypeError) as info:
        router.add_route("/a", Resource())  # an instance, not the class
    assert not isinstance(info.value, ValueError)
    assert str(info.value).startswith(
        "add_route('/a'): target must be a resource class or factory, got <"
    )
    assert router.routes() == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.add_route(b"/a", Resource), "add_route(): path must be a str, got bytes"),
        (
            lambda r: r.add_route("/a", Resource).add_subroute(1, Resource),
            "add_subroute(): path must be a str, got int",
        ),
        (
            lambda r: r.add_router("/x", object()),
            "add_router('/x'): expected a WebSocketRouter, got object",
        ),
        (
            lambda r: pachinko.mount(falcon.asgi.App(), "/ws", object()),
            "mount('/ws'): expected a WebSocketRouter, got object",
        ),
        (
            lambda r: pachinko.mount(falcon.asgi.App(), None, r),
            "mount(): prefix must be a str, got NoneType",
        ),
    ],
)
def test_wrong_types_are_type_errors(call: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        call(WebSocketRouter())
    assert str(info.value) == message


def test_mount_errors_are_route_errors() -> None:
    app = falcon.asgi.App()
    router = WebSocketRouter()
    with pytest.raises(RouteError) as info:
        pachinko.mount(app, "ws", router)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "mount(): prefix must start with '/', got 'ws'"
    pachinko.mount(app, "/ws", router)
    with pytest.raises(RouteError) as info:
        pachinko.mount(app, "/ws/", WebSocketRouter())
    assert str(info.value) == "mount(): a router is already mounted at '/ws'"


@pytest.mark.parametrize("name", ["manager", "settings"])
def test_reserved_service_names_are_refused_by_install(name: str) -> None:
    app = falcon.asgi.App()
    with pytest.raises(ConfigError) as info:
        pachinko.install(app, services={name: object})
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        f"services: {name!r} is reserved for the app's own object "
        "(injected into workers by that name); rename the service"
    )
    # nothing was installed
    with pytest.raises(PachinkoError, match="pachinko is not installed on this app"):
        pachinko.runtime_of(app)


def test_installing_again_with_other_options_is_a_config_error() -> None:
    app = falcon.asgi.App()
    pachinko.install(app)
    with pytest.raises(ConfigError, match=r"install\(\): pachinko is already installed"):
        pachinko.install(app, settings=pachinko.Settings(max_message_size=10))
