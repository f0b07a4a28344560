"""The ``pachinko`` command, in-process with click's CliRunner."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from pachinko import Settings
from pachinko.cli import main, uvicorn_options
from pachinko.config import ConfigFileError, load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "routes.example.toml"
SCHEMA = Path(__file__).parent / "fixtures" / "asyncapi-3.0.0-schema.json"
COMMANDS = ["serve", "check", "routes", "asyncapi", "init", "export"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run with the repository root as working directory (as the README does)."""
    monkeypatch.chdir(ROOT)


def run(runner: CliRunner, *args: str, env: dict[str, str | None] | None = None) -> Any:
    return runner.invoke(main, list(args), env=env, catch_exceptions=False)


# -- help -----------------------------------------------------------------------


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = run(runner, "--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f"  {command} " in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(runner: CliRunner, command: str) -> None:
    result = run(runner, command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: pachinko {command}" in result.output


def test_unknown_command_is_a_usage_error(runner: CliRunner) -> None:
    result = run(runner, "srve")
    assert result.exit_code == 2
    assert "No such command 'srve'" in result.output


# -- check ----------------------------------------------------------------------


def test_check_accepts_the_example(runner: CliRunner, in_root: None) -> None:
    result = run(runner, "check", "routes.example.toml")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "routes.example.toml: OK (1 route, 1 worker, 1 service, 9 declared types; "
        "messages summed over routes: 4 in, 5 out)\n"
    )


def test_check_says_what_it_counts(runner: CliRunner, tmp_path: Path) -> None:
    # Two routes share one type each way: 3 declared types (one unused), and
    # the messages are counted once per route, as `pachinko routes` lists them.
    config = tmp_path / "routes.toml"
    config.write_text(
        textwrap.dedent("""\
            [types.Join.fields]
            room = "str"

            [types.Joined]
            tag = "joined"
            fields = { room = "str" }

            [types.Unused.fields]
            x = "int"

            [[routes]]
            path = "/a"
            sends = ["Joined"]
            handlers.join = { handler = "tests.test_cli:echo", payload = "Join" }

            [[routes]]
            path = "/b"
            sends = ["Joined"]
            handlers.join = { handler = "tests.test_cli:echo", payload = "Join" }
        """)
    )
    result = run(runner, "check", str(config))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{config}: OK (2 routes, 0 workers, 0 services, 3 declared types; "
        "messages summed over routes: 2 in, 2 out)\n"
    )


async def echo(resource: Any, ws: Any, payload: Any) -> None:
    await resource.send(payload)


BROKEN = textwrap.dedent("""\
    [app]
    prefx = "/ws"

    [types.Join.fields]
    room = { type = "strr" }

    [[routes]]
    path = "/chat"
    handlers.join = { handler = "no_such_module_xyz:join", payload = "Join" }
""")


def test_check_prints_every_error_as_the_config_layer_formats_them(
    runner: CliRunner,
    tmp_path: Path,
) -> None:
    config = tmp_path / "routes.toml"
    config.write_text(BROKEN)
    with pytest.raises(ConfigFileError) as caught:
        load_config(str(config))
    assert len(caught.value.issues) >= 3  # every problem, not the first one
    result = run(runner, "check", str(config))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == str(caught.value) + "\n"
    assert "prefx" in result.stderr
    assert "no_such_module_xyz" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_of_a_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "check", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert result.stderr == f"Error: configuration file {tmp_path / 'nope.toml'} does not exist\n"


def test_check_of_a_directory(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "check", str(tmp_path))
    assert result.exit_code == 2
    assert "is a directory" in result.stderr


def test_check_requires_a_config(runner: CliRunner) -> None:
    result = run(runner, "check")
    assert result.exit_code == 2
    assert "Missing argument 'CONFIG'" in result.output


# -- routes ---------------------------------------------------------------------


def test_routes_prints_the_compiled_table(runner: CliRunner, in_root: None) -> None:
    result = run(runner, "routes", "routes.example.toml")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PATH", "NAME", "RESOURCE", "DIR", "TYPE", "HANDLER", "PAYLOAD"]
    first = lines[1].split()
    assert first[:2] == ["/ws/chat", "chat"]
    assert first[3:] == ["in", "join", "examples.chat.handlers:join", "Join"]
    rows = [line.split()[-4:] for line in lines[1:]]
    assert ["in", "say", "examples.chat.handlers:say", "Say"] in rows
    assert ["out", "typing", "-", "TypingNotice"] in rows
    assert len(lines) == 1 + 9  # 4 in, 5 out (pachinko's presence events are not the route's)


def test_routes_as_json(runner: CliRunner, in_root: None) -> None:
    result = run(runner, "routes", "routes.example.toml", "--json")
    assert result.exit_code == 0
    (route,) = json.loads(result.stdout)
    assert route["path"] == "/ws/chat"
    assert route["name"] == "chat"
    assert route["wire"] == "flat"
    assert route["tag_field"] == "type"
    incoming = {m["type"]: m for m in route["messages"] if m["direction"] == "in"}
    assert set(incoming) == {"join", "leave", "say", "typing"}
    assert incoming["typing"]["handler"] == "examples.chat.handlers:typing"
    outgoing = [m["type"] for m in route["messages"] if m["direction"] == "out"]
    assert outgoing == ["joined", "message", "typing", "heartbeat", "error"]


def test_routes_of_a_broken_file_fails_like_check(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "routes.toml"
    config.write_text(BROKEN)
    result = run(runner, "routes", str(config))
    assert result.exit_code == 1
    assert result.stderr.startswith("3 errors in") or "errors in" in result.stderr.splitlines()[0]


# -- asyncapi -------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def test_asyncapi_of_the_example_validates_against_the_official_schema(
    runner: CliRunner,
    in_root: None,
    asyncapi_validator: jsonschema.Draft7Validator,
) -> None:
    result = run(
        runner,
        "asyncapi",
        "routes.example.toml",
        "--title",
        "Chat",
        "--server",
        "ws://localhost:8000",
    )
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    problems = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in asyncapi_validator.iter_errors(doc)
    ]
    assert problems == []
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "Chat"
    assert doc["channels"]["chat"]["address"] == "/ws/chat"
    ops = doc["operations"]
    assert ops["chat.receive"]["action"] == "receive"
    assert ops["chat.send"]["action"] == "send"
    assert len(ops["chat.receive"]["messages"]) == 4
    # the app's 5 sends, the recovery message (history rooms), pachinko's presence
    assert len(ops["chat.send"]["messages"]) == 7
    assert ops["chat.send"]["messages"][-1] == {"$ref": "#/channels/chat/messages/send.presence"}
    join = doc["components"]["messages"]["ChatResource.receive.join"]["payload"]
    assert join["properties"]["room"]["pattern"] == "^[A-Za-z0-9_-]+$"
    assert join["properties"]["type"] == {"type": "string", "const": "join"}
    assert join["additionalProperties"] is False
    # a real message of the chat protocol validates against its payload schema
    checker = jsonschema.Draft7Validator(
        {**doc, "$ref": "#/components/messages/ChatResource.receive.join/payload"}
    )
    assert checker.is_valid({"type": "join", "room": "lobby"})
    assert not checker.is_valid({"type": "join", "room": "lob by"})


