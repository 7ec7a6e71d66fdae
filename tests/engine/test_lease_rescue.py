"""Leases: renewed only by their owner; when they expire the attempt is lost and the task retried."""

import asyncio
import random

from kubetask import db
from kubetask.operator import upkeep


async def expire(conn: db.connection.Conn, task_id: int) -> None:
    """Make a lease expired as if its worker had stopped renewing it long ago."""
    await conn.execute(
        "UPDATE kubetask_tasks SET lease_expires_at = now() - interval '1 minute' WHERE id = %s", [task_id])


async def test_expired_lease_is_rescued_as_lost_and_retried(conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=2)
    await db.queue.admit(conn, [task, new_task()])
    claimed = await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 2, 30)
    await expire(conn, claimed[0].id)

    [rescued] = await upkeep.rescue(conn)
    assert (rescued.lease.uid, rescued.lease.attempt, rescued.state, rescued.lease.worker_pod) == (task.uid, 1, "retrying", "pod-1")
    assert "pod-1" in rescued.message and "pod-1/aaaa" in rescued.message
    assert await upkeep.rescue(conn) == [], "the other lease is still valid"

    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.lease_owner, row.last_error["type"]) == ("retrying", None, "LeaseExpired")
    [attempt] = await db.reads.task_history(conn, task.uid)
    assert (attempt.outcome, attempt.error_type) == ("lost", "LeaseExpired")
    assert attempt.error_message is not None and "worker pod pod-1 " in attempt.error_message

    again = await db.queue.claim(conn, "default", "pod-2/bbbb", "pod-2", 1, 30)
    assert [(t.uid, t.attempt, t.attempt_in_budget) for t in again] == [(task.uid, 2, 2)]


async def rescued_and_claimed_again(conn: db.connection.Conn, task: db.queue.NewTask, owner: str
                                    ) -> tuple[db.queue.ClaimedTask, db.queue.ClaimedTask]:
    """Attempt 1 by pod-1/aaaa, its lease expired and rescued; attempt 2 claimed by ``owner``."""
    await db.queue.admit(conn, [task])
    [old] = await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 1, 30)
    await expire(conn, old.id)
    await upkeep.rescue(conn)
    [new] = await db.queue.claim(conn, "default", owner, owner.split("/")[0], 1, 30)
    return old, new


async def test_late_result_after_rescue_is_discarded(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    old, new = await rescued_and_claimed_again(conn, task, "pod-2/bbbb")

    assert not await db.queue.complete(conn, old.id, "pod-1/aaaa", old.attempt, {"from": "old"})
    assert not await db.queue.fail(conn, old.id, "pod-1/aaaa", old.attempt, error_type="E", message="m",
                                traceback=None, retry_at=None)
    assert await db.queue.complete(conn, new.id, "pod-2/bbbb", new.attempt, {"from": "new"})
    history = await db.reads.task_history(conn, task.uid)
    assert [(a.number, a.outcome, a.result) for a in history] == [(1, "lost", None), (2, "succeeded", {"from": "new"})]


async def test_same_owner_reclaiming_cannot_complete_with_a_stale_attempt(conn: db.connection.Conn, new_task) -> None:
    old, new = await rescued_and_claimed_again(conn, new_task(), "pod-1/aaaa")
    assert not await db.queue.complete(conn, old.id, "pod-1/aaaa", old.attempt, {"stale": True})
    assert await db.queue.complete(conn, new.id, "pod-1/aaaa", new.attempt, {"fresh": True})


async def test_spent_budget_dead_letters(conn: db.connection.Conn, new_task) -> None:
    task = new_task(max_retries=1)
    await db.queue.admit(conn, [task])
    for expected in ("retrying", "dead_letter"):
        [claimed] = await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 1, 30)
        await expire(conn, claimed.id)
        [rescued] = await upkeep.rescue(conn)
        assert rescued.state == expected
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.attempts, row.last_error["attempt"]) == ("dead_letter", 2, 2)
    assert row.finished_at is not None
    assert [a.outcome for a in await db.reads.task_history(conn, task.uid)] == ["lost", "lost"]


async def test_rescue_applies_backoff(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task(backoff_initial_seconds=60.0, backoff_jitter=0.0)])
    [claimed] = await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 1, 30)
    await expire(conn, claimed.id)
    [rescued] = await upkeep.rescue(conn, rng=random.Random(1))
    cursor = await conn.execute("SELECT extract(epoch FROM %s::timestamptz - now())", [rescued.run_at])
    row = await cursor.fetchone()
    assert row is not None and 55 < float(row[0]) <= 60
    assert await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 1, 30) == []


async def test_concurrent_rescuers_never_rescue_the_same_task(connect, new_task) -> None:
    conns = [await connect() for _ in range(3)]
    await db.queue.admit(conns[0], [new_task() for _ in range(30)])
    claimed = await db.queue.claim(conns[0], "default", "pod-1/aaaa", "pod-1", 30, 30)
    await conns[0].execute("UPDATE kubetask_tasks SET lease_expires_at = now() - interval '1 minute'")

    async def rescue_all(conn: db.connection.Conn) -> list[int]:
        ids: list[int] = []
        while batch := await upkeep.rescue(conn, limit=4):
            ids.extend(r.lease.id for r in batch)
        return ids

    results = await asyncio.gather(*(rescue_all(conn) for conn in conns))
    ids = [task_id for batch in results for task_id in batch]
    assert sorted(ids) == sorted(t.id for t in claimed)
    cursor = await conns[0].execute("SELECT count(*) FROM kubetask_attempts WHERE outcome = 'lost'")
    assert await cursor.fetchone() == (30,)


async def test_reused_pod_name_cannot_renew_its_predecessors_leases(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task()])
    [claimed] = await db.queue.claim(conn, "default", "pod-1/first", "pod-1", 1, 30)
    await expire(conn, claimed.id)
    # pod-1 restarted with the same name: a new process, a new lease owner.
    assert await db.queue.heartbeat(conn, "pod-1/second", 30, [claimed.id]) == [claimed.id]
    [rescued] = await upkeep.rescue(conn)
    assert rescued.lease.id == claimed.id


async def test_heartbeat_renews_only_held_leases_of_its_owner(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task(), new_task()])
    mine, forgotten = await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 2, 30)
    await expire(conn, mine.id)
    await expire(conn, forgotten.id)
    assert await db.queue.heartbeat(conn, "pod-1/aaaa", 30, [mine.id]) == []
    assert await db.queue.heartbeat(conn, "pod-1/aaaa", 30, []) == []
    [rescued] = await upkeep.rescue(conn)
    assert rescued.lease.id == forgotten.id, "a lease the worker no longer runs is not kept alive"
