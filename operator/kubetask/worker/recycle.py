"""When a worker process gives way to a fresh one: it stops claiming, finishes or hands back its tasks,
and exits so the pod restarts it.

Two things a handler can use up that only a new process gives back:

* memory a leaking handler holds (``KUBETASK_MAX_MEMORY_MB``), checked after
  each task; the worker exits 0, as after SIGTERM;
* threads: a plain-function handler past its timeout keeps its thread, which
  cannot be stopped. The pool has room for one abandoned thread per slot
  (``threads``); once they fill it, another timeout would leave a slot
  waiting for a thread, so the worker exits ``EXIT_CODE`` instead, and the
  restart count shows a pool whose handlers ignore ``ctx.cancelled``.
"""

from __future__ import annotations

import logging
import os

from kubetask import db, settings

logger = logging.getLogger("kubetask.worker")

EXIT_CODE = 3
"""Exit status of a worker that recycled itself because its abandoned handler threads filled its room."""


def resident_mb() -> float:
    """This process's resident memory now (not its peak), in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def over_memory(config: settings.WorkerSettings, after: str) -> bool:
    """The process holds more memory than allowed (logged, naming the attempt ``after`` which it was seen)."""
    limit = config.max_memory_mb
    if limit is None:
        return False
    rss = resident_mb()
    if rss <= limit:
        return False
    logger.warning("recycling: resident memory %.0f MiB is over KUBETASK_MAX_MEMORY_MB=%d after %s; "
                   "finishing running tasks and exiting so the pod restarts this worker", rss, limit, after)
    return True


def threads_full(config: settings.WorkerSettings, abandoned: int, task: db.queue.ClaimedTask, after: str) -> bool:
    """Abandoned handler threads fill the room the pool has for them (logged, naming the handler)."""
    if abandoned < config.concurrency:
        return False
    logger.error("recycling: %d handler threads are abandoned (timed out, still running), as many as "
                 "KUBETASK_CONCURRENCY=%d, after %s; a thread cannot be stopped, so this worker stops claiming, "
                 "finishes or hands back its tasks and exits %d for the pod to restart it with fresh threads. "
                 "Make the handler of type %r return when ctx.cancelled is set, or make it async",
                 abandoned, config.concurrency, after, EXIT_CODE, task.type)
    return True
