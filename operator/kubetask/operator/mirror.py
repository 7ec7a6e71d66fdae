"""The mirror: the outbox's rows → Task statuses, and Events for the transitions a user watches for.

Each pass reads a batch of rows whose status is behind, writes each Task's
status with the row's latest state (a burst of changes becomes one write),
posts the Events of the transition (admitted, retrying, dead letter, refused by its Queue) and
marks what it wrote. A status that cannot be written now (the API server
away) stays in the outbox for the next pass; a Task that is gone has nothing
left to mirror; a status refused for good (403, 422) is given up, counted in
``kubetask_status_refused_total`` and logged, so it cannot stall the outbox.
Leader only.
"""

from __future__ import annotations

import asyncio
import logging

from kubetask import db, kube, logs, model, states, status
from kubetask.operator.runtime import Runtime

log = logging.getLogger("kubetask.operator")


async def run_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    """Mirror one batch; True when it was full and every row was written (more may be waiting)."""
    rows = await db.outbox.pending_status(conn, rt.config.mirror_batch_size)
    if not rows:
        return False
    semaphore = asyncio.Semaphore(rt.config.api_concurrency)
    served = {pool.policy.queue for pool in rt.pools.values()}

    async def one(row: db.outbox.StatusRow) -> tuple[int, int, str] | None:
        async with semaphore:
            missing = row.queue if rt.pools_listed and row.queue not in served else None
            try:
                await rt.kube.patch_task_status(row.namespace, row.name, row.uid, status.build(row, missing))
            except (kube.NotFound, kube.Conflict):
                return (row.id, row.version, row.state)  # the Task is gone: nothing left to mirror
            except kube.ApiError as err:
                if not refused_for_good(err.status):
                    log.warning("status of %s/%s: %s", row.namespace, row.name, err,
                                extra=logs.about(row.namespace, row.name, row.uid))
                    return None
                # Retrying cannot help (RBAC, the schema): give this version up, or it is retried every
                # pass for ever, holds back TTL and retention, and enough of them fill every batch.
                rt.meters.status_refused.labels(str(err.status)).inc()
                log.error("status of %s/%s refused by the API server (%s); given up for this change, the "
                          "row in PostgreSQL (kubetask history) keeps the truth. A 403 means the operator's "
                          "RBAC lacks patch on tasks/status in this namespace", row.namespace, row.name, err,
                          extra=logs.about(row.namespace, row.name, row.uid))
                return (row.id, row.version, row.state)
            except Exception as err:
                log.warning("status of %s/%s: %s", row.namespace, row.name, err,
                            extra=logs.about(row.namespace, row.name, row.uid))
                return None
            await _post_transition_events(rt, row)
            return (row.id, row.version, row.state)

    done = [r for r in await asyncio.gather(*(one(row) for row in rows)) if r is not None]
    if done:
        await db.outbox.mark_mirrored(conn, done)
    return len(done) == len(rows) == rt.config.mirror_batch_size


def thinned_in(attempt: object) -> bool:
    """Whether a Retrying Event is posted for failed attempt ``attempt``: the 1st, 2nd, 4th, 8th…

    Events are the API server's (and etcd's) to keep; a Task with maxRetries 100 posts 7 of them, not
    100, and the status always says the latest attempt and error."""
    return not isinstance(attempt, int) or attempt < 1 or attempt & (attempt - 1) == 0


def refused_for_good(code: int) -> bool:
    """A 4xx a retry cannot cure: not gone (404), conflicting (409), timed out (408) or throttled (429)."""
    return 400 <= code < 500 and code not in (404, 408, 409, 429)


async def _post_transition_events(rt: Runtime, row: db.outbox.StatusRow) -> None:
    before, after = row.mirrored_state, row.state
    ns, name, uid = row.namespace, row.name, row.uid
    err = row.last_error or {}
    try:
        if before is None and rt.config.admission_events:
            await rt.kube.post_event(ns, name, uid, "Admitted", f"queued on {row.queue!r}")
        if after == states.TaskState.RETRYING and thinned_in(err.get("attempt")):
            await rt.kube.post_event(
                ns, name, uid, "Retrying",
                f"attempt {err.get('attempt')} failed with {err.get('type')}: {err.get('message', '')}; "
                f"next attempt at {status.timestamp(row.run_at)}", warning=True)
        elif (after == states.TaskState.DEAD_LETTER and before != states.TaskState.DEAD_LETTER
              and err.get("type") == model.QUEUE_REFUSED):
            await rt.kube.post_event(ns, name, uid, "Refused", str(err.get("message", "")), warning=True)
        elif after == states.TaskState.DEAD_LETTER and before != states.TaskState.DEAD_LETTER:
            await rt.kube.post_event(
                ns, name, uid, "DeadLetter",
                f"gave up after {row.attempts} attempt(s): {err.get('type')}: {err.get('message', '')}; "
                f"`kubectl annotate task {name} {model.RETRY_ANNOTATION}=$(date +%s) --overwrite` runs it again",
                warning=True)
    except Exception as event_err:  # an Event is a courtesy: never block the mirror on it
        log.debug("event for %s/%s: %s", ns, name, event_err, extra=logs.about(ns, name, uid))
