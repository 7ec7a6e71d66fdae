"""Queues: each Queue object's row in PostgreSQL, the refusal of Tasks its namespaceSelector keeps out, and
the Queue's status.

The claim enforces a Queue (``db.queue.complete_and_claim``) from its row;
this service keeps the rows equal to the Queue objects. It is level-driven:
each pass lists the Queues and the namespaces' labels, works out every row
(``desired_rows``, pure), and writes only the rows that differ, deleting
those whose Queue is gone. A kopf event of a Queue or a namespace only wakes
it (``Runtime.queues_wake``); a pass also runs every
``queue_resync_seconds``, so a missed event, or a Queue deleted while no
operator ran, costs latency, never a stale limit. Only the leader runs it.

A namespaceSelector is matched here, against namespace labels, because
PostgreSQL has no labels: the row holds the namespaces it matched
(``allowed_namespaces``; None for an empty selector, which admits every
namespace, as a queue with no Queue does).

Refusal (what a Task from a namespace the selector does not match gets):
it never runs, and it is refused visibly and for good. Its row becomes a
dead letter whose lastError is ``QueueRefused`` with a message naming the
Queue, its selector, the namespace and what the admin can change
(``model.QUEUE_REFUSAL_MESSAGE``); the mirror gives the Task phase
DeadLetter with a ``QueueAdmitted=False`` condition and posts a ``Refused``
Event. The refusal happens where the Task is, whichever comes first:

* admitted after its Queue's row exists: inserted refused (``db.queue.admit``);
* waiting when the Queue is created, its selector narrowed or its namespace
  relabelled: refused by the pass that writes the new row
  (``db.queues.refuse_outside_namespaces``);
* in between, the claim does not take it: the claim reads the same row.

With ``KUBETASK_REQUIRE_QUEUE`` (deny by default) a Task whose queue has no
Queue object is refused on the same path, with ``model.QUEUE_MISSING_MESSAGE``:
at admission (``runtime.missing_queues``: a queue with a row has its Queue;
for any other the API server is asked, so a Queue whose row lags is never
taken for missing), and while it waits when its Queue is deleted or the
setting was turned on after it was admitted (``db.queues.refuse_without_queue``,
in the pass, before the deleted Queue's row goes). A retry from the dead letter
is refused while the Queue is still missing.

A refused Task is not re-queued on its own when the admin widens the
selector (it might run weeks after anyone expected it to): the retry
annotation runs it again, and it is refused again if its namespace is still
not admitted. A running task is never stopped: it finishes. Why not let it
wait instead of refusing it? A Task that waits on a selector nobody will
change waits for ever, silently; a refusal says so at once, and who can fix it.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

import pydantic

from kubetask import db, kube, model
from kubetask.operator.runtime import Runtime

log = logging.getLogger("kubetask.operator")

PAUSED = "Paused"
"""The condition type of a Queue's status: whether its tasks are being claimed."""
CLAIMS_WINDOW_SECONDS = 60.0
"""``status.claimedLastMinute`` counts the claims of this many seconds."""


def desired_rows(queues: list[dict[str, Any]],
                 namespace_labels: Mapping[str, Mapping[str, str]]) -> dict[str, db.queues.QueueRow]:
    """The row of every valid Queue object, given every namespace's labels.

    A Queue whose spec the model refuses (the CRD schema should have) is left out and logged: its old
    row, if any, is kept rather than lifting its limits by accident.
    """
    rows: dict[str, db.queues.QueueRow] = {}
    for body in queues:
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str):
            continue
        try:
            spec = model.QueueSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as err:
            log.warning("Queue %s has a spec kubetask cannot read, its row is left as it was: %s", name, err)
            continue
        selector = spec.namespace_selector
        everything = not selector.match_labels and not selector.match_expressions
        allowed = None if everything else [ns for ns, labels in namespace_labels.items()
                                           if selector.matches(dict(labels))]
        rows[name] = db.queues.QueueRow.of(name, spec, allowed, generation=int(meta.get("generation") or 0))
    return rows


def invalid_names(queues: list[dict[str, Any]], rows: Mapping[str, db.queues.QueueRow]) -> set[str]:
    """Names of Queue objects left out of ``rows`` (unreadable specs): their rows must not be deleted."""
    return {name for body in queues if isinstance(name := (body.get("metadata") or {}).get("name"), str)
            and name not in rows}


