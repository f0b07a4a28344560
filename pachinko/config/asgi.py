"""An ASGI app for any ASGI server: ``pachinko.config.asgi:app``.

The configuration path comes from the ``PACHINKO_CONFIG`` environment
variable; hot reload from ``PACHINKO_RELOAD`` (or ``[app].reload``)::

    PACHINKO_CONFIG=routes.toml uvicorn pachinko.config.asgi:app
    PACHINKO_CONFIG=routes.toml hypercorn pachinko.config.asgi:app

The app is built when this module is imported; a missing variable or an
invalid file raises :class:`~pachinko.ConfigError` with every problem.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from ._env import CONFIG_ENV
from .app import create_app

__all__ = ["CONFIG_ENV", "app"]

_path = os.environ.get(CONFIG_ENV)
if not _path:
    raise ConfigError(
        f"{CONFIG_ENV} is not set: set it to the routes.toml to serve, e.g. "
        f"{CONFIG_ENV}=routes.toml uvicorn pachinko.config.asgi:app"
    )
app = create_app(_path)
