"""State transitions and their attempt rows: complete, fail, retry, dead letter, hand back, cancel, retry."""

import datetime

from kubetask import db

OWNER, POD = "pod-1/aaaa", "pod-1"


async def claim_one(conn: db.connection.Conn, owner: str = OWNER, pod: str = POD) -> db.queue.ClaimedTask:
    [task] = await db.queue.claim(conn, "default", owner, pod, 1, 30)
    return task


async def test_complete_records_success_once(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    await db.queue.admit(conn, [task])
    claimed = await claim_one(conn)
    assert await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, {"answer": 42})
    assert not await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, {"answer": 43})
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.result, row.lease_owner, row.version) == ("succeeded", {"answer": 42}, None, 3)
    assert row.finished_at is not None and row.worker_pod == POD
    [attempt] = await db.reads.task_history(conn, task.uid)
    assert (attempt.outcome, attempt.result) == ("succeeded", {"answer": 42})
    assert attempt.finished_at is not None


async def test_result_may_be_any_json_value(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    await db.queue.admit(conn, [task])
    claimed = await claim_one(conn)
    assert await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, None)
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None and row.state == "succeeded" and row.result is None


async def test_failure_retries_then_dead_letters(conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=1)
    await db.queue.admit(conn, [task])
    claimed = await claim_one(conn)
    due = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    assert await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="ValueError",
                            message="bad 'value'", traceback="Traceback…\nValueError: bad", retry_at=due)
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.run_at, row.finished_at, row.lease_owner) == ("retrying", due, None, None)
    assert row.last_error == {"type": "ValueError", "message": "bad 'value'", "attempt": 1}

    second = await claim_one(conn)
    assert (second.attempt, second.attempt_in_budget) == (2, 2)
    assert await db.queue.fail(conn, second.id, OWNER, second.attempt, error_type="Timeout", message="slow",
                            traceback=None, outcome="timeout", retry_at=None)
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.attempts) == ("dead_letter", 2)
    assert row.finished_at is not None
    assert row.last_error == {"type": "Timeout", "message": "slow", "attempt": 2}
    history = await db.reads.task_history(conn, task.uid)
    assert [(a.number, a.outcome, a.error_type) for a in history] == [
        (1, "failed", "ValueError"), (2, "timeout", "Timeout")]
    assert history[0].traceback == "Traceback…\nValueError: bad"
    assert await db.queue.claim(conn, "default", OWNER, POD, 1, 30) == []


async def test_future_retry_waits_until_due(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task()])
    claimed = await claim_one(conn)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="E", message="m", traceback=None,
                     retry_at=later)
    assert await db.queue.claim(conn, "default", OWNER, POD, 1, 30) == []
    assert (await db.reads.queue_depths(conn))["default"].scheduled == 1


async def test_error_text_with_nul_is_made_visible_and_long_text_cut(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    await db.queue.admit(conn, [task])
    claimed = await claim_one(conn)
    assert await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="E", message="a\x00b" + "x" * 10_000,
                            traceback="start" + "y" * 50_000 + "end", retry_at=None)
    [attempt] = await db.reads.task_history(conn, task.uid)
    assert attempt.error_message is not None and attempt.error_message.startswith("a\\x00bxxx")
    assert len(attempt.error_message) <= db.queue.MAX_ERROR_MESSAGE_CHARS + 20
    assert attempt.traceback is not None and attempt.traceback.endswith("end")
    assert len(attempt.traceback) <= db.queue.MAX_TRACEBACK_CHARS + 20


async def test_hand_back_requeues_without_spending_the_budget(conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=0)
    await db.queue.admit(conn, [task, new_task()])
    claimed = await db.queue.claim(conn, "default", OWNER, POD, 2, 30)
    assert await db.queue.hand_back(conn, [claimed[0].id], "someone-else/1") == 0
    assert await db.queue.hand_back(conn, [claimed[0].id], OWNER) == 1
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.attempts, row.budget_base, row.lease_owner) == ("queued", 1, 1, None)
    again = await claim_one(conn, "pod-2/bbbb", "pod-2")
    assert (again.uid, again.attempt, again.attempt_in_budget) == (task.uid, 2, 1)
    history = await db.reads.task_history(conn, task.uid)
    assert [(a.number, a.outcome, a.worker_pod) for a in history] == [(1, "handed_back", POD), (2, "running", "pod-2")]
    assert history[0].error_message is not None and POD in history[0].error_message


