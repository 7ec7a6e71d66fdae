"""The leader's housekeeping: leadership, expired leases, TTL deletions, orphans, retention.

Each capability is a fetch and an apply; the operator's upkeep services decide
in between (River's shape: ``JobGetStuck`` / ``JobRescueMany`` around the
retry decision). The apply statements re-check what the fetch saw, so a row
that changed in between (a worker renewed its lease, finished, or another
rescuer got there first) is left alone and no transaction spans the decision.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection, Sequence

from kubetask.db import sql
from kubetask.db.connection import Conn, one
from kubetask.db.queue import RetryPolicy

QUERIES = sql.load("upkeep")


async def try_lead(conn: Conn) -> bool:
    """Take operator leadership for as long as ``conn`` lives; False while another session holds it."""
    row = await one(conn, QUERIES["try_lead"], {})
    return bool(row[0])


# ------------------------------------------------------------------- leases

@dataclasses.dataclass(frozen=True)
class ExpiredLease(RetryPolicy):
    """A running task whose worker stopped renewing its lease."""

    id: int
    uid: str
    namespace: str
    name: str
    queue: str
    attempt: int
    attempt_in_budget: int
    worker_pod: str
    lease_owner: str
    lease_expires_at: datetime.datetime
    now: datetime.datetime
    """The database's clock when the lease was found expired: retry times are computed from it."""


@dataclasses.dataclass(frozen=True)
class Rescue:
    """What to do with one expired lease: retry at ``retry_at``, or dead letter when it is None."""

    lease: ExpiredLease
    retry_at: datetime.datetime | None
    message: str


@dataclasses.dataclass(frozen=True)
class Rescued:
    """A rescue that was applied: the task's new state and when it runs again."""

    lease: ExpiredLease
    message: str
    state: str
    run_at: datetime.datetime


async def expired_leases(conn: Conn, limit: int) -> list[ExpiredLease]:
    """Up to ``limit`` running tasks whose lease has expired, the longest expired first."""
    cursor = await conn.execute(QUERIES["expired_leases"], {"limit": limit})
    return [ExpiredLease(max_retries=max_retries, backoff_initial_seconds=initial, backoff_factor=factor,
                         backoff_max_seconds=max_seconds, backoff_jitter=jitter, id=id_, uid=uid,
                         namespace=namespace, name=name, queue=queue, attempt=attempt,
                         attempt_in_budget=in_budget, worker_pod=pod, lease_owner=owner,
                         lease_expires_at=expires, now=now)
            for (id_, uid, namespace, name, queue, attempt, in_budget, max_retries, initial, factor, max_seconds,
                 jitter, pod, owner, expires, now) in await cursor.fetchall()]


async def rescue(conn: Conn, rescues: Sequence[Rescue]) -> list[Rescued]:
    """Record each attempt as lost and apply its decision; returns those applied.

    A rescue whose task is no longer running the same attempt under an
    expired lease is skipped (and missing from the result). Lost attempts
    spend the retry budget.
    """
    if not rescues:
        return []
    cursor = await conn.execute(QUERIES["rescue"], {
        "task_id": [r.lease.id for r in rescues],
        "attempt": [r.lease.attempt for r in rescues],
        "retry_at": [r.retry_at for r in rescues],
        "message": [r.message for r in rescues],
    })
    applied = {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}
    return [Rescued(r.lease, r.message, *applied[r.lease.id]) for r in rescues if r.lease.id in applied]


# ------------------------------------------------------------------ objects

async def clock(conn: Conn) -> datetime.datetime:
    """The database's ``now()``."""
    row = await one(conn, QUERIES["clock"], {})
    now: datetime.datetime = row[0]
    return now


async def missing_uids(conn: Conn, live: Collection[str], admitted_before: datetime.datetime,
                       namespaces: Sequence[str]) -> list[str]:
    """Uids of unfinished tasks of ``namespaces`` (empty: all) admitted before ``admitted_before``, not in ``live``.

    For Task objects deleted while the operator was not watching; ``live``
    is the set of Task uids of those namespaces listed after ``admitted_before``.
    """
    cursor = await conn.execute(QUERIES["missing_uids"], {"live": list(live), "admitted_before": admitted_before,
                                                          "namespaces": list(namespaces)})
    return [uid for (uid,) in await cursor.fetchall()]


async def unrowed_uids(conn: Conn, uids: Collection[str]) -> set[str]:
    """Those of ``uids`` that have no row."""
    if not uids:
        return set()
    cursor = await conn.execute(QUERIES["unrowed_uids"], {"uids": list(uids)})
    return {uid for (uid,) in await cursor.fetchall()}


async def expired_ttl(conn: Conn, limit: int) -> list[tuple[str, str, str]]:
    """(uid, namespace, name) of finished, mirrored tasks whose object outlived ttlSecondsAfterFinished."""
    cursor = await conn.execute(QUERIES["expired_ttl"], {"limit": limit})
    return [(uid, namespace, name) for uid, namespace, name in await cursor.fetchall()]


async def mark_object_deleted(conn: Conn, uid: str) -> None:
    """Record that the Task object was deleted for its TTL, so ``expired_ttl`` no longer lists it."""
    await conn.execute(QUERIES["mark_object_deleted"], {"uid": uid})


# ---------------------------------------------------------------- retention

async def history_cutoff(conn: Conn, *, retention_days: float | None,
                         keep_last: int | None) -> datetime.datetime | None:
    """The time before which finished tasks may be deleted, or None when none may.

    A finished task goes when it finished more than ``retention_days`` ago, or
    when it is not among the ``keep_last`` most recently finished tasks (of all
    queues and namespaces); None switches a rule off. Computed once per
    retention pass: rows finishing meanwhile only make the cutoff conservative.
    """
    if retention_days is None and keep_last is None:
        return None
    row = await one(conn, QUERIES["history_cutoff"], {"retention_days": retention_days, "keep_last": keep_last})
    cutoff: datetime.datetime | None = row[0]
    return cutoff


async def delete_history(conn: Conn, finished_before: datetime.datetime, limit: int) -> int:
    """Delete up to ``limit`` finished tasks (and their attempts) that finished before ``finished_before``.

    Oldest first, in one short statement. Never an unfinished task, one whose
    final status is not mirrored yet, or one whose Task object still waits for
    its ``ttlSecondsAfterFinished`` deletion. Returns how many tasks went:
    fewer than ``limit`` means none is left before the cutoff.
    """
    cursor = await conn.execute(QUERIES["delete_history"], {"cutoff": finished_before, "limit": limit})
    return max(cursor.rowcount, 0)
