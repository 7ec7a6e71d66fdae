"""History retention: which finished tasks ``history_cutoff`` and ``delete_history`` let go, and how.

Rows are made through the real transitions (admit, claim, complete, fail,
cancel); only their ``finished_at`` is moved into the past, which is what
waiting that long would do.
"""

import datetime
import json
from typing import Any

from kubetask import db

OWNER, POD = "pod-1/aaaa", "pod-1"
DAY = datetime.timedelta(days=1)


async def finish(conn: db.connection.Conn, tasks: list[db.queue.NewTask], how: str = "succeeded") -> None:
    """Admit ``tasks`` and end each: ``succeeded``, ``dead_letter`` (a permanent failure) or ``cancelled``."""
    await db.queue.admit(conn, tasks)
    if how == "cancelled":
        for task in tasks:
            assert await db.queue.cancel(conn, task.uid)
        return
    for claimed in await db.queue.claim(conn, "default", OWNER, POD, len(tasks), 30):
        if how == "succeeded":
            assert await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, {"n": 1})
        else:
            assert await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="PermanentError",
                                    message="no", traceback=None, retry_at=None)


async def mirror_all(conn: db.connection.Conn) -> None:
    """What the operator's mirror does once it has written every status."""
    while rows := await db.outbox.pending_status(conn, 500):
        await db.outbox.mark_mirrored(conn, [(row.id, row.version, row.state) for row in rows])


async def age(conn: db.connection.Conn, task: db.queue.NewTask, by: datetime.timedelta) -> None:
    await conn.execute("UPDATE kubetask_tasks SET finished_at = finished_at - %s WHERE uid = %s", [by, task.uid])


async def remaining(conn: db.connection.Conn) -> set[str]:
    cursor = await conn.execute("SELECT uid::text FROM kubetask_tasks")
    return {uid for (uid,) in await cursor.fetchall()}


async def attempts_of(conn: db.connection.Conn, uids: list[str]) -> int:
    cursor = await conn.execute("SELECT count(*) FROM kubetask_attempts a JOIN kubetask_tasks t ON t.id = a.task_id"
                                " WHERE t.uid = ANY(%s::uuid[])", [uids])
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def purge(conn: db.connection.Conn, *, days: float | None = None, keep_last: int | None = None,
                batch: int = 5_000) -> int:
    """One retention pass, as the operator's cleaner runs it."""
    cutoff = await db.upkeep.history_cutoff(conn, retention_days=days, keep_last=keep_last)
    deleted = 0
    while cutoff is not None:
        n = await db.upkeep.delete_history(conn, cutoff, batch)
        deleted += n
        if n < batch:
            break
    return deleted


async def test_no_retention_setting_deletes_nothing(conn: db.connection.Conn, new_task) -> None:
    old = new_task()
    await finish(conn, [old])
    await mirror_all(conn)
    await age(conn, old, 3650 * DAY)
    assert await db.upkeep.history_cutoff(conn, retention_days=None, keep_last=None) is None
    assert await remaining(conn) == {old.uid}


async def test_days_delete_every_kind_of_finished_task_older_than_the_retention_with_its_attempts(
        conn: db.connection.Conn, new_task) -> None:
    succeeded, dead, cancelled, recent = new_task(), new_task(), new_task(), new_task()
    await finish(conn, [succeeded])
    await finish(conn, [dead], "dead_letter")
    await finish(conn, [cancelled], "cancelled")
    await finish(conn, [recent])
    await mirror_all(conn)
    for task in (succeeded, dead, cancelled):
        await age(conn, task, 8 * DAY)
    await age(conn, recent, 6 * DAY)
    old = [succeeded.uid, dead.uid, cancelled.uid]
    assert await attempts_of(conn, old) == 2, "cancelled before it ran: no attempt"

    assert await purge(conn, days=7) == 3
    assert await remaining(conn) == {recent.uid}
    cursor = await conn.execute("SELECT count(*) FROM kubetask_attempts")
    assert await cursor.fetchone() == (1,), "the deleted tasks' attempts went with them"
    assert await db.reads.task_history(conn, succeeded.uid) == []
    assert len(await db.reads.task_history(conn, recent.uid)) == 1


async def test_unfinished_tasks_are_never_deleted_however_old(conn: db.connection.Conn, new_task) -> None:
    queued, running, retrying = new_task(), new_task(), new_task(max_retries=5)
    long_ago = datetime.datetime.now(datetime.UTC) - 400 * DAY
    await db.queue.admit(conn, [running, retrying])
    claimed = {t.uid: t for t in await db.queue.claim(conn, "default", OWNER, POD, 2, 30)}
    retry_at = datetime.datetime.now(datetime.UTC) + DAY
    assert await db.queue.fail(conn, claimed[retrying.uid].id, OWNER, 1, error_type="E", message="m",
                            traceback=None, retry_at=retry_at)
    await db.queue.admit(conn, [queued])
    await mirror_all(conn)
    await conn.execute("UPDATE kubetask_tasks SET created_at = %s, started_at = %s", [long_ago, long_ago])

    assert await purge(conn, days=1) == 0
    assert await purge(conn, keep_last=1) == 0
    assert await remaining(conn) == {queued.uid, running.uid, retrying.uid}


