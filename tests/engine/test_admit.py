"""Admission: idempotent on the Task's uid, batched, and values round-trip unchanged."""

import datetime
import uuid

import pytest

from kubetask import db, model


async def test_admit_is_idempotent_on_uid(conn: db.connection.Conn, new_task) -> None:
    task = new_task()
    assert await db.queue.admit(conn, [task]) == 1
    assert await db.queue.admit(conn, [task]) == 0
    assert await db.queue.admit(conn, [task, new_task()]) == 1
    cursor = await conn.execute("SELECT count(*) FROM kubetask_tasks")
    assert await cursor.fetchone() == (2,)


async def test_admit_batch_in_one_statement_with_duplicates(conn: db.connection.Conn, new_task) -> None:
    tasks = [new_task(queue=f"q{i % 3}", priority=i) for i in range(50)]
    assert await db.queue.admit(conn, tasks + tasks[:5]) == 50
    depths = await db.reads.queue_depths(conn)
    assert {queue: depth.due for queue, depth in depths.items()} == {"q0": 17, "q1": 17, "q2": 16}
    assert await db.queue.admit(conn, []) == 0


async def test_admitted_row_carries_the_spec(conn: db.connection.Conn, new_task) -> None:
    run_at = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    task = new_task(priority=-3, max_retries=7, backoff_initial_seconds=1.5, backoff_factor=3.0,
                    backoff_max_seconds=60.0, backoff_jitter=0.25, timeout_seconds=9, run_at=run_at)
    await db.queue.admit(conn, [task])
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.attempts, row.budget_base, row.version, row.mirrored_version) == ("queued", 0, 0, 1, 0)
    assert (row.priority, row.max_retries, row.timeout_seconds, row.run_at) == (-3, 7, 9, run_at)
    assert (row.backoff_initial_seconds, row.backoff_factor, row.backoff_max_seconds, row.backoff_jitter) == (
        1.5, 3.0, 60.0, 0.25)


TRICKY = {
    "quotes": "it's \"quoted\" `back` \\ backslash",
    "sql": "'); DROP TABLE kubetask_tasks; --",
    "placeholder": "%s %(name)s {0} $1",
    "unicode": "héllo wörld ✓ 日本語 🚀 \u202e",
    "nested": {"k'ey": ["a", 1, 2.5, True, None, {"deep": "\\u0000 is only text here"}]},
    "big": 2 ** 53,
}


async def test_tricky_values_round_trip_unchanged(conn: db.connection.Conn, new_task) -> None:
    task = new_task(name="name-with-'quote\"-and-ünïcode", payload=TRICKY, queue="q'; --")
    await db.queue.admit(conn, [task])
    [claimed] = await db.queue.claim(conn, "q'; --", "pod/1", "pod", 1, 30)
    assert claimed.payload == TRICKY
    assert claimed.name == task.name
    assert await db.queue.complete(conn, claimed.id, "pod/1", claimed.attempt, TRICKY)
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None and row.result == TRICKY and row.payload == TRICKY


def test_find_nul_reports_keys_and_paths() -> None:
    assert model.find_nul({"a": [1, "ok"]}) is None
    assert model.find_nul({"a\x00": 1}) == "$ (a key)"
    assert model.find_nul(["x", {"y": "\x00"}], "result") == "result[1].y"


async def test_unknown_uid_is_simply_absent(conn: db.connection.Conn) -> None:
    assert await db.reads.get_task(conn, str(uuid.uuid4())) is None
    assert await db.reads.task_history(conn, str(uuid.uuid4())) == []


async def test_the_concurrency_key_is_admitted_with_the_task(conn: db.connection.Conn) -> None:
    from kubetask.operator import admission

    raw = {"metadata": {"uid": str(uuid.uuid4()), "namespace": "ns", "name": "keyed",
                        "creationTimestamp": "2030-01-01T00:00:00Z"},
           "spec": {"type": "echo", "concurrencyKey": "customer-42@example.com"}}
    task = admission.admissible(raw)
    assert isinstance(task, db.queue.NewTask) and task.concurrency_key == "customer-42@example.com"
    await db.queue.admit(conn, [task])
    cursor = await conn.execute("SELECT concurrency_key FROM kubetask_tasks WHERE uid = %s", [task.uid])
    assert await cursor.fetchone() == ("customer-42@example.com",)
    unkeyed = admission.admissible({**raw, "metadata": {**raw["metadata"], "uid": str(uuid.uuid4())},
                                    "spec": {"type": "echo"}})
    assert isinstance(unkeyed, db.queue.NewTask) and unkeyed.concurrency_key is None
