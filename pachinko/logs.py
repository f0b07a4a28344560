"""Connection-aware logging: every line about a connection names it.

The serve loop records the connection a task serves (from its handshake to
its close) in :data:`pachinko.observe.current_connection`. The
:class:`ConnectionFilter` reads it for every record: pachinko's own lines and
the application's (a ``logging.getLogger(__name__)`` inside a handler) get
``connection_id``, ``route`` and ``user_id`` attributes, and ``connection``:
`` [connection 9f2c.1a /ws/rooms/{room} user=ada]`` ready to append to a
format (empty outside a connection). :class:`JsonFormatter` writes one JSON
object per line with those fields.

``pachinko serve`` installs both (``--log-format text|json``); with your own
logging setup, add the filter to your handlers::

    handler.addFilter(pachinko.logs.ConnectionFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s%(connection)s"))
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

from .observe import CONNECTION_EXTRA, current_connection

__all__ = ["CONNECTION_EXTRA", "ConnectionFilter", "JsonFormatter"]


class ConnectionFilter(logging.Filter):
    """Add the current connection's id, route and user to every record.

    Never drops a record. A record logged with ``extra={"pachinko_connection":
    conn}`` is about ``conn``, whatever task logged it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        conn = record.__dict__.get(CONNECTION_EXTRA) or current_connection.get()
        fields = record.__dict__
        if conn is None:
            fields.update(connection_id=None, route=None, user_id=None, connection="")
            return True
        user = conn.user_id
        route = conn.route or conn.path
        fields.update(
            connection_id=conn.id,
            route=route,
            user_id=user,
            connection=f" [connection {conn.id} {route}{'' if user is None else f' user={user}'}]",
        )
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, connection fields.

    ``time`` is UTC ISO 8601 with milliseconds; ``connection_id``,
    ``route`` and ``user_id`` are present for lines about a connection
    (with :class:`ConnectionFilter` on the handler); ``exception`` holds a
    formatted traceback. Fields passed with ``extra=`` that are JSON values
    are kept.
    """

    _RESERVED: Final = frozenset(
        {
            *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
            "message",
            "asctime",
            "connection",
            "connection_id",
            "route",
            "user_id",
            "color_message",
            CONNECTION_EXTRA,
        }
    )

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("connection_id", "route", "user_id"):
            found = record.__dict__.get(key)
            if found is not None:
                entry[key] = found
        for key, found in record.__dict__.items():
            if key not in self._RESERVED and key not in entry and _is_json(found):
                entry[key] = found
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def _is_json(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
