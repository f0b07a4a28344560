"""An app whose worker crashes after startup (served by uvicorn in test_shutdown)."""

from __future__ import annotations

import asyncio
import os

import falcon.asgi

import pachinko


async def doomed() -> None:
    await asyncio.sleep(float(os.environ.get("CRASH_AFTER", "0.5")))
    raise RuntimeError("the feed went away")


app = falcon.asgi.App()
pachinko.install(app, workers=[doomed])
