"""The reads behind `kubetask logs` and `kubetask history`: a container attempt's exit code, reason and log tail."""

from __future__ import annotations

import datetime

from kubetask import db


async def _two_attempts(conn: db.connection.Conn, task: db.queue.NewTask) -> int:
    """The task's first attempt failed (exit 3, its tail stored), its second runs; returns the row id."""
    await db.queue.admit(conn, [task])
    [c] = await db.queue.claim(conn, "default", "pod-1/x", "pod-1", 1, 30)
    await db.queue.fail(conn, c.id, "pod-1/x", c.attempt, error_type="Error", message="exit 3",
                        traceback=None, retry_at=datetime.datetime.now(datetime.UTC))
    await conn.execute("UPDATE kubetask_attempts SET exit_code = 3, reason = 'Error', log_tail = 'first\n'"
                       " WHERE task_id = %s AND number = 1", (c.id,))
    await db.queue.claim(conn, "default", "pod-2/x", "pod-2", 1, 30)
    return c.id


async def test_attempt_log_is_the_latest_attempt_or_the_one_asked_for(conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=3)
    await _two_attempts(conn, task)
    latest = await db.reads.attempt_log(conn, task.uid)
    assert latest == db.reads.AttemptLog(2, "pod-2", "running", None, None, None)
    first = await db.reads.attempt_log(conn, task.uid, 1)
    assert first == db.reads.AttemptLog(1, "pod-1", "failed", 3, "Error", "first\n")
    assert await db.reads.attempt_log(conn, task.uid, 7) is None


async def test_attempt_log_of_a_task_never_claimed_is_none(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    await db.queue.admit(conn, [task])
    assert await db.reads.attempt_log(conn, task.uid) is None
    assert await db.reads.attempt_log(conn, "00000000-0000-0000-0000-000000000000") is None


async def test_task_history_carries_exit_code_reason_and_tail(conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=3)
    await _two_attempts(conn, task)
    first, second = await db.reads.task_history(conn, task.uid)
    assert (first.exit_code, first.reason, first.log_tail) == (3, "Error", "first\n")
    assert (second.exit_code, second.reason, second.log_tail) == (None, None, None)