def test_asyncapi_json_to_a_file(
    runner: CliRunner,
    in_root: None,
    tmp_path: Path,
    asyncapi_validator: jsonschema.Draft7Validator,
) -> None:
    out = tmp_path / "chat.json"
    result = run(runner, "asyncapi", "routes.example.toml", "--format", "json", "-o", str(out))
    assert result.exit_code == 0
    assert result.stdout == ""
    doc = json.loads(out.read_text())
    assert doc["info"]["title"] == "routes.example"
    assert list(asyncapi_validator.iter_errors(doc)) == []


def test_asyncapi_refuses_a_bad_server_url(runner: CliRunner, in_root: None) -> None:
    result = run(runner, "asyncapi", "routes.example.toml", "--server", "localhost:8000")
    assert result.exit_code == 2
    assert "server must be a ws:// or wss:// URL" in result.stderr


def test_asyncapi_refuses_an_unknown_format(runner: CliRunner, in_root: None) -> None:
    result = run(runner, "asyncapi", "routes.example.toml", "--format", "xml")
    assert result.exit_code == 2
    assert "'xml' is not one of 'yaml', 'json'" in result.output


# -- init -----------------------------------------------------------------------


def test_init_writes_a_starter_that_checks(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "app"
    result = run(runner, "init", str(target))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in target.iterdir()) == ["handlers.py", "routes.toml"]
    assert f"cd {target} && pachinko serve" in result.stdout
    result = run(runner, "check", str(target / "routes.toml"))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{target / 'routes.toml'}: OK (1 route, 0 workers, 0 services, 4 declared types; "
        "messages summed over routes: 2 in, 2 out)\n"
    )


