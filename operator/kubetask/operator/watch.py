"""What a watch event of a Task means: admit it, cancel it, or retry it from the dead letter.

kopf delivers the events (``app``); this module decides, so it is tested
without kopf. Every reaction is idempotent in SQL (admission on the uid,
cancellation on the state, a retry on the annotation's token), so an event
delivered twice, or seen by two replicas, changes nothing the second time.
"""

from __future__ import annotations

import logging
from typing import Any

from kubetask import db, logs, model
from kubetask.operator.runtime import Runtime, missing_queues, ours

log = logging.getLogger("kubetask.operator")


async def on_task_event(rt: Runtime, event_type: str | None, raw: dict[str, Any]) -> None:
    meta = raw.get("metadata", {})
    uid = meta.get("uid")
    if not uid or not ours(rt.config, raw):
        return
    phase = (raw.get("status") or {}).get("phase")
    if event_type == "DELETED":
        if phase in (None, model.Phase.PENDING.value):
            # It may still sit in the admission queue, or be in a batch being inserted: leave a tombstone.
            kind = (raw.get("spec") or {}).get("type")
            await rt.events_db.run(
                lambda conn: db.queue.cancel_or_tombstone(conn, uid, meta["namespace"], meta["name"],
                                                          kind if isinstance(kind, str) else ""),
                "cancelling a deleted Task", patience=30)
        else:
            await rt.events_db.run(lambda conn: db.queue.cancel(conn, uid), "cancelling a deleted Task", patience=30)
        return
    if phase in (None, model.Phase.PENDING.value):
        rt.admissions.offer(raw)
        return
    token = (meta.get("annotations") or {}).get(model.RETRY_ANNOTATION)
    if token and phase in (model.Phase.DEAD_LETTER.value, model.Phase.SUCCEEDED.value):
        namespace, name = meta.get("namespace"), meta.get("name")
        queue = (raw.get("spec") or {}).get("queue") or "default"
        if rt.config.require_queue and isinstance(queue, str) and await rt.events_db.run(
                lambda conn: _missing(rt, conn, queue), "looking for a Task's Queue", patience=30):
            # Refused once per token (a later event carrying the same annotation says nothing again).
            if await rt.events_db.run(lambda conn: db.queue.refuse_retry(conn, uid, token), "refusing a retry",
                                      patience=30):
                message = (f"not retried: Queue {queue} does not exist, and this operator runs only Tasks whose "
                           "queue has a Queue object (KUBETASK_REQUIRE_QUEUE); create the Queue, then annotate "
                           "the Task again with a new value")
                log.warning("Task %s/%s %s", namespace, name, message, extra=logs.about(namespace, name, uid))
                rt.in_background(rt.kube.post_event(namespace, name, uid, "RetryRefused", message, warning=True))
            return
        revived = await rt.events_db.run(lambda conn: db.queue.retry_dead(conn, uid, token),
                                         "retrying a Task", patience=30)
        if revived:
            log.info("Task %s/%s re-queued by %s=%s", namespace, name, model.RETRY_ANNOTATION, token,
                     extra=logs.about(namespace, name, uid))
            return
        row = await rt.events_db.run(lambda conn: db.reads.get_task(conn, uid), "reading a Task", patience=30)
        if row is not None and row.attempts >= db.queue.MAX_ATTEMPTS:
            message = (f"not retried: it has made {row.attempts} attempts in all, the cap of {db.queue.MAX_ATTEMPTS} "
                       "over every retry from the dead letter; fix what fails, then delete and re-create the Task")
            log.warning("Task %s/%s %s", namespace, name, message, extra=logs.about(namespace, name, uid))
            rt.in_background(rt.kube.post_event(namespace, name, uid, "RetryRefused", message, warning=True))
        elif row is None:
            log.warning("Task %s/%s cannot be retried: PostgreSQL has no row for it (its history was deleted by "
                        "the history retention, or the Task was refused at admission); delete and re-create "
                        "the Task to run it again", namespace, name, extra=logs.about(namespace, name, uid))


async def _missing(rt: Runtime, conn: db.connection.Conn, queue: str) -> bool:
    return bool(await missing_queues(rt, conn, {queue}))
