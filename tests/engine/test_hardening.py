"""Hardening (issue 20), the items done so far: each a behaviour a tenant or an operator relies on.

Every test here failed on the code before its fix: a hostile or unlucky input
must not lose work, stop a loop, or jump a queue.
"""

from __future__ import annotations

import datetime

from kubetask import db, model, states
from kubetask.operator import admission

OWNER = "pod-1/aaaa"


async def claim(conn: db.connection.Conn, task: db.queue.NewTask) -> db.queue.ClaimedTask:
    await db.queue.admit(conn, [task])
    [claimed] = await db.queue.claim(conn, task.queue, OWNER, "pod-1", 1, 30)
    return claimed


async def test_a_lone_surrogate_in_an_error_message_is_recorded_not_lost(conn: db.connection.Conn,
                                                                         new_task) -> None:
    """str(exception) may hold a lone surrogate (a bad decode); PostgreSQL's UTF-8 cannot take it raw."""
    task = new_task()
    claimed = await claim(conn, task)
    assert await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="Bad\udc80Type",
                               message="cannot decode \udcff here", traceback="line \ud800\n", retry_at=None)
    [attempt] = await db.reads.task_history(conn, task.uid)
    assert attempt.outcome == states.Outcome.FAILED
    assert attempt.error_message == "cannot decode \\udcff here" and attempt.error_type == "Bad\\udc80Type"


async def test_a_retry_time_is_counted_on_the_database_clock_not_the_workers(conn: db.connection.Conn,
                                                                            new_task) -> None:
    """A worker an hour behind must not make a 10-second backoff an instant retry (or an hour's wait)."""
    task = new_task()
    claimed = await claim(conn, task)
    assert await db.queue.fail(conn, claimed.id, OWNER, claimed.attempt, error_type="E", message="m",
                               traceback=None, retry_in_seconds=10.0)
    cursor = await conn.execute("SELECT extract(epoch FROM run_at - now()) FROM kubetask_tasks WHERE uid = %s",
                                [task.uid])
    [(left,)] = await cursor.fetchall()
    assert 8 < float(left) <= 10, left


def test_a_run_at_before_the_task_existed_does_not_jump_the_queue() -> None:
    """runAt: 1970-01-01 would sort before every due task (ORDER BY run_at) and look decades overdue."""
    created = "2026-01-02T03:04:05Z"
    task = admission.admissible({
        "metadata": {"uid": "6f0c0f5e-0000-4000-8000-000000000002", "namespace": "ns", "name": "early",
                     "creationTimestamp": created},
        "spec": {"type": "echo", "runAt": "1970-01-01T00:00:00Z"}})
    assert isinstance(task, db.queue.NewTask)
    assert task.run_at == datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


async def test_the_orphan_sweep_judges_only_the_namespaces_it_serves(conn: db.connection.Conn, new_task) -> None:
    """An operator narrowed to some namespaces (or a second release on the same database) must not cancel
    the work of namespaces it does not list."""
    mine, theirs = new_task(namespace="mine"), new_task(namespace="theirs")
    await db.queue.admit(conn, [mine, theirs])
    cursor = await conn.execute("SELECT now() + interval '1 second'")
    [(later,)] = await cursor.fetchall()
    missing = await db.upkeep.missing_uids(conn, [], admitted_before=later, namespaces=["mine"])
    assert missing == [mine.uid]
    everywhere = await db.upkeep.missing_uids(conn, [], admitted_before=later, namespaces=[])
    assert sorted(everywhere) == sorted([mine.uid, theirs.uid]), "a cluster-wide operator judges them all"


def deep(levels: int) -> dict[str, object]:
    payload: dict[str, object] = {}
    for _ in range(levels):
        payload = {"a": payload}
    return payload


def test_a_deeply_nested_payload_is_refused_by_name_not_by_a_recursion_error() -> None:
    """JSON 5,000 deep is a few KB that the API server stores; Python's json gives up at ~1,000 levels."""
    body = {"metadata": {"uid": "6f0c0f5e-0000-4000-8000-000000000003", "namespace": "ns", "name": "deep",
                         "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"type": "echo", "payload": deep(5000)}}
    refusal = admission.admissible(body)
    assert isinstance(refusal, admission.Refusal)
    assert "spec.payload is nested" in refusal.reason and str(model.MAX_PAYLOAD_DEPTH) in refusal.reason
    assert isinstance(admission.admissible({**body, "spec": {"type": "echo", "payload": deep(30)}}),
                      db.queue.NewTask)
