"""Admission: the one place that decides whether a Task can be queued, and the service that queues it.

The CRD schema (generated from ``kubetask.model``) refuses most bad input at
``kubectl apply``. What it cannot express is decided here, once, by
``admissible``: the payload's encoded size, the spec as the model reads it,
and characters PostgreSQL cannot store. It returns the row to insert or the
reason for refusing, and nothing downstream checks again.

The service batches: everything the watch delivered within
``admit_batch_window_seconds`` goes in one INSERT (idempotent on the Task
uid, so a relist after a restart re-admits nothing). A batch PostgreSQL
refuses is retried one Task at a time, so one bad row never blocks the Tasks
batched with it; a refused Task gets a DeadLetter status and an Event saying
why, and is never retried.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from typing import Any

import psycopg
import pydantic

from kubetask import db, kube, logs, model, status
from kubetask.operator.runtime import Runtime, missing_queues

log = logging.getLogger("kubetask.operator")


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a Task cannot be admitted, in words that name the field and the fix."""

    reason: str


CONTAINERS_OFF = ("container Tasks are turned off in this operator (KUBETASK_CONTAINER_TASKS=false, chart value "
                  "operator.containerTasks): it runs handler Tasks only, so this Task never runs. Name a handler in "
                  "spec.type instead, or ask the cluster admin to turn container Tasks on")


def admissible(raw: dict[str, Any], default_ttl: int | None = None,
               containers: bool = True) -> db.queue.NewTask | Refusal:
    """The row to insert for a new Task object, or why it cannot be admitted.

    ``default_ttl`` (``KUBETASK_DEFAULT_TTL_SECONDS_AFTER_FINISHED``) is the ``ttlSecondsAfterFinished``
    of a Task that sets none; None keeps such a Task's object once it finished. ``containers`` false
    (``KUBETASK_CONTAINER_TASKS``) refuses container Tasks.
    """
    meta = raw["metadata"]
    spec_raw = raw.get("spec") or {}
    payload = spec_raw.get("payload") or {}
    levels = model.depth(payload)
    if levels > model.MAX_PAYLOAD_DEPTH:
        return Refusal(f"spec.payload is nested {levels} levels deep, over the {model.MAX_PAYLOAD_DEPTH}-level cap: "
                       "flatten it (a list of records rather than records inside records)")
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    if size > model.MAX_PAYLOAD_BYTES:
        return Refusal(f"spec.payload is {size} bytes, over the {model.MAX_PAYLOAD_BYTES}-byte cap: store large "
                       "data elsewhere (object storage, a ConfigMap) and pass a reference in the payload")
    try:
        spec = model.TaskSpec.model_validate(spec_raw)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = "spec." + ".".join(str(p) for p in first["loc"]) if first["loc"] else "spec"
        return Refusal(f"{where}: {first['msg']}")
    if spec.container is not None and not containers:
        return Refusal(CONTAINERS_OFF)
    nul = model.find_nul(spec.payload, "spec.payload")
    if nul is not None:
        return Refusal(f"{nul} holds a NUL character (\\u0000), which PostgreSQL cannot store: "
                       "encode binary data, e.g. as base64")
    created = meta.get("creationTimestamp")
    base = (datetime.datetime.fromisoformat(created.replace("Z", "+00:00")) if created
            else datetime.datetime.now(datetime.timezone.utc))
    run_at: datetime.datetime | None = spec.run_at
    if run_at is not None and run_at < base:
        # A time before the Task existed would sort ahead of every due task of its queue (the claim orders
        # by run_at) and look long overdue to the alerts: it means "now", which is when the Task was made.
        run_at = base
    if spec.delay_seconds is not None:
        run_at = base + datetime.timedelta(seconds=spec.delay_seconds)
    return db.queue.NewTask(
        uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], type=spec.runs,
        payload=spec.payload, queue=spec.queue, priority=spec.priority, max_retries=spec.max_retries,
        backoff_initial_seconds=spec.backoff.initial_seconds, backoff_factor=spec.backoff.factor,
        backoff_max_seconds=spec.backoff.max_seconds, backoff_jitter=spec.backoff.jitter,
        timeout_seconds=spec.timeout_seconds, run_at=run_at,
        ttl_seconds_after_finished=(spec.ttl_seconds_after_finished if spec.ttl_seconds_after_finished is not None
                                    else default_ttl),
        concurrency_key=spec.concurrency_key,
        container=(None if spec.container is None
                   else spec.container.model_dump(mode="json", by_alias=True, exclude_defaults=True)),
        permanent_exit_codes=tuple(sorted(set(spec.permanent_exit_codes))),
    )


