"""Environment variables the config layer reads (and the CLI sets for its processes)."""

from __future__ import annotations

from typing import Final

__all__ = ["ASGI_APP", "CONFIG_ENV", "METRICS_ENV", "RELOAD_ENV", "RELOAD_POLL_ENV"]

#: Names the routes.toml that ``pachinko.config.asgi:app`` serves.
CONFIG_ENV: Final = "PACHINKO_CONFIG"
#: Turns hot reload on (``1``, ``true``, ``yes``, ``on``).
RELOAD_ENV: Final = "PACHINKO_RELOAD"
#: Makes hot reload poll modification times even if ``watchfiles`` is installed.
RELOAD_POLL_ENV: Final = "PACHINKO_RELOAD_POLL"
#: Serves Prometheus metrics at this path (``serve --metrics``; wins over ``[app].metrics``).
METRICS_ENV: Final = "PACHINKO_METRICS"
#: The config layer's ASGI entry point; it reads the file named in ``CONFIG_ENV``.
ASGI_APP: Final = "pachinko.config.asgi:app"
