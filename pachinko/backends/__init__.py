"""Connection backends (interim; see issue 3)."""

from __future__ import annotations

__all__ = ["ConnectionBackend", "InProcessBackend"]


class ConnectionBackend:
    """Where rooms, users and broadcasts live."""


class InProcessBackend(ConnectionBackend):
    """The embedded default: one process."""