def test_init_refuses_to_overwrite(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "routes.toml").write_text("# mine\n")
    result = run(runner, "init", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path / 'routes.toml'} already exists; use --force to overwrite\n"
    )
    assert (tmp_path / "routes.toml").read_text() == "# mine\n"
    assert not (tmp_path / "handlers.py").exists()
    result = run(runner, "init", str(tmp_path), "--force")
    assert result.exit_code == 0
    assert "[[routes]]" in (tmp_path / "routes.toml").read_text()


def test_init_in_the_current_directory(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(runner, "init")
    assert result.exit_code == 0
    assert (tmp_path / "routes.toml").is_file()
    assert (tmp_path / "handlers.py").is_file()
    assert "next: pachinko serve" in result.stdout


# -- serve (what is refused before uvicorn starts) ------------------------------


def test_serve_refuses_workers_with_the_in_process_backend(
    runner: CliRunner,
    in_root: None,
) -> None:
    result = run(
        runner, "serve", "routes.example.toml", "--workers", "3", env={"PACHINKO_BACKEND": None}
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --workers 3 needs a shared backend, but routes.example.toml uses the in-process "
        "backend ('memory://'): rooms, users and broadcasts would not cross the 3 processes. "
        "Set [settings] backend to a Redis URL (redis://host:6379/0) or serve with one worker.\n"
    )


def test_serve_refuses_reload_with_workers(runner: CliRunner, in_root: None) -> None:
    result = run(
        runner,
        "serve",
        "routes.example.toml",
        "--workers",
        "2",
        "--reload",
        env={"PACHINKO_BACKEND": "redis://127.0.0.1:1/0"},
    )
    assert result.exit_code == 2
    assert "--reload runs one process; it cannot be combined with --workers > 1" in result.stderr


def test_serve_without_a_config_points_at_init(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(runner, "serve")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: configuration file routes.toml does not exist (create one with: pachinko init)\n"
    )


def test_serve_of_a_broken_file_prints_every_error(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "routes.toml"
    config.write_text(BROKEN)
    result = run(runner, "serve", str(config))
    assert result.exit_code == 1
    assert "no_such_module_xyz" in result.stderr
    assert "prefx" in result.stderr


@pytest.mark.parametrize("bad", [["--workers", "0"], ["--port", "70000"]])
def test_serve_validates_numbers(runner: CliRunner, in_root: None, bad: list[str]) -> None:
    result = run(runner, "serve", "routes.example.toml", *bad)
    assert result.exit_code == 2
    assert "Invalid value for" in result.output


def test_uvicorn_options_come_from_settings() -> None:
    settings = Settings(
        max_message_size=1234, ping_interval=7.0, ping_timeout=3.0, shutdown_timeout=2.5
    )
    options = uvicorn_options(settings, host="127.0.0.1", port=0)
    assert options == {
        "lifespan": "on",
        "ws_max_size": 1234,
        "ws_ping_interval": 7.0,
        "ws_ping_timeout": 3.0,
        "timeout_graceful_shutdown": 3,
        "handshake_timeout": 10.0,
        "h11_max_incomplete_event_size": 16384,
        "timeout_keep_alive": 5,
        "host": "127.0.0.1",
        "port": 0,
    }
    assert uvicorn_options(Settings(ping_interval=None))["ws_ping_interval"] is None


# -- export ---------------------------------------------------------------------

EXPORTABLE = textwrap.dedent("""\
    import functools
    from typing import Annotated, Any

    import falcon.asgi
    import msgspec

    import pachinko


    class Join(msgspec.Struct):
        room: Annotated[str, msgspec.Meta(min_length=1)]


    class Joined(msgspec.Struct, tag="joined"):
        room: str


    class Rooms(pachinko.WebSocketResource):
        sends = (Joined,)

        @pachinko.handles_message("join")
        async def join(self, ws: Any, payload: Join) -> None:
            await self.send(Joined(room=payload.room))


    router = pachinko.WebSocketRouter()
    router.add_route("/rooms", Rooms, name="rooms")


    class Enter(msgspec.Struct, tag="enter"):
        room: str


    class SchemaRooms(pachinko.WebSocketResource):
        schema = Enter

        async def on_enter(self, ws: Any, payload: Enter) -> None:
            await self.send({"type": "entered", "room": payload.room})


    schema_router = pachinko.WebSocketRouter()
    schema_router.add_route("/enter", SchemaRooms)
    app = falcon.asgi.App()
    pachinko.mount(app, "/api", router, settings=pachinko.Settings(max_message_size=2048))


    class Store:
        def __init__(self, size: int = 1) -> None:
            self.size = size


    @pachinko.worker(restart=pachinko.RestartPolicy(max_restarts=2))
    async def beat(manager: Any) -> None:
        pass


    def make_app(workers: list[Any]) -> falcon.asgi.App:
        made = falcon.asgi.App()
        pachinko.mount(
            made,
            "/api",
            router,
            settings=pachinko.Settings(rate_limit=None),
            services={"store": functools.partial(Store, size=3)},
            workers=workers,
        )
        return made


    full = make_app([beat])


    async def local_beat(manager: Any) -> None:
        pass


    closure = make_app([local_beat])
    local_beat.__qualname__ = "make.<locals>.local_beat"
    bare = falcon.asgi.App()
    VALUE = 42
    lam = pachinko.WebSocketRouter()
    lam.add_route("/x", lambda: Rooms())
""")


_modules = itertools.count()


@pytest.fixture
def exportable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Python module defining routers, importable from the working directory."""
    name = f"exportable_{next(_modules)}"
    (tmp_path / f"{name}.py").write_text(EXPORTABLE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    return name


def test_export_a_router_then_check_and_list_it(
    runner: CliRunner,
    exportable: str,
    tmp_path: Path,
) -> None:
    result = run(runner, "export", f"{exportable}:router", "--prefix", "/ws")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert 'prefix = "/ws"' in text
    assert f'"{exportable}:Rooms"' in text
    config = tmp_path / "exported.toml"
    config.write_text(text)
    assert run(runner, "check", str(config)).exit_code == 0
    listed = run(runner, "routes", str(config), "--json")
    (route,) = json.loads(listed.stdout)
    assert route["path"] == "/ws/rooms"
    assert route["name"] == "rooms"
    assert [(m["direction"], m["type"]) for m in route["messages"]] == [
        ("in", "join"),
        ("out", "joined"),
    ]


async def test_export_of_a_schema_resource_loads_and_answers(
    runner: CliRunner,
    exportable: str,
    tmp_path: Path,
) -> None:
    result = run(runner, "export", f"{exportable}:schema_router")
    assert result.exit_code == 0, result.output
    config = tmp_path / "exported.toml"
    config.write_text(result.stdout)
    checked = run(runner, "check", str(config))
    assert checked.exit_code == 0, checked.output
    import pachinko
    from pachinko.testing import AppClient

    async with (
        AppClient(pachinko.create_app(config)) as client,
        client.websocket("/ws/enter") as ws,
    ):
        await ws.send_json({"type": "enter", "room": "hall"})
        assert await ws.receive_json() == {"type": "entered", "room": "hall"}
        await ws.send_json({"type": "enter", "room": 1})
        assert (await ws.receive_json())["reason"] == "validation_error"


def test_export_a_falcon_app_keeps_its_prefix_and_settings(
    runner: CliRunner,
    exportable: str,
    tmp_path: Path,
) -> None:
    out = tmp_path / "app.toml"
    result = run(runner, "export", f"{exportable}:app", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote {out}\n"
    compiled = load_config(str(out))
    assert compiled.prefix == "/api"
    assert compiled.settings.max_message_size == 2048


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "nocolon",
            "Error: cannot import nocolon: expected an import path "
            "'package.module:attribute', found 'nocolon'\n",
        ),
        (
            "no_such_module_q:router",
            "Error: cannot import no_such_module_q:router: expected an "
            "importable module 'no_such_module_q', found no module named "
            "'no_such_module_q'\n",
        ),
    ],
)
def test_export_import_errors(runner: CliRunner, target: str, message: str) -> None:
    result = run(runner, "export", target)
    assert result.exit_code == 1
    assert result.stderr == message


def test_export_of_a_missing_attribute(runner: CliRunner, exportable: str) -> None:
    result = run(runner, "export", f"{exportable}:nope")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: cannot import {exportable}:nope: expected an attribute 'nope' in "
        f"'{exportable}', found '{exportable}' has no attribute 'nope'\n"
    )


@pytest.mark.parametrize(
    ("attr", "found"),
    [
        ("VALUE", "found int"),
        ("bare", "found a Falcon app with 0 mounted routers"),
    ],
)
def test_export_refuses_what_is_not_a_router(
    runner: CliRunner,
    exportable: str,
    attr: str,
    found: str,
) -> None:
    result = run(runner, "export", f"{exportable}:{attr}")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {exportable}:{attr} must be a WebSocketRouter or a Falcon app with one "
        f"mounted router, {found}\n"
    )


def test_export_of_something_without_an_import_path(runner: CliRunner, exportable: str) -> None:
    result = run(runner, "export", f"{exportable}:lam")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot export {exportable}:lam:\n")
    assert "lambda" in result.stderr


def test_export_a_python_app_with_its_services_and_workers(
    runner: CliRunner,
    exportable: str,
    tmp_path: Path,
) -> None:
    result = run(runner, "export", f"{exportable}:full")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith('[app]\nprefix = "/api"\n\n[settings]\nrate_limit = false\n\n'), text
    assert (
        f'[services.store]\nfactory = "{exportable}:Store"\n\n[services.store.kwargs]\nsize = 3\n'
    ) in text
    assert f'[workers.beat]\ntarget = "{exportable}:beat"\n' in text
    config = tmp_path / "exported.toml"
    config.write_text(text)
    compiled = load_config(str(config))
    assert compiled.settings.rate_limit is None
    assert compiled.services["store"].kwargs == {"size": 3}
    restart = compiled.workers["beat"].restart
    assert restart is not None
    assert restart.max_restarts == 2


def test_export_refuses_a_worker_without_an_import_path(runner: CliRunner, exportable: str) -> None:
    result = run(runner, "export", f"{exportable}:closure")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: cannot export {exportable}:closure:\n"
        "1 error in <export>\n"
        "  <export>: workers.local_beat.target: expected a module-level class or function, "
        "found <function make.<locals>.local_beat at "
    )


EXAMPLE_APP = textwrap.dedent("""\
    import pachinko

    app = pachinko.create_app({path!r})
    router = pachinko.config.load_config({path!r}).router
""")


@pytest.fixture
def example_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module serving routes.example.toml (an app made from a file, then exported)."""
    name = f"example_app_{next(_modules)}"
    (tmp_path / f"{name}.py").write_text(EXAMPLE_APP.format(path=str(EXAMPLE)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [str(ROOT), *__import__("sys").path])
    return name


def test_export_of_an_app_from_toml_round_trips(
    runner: CliRunner, example_app: str, tmp_path: Path
) -> None:
    result = run(runner, "export", f"{example_app}:app")
    assert result.exit_code == 0, result.output
    config = tmp_path / "exported.toml"
    config.write_text(result.stdout)
    for table in ("[services.chat]", "[workers.heartbeat]", "examples.chat.page:add_page"):
        assert table in result.stdout
    checked = run(runner, "check", str(config))
    assert checked.exit_code == 0, checked.output
    assert checked.stdout == run(runner, "check", str(EXAMPLE)).stdout.replace(
        str(EXAMPLE), str(config)
    )
    for command in (["routes", "--json"], ["asyncapi", "--format", "json", "--title", "t"]):
        exported = run(runner, command[0], str(config), *command[1:])
        original = run(runner, command[0], str(EXAMPLE), *command[1:])
        assert exported.exit_code == original.exit_code == 0
        assert json.loads(exported.stdout) == json.loads(original.stdout)
    # Exporting the export gives the same file.
    again = load_config(str(config))
    from pachinko.config.export import _declared

    assert _declared(again, None) == _declared(load_config(str(EXAMPLE)), None)


def test_export_of_a_router_from_toml_refuses_its_services(
    runner: CliRunner, example_app: str
) -> None:
    result = run(runner, "export", f"{example_app}:router")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: cannot export {example_app}:router:\n"
        "1 error in <export>\n"
        "  <export>: routes[0].services: expected services the file can declare (export the "
        "app that serves this router: its [services] are written too), found 'chat'\n"
    )
