"""The loop watchdog: notices an async handler blocking the worker's event loop, and names it.

``tick`` runs on the handlers' loop and marks every ``TICK_SECONDS`` that the
loop came round; how late each mark is, is the loop's lag. ``observe`` runs on
the ``SideLoop``'s thread, so it keeps running while the handlers' loop is
stuck: once the loop has not come round for ``warn_after`` seconds it logs a
warning that names the attempt whose handler holds the loop (the asyncio task
running on it, whose name carries the task id) and the line the loop thread
is at, while it happens rather than after. When the loop runs again, ``tick``
logs how long it was blocked.

The lag and the number of such stalls are exported as metrics; ``last_tick``
is one of the liveness endpoint's signs of progress.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

from kubetask import logs
from kubetask.worker.heartbeat import Held, Leases, label

logger = logging.getLogger("kubetask.worker")

TICK_SECONDS = 0.1
"""How often the handlers' loop is asked to come round: the resolution of the lag."""

HANDLER_TASK_PREFIX = "kubetask-handler-"
"""Name of the asyncio task that runs an attempt's handler, followed by the task id."""


class LoopWatchdog:
    def __init__(self, warn_after: float, leases: Leases, on_stall: Callable[[], None] = lambda: None) -> None:
        self.warn_after = warn_after
        self._leases = leases
        self._on_stall = on_stall
        self.last_tick = time.monotonic()
        self.lag = 0.0
        """Seconds the last mark came late: 0 on an idle loop, a few ms on a busy one."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._warned = False

    async def tick(self) -> None:
        """On the handlers' loop: mark that it came round, and how late."""
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            self.lag = max(now - before - TICK_SECONDS, 0.0)
            self.last_tick = now
            if self.lag > self.warn_after:
                logger.warning("the event loop runs again after %.1fs blocked by a handler; the other "
                               "tasks of this worker waited that long", self.lag)

    def stalled_for(self) -> float:
        """Seconds the handlers' loop is overdue now (0 when it comes round as asked)."""
        return max(time.monotonic() - self.last_tick - TICK_SECONDS, 0.0)

    async def observe(self) -> None:
        """On the side loop: warn, once per stall, while the handlers' loop is blocked."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            stalled = self.stalled_for()
            if stalled <= self.warn_after:
                self._warned = False
            elif not self._warned:
                self._warned = True
                self._on_stall()
                self._warn(stalled)

    def culprit(self) -> Held | None:
        """The attempt whose handler is running on the handlers' loop now, if a handler is."""
        if self._loop is None:
            return None
        running = asyncio.current_task(self._loop)
        name = running.get_name() if running is not None else ""
        if not name.startswith(HANDLER_TASK_PREFIX):
            return None
        try:
            task_id = int(name.removeprefix(HANDLER_TASK_PREFIX))
        except ValueError:
            return None
        return self._leases.snapshot().get(task_id)

    def where(self) -> str:
        """The innermost lines the handlers' loop thread is running, innermost last."""
        frame = sys._current_frames().get(self._thread_id)
        if frame is None:
            return "unknown"
        stack = traceback.extract_stack(frame)[-3:]
        return " → ".join(f"{entry.filename}:{entry.lineno} in {entry.name}" for entry in stack)

    def _warn(self, stalled: float) -> None:
        held = self.culprit()
        if held is not None:
            logger.warning(
                "the event loop has not run for %.1fs (KUBETASK_LOOP_LAG_WARNING_SECONDS=%g): the async handler "
                "of %s (type %s) blocks it, at %s; every other task of this worker waits meanwhile (its lease "
                "is still renewed). Use await (asyncio.sleep, async I/O) in that handler, or make it a plain "
                "function so it runs in a thread", stalled, self.warn_after, label(held.task), held.task.type,
                self.where(), extra=logs.attempt(held.task))
            return
        logger.warning("the event loop has not run for %.1fs (KUBETASK_LOOP_LAG_WARNING_SECONDS=%g), blocked "
                       "outside any handler, at %s", stalled, self.warn_after, self.where())