async def _batch(rt: Runtime) -> list[dict[str, Any]]:
    """The next Task bodies: waits for one, then takes what arrives within the batch window."""
    batch = [await rt.admissions.get()]
    deadline = time.monotonic() + rt.config.admit_batch_window_seconds
    while len(batch) < rt.config.admit_batch_size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        raw = await rt.admissions.get_within(remaining)
        if raw is None:
            break
        batch.append(raw)
    return batch


async def run_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    """Admit one batch from ``rt.admissions`` (waiting for the first Task); refuse, visibly, what cannot be."""
    batch = await _batch(rt)
    new: dict[str, db.queue.NewTask] = {}
    refused: list[tuple[dict[str, Any], str]] = []
    for raw in batch:
        decision = admissible(raw, rt.config.default_ttl, rt.config.container_tasks)
        if isinstance(decision, Refusal):
            refused.append((raw, decision.reason))
        else:
            new[decision.uid] = decision
    try:
        missing = await missing_queues(rt, conn, {task.queue for task in new.values()})
    except BaseException:
        # Whether their queues exist is not known (the API server or PostgreSQL is away): none is admitted
        # or refused on a guess; they are offered again and the service restarts.
        for raw in batch:
            if raw["metadata"]["uid"] in new:
                rt.admissions.offer(raw)
        raise
    for task in new.values():
        if task.queue in missing:
            log.warning("Task %s/%s refused: its queue %s has no Queue object (KUBETASK_REQUIRE_QUEUE)",
                        task.namespace, task.name, task.queue, extra=logs.about(task.namespace, task.name, task.uid))
    try:
        if new:
            rt.meters.admitted.inc(await db.queue.admit(conn, list(new.values()), missing))
    except psycopg.OperationalError:
        for raw in batch:
            rt.admissions.offer(raw)
        raise  # the connection is gone: reconnect and try the whole batch again
    except Exception as err:
        # A row PostgreSQL refuses must not block the Tasks batched with it:
        # admit one at a time and refuse, visibly, only the ones that fail.
        log.warning("admitting a batch of %d failed (%s); admitting one by one", len(new), err)
        raws = {raw["metadata"]["uid"]: raw for raw in batch}
        pending = list(new.items())
        for index, (uid, task) in enumerate(pending):
            try:
                rt.meters.admitted.inc(await db.queue.admit(conn, [task], missing))
            except psycopg.OperationalError:
                for rest, _ in pending[index:]:
                    rt.admissions.offer(raws[rest])
                raise
            except Exception as single:
                refused.append((raws[uid], f"PostgreSQL refused the Task: {type(single).__name__}: {single}"))
    for raw, reason in refused:
        await _refuse(rt, raw, reason)
    return True


async def _refuse(rt: Runtime, raw: dict[str, Any], reason: str) -> None:
    meta = raw["metadata"]
    log.warning("Task %s/%s refused: %s", meta["namespace"], meta["name"], reason,
                extra=logs.about(meta["namespace"], meta["name"], meta["uid"]))
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        await rt.kube.patch_task_status(meta["namespace"], meta["name"], meta["uid"],
                                        status.rejected(status.REFUSED, reason, now))
        await rt.kube.post_event(meta["namespace"], meta["name"], meta["uid"], "Refused", reason, warning=True)
    except kube.NotFound:
        pass
