"""Container tasks: what only they need (``sql/containers.sql``).

Their claims, heartbeats, successes and failures are the queue's statements
(``db.queue``, with ``containers=True`` for the claim); here are the queues
with due container tasks, the pod of each attempt, how its container ended
(exit code, reason, the last 64 KiB of its log) and the adoption of running
attempts by a new leader.
"""

from __future__ import annotations

from collections.abc import Sequence

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


async def record_exit(conn: Conn, task_id: int, attempt: int, lease_owner: str, *, exit_code: int | None,
                      reason: str, log_tail: str | None) -> None:
    """How the attempt's container ended; call in the transaction that records the attempt's outcome."""
    await conn.execute(QUERIES["record_exit"], {
        "task_id": task_id, "attempt": attempt, "lease_owner": lease_owner, "exit_code": exit_code,
        "reason": clean_text(reason, 200), "log_tail": None if log_tail is None else log_tail.replace("\x00", "\\x00"),
    })


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
