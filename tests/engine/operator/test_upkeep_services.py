"""Upkeep passes: the rescuer decides and applies, TTL deletes, the sweep cancels orphans, retention trims."""

from __future__ import annotations

import dataclasses
import uuid

from conftest import create_task, get_task

from kubetask import db, states
from kubetask.operator import admission, mirror, upkeep
from kubetask.operator.runtime import Runtime

OWNER = "pod-1/aaaa"


async def claim_and_expire(conn: db.connection.Conn, task: db.queue.NewTask) -> db.queue.ClaimedTask:
    await db.queue.admit(conn, [task])
    [claimed] = await db.queue.claim(conn, task.queue, OWNER, "pod-1", 1, 30)
    await conn.execute("UPDATE kubetask_tasks SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
                       [claimed.id])
    return claimed


async def test_rescue_once_records_the_attempt_lost_and_retries_or_dead_letters(
        runtime: Runtime, conn: db.connection.Conn, new_task) -> None:
    retried, last = new_task(max_retries=1), new_task(max_retries=0)
    for task in (retried, last):
        await claim_and_expire(conn, task)
    assert not await upkeep.rescue_once(runtime, conn)
    assert (await db.reads.get_task(conn, retried.uid)).state == states.TaskState.RETRYING  # type: ignore[union-attr]
    assert (await db.reads.get_task(conn, last.uid)).state == states.TaskState.DEAD_LETTER  # type: ignore[union-attr]
    [attempt] = await db.reads.task_history(conn, retried.uid)
    assert attempt.outcome == states.Outcome.LOST and "pod-1" in (attempt.error_message or "")


async def test_a_lease_renewed_after_the_fetch_is_not_rescued(conn: db.connection.Conn, new_task) -> None:
    """The apply re-checks what the fetch saw: a worker that renewed its lease meanwhile keeps its task."""
    task = new_task()
    claimed = await claim_and_expire(conn, task)
    [lease] = await db.upkeep.expired_leases(conn, 10)
    assert await db.queue.heartbeat(conn, OWNER, 30, [claimed.id]) == []
    import random
    assert await db.upkeep.rescue(conn, [upkeep.decide_rescue(lease, random.Random(1))]) == []
    assert (await db.reads.get_task(conn, task.uid)).state == states.TaskState.RUNNING  # type: ignore[union-attr]


async def test_ttl_once_deletes_the_finished_object_once_its_status_was_mirrored(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    body = await create_task(runtime, namespace, "short-lived", ttlSecondsAfterFinished=0)
    task = admission.admissible(body)
    assert isinstance(task, db.queue.NewTask)
    await db.queue.admit(conn, [task])
    [claimed] = await db.queue.claim(conn, task.queue, OWNER, "pod-1", 1, 30)
    assert await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, {"ok": True})
    await upkeep.ttl_once(runtime, conn)
    assert await get_task(runtime, namespace, "short-lived") is not None, "not before the user saw how it ended"
    await mirror.run_once(runtime, conn)
    await upkeep.ttl_once(runtime, conn)
    assert await get_task(runtime, namespace, "short-lived") is None
    assert await db.upkeep.expired_ttl(conn, 10) == []
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None and row.state == states.TaskState.SUCCEEDED, "the history stays"


async def test_orphans_once_cancels_rows_whose_object_is_gone_and_only_those(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    body = await create_task(runtime, namespace, "alive")
    alive = admission.admissible(body)
    assert isinstance(alive, db.queue.NewTask)
    gone = dataclasses.replace(alive, uid=str(uuid.uuid4()), name="gone")
    await db.queue.admit(conn, [alive, gone])
    await conn.execute("UPDATE kubetask_tasks SET created_at = now() - interval '1 minute'")
    await upkeep.orphans_once(runtime, conn)
    assert (await db.reads.get_task(conn, gone.uid)).state == states.TaskState.CANCELLED  # type: ignore[union-attr]
    assert (await db.reads.get_task(conn, alive.uid)).state == states.TaskState.QUEUED  # type: ignore[union-attr]


async def test_retention_once_keeps_the_newest_finished_rows(runtime: Runtime, conn: db.connection.Conn,
                                                             new_task) -> None:
    runtime.config = runtime.config.model_copy(update={"history_keep_last": 2})
    tasks = [new_task() for _ in range(4)]
    for task in tasks:
        await db.queue.admit(conn, [task])
        [claimed] = await db.queue.claim(conn, task.queue, OWNER, "pod-1", 1, 30)
        await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, {})
    await conn.execute("UPDATE kubetask_tasks SET mirrored_version = version")
    await upkeep.retention_once(runtime, conn)
    kept = [task.uid for task in tasks if await db.reads.get_task(conn, task.uid) is not None]
    assert kept == [tasks[2].uid, tasks[3].uid]
