"""The command from a plain install (no extras): real processes, the extras' modules blocked.

A ``sitecustomize`` on ``PYTHONPATH`` makes ``import uvicorn`` (and the other
modules of the ``serve`` extra) fail, as on ``pip install pachinko``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVE_EXTRA = ("uvicorn", "websockets", "wsproto", "watchfiles", "yaml", "httptools", "uvloop")

BLOCKER = textwrap.dedent("""\
    import sys

    BLOCKED = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")

ROUTER = textwrap.dedent("""\
    import pachinko

    class Echo(pachinko.WebSocketResource):
        @pachinko.handles_message("ping")
        async def ping(self, ws, payload: dict) -> None:
            await self.send(payload)

    router = pachinko.WebSocketRouter()
    router.add_route("/echo", Echo)
""")


def pachinko(
    tmp_path: Path, *args: str, blocked: tuple[str, ...] = SERVE_EXTRA, cwd: Path = ROOT
) -> Any:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "pachinko", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )


def test_the_blocker_blocks(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=SERVE_EXTRA))
    done = subprocess.run(
        [sys.executable, "-c", "import uvicorn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert "ModuleNotFoundError: No module named 'uvicorn'" in done.stderr


def test_check_routes_asyncapi_json_export_and_init_work_without_the_serve_extra(
    tmp_path: Path,
) -> None:
    done = pachinko(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    done = pachinko(tmp_path, "check", "routes.example.toml")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("routes.example.toml: OK (1 route,")
    done = pachinko(tmp_path, "routes", "routes.example.toml")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("PATH ")
    done = pachinko(tmp_path, "asyncapi", "--format", "json", "routes.example.toml")
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["asyncapi"] == "3.0.0"
    (tmp_path / "plain_router.py").write_text(ROUTER)
    done = pachinko(tmp_path, "export", "plain_router:router", "-o", "out.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'path = "/echo"' in (tmp_path / "out.toml").read_text()
    done = pachinko(tmp_path, "init", str(tmp_path / "starter"))
    assert done.returncode == 0, done.stderr


def test_serve_without_the_serve_extra_names_it_in_one_line(tmp_path: Path) -> None:
    done = pachinko(tmp_path, "serve", "routes.example.toml")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "Error: pachinko serve needs the module 'uvicorn', which is not installed: "
        "install the serve extra with pip install 'pachinko[serve]'\n"
    )


def test_serve_with_uvicorn_but_no_websocket_library_names_the_extra(tmp_path: Path) -> None:
    done = pachinko(tmp_path, "serve", "routes.example.toml", blocked=("websockets", "wsproto"))
    assert done.returncode == 1
    assert done.stderr == (
        "Error: pachinko serve needs the module 'websockets', which is not installed: "
        "install the serve extra with pip install 'pachinko[serve]'\n"
    )


def test_asyncapi_yaml_without_pyyaml_names_the_extra_and_json(tmp_path: Path) -> None:
    done = pachinko(tmp_path, "asyncapi", "routes.example.toml")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "Error: --format yaml needs the module 'yaml', which is not installed: "
        "install the serve extra with pip install 'pachinko[serve]' (or use --format json)\n"
    )


@pytest.mark.live
def test_a_fresh_virtualenv_without_extras(tmp_path: Path) -> None:
    """``pip install <repo>`` (no extras, pinned) in a new venv, then the commands."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # NOTE: the pinned versions and build backend, as scripts/test.sh installs them:
    #   a new upstream release must not turn this test red.
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    constraints = ["-c", str(ROOT / "requirements" / "constraints.txt")]
    for step in (["setuptools"], ["--no-build-isolation", str(ROOT)]):
        subprocess.run([*pip, *constraints, *step], check=True, timeout=300, capture_output=True)
    command = str(venv / "bin" / "pachinko")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [command, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
        )

    assert run("--help").returncode == 0
    done = run("check", "routes.example.toml")
    assert done.returncode == 0, done.stderr
    done = run("asyncapi", "--format", "json", "routes.example.toml")
    assert done.returncode == 0, done.stderr
    done = run("serve", "routes.example.toml")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "pip install 'pachinko[serve]'" in done.stderr
