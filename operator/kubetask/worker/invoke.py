"""One handler call within its time limit: the Task's ``timeoutSeconds``, capped by the pool's maximum.

Every attempt has a limit, even a Task that sets none: the pool's
``KUBETASK_MAX_TIMEOUT_SECONDS``, so no Task can hold a slot for ever. The
attempt's error names the limit that ended it, and when it was the pool's
cap it says so and how to fix it, since the Task's own spec does not show it.

An async handler is cancelled at its limit. A plain function runs in a thread
(``threads``), whose clock starts when the thread picks it up; past its
limit the thread is abandoned and ``on_abandoned`` is told (the worker
recycles itself when too many are).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Callable
from typing import Any

from kubetask import db, handlers, settings
from kubetask.worker.results import AttemptTimeout
from kubetask.worker.threads import HandlerThreads, TimedOut


@dataclasses.dataclass(frozen=True)
class Limit:
    seconds: float
    named: str
    """How the attempt's error names it: ``timeoutSeconds=5``, or the pool's cap with the fix."""


def time_limit(task: db.queue.ClaimedTask, config: settings.WorkerSettings) -> Limit:
    """The attempt's time limit: the Task's, or the pool's cap when the Task sets none or a longer one."""
    cap = config.max_timeout_seconds
    if task.timeout_seconds is not None and task.timeout_seconds <= cap:
        return Limit(task.timeout_seconds, f"timeoutSeconds={task.timeout_seconds}")
    asked = ("sets no timeoutSeconds" if task.timeout_seconds is None
             else f"asks for timeoutSeconds={task.timeout_seconds}")
    return Limit(cap, f"KUBETASK_MAX_TIMEOUT_SECONDS={cap:g}, the longest the {config.queue!r} worker pool lets an "
                      f"attempt run (the Task {asked}; give it a timeoutSeconds within that, or raise the pool's "
                      "KUBETASK_MAX_TIMEOUT_SECONDS)")


async def _within(awaitable: Any, seconds: float, limit: Limit, ctx: handlers.Context) -> Any:
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await awaitable
    except TimeoutError:
        if not deadline.expired():
            raise
        ctx.cancelled.set()
        raise AttemptTimeout(f"the attempt ran longer than {limit.named}") from None


async def invoke(handler: handlers.Handler, task: db.queue.ClaimedTask, ctx: handlers.Context,
                 threads: HandlerThreads, limit: Limit,
                 on_abandoned: Callable[[db.queue.ClaimedTask], None]) -> Any:
    """Call ``handler`` for ``task``; ``AttemptTimeout`` naming ``limit`` when it runs past it."""
    if inspect.iscoroutinefunction(handler):
        return await _within(handler(task.payload, ctx), limit.seconds, limit, ctx)
    started = time.monotonic()
    try:
        value = await threads.run(handler, task.payload, ctx, timeout=limit.seconds)
    except TimedOut:
        ctx.cancelled.set()
        on_abandoned(task)
        raise AttemptTimeout(f"the attempt ran longer than {limit.named}; the handler's thread cannot be "
                             "stopped and is abandoned") from None
    if inspect.isawaitable(value):  # a plain function that returned an awaitable: the rest of its time
        return await _within(value, limit.seconds - (time.monotonic() - started), limit, ctx)
    return value