async def test_keep_last_keeps_the_most_recently_finished_across_queues(conn: db.connection.Conn, new_task) -> None:
    tasks = [new_task() for _ in range(6)]
    await finish(conn, tasks)
    await mirror_all(conn)
    for number, task in enumerate(tasks):  # tasks[0] finished longest ago
        await age(conn, task, (10 - number) * datetime.timedelta(minutes=1))
    other_queue = new_task(queue="mail")
    await db.queue.admit(conn, [other_queue])
    [claimed] = await db.queue.claim(conn, "mail", OWNER, POD, 1, 30)
    assert await db.queue.complete(conn, claimed.id, OWNER, claimed.attempt, None)
    await mirror_all(conn)  # finished just now: the newest of all

    assert await purge(conn, keep_last=3) == 4
    assert await remaining(conn) == {tasks[4].uid, tasks[5].uid, other_queue.uid}
    assert await purge(conn, keep_last=3) == 0, "a second pass finds nothing more"


async def test_either_rule_deletes_when_both_are_set(conn: db.connection.Conn, new_task) -> None:
    old, middle, newest = new_task(), new_task(), new_task()
    await finish(conn, [old, middle, newest])
    await mirror_all(conn)
    await age(conn, old, 30 * DAY)
    await age(conn, middle, 2 * DAY)
    assert await purge(conn, days=7, keep_last=10) == 1, "the age rule, though the count allows 10"
    assert await purge(conn, days=7, keep_last=1) == 1, "the count rule, though the age allows a week"
    assert await remaining(conn) == {newest.uid}


async def test_a_status_not_yet_mirrored_keeps_its_row(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    await finish(conn, [task])
    await age(conn, task, 30 * DAY)
    assert await purge(conn, days=1) == 0, "its Task would never learn how it ended"
    await mirror_all(conn)
    assert await purge(conn, days=1) == 1


async def test_a_row_whose_task_waits_for_its_ttl_deletion_stays_until_the_object_is_deleted(
        conn: db.connection.Conn, new_task) -> None:
    task = new_task(ttl_seconds_after_finished=90 * 86400)
    await finish(conn, [task])
    await mirror_all(conn)
    await age(conn, task, 30 * DAY)
    assert await purge(conn, days=1) == 0, "the cleaner finds the object to delete through the row"
    await db.upkeep.mark_object_deleted(conn, task.uid)
    assert await purge(conn, days=1) == 1


async def test_each_statement_deletes_at_most_its_batch_oldest_first(conn: db.connection.Conn, new_task) -> None:
    tasks = [new_task() for _ in range(7)]
    await finish(conn, tasks)
    await mirror_all(conn)
    for number, task in enumerate(tasks):
        await age(conn, task, (20 - number) * DAY)
    cutoff = await db.upkeep.history_cutoff(conn, retention_days=1, keep_last=None)
    assert cutoff is not None
    assert await db.upkeep.delete_history(conn, cutoff, 3) == 3
    assert await remaining(conn) == {t.uid for t in tasks[3:]}, "the oldest three"
    assert await db.upkeep.delete_history(conn, cutoff, 3) == 3
    assert await db.upkeep.delete_history(conn, cutoff, 3) == 1
    assert await db.upkeep.delete_history(conn, cutoff, 3) == 0


async def test_a_dead_letter_being_retried_is_passed_over_and_never_deleted(conn: db.connection.Conn, connect,
                                                                             new_task) -> None:
    task = new_task()
    await finish(conn, [task], "dead_letter")
    await mirror_all(conn)
    await age(conn, task, 30 * DAY)
    cutoff = await db.upkeep.history_cutoff(conn, retention_days=1, keep_last=None)
    assert cutoff is not None
    other = await connect()
    async with other.transaction():
        # The operator's retry, not yet committed, holds the row.
        assert await db.queue.retry_dead(other, task.uid, "token-1")
        assert await db.upkeep.delete_history(conn, cutoff, 10) == 0, "SKIP LOCKED: the row is being changed"
    assert await db.upkeep.delete_history(conn, cutoff, 10) == 0, "queued again: not history any more"
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None and row.state == "queued"


def _plan_nodes(plan: Any) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


async def test_retention_and_stats_read_finished_rows_through_the_finished_index(conn: db.connection.Conn) -> None:
    """At a million rows a sequential scan per batch would read the whole table; the index reads the batch."""
    await conn.execute("""
        INSERT INTO kubetask_tasks (uid, namespace, name, type, state, attempts, worker_pod, started_at,
                                    finished_at, version, mirrored_version, mirrored_state)
        SELECT gen_random_uuid(), 'history', 'old-' || i, 'noop', 'succeeded', 1, 'w',
               now() - make_interval(mins => i), now() - make_interval(mins => i), 3, 3, 'succeeded'
        FROM generate_series(1, 20000) AS i""")
    await conn.execute("ANALYZE kubetask_tasks")
    cutoff = await db.upkeep.history_cutoff(conn, retention_days=7, keep_last=None)
    statements = {
        "delete_history": (db.upkeep.QUERIES["delete_history"], {"cutoff": cutoff, "limit": 5000}),
        "history_cutoff": (db.upkeep.QUERIES["history_cutoff"], {"retention_days": None, "keep_last": 1000}),
        "finished_counts": (db.reads.QUERIES["finished_counts"], {"window_seconds": 60}),
    }
    for name, (query, params) in statements.items():
        cursor = await conn.execute(b"EXPLAIN (FORMAT JSON) " + query.encode(), params)
        row = await cursor.fetchone()
        assert row is not None
        plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
        nodes = _plan_nodes(plan[0]["Plan"])
        indexes = {node.get("Index Name") for node in nodes}
        assert "kubetask_tasks_finished" in indexes, (name, json.dumps(plan, indent=1)[:3000])
        if name != "finished_counts":  # its dead-letter total reads by state, not by finished_at
            scans = [node for node in nodes if node["Node Type"] == "Seq Scan"]
            assert not scans, (name, scans)
