"""Upkeep, leader only: the rescuer, TTL deletions, the orphan sweep and history retention.

Each is a ``run_once`` in the shared loop (``loop.run``) with an interval of
its own. The database layer fetches and applies (``db.upkeep``); the
decisions are made here:

rescuer    an expired lease means the worker died, was killed or lost its
           connection: the attempt is recorded lost (it spends the retry
           budget, so a task that kills its worker cannot loop for ever) and
           the task retries with its backoff, from the database's clock, or
           goes to the dead letter. Same ``retry.decide`` as a handler failure.
ttl        finished Tasks whose ``ttlSecondsAfterFinished`` ran out (once their
           final status was mirrored) are deleted; the history stays.
orphans    rows whose Task object was deleted while the operator was away are
           cancelled: only rows admitted before the LIST began are judged by it.
retention  finished history older than the retention settings is deleted in
           bounded batches, oldest first. A Task object whose row goes keeps its
           status and is never admitted again (only Pending Tasks are).
"""

from __future__ import annotations

import datetime
import logging
import random
import time

from kubetask import db, kube, logs, retry, states
from kubetask.operator.runtime import Runtime

log = logging.getLogger("kubetask.operator")

RESCUE_BATCH = 500
"""Expired leases handled per pass; a larger backlog is taken by the next passes, back to back."""
TTL_BATCH = 500
"""TTL deletions per pass."""
ORPHAN_MARGIN = datetime.timedelta(seconds=5)
"""Rows admitted this close to the orphan sweep's LIST are left for the next sweep."""


def decide_rescue(lease: db.upkeep.ExpiredLease, rng: random.Random) -> db.upkeep.Rescue:
    """What to do with an expired lease: retry with backoff (from the database's clock) or dead letter."""
    message = (
        f"worker pod {lease.worker_pod} stopped renewing its lease (lease owner {lease.lease_owner}, "
        f"expired at {lease.lease_expires_at.isoformat()}): the pod died, was killed, or lost "
        f"its database connection during attempt {lease.attempt}"
    )
    decision = retry.decide(attempt_in_budget=lease.attempt_in_budget, max_retries=lease.max_retries,
                            backoff=lease.backoff, permanent=False, now=lease.now, rng=rng)
    return db.upkeep.Rescue(lease, decision.at if isinstance(decision, retry.Retry) else None, message)


async def rescue(conn: db.connection.Conn, limit: int = RESCUE_BATCH,
                 rng: random.Random | None = None) -> list[db.upkeep.Rescued]:
    """Find up to ``limit`` expired leases, decide each, apply the decisions; return those applied."""
    rng = rng or random.Random()
    expired = await db.upkeep.expired_leases(conn, limit)
    return await db.upkeep.rescue(conn, [decide_rescue(lease, rng) for lease in expired])


async def rescue_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    rescued_now = await rescue(conn)
    for rescued in rescued_now:
        lease = rescued.lease
        log.warning("task %s/%s (uid %s) attempt %d: the lease of worker pod %s expired; %s", lease.namespace,
                    lease.name, lease.uid, lease.attempt, lease.worker_pod,
                    "dead letter" if rescued.state == states.TaskState.DEAD_LETTER
                    else f"retrying at {rescued.run_at.isoformat()}",
                    extra=logs.about(lease.namespace, lease.name, lease.uid))
        rt.meters.lease_expiries.labels(lease.queue, rescued.state).inc()
    return len(rescued_now) == RESCUE_BATCH


async def ttl_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    expired = await db.upkeep.expired_ttl(conn, limit=TTL_BATCH)
    for uid, namespace, name in expired:
        try:
            await rt.kube.delete_task(namespace, name, uid)
        except (kube.NotFound, kube.Conflict):
            pass
        await db.upkeep.mark_object_deleted(conn, uid)
    return len(expired) == TTL_BATCH


async def orphans_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    # Only rows admitted before the list began can be judged by it, on the database's clock (the rows'
    # own), with a margin for an API server whose watch cache serves the list a little behind.
    listed_at = await db.upkeep.clock(conn) - ORPHAN_MARGIN
    live = await rt.kube.task_uids(rt.config.namespaces)
    missing = await db.upkeep.missing_uids(conn, live, admitted_before=listed_at, namespaces=rt.config.namespaces)
    cancelled = await db.queue.cancel(conn, *missing)
    if cancelled:
        log.info("cancelled %d task(s) whose Task object was deleted while the operator was away", cancelled)
    return False


async def retention_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    """Delete the finished history the retention settings let go, in bounded batches."""
    config = rt.config
    cutoff = await db.upkeep.history_cutoff(conn, retention_days=config.history_retention_days,
                                            keep_last=config.history_keep_last)
    if cutoff is None:
        return False
    began, deleted = time.monotonic(), 0
    while True:
        batch = await db.upkeep.delete_history(conn, cutoff, config.history_retention_batch_size)
        deleted += batch
        if batch < config.history_retention_batch_size:
            break
    if deleted:
        log.info("history retention: deleted %d finished task(s) that finished before %s, in %.1fs",
                 deleted, cutoff.isoformat(), time.monotonic() - began)
    return False
