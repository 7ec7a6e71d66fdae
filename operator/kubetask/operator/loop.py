"""The one supervising loop every operator service runs in.

A service is a ``run_once(runtime, conn)``: one pass over its work, returning
True when more is waiting. The loop gives it a connection of its own, runs
passes back to back while it says there is more, and otherwise waits for its
wake event (a NOTIFY relayed by the listener) or its interval, whichever comes
first: NOTIFY is a hint, the interval is the guarantee. Any error closes the
connection and restarts the service after ``kubetask.supervise``'s backoff, so
one failing pass never stops the others, and nothing is lost: every service
resumes from the rows.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from kubetask import db, supervise
from kubetask.operator.runtime import RunOnce, Runtime

log = logging.getLogger("kubetask.operator")


async def wait(event: asyncio.Event | None, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` seconds pass; the event is cleared for the next wait."""
    if event is None:
        await asyncio.sleep(timeout)
        return
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    event.clear()


async def run(rt: Runtime, name: str, run_once: RunOnce, *, interval: Callable[[], float],
              wake: asyncio.Event | None = None, jitter: float = 0.0) -> None:
    """Run a service for ever (until cancelled), each pass on the service's own connection.

    ``jitter`` spreads the interval by ±that fraction, so replicas' passes
    drift apart instead of hitting the database together.
    """

    async def body() -> None:
        async with await db.connection.connect(rt.config.database.url, f"kubetask-operator {name}") as conn:
            while True:
                if await run_once(rt, conn):
                    await asyncio.sleep(0)  # a backlog: next pass at once, but let the others run
                    continue
                spread = 1 + jitter * (2 * random.random() - 1) if jitter else 1
                await wait(wake, interval() * spread)

    await supervise.supervise(name, body, log)
