"""Hook events, their signatures and their calling order.

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
from typing import Any, Final, NamedTuple

__all__ = ["HOOK_EVENTS", "HOOK_SIGNATURES", "HookFn", "HookSignature", "has_own_hooks"]

HookFn = Callable[..., Awaitable[Any]]


class HookSignature(NamedTuple):
    """The arguments a global hook of one event receives, in order."""

    params: tuple[str, ...]
    #: What the return value means, if anything.
    returns: str = ""

    @property
    def call(self) -> str:
        """The call as documentation writes it: ``(resource, ws, message)``."""
        return f"({', '.join(self.params)})"


#: Every hook event with the arguments a global hook receives (a resource
#: method receives the same arguments without ``resource``).
HOOK_SIGNATURES: Final = {
    "before_connect": HookSignature(("resource", "req", "ws", "params")),
    "after_connect": HookSignature(("resource", "ws")),
    "before_receive": HookSignature(("resource", "ws", "message")),
    "after_receive": HookSignature(("resource", "ws", "message")),
    "before_disconnect": HookSignature(("resource", "ws", "close_code")),
    "on_error": HookSignature(("resource", "ws", "exc"), "return True when handled"),
    "authorize_join": HookSignature(("resource", "room"), "return True when the join is allowed"),
}

#: Every hook event, in calling order.
HOOK_EVENTS: Final = tuple(HOOK_SIGNATURES)


def has_own_hooks(resource_class: type) -> bool:
    """Whether ``resource_class`` has a method named after any hook event."""
    return any(getattr(resource_class, event, None) is not None for event in HOOK_EVENTS)
