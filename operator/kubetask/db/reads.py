"""Reads: counts for the scaler, the metrics and ``kubetask stats``, rows for ``kubetask history`` and ``logs``.

"Waiting" has one definition, ``queue_depths``: the scaler sizes pools by it,
the metrics report it and the CLI prints it, so the three never disagree.
Every count of unfinished work reads only unfinished rows, through their
partial indexes, so its cost follows the live queue and not the history.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from psycopg.rows import class_row

from kubetask.db import sql
from kubetask.db.connection import Conn, one

QUERIES = sql.load("reads")


@dataclasses.dataclass(frozen=True)
class QueueDepth:
    """One queue's unfinished work."""

    queue: str
    queued: int
    retrying: int
    """Failed at least once and waiting for their next attempt (due or not)."""
    due: int
    """Queued or retrying and due now: waiting for a worker."""
    scheduled: int
    """Queued or retrying, due in the future (runAt, delay, backoff)."""
    running: int
    oldest_due_seconds: float
    """Age of the oldest due task, from when it became due; 0 when none waits."""
    busy_pods: dict[str, int]
    """Worker pod name → tasks it runs now."""
    containers_due: int = 0
    """Of ``due``, the container tasks (the operator runs them as pods; no worker claims them)."""
    containers_running: int = 0
    """Of ``running``, the container tasks."""

    @property
    def handlers_due(self) -> int:
        return self.due - self.containers_due

    @property
    def handlers_running(self) -> int:
        return self.running - self.containers_running


async def queue_depths(conn: Conn) -> dict[str, QueueDepth]:
    """Per queue with unfinished work."""
    cursor = await conn.execute(QUERIES["queue_depths"])
    return {
        queue: QueueDepth(queue, int(queued), int(retrying), int(due), int(scheduled), int(running),
                          float(oldest), {pod: int(n) for pod, n in busy_pods.items()}, int(c_due), int(c_running))
        for queue, queued, retrying, due, scheduled, running, oldest, busy_pods, c_due, c_running
        in await cursor.fetchall()
    }


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """One queue's numbers, for ``kubetask stats``: its depth and what finished within the window."""

    queue: str
    due: int
    """Due now and waiting for a worker (``QueueDepth.due``)."""
    scheduled: int
    """Waiting for a future runAt or retry time."""
    running: int
    retrying: int
    """Failed at least once and waiting for their next attempt."""
    oldest_due_seconds: float
    """Age of the oldest due task; 0 when none waits."""
    succeeded: int
    """Finished within the window."""
    dead_letter: int
    """Dead-lettered within the window."""
    cancelled: int
    """Cancelled within the window."""
    dead_letter_total: int
    """In the dead letter now, whenever they got there."""


async def queue_stats(conn: Conn, window_seconds: float = 60.0) -> list[QueueStats]:
    """Every queue with unfinished work, or work finished within the window, or a dead letter."""
    depths = await queue_depths(conn)
    cursor = await conn.execute(QUERIES["finished_counts"], {"window_seconds": window_seconds})
    finished = {queue: [int(n) for n in counts] for queue, *counts in await cursor.fetchall()}
    stats = []
    for queue in sorted(set(depths) | set(finished)):
        depth = depths.get(queue)
        succeeded, dead_letter, cancelled, dead_letter_total = finished.get(queue, [0, 0, 0, 0])
        stats.append(QueueStats(
            queue, due=depth.due if depth else 0, scheduled=depth.scheduled if depth else 0,
            running=depth.running if depth else 0, retrying=depth.retrying if depth else 0,
            oldest_due_seconds=depth.oldest_due_seconds if depth else 0.0, succeeded=succeeded,
            dead_letter=dead_letter, cancelled=cancelled, dead_letter_total=dead_letter_total))
    return stats


async def claims_since(conn: Conn, window_seconds: float = 60.0) -> dict[str, int]:
    """Per queue with any, the claims (attempts started) within the last ``window_seconds``."""
    cursor = await conn.execute(QUERIES["claims_since"], {"window_seconds": window_seconds})
    return {queue: int(n) for queue, n in await cursor.fetchall()}


async def mirror_lag(conn: Conn) -> tuple[int, float]:
    """(statuses behind their row, age in seconds of the oldest change not yet mirrored; 0 when none)."""
    row = await one(conn, QUERIES["mirror_lag"], {})
    return int(row[0]), float(row[1])


@dataclasses.dataclass(frozen=True)
class TaskRow:
    """A task row as ``kubetask history`` and the tests read it."""

    id: int
    uid: str
    namespace: str
    name: str
    type: str
    payload: dict[str, Any]
    queue: str
    priority: int
    max_retries: int
    backoff_initial_seconds: float
    backoff_factor: float
    backoff_max_seconds: float
    backoff_jitter: float
    timeout_seconds: int | None
    state: str
    attempts: int
    budget_base: int
    run_at: datetime.datetime
    lease_owner: str | None
    worker_pod: str | None
    lease_expires_at: datetime.datetime | None
    result: Any
    last_error: dict[str, Any] | None
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    version: int
    mirrored_version: int
    mirrored_state: str | None


@dataclasses.dataclass(frozen=True)
class AttemptRow:
    """One attempt, in full (traceback and result included)."""

    number: int
    worker_pod: str
    lease_owner: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    outcome: str
    error_type: str | None
    error_message: str | None
    traceback: str | None
    result: Any
    exit_code: int | None = None
    """A container attempt's exit code; None for a handler attempt, or a container that never started."""
    reason: str | None = None
    """Why a container attempt ended, as the kubelet said (Completed, Error, OOMKilled…)."""
    log_tail: str | None = None
    """A container attempt's log as its pod ended, the last ``model.LOG_TAIL_BYTES`` of it."""


@dataclasses.dataclass(frozen=True)
class AttemptLog:
    """What ``kubetask logs`` needs of one attempt: where it ran, how it ended, and its stored log tail."""

    number: int
    worker_pod: str
    """The attempt's pod: a container attempt's own, or the worker that ran a handler attempt."""
    outcome: str
    exit_code: int | None
    reason: str | None
    log_tail: str | None
    """None while the pod runs (or for a handler attempt): the leader stores it when the pod ends."""


async def get_task(conn: Conn, uid: str) -> TaskRow | None:
    cursor = conn.cursor(row_factory=class_row(TaskRow))
    await cursor.execute(QUERIES["get_task"], {"uid": uid})
    return await cursor.fetchone()


async def task_history(conn: Conn, uid: str) -> list[AttemptRow]:
    """Every attempt of a task, oldest first."""
    cursor = conn.cursor(row_factory=class_row(AttemptRow))
    await cursor.execute(QUERIES["task_history"], {"uid": uid})
    return await cursor.fetchall()


async def attempt_log(conn: Conn, uid: str, attempt: int | None = None) -> AttemptLog | None:
    """Attempt ``attempt`` of the task with this Task uid, or its latest when None; None when there is none."""
    cursor = conn.cursor(row_factory=class_row(AttemptLog))
    await cursor.execute(QUERIES["attempt_log"], {"uid": uid, "attempt": attempt})
    return await cursor.fetchone()


async def find_tasks(conn: Conn, namespace: str, name: str) -> list[TaskRow]:
    """Rows of the Tasks named ``namespace/name``, newest first (the object may be long gone)."""
    cursor = await conn.execute(QUERIES["find_tasks"], {"namespace": namespace, "name": name})
    rows = [await get_task(conn, uid) for (uid,) in await cursor.fetchall()]
    return [row for row in rows if row is not None]
