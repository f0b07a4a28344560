"""routes.toml: a whole real-time API declared in a file.

The file is read and checked (:mod:`.loader`, every error at once),
compiled into the same objects the Python API builds (:mod:`.compiler`),
served by :func:`create_app` / :func:`configure`, hot-reloaded in development
(:mod:`.reload`) and written back from a router tree (:mod:`.export`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .compiler import Compiled, compile_loaded, compile_text, load_config
from .errors import ConfigFileError, Issue
from .loader import load, load_text

if TYPE_CHECKING:
    from .app import Configured, configure, create_app
    from .export import export_app, export_toml

__all__ = [
    "Compiled",
    "ConfigFileError",
    "Configured",
    "Issue",
    "compile_loaded",
    "compile_text",
    "configure",
    "create_app",
    "export_app",
    "export_toml",
    "load",
    "load_config",
    "load_text",
]


def __getattr__(name: str) -> Any:
    # The Falcon wiring and the exporter are imported on first use.
    if name in ("Configured", "configure", "create_app"):
        from . import app

        return getattr(app, name)
    if name in ("export_app", "export_toml"):
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'pachinko.config' has no attribute {name!r}")
