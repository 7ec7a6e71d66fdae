"""Hardening (issue 20) of the operator's services: each test failed on the code before its fix.

Real PostgreSQL and a real API server, one ``run_once`` at a time, so a race
the loops would make rare is made certain here.
"""

from __future__ import annotations

from conftest import create_task

from kubetask import db, states
from kubetask.operator import admission, watch
from kubetask.operator.runtime import Runtime


async def test_a_task_deleted_before_its_batch_was_admitted_never_runs(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """The watch queued it for admission, then saw it deleted: the delete must win, whichever lands first."""
    body = await create_task(runtime, namespace, "gone-early")
    await watch.on_task_event(runtime, "ADDED", body)
    await watch.on_task_event(runtime, "DELETED", body)  # before the admission service took the batch
    await admission.run_once(runtime, conn)
    row = await db.reads.get_task(conn, body["metadata"]["uid"])
    assert row is not None and row.state == states.TaskState.CANCELLED
    assert row.last_error is not None and "deleted before it was admitted" in row.last_error["message"]
    assert await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 10, 30) == []
    # Nothing to mirror: the object is gone, so the outbox holds no patch for it.
    assert [r for r in await db.outbox.pending_status(conn, 100) if r.uid == body["metadata"]["uid"]] == []


async def test_deleting_a_task_refused_at_admission_leaves_no_row(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """Only a Task that could still be admitted (no phase, or Pending) needs a tombstone."""
    body = await create_task(runtime, namespace, "refused", timeoutSeconds=5)
    body["status"] = {"phase": "DeadLetter", "reason": "InvalidSpec"}
    await watch.on_task_event(runtime, "DELETED", body)
    assert await db.reads.get_task(conn, body["metadata"]["uid"]) is None
