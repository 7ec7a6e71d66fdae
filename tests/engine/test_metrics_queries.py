"""The figures the metrics are made of, read from a real PostgreSQL: claim wait, queue gauges, mirror lag."""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import Callable

from kubetask import db

async def test_a_claim_reports_how_long_the_task_waited_since_it_was_due(
        conn: db.connection.Conn, new_task: Callable[..., db.queue.NewTask]) -> None:
    ten_seconds_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=10)
    await db.queue.admit(conn, [new_task(run_at=ten_seconds_ago)])
    [claimed] = await db.queue.claim(conn, "default", "owner/1", "pod-1", limit=1, lease_seconds=30)
    assert 9.5 < claimed.waited_seconds < 60


async def test_queue_gauges_count_unfinished_tasks_by_queue_and_the_oldest_due(
        conn: db.connection.Conn, new_task: Callable[..., db.queue.NewTask]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    await db.queue.admit(conn, [
        new_task(queue="a", run_at=now - datetime.timedelta(seconds=30)),
        new_task(queue="a"),
        new_task(queue="a", run_at=now + datetime.timedelta(hours=1)),
        new_task(queue="b"),
    ])
    [claimed] = await db.queue.claim(conn, "b", "owner/1", "pod-1", limit=1, lease_seconds=30)
    assert await db.queue.fail(conn, claimed.id, "owner/1", claimed.attempt, error_type="E", message="m",
                            traceback=None, retry_at=now + datetime.timedelta(hours=1))
    await db.queue.admit(conn, [new_task(queue="b")])
    [running] = await db.queue.claim(conn, "b", "owner/2", "pod-2", limit=1, lease_seconds=30)
    assert running.queue == "b"

    gauges = await db.reads.queue_depths(conn)

    a, b = gauges["a"], gauges["b"]
    assert (a.queued, a.running, a.retrying, a.due) == (3, 0, 0, 2)
    assert 29 < a.oldest_due_seconds < 120
    assert (b.queued, b.running, b.retrying, b.due) == (0, 1, 1, 0)
    assert b.oldest_due_seconds == 0


async def test_queue_gauges_leave_out_finished_tasks(conn: db.connection.Conn, new_task: Callable[..., db.queue.NewTask]) -> None:
    await db.queue.admit(conn, [new_task(queue="done")])
    [claimed] = await db.queue.claim(conn, "done", "owner/1", "pod-1", limit=1, lease_seconds=30)
    assert await db.queue.complete(conn, claimed.id, "owner/1", claimed.attempt, {"ok": True})
    assert await db.reads.queue_depths(conn) == {}


async def test_mirror_lag_counts_statuses_behind_their_row_and_ages_the_oldest(
        conn: db.connection.Conn, new_task: Callable[..., db.queue.NewTask]) -> None:
    assert await db.reads.mirror_lag(conn) == (0, 0.0)
    await db.queue.admit(conn, [new_task(), new_task()])
    backlog, lag = await db.reads.mirror_lag(conn)
    assert backlog == 2 and 0 <= lag < 60
    pending = await db.outbox.pending_status(conn, 10)
    await db.outbox.mark_mirrored(conn, [(row.id, row.version, row.state) for row in pending])
    assert await db.reads.mirror_lag(conn) == (0, 0.0)


async def test_a_worker_whose_metrics_port_is_taken_exits_2_naming_the_variable(
        dsn: str, start_worker_process) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await start_worker_process({"DATABASE_URL": dsn, "KUBETASK_METRICS_PORT": str(port)})
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2, output.decode()
    assert f"cannot serve metrics on 127.0.0.1:{port}".encode() in output, "loopback unless KUBETASK_METRICS_ADDRESS says"
    assert b"KUBETASK_METRICS_PORT" in output
