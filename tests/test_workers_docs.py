"""The worker example of docs/workers.md runs as written."""

from __future__ import annotations

import asyncio
import re
import types
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "workers.md"
TIMEOUT = 5.0


def first_python_block() -> str:
    match = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match is not None, "docs/workers.md lost its example"
    return match.group(1)


async def test_the_room_ticker_example_pushes_to_watchers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TICK_SECONDS", "0.05")
    module = types.ModuleType("workers_doc_example")
    exec(compile(first_python_block(), str(DOC), "exec"), module.__dict__)
    app: Any = module.app
    async with (
        falcon.testing.ASGIConductor(app) as conductor,
        conductor.simulate_ws("/ws/clock") as ws,
    ):
        await ws.send_json({"type": "watch"})
        first = await asyncio.wait_for(ws.receive_json(), TIMEOUT)
        second = await asyncio.wait_for(ws.receive_json(), TIMEOUT)
    assert first["type"] == second["type"] == "tick"
    assert second["n"] == first["n"] + 1
