"""Handlers that log with the standard ``logging`` module, as user code does; loaded by a worker process
through ``KUBETASK_HANDLERS=log_handlers`` (``tests/engine/test_logs.py``)."""

import logging
from typing import Any

from kubetask import handlers

log = logging.getLogger("myapp.billing")


@handlers.register("log-async")
async def log_async(payload: dict[str, Any], ctx: handlers.Context) -> dict[str, Any]:
    log.info("charging card %s", payload["card"])
    return {"charged": True}


@handlers.register("log-sync")
def log_sync(payload: dict[str, Any], ctx: handlers.Context) -> dict[str, Any]:
    log.info("refunding card %s", payload["card"])  # runs in a worker thread
    return {"refunded": True}


@handlers.register("log-fail")
async def log_fail(payload: dict[str, Any], ctx: handlers.Context) -> None:
    try:
        raise ConnectionError("the payment gateway hung up")
    except ConnectionError:
        log.exception("gateway call failed")
    raise handlers.PermanentError("card declined")
