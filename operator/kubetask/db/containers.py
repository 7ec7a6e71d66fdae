"""Container tasks: what only they need (``sql/containers.sql``).

Their claims, heartbeats, successes and failures are the queue's statements
(``db.queue``, with ``containers=True`` for the claim); here are the queues
with due container tasks, the pod of each attempt, how its container ended
(exit code, reason, the last 64 KiB of its log) and the adoption of running
attempts by a new leader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from kubetask.db import sql
from kubetask.db.connection import Conn
from kubetask.db.queue import ClaimedTask, _claimed, clean_text

QUERIES = sql.load("containers")


async def due_queues(conn: Conn) -> list[str]:
    """The queues that have due container tasks."""
    cursor = await conn.execute(QUERIES["due_queues"])
    return [row[0] for row in await cursor.fetchall()]


async def set_pods(conn: Conn, lease_owner: str, pods: Sequence[tuple[int, int, str]]) -> None:
    """Record (task_id, attempt, pod name) for attempts this leader holds."""
    if not pods:
        return
    await conn.execute(QUERIES["set_pods"], {
        "task_id": [p[0] for p in pods], "attempt": [p[1] for p in pods], "pod": [p[2] for p in pods],
        "lease_owner": lease_owner})


class Exit(NamedTuple):
    """How one attempt's container ended."""

    task_id: int
    attempt: int
    exit_code: int | None
    reason: str
    log_tail: str | None


async def record_exit(conn: Conn, lease_owner: str, exits: Sequence[Exit]) -> None:
    """How the attempts' containers ended; call in the transaction that records the attempts' outcomes."""
    if not exits:
        return
    await conn.execute(QUERIES["record_exit"], {
        "task_id": [e.task_id for e in exits], "attempt": [e.attempt for e in exits],
        "exit_code": [e.exit_code for e in exits], "reason": [clean_text(e.reason, 200) for e in exits],
        "log_tail": [None if e.log_tail is None else e.log_tail.replace("\x00", "\\x00") for e in exits],
        "lease_owner": lease_owner})


async def adopt(conn: Conn, lease_owner: str, lease_seconds: float,
                attempts: Sequence[tuple[str, int]]) -> list[ClaimedTask]:
    """Take over the leases of these (uid, attempt) pairs that still run; the tasks adopted."""
    if not attempts:
        return []
    cursor = await conn.execute(QUERIES["adopt"], {
        "uid": [a[0] for a in attempts], "attempt": [a[1] for a in attempts], "lease_owner": lease_owner,
        "lease_seconds": lease_seconds})
    return [_claimed(row) for row in await cursor.fetchall()]


async def running_attempts(conn: Conn, attempts: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
    """Of these (uid, attempt) pairs, those whose task runs that attempt now."""
    if not attempts:
        return set()
    cursor = await conn.execute(QUERIES["running_attempts"], {
        "uid": [a[0] for a in attempts], "attempt": [a[1] for a in attempts]})
    return {(uid, int(n)) for uid, n in await cursor.fetchall()}
