"""The worker as a process: settings from the environment, SIGTERM, exit status."""

import asyncio

from kubetask import db


async def test_missing_handler_module_exits_with_a_clear_error(dsn: str, start_worker_process) -> None:
    process = await start_worker_process({"DATABASE_URL": dsn, "KUBETASK_HANDLERS": "no_such_module_for_kubetask"})
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"KUBETASK_HANDLERS lists module 'no_such_module_for_kubetask'" in output


async def test_sigterm_hands_back_and_exits_zero(dsn: str, conn: db.connection.Conn, new_task, start_worker_process,
                                                 sigterm_when) -> None:
    task = new_task(type="sleep", payload={"seconds": 60})
    await db.queue.admit(conn, [task])
    process = await start_worker_process({"DATABASE_URL": dsn, "POD_NAME": "worker-pod-7",
                                          "KUBETASK_SHUTDOWN_TIMEOUT_SECONDS": "0.5",
                                          "KUBETASK_POLL_INTERVAL_SECONDS": "0.2", "KUBETASK_HANDLERS": "kubetask.demo"})

    async def running() -> bool:
        row = await db.reads.get_task(conn, task.uid)
        return row is not None and row.state == "running"

    code, output = await sigterm_when(process, running, "the worker process to claim the task")
    assert code == 0, output.decode()
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None and row.state == "queued"
    [attempt] = await db.reads.task_history(conn, task.uid)
    assert (attempt.outcome, attempt.worker_pod) == ("handed_back", "worker-pod-7")
    assert b"handed back to the queue" in output
