"""The outbox: statuses behind their rows, read in order and marked once written.

A row is behind while ``version > mirrored_version``. The operator's mirror
reads a batch of such rows with their latest attempts (one round trip), writes
each Task's status with the row's *latest* state (so a burst of changes
coalesces into one write), and marks the versions it wrote; an older version
never overwrites a newer mark. Nothing is lost when the operator is away:
the rows are the facts, and NOTIFY only wakes the reader.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

from kubetask import model
from kubetask.db import sql
from kubetask.db.connection import Conn

QUERIES = sql.load("outbox")


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One attempt, as shown in a Task's status history."""

    number: int
    worker_pod: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    outcome: str
    error_type: str | None
    error_message: str | None
    exit_code: int | None = None
    """A container attempt's exit code; None for a handler attempt, or a container that never started."""
    reason: str | None = None
    """Why a container attempt ended, as the kubelet said (Completed, OOMKilled…); None for a handler attempt."""


@dataclasses.dataclass(frozen=True)
class StatusRow:
    """Everything needed to write one Task's status; ``history`` is the last attempts, oldest first."""

    id: int
    uid: str
    namespace: str
    name: str
    type: str
    queue: str
    state: str
    attempts: int
    attempts_in_budget: int
    max_retries: int
    run_at: datetime.datetime
    worker_pod: str | None
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    result: Any
    last_error: dict[str, Any] | None
    version: int
    mirrored_state: str | None
    history: list[HistoryEntry]


def _timestamp(value: str | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromisoformat(value)


async def pending_status(conn: Conn, limit: int) -> list[StatusRow]:
    """Rows whose status is behind, oldest version first, with their last attempts."""
    cursor = await conn.execute(QUERIES["pending_status"], {"limit": limit, "history": model.STATUS_HISTORY_LENGTH})
    names = [column.name for column in cursor.description or ()]
    rows: list[StatusRow] = []
    for values in await cursor.fetchall():
        record = dict(zip(names, values))
        record["history"] = [
            HistoryEntry(
                number=entry["number"], worker_pod=entry["worker_pod"],
                started_at=datetime.datetime.fromisoformat(entry["started_at"]),
                finished_at=_timestamp(entry["finished_at"]), outcome=entry["outcome"],
                error_type=entry["error_type"], error_message=entry["error_message"],
                exit_code=entry["exit_code"], reason=entry["reason"],
            )
            for entry in record["history"]
        ]
        rows.append(StatusRow(**record))
    return rows


async def mark_mirrored(conn: Conn, items: Sequence[tuple[int, int, str]]) -> None:
    """Record (task_id, version, state) as written to the Task; an older version never wins."""
    latest: dict[int, tuple[int, str]] = {}
    for task_id, version, state in items:
        if task_id not in latest or version > latest[task_id][0]:
            latest[task_id] = (version, state)
    if not latest:
        return
    await conn.execute(QUERIES["mark_mirrored"], {
        "task_id": list(latest), "version": [v for v, _ in latest.values()],
        "state": [s for _, s in latest.values()],
    })
