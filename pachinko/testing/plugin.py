"""pytest plugin (entry point ``pachinko``): fixtures of pachinko.testing."""

from __future__ import annotations
