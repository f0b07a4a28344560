"""Connection backends: in-process (default) and Redis (several processes).

``backend_from_url`` builds one from ``Settings.backend``: ``memory://``
gives :class:`InProcessBackend`; ``redis://``, ``rediss://`` and
``unix://`` give :class:`~pachinko.backends.redis.RedisBackend` (needs the
``redis`` extra).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigError
from .base import BackendHost, ConnectionBackend, HistoryRead
from .inprocess import InProcessBackend

__all__ = [
    "BackendHost",
    "ConnectionBackend",
    "HistoryRead",
    "InProcessBackend",
    "backend_from_url",
]

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def backend_from_url(url: str) -> ConnectionBackend:
    """Build the backend a ``Settings.backend`` URL names.

    Raises:
        ConfigError: Unknown scheme, or the ``redis`` package is missing.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return InProcessBackend()
    if scheme in _REDIS_SCHEMES:
        from .redis import RedisBackend

        return RedisBackend.from_url(url)
    raise ConfigError(
        f"settings.backend: expected 'memory://' or a Redis URL (redis://host:6379/0), got {url!r}"
    )