async def run_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    """One pass: rows equal to the Queue objects, then the waiting Tasks they keep out refused."""
    rt.queues_wake.clear()  # before listing: an event during the pass runs another one
    try:
        queues = await rt.kube.queues()
    except kube.NotFound:
        log.debug("the Queue CRD is not installed: every queue is open and unlimited")
        return False
    labels = await rt.kube.namespace_labels()
    wanted = desired_rows(queues, labels)
    keep = invalid_names(queues, wanted)
    current = await db.queues.rows(conn)
    for name, row in wanted.items():
        if current.get(name) != row:
            await db.queues.upsert(conn, row)
            log.info("Queue %s: paused=%s maxRunning=%s rate=%s/%ss concurrencyKeyLimit=%s namespaces=%s",
                     name, row.paused, row.max_running, row.rate_tasks, row.rate_period_seconds,
                     row.concurrency_key_limit,
                     "every" if row.allowed_namespaces is None else ",".join(row.allowed_namespaces) or "none")
    if rt.config.require_queue:
        # Before any row goes: until then the claim still obeys the deleted Queue's row.
        known = [q for body in queues if isinstance(q := (body.get("metadata") or {}).get("name"), str)]
        for namespace, task, queue in await db.queues.refuse_without_queue(conn, known):
            log.warning("Task %s/%s refused: its queue %s has no Queue object (KUBETASK_REQUIRE_QUEUE)",
                        namespace, task, queue)
    for name in current.keys() - wanted.keys() - keep:
        await db.queues.delete(conn, name)
        log.info("Queue %s deleted: its queue is open and unlimited again", name)
    for namespace, name, queue in await db.queues.refuse_outside_namespaces(conn):
        log.warning("Task %s/%s refused: Queue %s does not admit namespace %s", namespace, name, queue, namespace)
    return False


# -- status: the queue as PostgreSQL sees it ---------------------------------------------------------------
#
# ``status_once`` (leader only, every ``queue_status_interval_seconds``; nothing wakes it sooner, so the
# API server sees at most one write per Queue per interval) LISTs the Queues, reads the counts of every
# queue in three queries (``db.reads.queue_stats``, ``db.reads.claims_since``, the rows) and patches a
# Queue's status subresource only when what it would write differs from what is there.
# ``observedGeneration`` is the generation of the spec its row holds: the one the claim enforces (it
# lags ``metadata.generation`` until the queues service has written the row, or for good while the spec
# cannot be read). The Paused condition is from the row too: what the claim does, not what was asked.


def rfc3339(at: datetime.datetime) -> str:
    return at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def paused_condition(name: str, row: db.queues.QueueRow | None, before: Mapping[str, Any] | None,
                     now: datetime.datetime) -> dict[str, Any]:
    """The Paused condition, its lastTransitionTime kept while its status stays."""
    if row is None:
        state, reason, message = ("Unknown", "NotEnforced",
                                  f"the operator has not written Queue {name} to PostgreSQL (yet): its spec is "
                                  "not enforced, the queue is open and unlimited")
    elif row.paused:
        state, reason, message = ("True", "Paused",
                                  "spec.paused is true: nothing of this queue is claimed; running tasks finish "
                                  f"and new Tasks keep queueing (kubetask queue resume {name})")
    else:
        state, reason, message = "False", "Claiming", "workers claim this queue's tasks, within its limits"
    kept = before.get("lastTransitionTime") if before is not None and before.get("status") == state else None
    return {"type": PAUSED, "status": state, "reason": reason, "message": message,
            "lastTransitionTime": kept or rfc3339(now)}


def queue_status(body: Mapping[str, Any], row: db.queues.QueueRow | None, stats: db.reads.QueueStats | None,
                 claims: int, now: datetime.datetime) -> dict[str, Any]:
    """The status a Queue object should have (pure): counts from PostgreSQL, the Paused condition."""
    name = str((body.get("metadata") or {}).get("name"))
    current = body.get("status") or {}
    before = next((c for c in current.get("conditions") or () if c.get("type") == PAUSED), None)
    return {
        "pending": stats.due if stats else 0,
        "running": stats.running if stats else 0,
        "retrying": stats.retrying if stats else 0,
        "deadLetter": stats.dead_letter_total if stats else 0,
        # Whole seconds: a status that changes with every fraction would be patched every pass for nothing.
        "oldestWaitingSeconds": float(round(stats.oldest_due_seconds)) if stats else 0.0,
        "claimedLastMinute": claims,
        "conditions": [paused_condition(name, row, before, now)],
        "observedGeneration": row.generation if row is not None else None,
    }


def changed(body: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    current = body.get("status") or {}
    return any(current.get(key) != value for key, value in new.items())


async def status_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    """One pass: every Queue's status equal to what PostgreSQL says of its queue, patched where it differs."""
    try:
        bodies = await rt.kube.queues()
    except kube.NotFound:
        return False
    if not bodies:
        return False
    rows = await db.queues.rows(conn)
    stats = {s.queue: s for s in await db.reads.queue_stats(conn, CLAIMS_WINDOW_SECONDS)}
    claims = await db.reads.claims_since(conn, CLAIMS_WINDOW_SECONDS)
    now = datetime.datetime.now(datetime.timezone.utc)
    for body in bodies:
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str):
            continue
        new = queue_status(body, rows.get(name), stats.get(name), claims.get(name, 0), now)
        if not changed(body, new):
            continue
        try:
            await rt.kube.patch_queue_status(name, meta["uid"], new)
        except (kube.NotFound, kube.Conflict):
            log.debug("Queue %s went away before its status was written", name)
    return False
