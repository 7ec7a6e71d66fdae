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
           The other way round, Task objects with no row seen by two sweeps in
           a row are looked at one by one: a Pending one is admitted (its watch
           event went missing), one whose status says it was admitted is
           admitted again, visibly (the database lost its data), a refused one
           is deleted after ``refused_ttl_seconds``, a finished one whose
           history retention deleted is left alone. The LIST is metadata only.
retention  finished history older than the retention settings is deleted in
           bounded batches, oldest first. A Task object whose row goes keeps its
           status and is never admitted again (only Pending Tasks are).
"""

from __future__ import annotations

import datetime
import logging
import random
import time

from kubetask import db, kube, logs, model, retry, states, status
from kubetask.operator.runtime import Runtime, ours

log = logging.getLogger("kubetask.operator")

RESCUE_BATCH = 500
"""Expired leases handled per pass; a larger backlog is taken by the next passes, back to back."""
TTL_BATCH = 500
"""TTL deletions per pass."""
ORPHAN_MARGIN = datetime.timedelta(seconds=5)
"""Rows admitted this close to the orphan sweep's LIST are left for the next sweep."""
UNROWED_BATCH = 200
"""Task objects without a row fetched per sweep; more wait for the next sweeps."""
ADMITTED_PHASES = (model.Phase.QUEUED.value, model.Phase.RUNNING.value, model.Phase.RETRYING.value)


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
    live = await rt.kube.task_refs(rt.config.namespaces)
    missing = await db.upkeep.missing_uids(conn, live.keys(), admitted_before=listed_at,
                                           namespaces=rt.config.namespaces)
    cancelled = await db.queue.cancel(conn, *missing)
    if cancelled:
        log.info("cancelled %d task(s) whose Task object was deleted while the operator was away", cancelled)
    await _unrowed(rt, conn, live)
    return False


async def _unrowed(rt: Runtime, conn: db.connection.Conn, live: dict[str, kube.TaskRef]) -> None:
    """Task objects PostgreSQL has no row for, seen so by this sweep and the one before: act on each."""
    memory = rt.unrowed
    memory.settled &= live.keys()
    memory.refused_until = {uid: at for uid, at in memory.refused_until.items() if uid in live}
    unrowed = await db.upkeep.unrowed_uids(conn, live.keys() - memory.settled)
    now = time.time()
    due = [uid for uid in unrowed if uid in memory.suspects and memory.refused_until.get(uid, 0.0) <= now]
    memory.suspects = unrowed
    for uid in due[:UNROWED_BATCH]:
        ref = live[uid]
        body = await rt.kube.task(ref.namespace, ref.name)
        if body is None or body["metadata"]["uid"] != uid:
            continue
        if not ours(rt.config, body):
            memory.settled.add(uid)  # another controller's (spec.managedBy): never fetched again
            continue
        seen = body.get("status") or {}
        phase = seen.get("phase")
        about = logs.about(ref.namespace, ref.name, uid)
        if phase in (None, model.Phase.PENDING.value):
            rt.admissions.offer(body)
        elif phase in ADMITTED_PHASES:
            message = (f"PostgreSQL has no row for this Task although its status says {phase}: the database "
                       "lost its data (restored from a backup, failed over without it, or a bundled PostgreSQL "
                       "restarted without its volume); admitted again, it runs from its first attempt")
            log.warning("Task %s/%s: %s", ref.namespace, ref.name, message, extra=about)
            rt.in_background(rt.kube.post_event(ref.namespace, ref.name, uid, "Readmitted", message, warning=True))
            rt.admissions.offer(body)
        elif (seen.get("lastError") or {}).get("type") == status.REFUSED:
            finished = seen.get("finishedAt")
            refused_at = (datetime.datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
                          if isinstance(finished, str) else now)
            deadline = refused_at + rt.config.refused_ttl_seconds
            if deadline > now:
                memory.refused_until[uid] = deadline
                continue
            try:
                await rt.kube.delete_task(ref.namespace, ref.name, uid)
            except (kube.NotFound, kube.Conflict):
                continue
            log.info("Task %s/%s deleted: it was refused at admission %.0f s ago (KUBETASK_REFUSED_TTL_SECONDS)",
                     ref.namespace, ref.name, now - refused_at, extra=about)
        else:
            memory.settled.add(uid)  # finished; the history retention deleted its row


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
