"""pachinko: WebSockets for Falcon (ASGI)."""