async def test_cancel_stops_unfinished_tasks_and_keeps_history(conn: db.connection.Conn, new_task) -> None:
    running, queued, done = new_task(), new_task(), new_task()
    await db.queue.admit(conn, [running])
    claimed = await claim_one(conn)
    await db.queue.admit(conn, [done])
    finished = await claim_one(conn)
    await db.queue.complete(conn, finished.id, OWNER, finished.attempt, {})
    await db.queue.admit(conn, [queued])

    assert await db.queue.cancel(conn, running.uid)
    assert await db.queue.cancel(conn, queued.uid)
    assert not await db.queue.cancel(conn, done.uid)
    assert not await db.queue.cancel(conn, running.uid)
    row = await db.reads.get_task(conn, running.uid)
    assert row is not None and row.state == "cancelled" and row.finished_at is not None
    [attempt] = await db.reads.task_history(conn, running.uid)
    assert attempt.outcome == "cancelled"
    # The worker learns about it at its next heartbeat and its late result is discarded.
    assert await db.queue.heartbeat(conn, OWNER, 30, [claimed.id]) == [claimed.id]
    assert not await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, {})
    [attempt] = await db.reads.task_history(conn, running.uid)
    assert attempt.outcome == "cancelled" and attempt.result is None


async def test_retry_dead_starts_a_fresh_budget_and_keeps_history(conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=0)
    await db.queue.admit(conn, [task])
    claimed = await claim_one(conn)
    await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="E", message="boom", traceback=None,
                     retry_at=None)
    assert await db.queue.retry_dead(conn, task.uid)
    assert not await db.queue.retry_dead(conn, task.uid), "only dead-lettered or succeeded tasks"
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.attempts, row.budget_base, row.finished_at) == ("queued", 1, 1, None)
    assert row.last_error == {"type": "E", "message": "boom", "attempt": 1}
    again = await claim_one(conn)
    assert (again.attempt, again.attempt_in_budget) == (2, 1)
    await db.queue.complete(conn, again.id, OWNER, again.attempt, {"ok": True})
    assert await db.queue.retry_dead(conn, task.uid), "a succeeded task may be run again"
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None and row.result is None and row.state == "queued"
    assert [a.outcome for a in await db.reads.task_history(conn, task.uid)] == ["failed", "succeeded"]


async def test_every_state_change_bumps_version(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    await db.queue.admit(conn, [task])

    async def version() -> int:
        row = await db.reads.get_task(conn, task.uid)
        assert row is not None
        return row.version

    assert await version() == 1
    claimed = await claim_one(conn)
    assert await version() == 2
    await db.queue.heartbeat(conn, OWNER, 30, [claimed.id])
    assert await version() == 2, "a lease renewal is not a status change"
    await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="E", message="m", traceback=None,
                     retry_at=datetime.datetime.now(datetime.UTC))
    assert await version() == 3
    claimed = await claim_one(conn)
    await db.queue.hand_back(conn, [claimed.id], OWNER)
    assert await version() == 5
    await db.queue.cancel(conn, task.uid)
    assert await version() == 6


async def test_retry_token_acts_once(conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=0)
    await db.queue.admit(conn, [task])

    async def dead_letter() -> None:
        claimed = await claim_one(conn)
        await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="E", message="m", traceback=None,
                         retry_at=None)

    await dead_letter()
    assert await db.queue.retry_dead(conn, task.uid, "t1")
    await dead_letter()
    assert not await db.queue.retry_dead(conn, task.uid, "t1"), "the same annotation value again"
    assert await db.queue.retry_dead(conn, task.uid, "t2")


async def test_cancel_missing_cancels_only_old_unlisted_unfinished_tasks(conn: db.connection.Conn, new_task) -> None:
    gone, listed, finished = new_task(), new_task(), new_task()
    await db.queue.admit(conn, [finished])
    claimed = await claim_one(conn)
    await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, {})
    await db.queue.admit(conn, [gone, listed])
    cursor = await conn.execute("SELECT clock_timestamp()")
    [(cutoff,)] = await cursor.fetchall()  # the moment the operator listed the live Tasks
    young = new_task()
    await db.queue.admit(conn, [young])  # created after the list: it cannot be judged by it
    assert await db.queue.cancel(conn, *await db.upkeep.missing_uids(conn, [listed.uid], admitted_before=cutoff, namespaces=[])) == 1
    states = {t.uid: (await db.reads.get_task(conn, t.uid)).state  # type: ignore[union-attr]
              for t in (gone, listed, finished, young)}
    assert states == {gone.uid: "cancelled", listed.uid: "queued", finished.uid: "succeeded", young.uid: "queued"}


async def test_expired_ttl_lists_mirrored_finished_tasks_once(conn: db.connection.Conn, new_task) -> None:
    keep, expire = new_task(ttl_seconds_after_finished=3600), new_task(ttl_seconds_after_finished=0)
    await db.queue.admit(conn, [keep, expire])
    for claimed in await db.queue.claim(conn, "default", OWNER, POD, 2, 30):
        await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, {})
    assert await db.upkeep.expired_ttl(conn, 10) == [], "not before the final status is mirrored"
    await db.outbox.mark_mirrored(conn, [(p.id, p.version, p.state) for p in await db.outbox.pending_status(conn, 10)])
    assert await db.upkeep.expired_ttl(conn, 10) == [(expire.uid, expire.namespace, expire.name)]
    await db.upkeep.mark_object_deleted(conn, expire.uid)
    assert await db.upkeep.expired_ttl(conn, 10) == []
    assert not await db.queue.retry_dead(conn, expire.uid), "its object is gone"
