"""Migrations: applied in order, once, safely when two processes start at the same time."""

import asyncio
import pathlib
import re

import psycopg
import pytest

from kubetask import db, states

MIGRATIONS = ["0001_initial", "0002_history_retention", "0003_release", "0004_queues", "0005_schedules",
              "0006_dead_letter_index", "0007_containers", "0008_container_claim_index"]

SCHEMA = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), '', ''
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT tablename, indexname, indexdef, '', '' FROM pg_indexes WHERE schemaname = 'public'
ORDER BY 1, 2, 3
"""


async def schema(conn: db.connection.Conn) -> list[tuple[str, ...]]:
    cursor = await conn.execute(SCHEMA)
    return await cursor.fetchall()


async def test_an_installed_version_1_with_rows_is_upgraded_by_the_later_migrations_only(
        empty_dsn: str, new_task) -> None:
    conn = await db.connection.connect(empty_dsn)
    try:
        (first, sql), *_ = db.sql.migrations()
        async with conn.transaction():  # what an operator of the first release left behind
            await conn.execute(db.schema.QUERIES["create_schema_version"])
            await conn.execute(sql)
            await conn.execute(db.schema.QUERIES["record_migration"], {"name": first})
        # A row as the first release wrote it (today's admit names columns it did not have).
        await conn.execute("INSERT INTO kubetask_tasks (uid, namespace, name, type) VALUES (%s, 'ns', 'n', 'echo')",
                           [new_task().uid])
        assert await db.schema.migrate(conn) == MIGRATIONS[1:]
        cursor = await conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'kubetask_tasks_finished'")
        assert await cursor.fetchall() == [
            ("CREATE INDEX kubetask_tasks_finished ON public.kubetask_tasks USING btree (finished_at) "
             "WHERE (finished_at IS NOT NULL)",)]
        cursor = await conn.execute("SELECT count(*) FROM kubetask_tasks")
        assert await cursor.fetchone() == (1,)
    finally:
        await conn.close()


async def test_migrations_apply_once_and_twice_is_a_no_op(empty_dsn: str) -> None:
    conn = await db.connection.connect(empty_dsn)
    try:
        assert await db.schema.migrate(conn) == MIGRATIONS
        before = await schema(conn)
        assert await db.schema.migrate(conn) == []
        assert await schema(conn) == before
        cursor = await conn.execute("SELECT name FROM kubetask_schema_version ORDER BY name")
        assert await cursor.fetchall() == [(name,) for name in MIGRATIONS]
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_file_once(empty_dsn: str) -> None:
    conns = [await db.connection.connect(empty_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.schema.migrate(conn) for conn in conns))
        assert sorted(results) == [[], [], MIGRATIONS]
    finally:
        for conn in conns:
            await conn.close()


@pytest.mark.parametrize(("statement", "constraint"), [
    ("UPDATE kubetask_tasks SET state = 'paused'", "kubetask_tasks_state_valid"),
    ("UPDATE kubetask_tasks SET state = 'succeeded'", "kubetask_tasks_finished_iff_final"),
    ("UPDATE kubetask_tasks SET state = 'running'", "kubetask_tasks_running_has_lease"),
    ("UPDATE kubetask_tasks SET lease_owner = 'x'", "kubetask_tasks_lease_only_while_running"),
    ("UPDATE kubetask_tasks SET budget_base = 1", "kubetask_tasks_budget_within_attempts"),
    ("UPDATE kubetask_tasks SET backoff_jitter = 2", "kubetask_tasks_retry_policy_valid"),
    ("UPDATE kubetask_tasks SET payload = '[]'", "kubetask_tasks_payload_is_object"),
])
async def test_named_constraints_keep_rows_consistent(conn: db.connection.Conn, new_task, statement: str,
                                                      constraint: str) -> None:
    await db.queue.admit(conn, [new_task()])
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        await conn.execute(statement)
    assert raised.value.diag.constraint_name == constraint


async def test_a_task_never_has_two_running_attempts(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task()])
    [task] = await db.queue.claim(conn, "default", "p/1", "p", 1, 30)
    with pytest.raises(psycopg.errors.UniqueViolation):
        await conn.execute(
            "INSERT INTO kubetask_attempts (task_id, number, worker_pod, lease_owner) VALUES (%s, 2, 'p', 'p/2')",
            [task.id])


def test_every_query_is_loaded_and_named_uniquely() -> None:
    assert {"admit", "complete_and_claim", "heartbeat", "fail", "hand_back", "cancel", "retry_dead"} <= set(db.queue.QUERIES)
    assert {"expired_leases", "rescue", "missing_uids", "expired_ttl", "delete_history"} <= set(db.upkeep.QUERIES)
    assert {"pending_status", "mark_mirrored"} <= set(db.outbox.QUERIES)
    assert {"queue_depths", "finished_counts", "get_task"} <= set(db.reads.QUERIES)
    with pytest.raises(ValueError, match="defined twice"):
        db.sql.parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_every_named_query_says_what_it_is_for() -> None:
    """A one-line description above every statement (the file is read by people, not only loaded)."""
    for slice_name in ("schema", "queue", "outbox", "upkeep", "reads", "ticks"):
        text = (pathlib.Path(db.__file__).parent / "sql" / f"{slice_name}.sql").read_text()
        for name, first in re.findall(r"^-- name: (\w+)\n(.*)$", text, flags=re.M):
            assert first.startswith("-- "), f"{slice_name}.sql: query {name} has no description"


def test_sql_notifies_only_the_known_channels() -> None:
    for slice_name in ("queue", "upkeep"):
        text = (pathlib.Path(db.__file__).parent / "sql" / f"{slice_name}.sql").read_text()
        assert set(re.findall(r"pg_notify\('(\w+)'", text)) <= set(db.connection.CHANNELS), slice_name


def test_state_names_match_the_check_constraints() -> None:
    """kubetask.states is the Python side of the CHECK constraints: the same words, both ways."""
    (_, initial), *_ = db.sql.migrations()
    task_states = re.search(r"CHECK \(state IN \(([^)]*)\)\)", initial)
    outcomes = re.search(r"CHECK \(outcome IN \(([^)]*)\)\)", initial)
    assert task_states and outcomes
    assert set(re.findall(r"'(\w+)'", task_states.group(1))) == {str(s) for s in states.TaskState}
    assert set(re.findall(r"'(\w+)'", outcomes.group(1))) == {str(o) for o in states.Outcome}


# -- migrations outside a transaction -------------------------------------------------------------

CONCURRENT = ("0900_test_concurrent_index",
              "-- kubetask: no-transaction\n-- a test migration\n"
              "CREATE INDEX CONCURRENTLY IF NOT EXISTS kubetask_test_by_name ON kubetask_tasks (name);\n")
PLAIN = ("0900_test_plain_index", "CREATE INDEX kubetask_test_by_name ON kubetask_tasks (name);\n")

INDEX_VALID = """
SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'kubetask_test_by_name'
"""


async def backend(conn: db.connection.Conn, pid: int) -> tuple[str | None, str | None, str]:
    cursor = await conn.execute("SELECT wait_event_type, wait_event, query FROM pg_stat_activity WHERE pid = %s",
                                [pid])
    row = await cursor.fetchone()
    assert row is not None
    return row


async def running_task_and_a_writer(conn: db.connection.Conn, new_task, connect):
    """Rows in kubetask_tasks, one of them leased to p/1; and a connection to hold a write open with."""
    await db.queue.admit(conn, [new_task() for _ in range(50)])
    [task] = await db.queue.claim(conn, "default", "p/1", "p", 1, 30)
    cursor = await conn.execute("SELECT id FROM kubetask_tasks WHERE id <> %s LIMIT 1", [task.id])
    (other,) = await cursor.fetchone()
    return task, other, await connect()


async def heartbeat(connect, task, lock_timeout: str) -> list[int]:
    worker = await connect()
    await worker.execute(f"SET lock_timeout = '{lock_timeout}'")
    return await asyncio.wait_for(db.queue.heartbeat(worker, "p/1", 30, [task.id]), 10)


async def start_migration(conn, connect, wait_until, migration, waiting_for: str):
    """migrate() with ``migration`` on a connection of its own, once its index build waits on a lock."""
    migrator = await connect()
    migrating = asyncio.create_task(db.schema.migrate(migrator, [*db.sql.migrations(), migration]))

    async def waiting():
        if migrating.done():
            return await migrating  # fail with its error rather than time out
        event_type, event, query = await backend(conn, migrator.info.backend_pid)
        return event_type == "Lock" and event == waiting_for and "CREATE INDEX" in query

    await wait_until(waiting, timeout=15, what=f"the index build to wait for {waiting_for}")
    return migrator, migrating


async def test_a_concurrent_index_build_lets_heartbeats_through(conn, new_task, connect, wait_until) -> None:
    """A no-transaction migration's CREATE INDEX CONCURRENTLY blocks no writes while it builds.

    A write transaction held open keeps the build in progress (it waits for
    every transaction writing the table to end), so the heartbeat runs while
    the index is being built, not before or after.
    """
    task, other, writer = await running_task_and_a_writer(conn, new_task, connect)
    async with writer.transaction():
        await writer.execute("UPDATE kubetask_tasks SET priority = priority WHERE id = %s", [other])
        _, migrating = await start_migration(conn, connect, wait_until, CONCURRENT, "virtualxid")
        cursor = await conn.execute(INDEX_VALID)
        assert await cursor.fetchall() == [(False,)]  # being built
        assert await heartbeat(connect, task, "5s") == []
    assert await asyncio.wait_for(migrating, 30) == [CONCURRENT[0]]
    cursor = await conn.execute(INDEX_VALID)
    assert await cursor.fetchall() == [(True,)]
    cursor = await conn.execute("SELECT lease_owner FROM kubetask_tasks WHERE id = %s", [task.id])
    assert await cursor.fetchone() == ("p/1",)


async def test_a_plain_index_build_in_a_transaction_blocks_heartbeats(conn, new_task, connect, wait_until) -> None:
    """What the concurrent build avoids: a plain CREATE INDEX queues for a SHARE lock, and writers queue behind it."""
    task, other, writer = await running_task_and_a_writer(conn, new_task, connect)
    async with writer.transaction():
        await writer.execute("UPDATE kubetask_tasks SET priority = priority WHERE id = %s", [other])
        _, migrating = await start_migration(conn, connect, wait_until, PLAIN, "relation")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await heartbeat(connect, task, "200ms")
    assert await asyncio.wait_for(migrating, 30) == [PLAIN[0]]


async def test_an_interrupted_concurrent_build_leaves_an_invalid_index_that_the_next_run_rebuilds(
        conn, new_task, connect, wait_until) -> None:
    task, other, writer = await running_task_and_a_writer(conn, new_task, connect)
    async with writer.transaction():
        await writer.execute("UPDATE kubetask_tasks SET priority = priority WHERE id = %s", [other])
        migrator, migrating = await start_migration(conn, connect, wait_until, CONCURRENT, "virtualxid")
        await conn.execute("SELECT pg_terminate_backend(%s)", [migrator.info.backend_pid])  # the operator dies
        with pytest.raises(psycopg.OperationalError):
            await asyncio.wait_for(migrating, 10)
    cursor = await conn.execute(INDEX_VALID)
    assert await cursor.fetchall() == [(False,)]
    cursor = await conn.execute("SELECT count(*) FROM kubetask_schema_version WHERE name = %s", [CONCURRENT[0]])
    assert await cursor.fetchone() == (0,)

    rerun = await connect()
    assert await asyncio.wait_for(db.schema.migrate(rerun, [*db.sql.migrations(), CONCURRENT]), 30) == [CONCURRENT[0]]
    cursor = await conn.execute(INDEX_VALID)
    assert await cursor.fetchall() == [(True,)]
    cursor = await conn.execute("SELECT count(*) FROM kubetask_schema_version WHERE name = %s", [CONCURRENT[0]])
    assert await cursor.fetchone() == (1,)


async def test_a_second_migrator_waits_for_a_concurrent_build_without_deadlocking_it(
        conn, new_task, connect, wait_until) -> None:
    """The second operator to start waits for the lock without holding a snapshot the build would wait for."""
    task, other, writer = await running_task_and_a_writer(conn, new_task, connect)
    async with writer.transaction():
        await writer.execute("UPDATE kubetask_tasks SET priority = priority WHERE id = %s", [other])
        _, first = await start_migration(conn, connect, wait_until, CONCURRENT, "virtualxid")
        second_conn = await connect()
        second = asyncio.create_task(db.schema.migrate(second_conn, [*db.sql.migrations(), CONCURRENT]))

        async def second_is_waiting() -> bool:
            _, _, query = await backend(conn, second_conn.info.backend_pid)
            return "advisory" in query and not second.done()

        await wait_until(second_is_waiting, timeout=15, what="the second migrator to wait for the lock")
    results = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert sorted(results) == [[], [CONCURRENT[0]]]
    cursor = await conn.execute(INDEX_VALID)
    assert await cursor.fetchall() == [(True,)]


async def test_a_migration_needs_an_autocommit_connection(empty_dsn: str) -> None:
    conn = await psycopg.AsyncConnection.connect(empty_dsn)
    try:
        with pytest.raises(ValueError, match="autocommit"):
            await db.schema.migrate(conn)
    finally:
        await conn.close()
