"""Handlers that misbehave the way real ones do, for the worker's hardening tests; loaded by a worker
process through ``KUBETASK_HANDLERS=hardening_handlers`` (``tests/engine/test_hardening_worker.py``)."""

import time
from typing import Any

from kubetask import handlers


@handlers.register("block-loop")
async def block_loop(payload: dict[str, Any], ctx: handlers.Context) -> dict[str, Any]:
    time.sleep(payload["seconds"])  # the mistake under test: a blocking call in an async handler
    return {"blocked_for": payload["seconds"]}


@handlers.register("hang-thread")
def hang_thread(payload: dict[str, Any], ctx: handlers.Context) -> dict[str, Any]:
    time.sleep(payload["seconds"])  # ignores ctx.cancelled: its thread outlives the attempt's timeout
    return {"hung_for": payload["seconds"]}


@handlers.register("innocent")
def innocent(payload: dict[str, Any], ctx: handlers.Context) -> dict[str, Any]:
    return {"ran": True}
