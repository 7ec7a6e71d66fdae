"""Hardening (issue 20), the worker's items: a handler that hangs, blocks or asks for for ever.

Each test failed on the code before its fix. Real worker processes against
the real PostgreSQL.
"""

from __future__ import annotations

import os
import pathlib

from kubetask import db

HERE = pathlib.Path(__file__).resolve().parent
FINAL = ("succeeded", "dead_letter", "cancelled")


def worker_env(dsn: str, **settings: str) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "POD_NAME": "worker-hard-1", "KUBETASK_POLL_INTERVAL_SECONDS": "0.2",
            "KUBETASK_HANDLERS": "kubetask.demo", "KUBETASK_LOG_FORMAT": "text",
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **settings}


async def final(conn: db.connection.Conn, *tasks: db.queue.NewTask) -> bool:
    rows = [await db.reads.get_task(conn, task.uid) for task in tasks]
    return all(row is not None and row.state in FINAL for row in rows)


async def only_attempt(conn: db.connection.Conn, task: db.queue.NewTask) -> db.reads.AttemptRow:
    [attempt] = await db.reads.task_history(conn, task.uid)
    return attempt


async def test_a_demo_sleep_of_1e9_seconds_is_refused_as_the_tasks_error(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when) -> None:
    """``sleep`` with ``seconds: 1e9`` held its slot for ever; now the Task dead-letters saying the bound."""
    greedy, after = new_task(type="sleep", payload={"seconds": 1e9}), new_task(type="echo", payload={"n": 1})
    await db.queue.admit(conn, [greedy, after])
    process = await start_worker_process(worker_env(dsn, KUBETASK_CONCURRENCY="1"))
    code, output = await sigterm_when(process, lambda: final(conn, greedy, after), "both tasks to finish")
    assert code == 0, output.decode()
    row = await db.reads.get_task(conn, greedy.uid)
    assert row is not None and (row.state, row.attempts) == ("dead_letter", 1)
    assert row.last_error is not None and row.last_error["type"] == "PermanentError"
    assert "payload.seconds is 1e+09, more than the 3600 seconds a demo handler runs at most" in row.last_error["message"]
    assert (await db.reads.get_task(conn, after.uid)).state == "succeeded"  # type: ignore[union-attr]
