"""The mirror's pass: rows behind their Task → one status write each, marked once written."""

from __future__ import annotations

import uuid

from conftest import create_task, events_of, get_task

from kubetask import db
from kubetask.operator import admission, mirror
from kubetask.operator.runtime import Runtime


async def test_run_once_writes_the_latest_state_and_marks_it(runtime: Runtime, conn: db.connection.Conn,
                                                             namespace: str) -> None:
    body = await create_task(runtime, namespace, "mirrored", queue="nowhere")
    task = admission.admissible(body)
    assert isinstance(task, db.queue.NewTask)
    await db.queue.admit(conn, [task])
    runtime.pools_listed = True  # no pool serves "nowhere", and the operator knows it
    assert not await mirror.run_once(runtime, conn), "one row, a batch not full: nothing more waiting"
    status = (await get_task(runtime, namespace, "mirrored") or {})["status"]
    assert status["phase"] == "Queued"
    assert any(c["type"] == "WorkerPool" and c["reason"] == "NoWorkerPool" for c in status["conditions"]), status
    assert await db.outbox.pending_status(conn, 10) == []
    assert any(e["reason"] == "Admitted" for e in await events_of(runtime, namespace, "mirrored"))


async def test_a_row_whose_task_is_gone_is_marked_and_not_retried(runtime: Runtime,
                                                                  conn: db.connection.Conn) -> None:
    await db.queue.admit(conn, [db.queue.NewTask(uid=str(uuid.uuid4()), namespace="nowhere", name="gone",
                                                 type="echo", payload={})])
    await mirror.run_once(runtime, conn)
    assert await db.outbox.pending_status(conn, 10) == []
