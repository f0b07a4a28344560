"""routes.toml: ``[app] authenticate``, ``[rooms]`` presence and authorize, ``authorize_join``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from falcon.errors import WebSocketDisconnected

from pachinko import User
from pachinko.config import ConfigFileError, compile_text, create_app
from tests.helpers import recv_json

HERE = __name__
UNAUTHORIZED = 3401


def from_query(req: Any) -> User | None:
    user = req.get_param("user")
    return None if user is None else User(user, {"teams": ["blue"] if user == "ann" else []})


async def is_member(resource: Any, room: str) -> bool:
    return room.removeprefix("team:") in resource.connection.user.info["teams"]


async def not_closed(resource: Any, room: str) -> bool:
    return room != "closed"


async def join(resource: Any, ws: Any, payload: Any) -> None:
    await resource.join_room(payload["room"])
    await resource.send({"type": "joined", "room": payload["room"]})


async def who(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send({"type": "who", "members": await resource.presence(payload["room"])})


def wrong_arity(resource: Any) -> bool:
    return True


CONFIG = f"""
[app]
authenticate = "{HERE}:from_query"

[settings]
presence_linger = 0

[rooms."team:*"]
presence = true
authorize = "{HERE}:is_member"

[rooms.lobby]
presence = true

[hooks]
authorize_join = "{HERE}:not_closed"

[[routes]]
path = "/rooms"
handlers.join = "{HERE}:join"
handlers.who = "{HERE}:who"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = tmp_path / "routes.toml"
    path.write_text(CONFIG)
    return path


async def test_authenticate_rooms_and_hooks_from_toml(config: Path, conductor_for: Any) -> None:
    conductor = await conductor_for(create_app(config))
    with pytest.raises(WebSocketDisconnected) as info:
        async with conductor.simulate_ws("/ws/rooms"):
            pass
    assert info.value.code == UNAUTHORIZED
    async with conductor.simulate_ws("/ws/rooms", query_string="user=ann") as ann:
        await ann.send_text('{"type": "join", "room": "team:blue"}')
        assert await recv_json(ann) == {
            "type": "presence",
            "event": "join",
            "room": "team:blue",
            "user": "ann",
            "info": {"teams": ["blue"]},
        }
        assert await recv_json(ann) == {"type": "joined", "room": "team:blue"}
        for room in ("team:red", "closed"):
            await ann.send_text(f'{{"type": "join", "room": "{room}"}}')
            reply = await recv_json(ann)
            assert (reply["reason"], reply["detail"]) == (
                "forbidden",
                f"join of room {room!r} refused: not allowed",
            )
        await ann.send_text('{"type": "who", "room": "team:blue"}')
        assert await recv_json(ann) == {"type": "who", "members": {"ann": {"teams": ["blue"]}}}


def test_bad_room_declarations_are_reported_with_their_key() -> None:
    text = f"""
[app]
authenticate = "{HERE}:wrong_arity_missing"

[rooms."team:*"]
authorize = "{HERE}:wrong_arity"

[rooms.lobby]
presense = true
"""
    with pytest.raises(ConfigFileError) as info:
        compile_text(text, "rooms.toml")
    assert str(info.value) == (
        "3 errors in rooms.toml\n"
        f"  rooms.toml:3: app.authenticate: expected an attribute 'wrong_arity_missing' in "
        f"'{HERE}', found '{HERE}' has no attribute 'wrong_arity_missing'\n"
        """  rooms.toml:6: rooms."team:*".authorize: expected a function that can be called """
        f"as authorize(resource, room), found {HERE}:wrong_arity(resource: 'Any') -> 'bool'\n"
        "  rooms.toml:9: rooms.lobby.presense: expected one of the keys history, history_ttl, "
        "presence, authorize, found unknown key 'presense' (did you mean 'presence'?)"
    )


def test_presence_and_history_share_the_rooms_table() -> None:
    compiled = compile_text(
        '[rooms."auction:*"]\nhistory = 100\nhistory_ttl = 600\npresence = true\n'
    )
    policy = compiled.rooms.lookup("auction:7")
    assert (policy.history, policy.history_ttl, policy.presence) == (100, 600, True)


def test_export_writes_presence_authorize_and_authenticate() -> None:
    import falcon.asgi

    import pachinko
    from pachinko import RoomPolicy, WebSocketRouter
    from pachinko.config import export_app

    app = falcon.asgi.App()
    router = WebSocketRouter()
    router.add_route("/rooms", pachinko.WebSocketResource)
    pachinko.mount(
        app,
        "/ws",
        router,
        authenticate=from_query,
        rooms={"team:*": RoomPolicy(presence=True, authorize=is_member)},
    )
    text = export_app(app)
    assert f'authenticate = "{HERE}:from_query"' in text
    assert f'[rooms."team:*"]\npresence = true\nauthorize = "{HERE}:is_member"' in text
    compiled = compile_text(text)
    assert compiled.authenticate is from_query
    assert compiled.rooms.lookup("team:x") == RoomPolicy(presence=True, authorize=is_member)
