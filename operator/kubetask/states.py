"""The names of states, once for all Python code.

The database stores them as text and its CHECK constraints list the same
words (``db/migrations/0001_initial.sql``); a test compares the two. A
``StrEnum`` member *is* its string, so it binds as a query parameter and
compares equal to what a query returns.
"""

from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    """Where a task row is in its life (``kubetask_tasks.state``)."""

    QUEUED = "queued"
    """Admitted and waiting for ``run_at``; a worker of its queue may claim it once due."""
    RUNNING = "running"
    """Claimed: a worker holds its lease and runs an attempt."""
    RETRYING = "retrying"
    """An attempt failed and the retry policy allows another, at ``run_at``."""
    SUCCEEDED = "succeeded"
    """Final: the last attempt returned a result."""
    DEAD_LETTER = "dead_letter"
    """Final until retried: the retry budget is spent or the error was permanent."""
    CANCELLED = "cancelled"
    """Final: the Task object was deleted before the task finished."""

    @property
    def finished(self) -> bool:
        return self in FINISHED


UNFINISHED = frozenset({TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRYING})
FINISHED = frozenset({TaskState.SUCCEEDED, TaskState.DEAD_LETTER, TaskState.CANCELLED})


class Outcome(enum.StrEnum):
    """How one attempt ended (``kubetask_attempts.outcome``)."""

    RUNNING = "running"
    """Not ended yet."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The handler raised."""
    TIMEOUT = "timeout"
    """The attempt ran past ``timeoutSeconds``."""
    LOST = "lost"
    """The worker's lease expired (the pod died or stalled); spends the retry budget."""
    HANDED_BACK = "handed_back"
    """The worker shut down and returned the task to the queue; does not spend the budget."""
    CANCELLED = "cancelled"
    """The Task was deleted during the attempt."""


class TickOutcome(enum.StrEnum):
    """What became of one tick of a TaskSchedule (``kubetask_schedule_ticks.outcome``)."""

    CLAIMED = "claimed"
    """Won by the leader, its Task being created: a later pass creates it again if the leader died."""
    CREATED = "created"
    """Its Task was created."""
    SKIPPED = "skipped"
    """Not run: concurrencyPolicy Forbid, and an earlier run had not finished."""
    MISSED = "missed"
    """Not run: later than startingDeadlineSeconds when the operator got to it."""
    SUSPENDED = "suspended"
    """Not run: it passed while the schedule was suspended."""
