"""Every failure kind of a routes.toml: one fixture file each, messages word for word."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pachinko.config import ConfigFileError, compile_text, load_config
from pachinko.errors import ConfigError

ERRORS = Path(__file__).parent / "fixtures" / "errors"

EXPECTED = {
    "uninjectable.toml": "2 errors in uninjectable.toml\n"
    "  uninjectable.toml:2: services.store.factory: expected a value for every parameter of "
    "fx_handlers:Store (from args, kwargs or services declared before it: none), found no "
    "value for 'size'\n"
    "  uninjectable.toml:5: workers.beat.target: expected a value for every parameter of "
    "fx_handlers:needs_interval (from args, kwargs or injected: manager, settings, store), "
    "found no value for 'interval'",
    "bad_prefix.toml": "1 error in bad_prefix.toml\n"
    "  bad_prefix.toml:2: app.prefix: expected a prefix starting with '/', found 'ws'",
    "toml_syntax.toml": "1 error in toml_syntax.toml\n"
    "  toml_syntax.toml:4: expected valid TOML, found Illegal character '\\n'",
    "unknown_key.toml": "1 error in unknown_key.toml\n"
    "  unknown_key.toml:3: routes[0].hnadlers: expected one of the keys path, name, resource, "
    "args, kwargs, services, base, wire, tag_field, handlers, sends, hooks, on_connect, "
    "on_disconnect, on_unhandled, child_context, routes, found unknown key 'hnadlers' "
    "(did you mean 'handlers'?)",
    "wrong_type.toml": "1 error in wrong_type.toml\n"
    "  wrong_type.toml:2: settings.max_message_size: expected an integer > 0, "
    "found string 'big'",
    "missing_key.toml": "1 error in missing_key.toml\n"
    "  missing_key.toml:1: routes[0]: expected a key 'path', found no such key",
    "import_format.toml": "1 error in import_format.toml\n"
    "  import_format.toml:3: routes[0].handlers.join: expected an import path "
    "'package.module:attribute', found 'fx_handlers.join'",
    "module_not_found.toml": "1 error in module_not_found.toml\n"
    "  module_not_found.toml:3: routes[0].handlers.join: expected an importable module "
    "'fx_nowhere', found no module named 'fx_nowhere'",
    "attribute_not_found.toml": "1 error in attribute_not_found.toml\n"
    "  attribute_not_found.toml:3: routes[0].handlers.join: expected an attribute 'jion' in "
    "'fx_handlers', found 'fx_handlers' has no attribute 'jion'",
    "duplicate_path.toml": "1 error in duplicate_path.toml\n"
    "  duplicate_path.toml:5: routes[1].path: expected a route path used once, found route "
    "'/rooms/{name}' conflicts with '/rooms/{room}': both match the same paths",
    "duplicate_name.toml": "1 error in duplicate_name.toml\n"
    "  duplicate_name.toml:7: routes[1].name: expected a route name used once, found 'chat' "
    "used already by routes[0].name (duplicate_name.toml:3)",
    "undeclared_type.toml": "1 error in undeclared_type.toml\n"
    "  undeclared_type.toml:6: routes[0].handlers.join.payload: expected a declared type (Join) "
    "or an import path to a Struct, found 'Jion'",
    "not_async.toml": "1 error in not_async.toml\n"
    "  not_async.toml:3: routes[0].handlers.join: expected an async function "
    "(resource, ws, payload), found a regular function fx_handlers:sync_join",
    "bad_signature.toml": "1 error in bad_signature.toml\n"
    "  bad_signature.toml:3: routes[0].handlers.join: expected a function that can be called "
    "as (resource, ws, payload), found fx_handlers:two_args(resource: 'Any', ws: 'Any') "
    "-> 'None'",
    "unset_variable.toml": "1 error in unset_variable.toml\n"
    "  unset_variable.toml:2: settings.backend: expected environment variable FX_UNSET_BACKEND "
    "to be set (or a default: ${FX_UNSET_BACKEND:-...}), found it is not set",
    "include_missing.toml": "1 error in include_missing.toml\n"
    "  include_missing.toml:1: include[0]: expected a readable UTF-8 TOML file "
    "'nowhere.toml', found No such file or directory",
    "include_cycle.toml": "1 error in include_cycle_b.toml\n"
    "  include_cycle_b.toml:1: include[0]: expected includes without a cycle, found "
    "include_cycle.toml -> include_cycle_b.toml -> include_cycle.toml",
    "duplicate_type.toml": "1 error in ../included/types.toml\n"
    "  ../included/types.toml:2: types.Join: expected a type name used once, found types.Join "
    "declared already at duplicate_type.toml:3",
    "settings_in_include.toml": "1 error in ../included/settings.toml\n"
    "  ../included/settings.toml:1: settings: expected [settings] in the root file only, "
    "found [settings] in an included file",
    "bad_type.toml": "1 error in bad_type.toml\n"
    "  bad_type.toml:2: types.Join.fields.room: expected a type: str, int, float, bool, "
    "datetime, date, time, uuid, any, list[T], dict[str, T], optional[T], a declared type or "
    "an import path to a msgspec.Struct, found 'lst[str]': unknown type 'lst' "
    "(declared types: Join)",
    "bad_constraint.toml": "1 error in bad_constraint.toml\n"
    "  bad_constraint.toml:2: types.Join.fields.active.min_length: expected no constraint on "
    "type 'bool' (only description applies), found min_length = 1",
    "constraint_mixed.toml": "3 errors in constraint_mixed.toml\n"
    "  constraint_mixed.toml:2: types.Join.fields.name.gt: expected one of min_length, "
    "max_length, pattern (the constraints of type 'str'), found gt = 1\n"
    "  constraint_mixed.toml:3: types.Join.fields.count.min_length: expected one of ge, gt, le, "
    "lt, multiple_of (the constraints of type 'int'), found min_length = 1\n"
    "  constraint_mixed.toml:4: types.Join.fields.level.max_length: expected no constraint on "
    "an enum (only description applies), found max_length = 1",
    "constraint_not_integer.toml": "1 error in constraint_not_integer.toml\n"
    "  constraint_not_integer.toml:2: types.Join.fields.count.ge: expected an integer (the "
    "field has type 'optional[int]'), found ge = 1.5",
    "bad_pattern.toml": "1 error in bad_pattern.toml\n"
    "  bad_pattern.toml:2: types.Join.fields.room.pattern: expected a regular expression, "
    "found '(': missing ), unterminated subpattern at position 0",
    "description_with_struct.toml": "1 error in description_with_struct.toml\n"
    "  description_with_struct.toml:3: types.Join.description: expected no 'description' with "
    "'struct' (the Struct's docstring describes it), found 'Join a room.'",
    "undeclared_service.toml": "1 error in undeclared_service.toml\n"
    "  undeclared_service.toml:3: routes[0].services[0]: expected a declared service "
    "(none declared), found 'history'",
    "room_pattern.toml": "1 error in room_pattern.toml\n"
    "  room_pattern.toml:1: rooms.\"a*b\": expected a room name or a pattern ending in '*' "
    "('auction:*', '*'), found 'a*b': '*' at position 1",
    "room_negative_history.toml": "1 error in room_negative_history.toml\n"
    '  room_negative_history.toml:2: rooms."auction:*".history: expected an integer >= 0, '
    "found integer -1",
    "room_ttl_without_history.toml": "1 error in room_ttl_without_history.toml\n"
    "  room_ttl_without_history.toml:2: rooms.lobby.history_ttl: expected history > 0 with "
    "history_ttl (the time kept broadcasts live), found history_ttl = 600 and history = 0",
    "room_unknown_key.toml": "1 error in room_unknown_key.toml\n"
    '  room_unknown_key.toml:3: rooms."auction:*".histroy_ttl: expected one of the keys '
    "history, history_ttl, presence, authorize, found unknown key 'histroy_ttl' "
    "(did you mean 'history_ttl'?)",
}


@pytest.fixture(autouse=True)
def _in_fixture_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # File names in messages are shown as given: load by relative name.
    monkeypatch.chdir(ERRORS)
    monkeypatch.delenv("FX_UNSET_BACKEND", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_every_failure_kind_has_a_fixture() -> None:
    fixtures = {p.name for p in ERRORS.glob("*.toml")} - {
        "include_cycle_b.toml",
        "multi.toml",
        "user_import_error.toml",
        "broken_module.toml",
    }
    assert fixtures == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_error_message_word_for_word(name: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config(name)
    assert str(info.value) == EXPECTED[name]
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value, ValueError)


def test_a_file_with_several_errors_reports_all_of_them() -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config("multi.toml")
    assert str(info.value) == (
        "8 errors in multi.toml\n"
        "  multi.toml:2: settings.max_message_size: expected an integer > 0, found integer -1\n"
        "  multi.toml:3: settings.rate_limit: expected a number > 0, found string 'fast'\n"
        "  multi.toml:6: types.Join.fields.room.max_lenght: expected one of the keys type, enum, "
        "default, required, min_length, max_length, pattern, ge, gt, le, lt, multiple_of, "
        "description, found unknown key 'max_lenght' (did you mean 'max_length'?)\n"
        "  multi.toml:11: routes[0].handlers.join.handler: expected an async function "
        "(resource, ws, payload), found a regular function fx_handlers:sync_join\n"
        "  multi.toml:12: routes[0].handlers.say.handler: expected an attribute 'say' in "
        "'fx_handlers', found 'fx_handlers' has no attribute 'say'\n"
        "  multi.toml:12: routes[0].handlers.say.payload: expected a declared type (Join) or an "
        "import path to a Struct, found 'Say'\n"
        "  multi.toml:15: routes[1].path: expected a route path used once, found route '/chat' "
        "conflicts with '/chat': both match the same paths\n"
        "  multi.toml:16: routes[1].name: expected a route name used once, found 'chat' used "
        "already by routes[0].name (multi.toml:10)"
    )
    issue = info.value.issues[3]
    assert (issue.file, issue.path, issue.line) == (
        "multi.toml",
        "routes[0].handlers.join.handler",
        11,
    )


def test_the_users_own_import_error_is_shown_unchanged() -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config("user_import_error.toml")
    fx_broken = os.path.join(ERRORS, "fx_broken.py")
    assert str(info.value) == (
        "1 error in user_import_error.toml\n"
        "  user_import_error.toml:3: routes[0].handlers.join: expected module 'fx_broken' to "
        "import cleanly, found ModuleNotFoundError raised while importing it:\n"
        "Traceback (most recent call last):\n"
        f'  File "{fx_broken}", line 3, in <module>\n'
        "    import fx_missing_dependency  # noqa: F401\n"
        + "    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        + "ModuleNotFoundError: No module named 'fx_missing_dependency'"
    )
    cause = info.value.__cause__
    assert isinstance(cause, ModuleNotFoundError)
    assert cause.name == "fx_missing_dependency"


def test_a_module_that_fails_to_import_is_reported_once_with_every_key_naming_it() -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config("broken_module.toml")
    fx_broken = os.path.join(ERRORS, "fx_broken.py")
    assert str(info.value) == (
        "1 error in broken_module.toml\n"
        "  broken_module.toml:2: types.Join.struct: expected module 'fx_broken' to import "
        "cleanly, found ModuleNotFoundError raised while importing it (also named by "
        "types.Say.fields.who (broken_module.toml:5), workers.beat.target "
        "(broken_module.toml:8), routes[0].on_connect (broken_module.toml:12), "
        "routes[0].handlers.join (broken_module.toml:13), routes[0].handlers.leave.handler "
        "(broken_module.toml:14), routes[0].handlers.leave.payload (broken_module.toml:14)):\n"
        "Traceback (most recent call last):\n"
        f'  File "{fx_broken}", line 3, in <module>\n'
        "    import fx_missing_dependency  # noqa: F401\n"
        + "    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        + "ModuleNotFoundError: No module named 'fx_missing_dependency'"
    )
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_a_module_that_fails_to_import_runs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fx_counted.py").write_text(
        "import pathlib\n"
        "runs = pathlib.Path(__file__).with_suffix('.runs')\n"
        "runs.write_text((runs.read_text() if runs.exists() else '') + 'x')\n"
        "raise RuntimeError('boom')\n"
    )
    (tmp_path / "routes.toml").write_text(
        '[[routes]]\npath = "/chat"\n'
        + "".join(f'handlers.h{i} = "fx_counted:h{i}"\n' for i in range(20))
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigFileError) as info:
        load_config("routes.toml")
    assert len(info.value.issues) == 1
    assert "routes[0].handlers.h19 (routes.toml:22)):\nTraceback" in str(info.value)
    assert (tmp_path / "fx_counted.runs").read_text() == "x"


def test_the_users_own_syntax_error_is_shown_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fx_syntax_error.py").write_text(
        "async def join(resource, ws, payload)\n    pass\n"
    )
    (tmp_path / "routes.toml").write_text(
        '[[routes]]\npath = "/chat"\nhandlers.join = "fx_syntax_error:join"\n'
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigFileError) as info:
        load_config("routes.toml")
    message = str(info.value)
    assert message.startswith(
        "1 error in routes.toml\n"
        "  routes.toml:3: routes[0].handlers.join: expected module 'fx_syntax_error' to import "
        "cleanly, found SyntaxError raised while importing it:\n"
    )
    assert 'fx_syntax_error.py", line 1\n' in message
    assert message.endswith("SyntaxError: expected ':'")
    assert isinstance(info.value.__cause__, SyntaxError)


# -- the file's folder on sys.path ---------------------------------------------------

HANDLER = "async def join(resource, ws, payload):\n    pass\n"


def test_the_files_folder_is_last_on_sys_path(tmp_path: Path) -> None:
    (tmp_path / "fx_local_handlers.py").write_text(HANDLER)
    (tmp_path / "routes.toml").write_text(
        '[[routes]]\npath = "/chat"\nhandlers.join = "fx_local_handlers:join"\n'
    )
    load_config(tmp_path / "routes.toml")  # the module next to the file imports
    assert sys.path[-1] == str(tmp_path)
    assert str(tmp_path) not in sys.path[:-1]


def test_a_local_file_does_not_shadow_an_installed_package(tmp_path: Path) -> None:
    import subprocess

    # idna is installed (a dependency) and not imported by pachinko: after the
    # load, `import idna` must still give the installed package.
    (tmp_path / "idna.py").write_text("raise RuntimeError('the local idna.py was imported')\n")
    (tmp_path / "fx_local_handlers.py").write_text(HANDLER)
    (tmp_path / "routes.toml").write_text(
        '[[routes]]\npath = "/chat"\nhandlers.join = "fx_local_handlers:join"\n'
    )
    script = (
        "import sys\n"
        "from pachinko.config import load_config\n"
        "assert 'idna' not in sys.modules\n"
        f"load_config({str(tmp_path / 'routes.toml')!r})\n"
        "import idna\n"
        "print(idna.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ERRORS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "site-packages" in done.stdout
    assert str(tmp_path) not in done.stdout


def test_a_local_file_named_like_an_installed_package_is_reported(tmp_path: Path) -> None:
    import attrs

    (tmp_path / "attrs.py").write_text(HANDLER)
    (tmp_path / "routes.toml").write_text(
        '[types.Join]\nstruct = "attrs:Join"\n\n'
        '[[routes]]\npath = "/chat"\nhandlers.join = "attrs:join"\n'
        'handlers.leave = "attrs:join"\n'
    )
    with pytest.raises(ConfigFileError) as info:
        load_config(tmp_path / "routes.toml")
    installed = Path(attrs.__file__).resolve()
    name = tmp_path / "routes.toml"
    assert str(info.value) == (
        f"1 error in {name}\n"
        f"  {name}:2: types.Join.struct: expected module 'attrs' to be attrs.py next to "
        f"routes.toml, found 'attrs' is {installed}, which comes first on sys.path or was "
        f"imported already (rename the local attrs.py) (also named by routes[0].handlers.join "
        f"({name}:6), routes[0].handlers.leave ({name}:7))"
    )


def test_two_apps_with_same_named_local_modules_are_told_apart(tmp_path: Path) -> None:
    # Python keeps one module per name: the second file's own fx_twin.py would
    # silently be the first one's. It is reported instead.
    for name, handler in (("a", "join"), ("b", "leave")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "fx_twin.py").write_text(HANDLER.replace("join", handler))
        (tmp_path / name / "routes.toml").write_text(
            f'[[routes]]\npath = "/chat"\nhandlers.{handler} = "fx_twin:{handler}"\n'
        )
    sys.modules.pop("fx_twin", None)
    try:
        load_config(tmp_path / "a" / "routes.toml")
        with pytest.raises(ConfigFileError) as info:
            load_config(tmp_path / "b" / "routes.toml")
    finally:
        sys.modules.pop("fx_twin", None)
    name = tmp_path / "b" / "routes.toml"
    assert str(info.value) == (
        f"1 error in {name}\n"
        f"  {name}:3: routes[0].handlers.leave: expected module 'fx_twin' to be fx_twin.py "
        f"next to routes.toml, found 'fx_twin' is {tmp_path / 'a' / 'fx_twin.py'}, which comes "
        "first on sys.path or was imported already (rename the local fx_twin.py)"
    )


def test_a_malformed_template_is_reported_as_one_whatever_its_words() -> None:
    # NOTE: the words "route name" and "conflicts" in a template once made the
    #   compiler report it as a duplicate name or a conflict, at the wrong key.
    text = '[[routes]]\npath = "/route name/conflicts"\n'
    with pytest.raises(ConfigFileError) as info:
        compile_text(text, "t.toml")
    assert str(info.value) == (
        "1 error in t.toml\n"
        "  t.toml:2: routes[0].path: expected a valid route template, found route "
        "'/route name/conflicts': templates may not contain whitespace"
    )
