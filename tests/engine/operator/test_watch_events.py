"""Watch events: a new Task goes to admission, a deleted one is cancelled, a retry annotation requeues."""

from __future__ import annotations

from conftest import create_task

from kubetask import db, model, states
from kubetask.operator import admission, watch
from kubetask.operator.runtime import Runtime


async def test_a_pending_task_is_queued_for_admission_and_a_deleted_one_cancelled(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    body = await create_task(runtime, namespace, "watched")
    await watch.on_task_event(runtime, "ADDED", body)
    assert runtime.admissions.get_nowait() == body
    task = admission.admissible(body)
    assert isinstance(task, db.queue.NewTask)
    await db.queue.admit(conn, [task])
    await watch.on_task_event(runtime, "DELETED", body)
    assert (await db.reads.get_task(conn, task.uid)).state == states.TaskState.CANCELLED  # type: ignore[union-attr]


async def test_a_retry_annotation_requeues_a_dead_letter_once_per_token(
        runtime: Runtime, conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=0)
    await db.queue.admit(conn, [task])
    [claimed] = await db.queue.claim(conn, task.queue, "o/1", "o", 1, 30)
    await db.queue.fail(conn, claimed.id, "o/1", claimed.attempt, error_type="E", message="m", traceback=None,
                        retry_at=None)
    body = {"metadata": {"uid": task.uid, "namespace": task.namespace, "name": task.name,
                         "annotations": {model.RETRY_ANNOTATION: "1"}},
            "status": {"phase": "DeadLetter"}}
    await watch.on_task_event(runtime, "MODIFIED", body)
    assert (await db.reads.get_task(conn, task.uid)).state == states.TaskState.QUEUED  # type: ignore[union-attr]
    [again] = await db.queue.claim(conn, task.queue, "o/2", "o", 1, 30)
    await db.queue.fail(conn, again.id, "o/2", again.attempt, error_type="E", message="m", traceback=None,
                        retry_at=None)
    await watch.on_task_event(runtime, "MODIFIED", body)  # the same event again: the same token
    assert (await db.reads.get_task(conn, task.uid)).state == states.TaskState.DEAD_LETTER  # type: ignore[union-attr]
