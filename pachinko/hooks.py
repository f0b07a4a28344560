"""Hook events and their calling order.

Global hooks are registered on a router (:meth:`WebSocketRouter.add_hook`);
resource hooks are methods of the resource class with the event's name. A
connection's hook lists are built once, at connect time, so a message pays
nothing for hooks that are not there.

Order (the onion): ``before_*`` hooks run global (outermost router first),
parent resource, child resource; then the handler; ``after_*`` hooks run in
the reverse order. An exception in a ``before_*`` hook stops that step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = ["HOOK_EVENTS", "HookFn"]

HookFn = Callable[..., Awaitable[Any]]

#: Every hook event, with the arguments a global hook receives (a resource
#: method receives the same arguments without ``resource``).
HOOK_EVENTS: Final = (
    "before_connect",  # (resource, req, ws, params)
    "after_connect",  # (resource, ws)
    "before_receive",  # (resource, ws, message)
    "after_receive",  # (resource, ws, message)
    "before_disconnect",  # (resource, ws, close_code)
    "on_error",  # (resource, ws, exc) -> True when handled
    "authorize_join",  # (resource, room) -> True when the join is allowed
)
