"""The outbox: rows whose status is behind, read with their history, marked coalesced."""

import datetime

from kubetask import db


async def test_pending_status_lists_rows_behind_their_mirror(conn: db.connection.Conn, new_task) -> None:
    a, b = new_task(name="a"), new_task(name="b")
    await db.queue.admit(conn, [a, b])
    pending = await db.outbox.pending_status(conn, 10)
    assert [(p.name, p.state, p.version, p.mirrored_state, p.history) for p in pending] == [
        ("a", "queued", 1, None, []), ("b", "queued", 1, None, [])]

    await db.outbox.mark_mirrored(conn, [(p.id, p.version, p.state) for p in pending])
    assert await db.outbox.pending_status(conn, 10) == []

    [claimed] = await db.queue.claim(conn, "default", "pod-1/x", "pod-1", 1, 30)
    [row] = await db.outbox.pending_status(conn, 10)
    assert (row.name, row.state, row.version, row.mirrored_state, row.worker_pod) == ("a", "running", 2, "queued", "pod-1")
    assert [(h.number, h.outcome, h.worker_pod) for h in row.history] == [(1, "running", "pod-1")]
    assert row.history[0].finished_at is None
    assert isinstance(row.history[0].started_at, datetime.datetime)


async def test_mirror_writes_only_the_latest_state(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    await db.queue.admit(conn, [task])
    [claimed] = await db.queue.claim(conn, "default", "pod-1/x", "pod-1", 1, 30)
    await db.queue.complete(conn, claimed.id, "pod-1/x", claimed.attempt, {"n": 1})
    # Three changes happened while the operator was away: it sees one row, in its final state.
    [row] = await db.outbox.pending_status(conn, 10)
    assert (row.state, row.version, row.result, row.attempts) == ("succeeded", 3, {"n": 1}, 1)
    assert row.finished_at is not None and row.history[0].outcome == "succeeded"

    # An older mark arriving late never rolls the mirror back.
    await db.outbox.mark_mirrored(conn, [(row.id, 3, "succeeded"), (row.id, 2, "running")])
    await db.outbox.mark_mirrored(conn, [(row.id, 2, "running")])
    got = await db.reads.get_task(conn, task.uid)
    assert got is not None and (got.mirrored_version, got.mirrored_state) == (3, "succeeded")
    assert await db.outbox.pending_status(conn, 10) == []


async def test_a_mark_for_an_older_version_leaves_the_row_pending(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task()])
    [first] = await db.outbox.pending_status(conn, 10)
    await db.queue.claim(conn, "default", "pod-1/x", "pod-1", 1, 30)
    await db.outbox.mark_mirrored(conn, [(first.id, first.version, first.state)])
    [row] = await db.outbox.pending_status(conn, 10)
    assert (row.state, row.version, row.mirrored_state) == ("running", 2, "queued")


async def test_history_holds_the_last_ten_attempts_oldest_first(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task(max_retries=20)])
    now = datetime.datetime.now(datetime.UTC)
    for _ in range(12):
        [c] = await db.queue.claim(conn, "default", "pod-1/x", "pod-1", 1, 30)
        await db.queue.fail(conn, c.id, "pod-1/x", c.attempt, error_type="E", message=f"try {c.attempt}",
                         traceback=None, retry_at=now)
    [row] = await db.outbox.pending_status(conn, 10)
    assert [h.number for h in row.history] == list(range(3, 13))
    assert row.history[-1].error_message == "try 12" and row.attempts == 12


async def test_history_carries_a_container_attempts_exit_code_and_reason(conn: db.connection.Conn,
                                                                        new_task) -> None:
    task = new_task(max_retries=1)
    await db.queue.admit(conn, [task])
    [c] = await db.queue.claim(conn, "default", "pod-1/x", "pod-1", 1, 30)
    await db.queue.fail(conn, c.id, "pod-1/x", c.attempt, error_type="OOMKilled", message="exit 137",
                        traceback=None, retry_at=datetime.datetime.now(datetime.UTC))
    # What the leader records when a container attempt's pod ends (its log tail is not the status's).
    await conn.execute("UPDATE kubetask_attempts SET exit_code = 137, reason = 'OOMKilled', log_tail = 'x'"
                       " WHERE task_id = %s", (c.id,))
    [row] = await db.outbox.pending_status(conn, 10)
    assert [(h.exit_code, h.reason) for h in row.history] == [(137, "OOMKilled")]
    assert row.last_error == {"type": "OOMKilled", "message": "exit 137", "attempt": 1}


async def test_pending_status_orders_by_version_and_limits(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task(name=f"t{i}") for i in range(5)])
    await db.queue.claim(conn, "default", "pod-1/x", "pod-1", 1, 30)
    rows = await db.outbox.pending_status(conn, 3)
    assert [(r.name, r.version) for r in rows] == [("t1", 1), ("t2", 1), ("t3", 1)]
