"""Roles: the worker's credential runs a task's life and nothing else; the reader's only reads.

Each test logs in as a role of its own (the test server trusts local logins),
a member of the group role the migrations granted, so what is refused is
refused by PostgreSQL's privileges, not by the code choosing not to try.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from kubetask_dev.postgres import PostgresServer

from kubetask import db
from tests.engine.conftest import WORKER_PROCESS

_numbers = itertools.count()
Login = Callable[[str], Awaitable[db.connection.Conn]]


@pytest.fixture
async def login(pg_server: PostgresServer, dsn: str) -> AsyncIterator[Login]:
    """``login(group)``: a connection to this test's database as a new login role in ``group``."""
    opened: list[db.connection.Conn] = []

    async def as_member(group: str) -> db.connection.Conn:
        role = f"{group}_login_{next(_numbers)}"
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Identifier(group)))
        conn = await psycopg.AsyncConnection.connect(_as_role(dsn, role), autocommit=True)
        opened.append(conn)
        return conn

    yield as_member
    for conn in opened:
        await conn.close()


def _as_role(dsn: str, role: str) -> str:
    return re.sub(r"^postgresql://[^@/]*@", f"postgresql://{role}@", dsn)


async def _refused(conn: db.connection.Conn, statement: Any, params: Any = None) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await conn.execute(statement, params)


async def test_the_worker_role_runs_a_tasks_whole_life(conn: db.connection.Conn, login: Login, new_task) -> None:
    """Claim, heartbeat, fail and retry, complete, hand back: every statement a worker runs, as the worker."""
    first, second, third = new_task(name="first"), new_task(name="second"), new_task(name="third")
    await db.queue.admit(conn, [first, second, third])
    worker = await login(db.roles.WORKER)
    assert await db.roles.whoami(worker) == db.roles.Identity(
        (await (await worker.execute("SELECT current_user")).fetchone())[0], superuser=False, owns_schema=False)

    claimed = await db.queue.claim(worker, "default", "pod/1", "pod", 3, 30)
    assert sorted(t.name for t in claimed) == ["first", "second", "third"]
    by_name = {t.name: t for t in claimed}
    assert await db.queue.heartbeat(worker, "pod/1", 30, [t.id for t in claimed]) == []
    assert await db.queue.fail(worker, by_name["first"].id, "pod/1", 1, error_type="ValueError", message="no",
                               traceback="tb", retry_in_seconds=0.0)
    assert await db.queue.complete_many(worker, "pod/1", [(by_name["second"].id, 1, {"ok": True})]) == {
        by_name["second"].id}
    assert await db.queue.hand_back(worker, [by_name["third"].id], "pod/1") == 1
    again = await db.queue.complete_and_claim(worker, "pod/2", [], queue="default", worker_pod="pod2",
                                              limit=5, lease_seconds=30)
    assert again.recorded == set() and sorted(t.name for t in again.claimed) == ["first", "third"]
    states = {row.name: row.state for row in [await db.reads.get_task(conn, t.uid) for t in (first, second, third)]
              if row is not None}
    assert states == {"first": "running", "second": "succeeded", "third": "running"}


@pytest.mark.parametrize(("what", "statement"), [
    ("rewrite another task's handler", "UPDATE kubetask_tasks SET type = 'os.system'"),
    ("rewrite another task's payload", "UPDATE kubetask_tasks SET payload = '{}'"),
    ("move a task to another namespace", "UPDATE kubetask_tasks SET namespace = 'other'"),
    ("move a task to another queue", "UPDATE kubetask_tasks SET queue = 'other'"),
    ("jump the queue", "UPDATE kubetask_tasks SET priority = 1000"),
    ("admit a task of its own", "INSERT INTO kubetask_tasks (uid, namespace, name, type, queue) "
                                "VALUES (gen_random_uuid(), 'a', 'b', 'c', 'default')"),
    ("delete a task", "DELETE FROM kubetask_tasks"),
    ("delete history", "DELETE FROM kubetask_attempts"),
    ("forge a result into history", "UPDATE kubetask_attempts SET task_id = 1"),
    ("read the release lock", "SELECT * FROM kubetask_release"),
    ("take the release", "DELETE FROM kubetask_release"),
    ("read the migration ledger", "SELECT * FROM kubetask_schema_version"),
    ("drop the queue", "DROP TABLE kubetask_tasks"),
    ("change the schema", "ALTER TABLE kubetask_tasks ADD COLUMN x int"),
    ("create a table", "CREATE TABLE kubetask_mine (x int)"),
])
async def test_the_worker_role_may_not(login: Login, what: str, statement: str) -> None:
    worker = await login(db.roles.WORKER)
    await _refused(worker, statement)


async def test_the_reader_role_reads_history_and_stats_and_changes_nothing(conn: db.connection.Conn, login: Login,
                                                                            new_task) -> None:
    task = new_task(name="read-me")
    await db.queue.admit(conn, [task])
    await db.queue.claim(conn, "default", "pod/1", "pod", 1, 30)
    reader = await login(db.roles.READER)
    [row] = await db.reads.find_tasks(reader, task.namespace, "read-me")
    assert row.state == "running"
    assert [a.outcome for a in await db.reads.task_history(reader, task.uid)] == ["running"]
    assert (await db.reads.attempt_log(reader, task.uid)).outcome == "running"  # type: ignore[union-attr]
    assert [s.queue for s in await db.reads.queue_stats(reader)] == ["default"]
    assert (await db.reads.queue_depths(reader))["default"].running == 1
    for statement in ("UPDATE kubetask_tasks SET state = 'queued'", "DELETE FROM kubetask_attempts",
                      "SELECT * FROM kubetask_release", "INSERT INTO kubetask_attempts (task_id, number, "
                      "worker_pod, lease_owner) VALUES (1, 9, 'p', 'p')"):
        await _refused(reader, statement)
    assert (await db.reads.get_task(conn, task.uid)).state == "running"  # type: ignore[union-attr]


async def test_every_table_is_granted_to_a_role_or_kept_for_the_owner(conn: db.connection.Conn) -> None:
    """A table a migration adds fails here until roles.sql grants it, or OWNER_ONLY keeps it."""
    tables = await db.roles.tables(conn)
    assert db.roles.OWNER_ONLY <= set(tables), "OWNER_ONLY names a table that does not exist"
    cursor = await conn.execute(
        "SELECT t, r FROM unnest(%(tables)s::text[]) AS t, unnest(%(roles)s::text[]) AS r "
        "WHERE has_any_column_privilege(r, t, 'SELECT, INSERT, UPDATE')",
        {"tables": tables, "roles": list(db.roles.GRANTS)})
    granted: dict[str, set[str]] = {}
    for table, role in await cursor.fetchall():
        granted.setdefault(table, set()).add(role)
    undecided = sorted(set(tables) - db.roles.OWNER_ONLY - set(granted))
    assert undecided == [], f"grant these in operator/kubetask/db/sql/roles.sql, or add them to OWNER_ONLY: {undecided}"
    assert not set(granted) & db.roles.OWNER_ONLY
    assert granted["kubetask_tasks"] == {db.roles.WORKER, db.roles.READER}


async def test_an_owner_that_is_no_superuser_migrates_and_grants(pg_server: PostgresServer, login: Login) -> None:
    """The chart's bundled PostgreSQL: the operator owns its database and is no superuser, nor may create roles."""
    owner = f"owner_{next(_numbers)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE").format(
            psycopg.sql.Identifier(owner)))
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
            psycopg.sql.Identifier(owner), psycopg.sql.Identifier(owner)))
    owner_dsn = _as_role(pg_server.dsn(owner), owner)
    async with await db.connection.connect(owner_dsn) as conn:
        assert await db.schema.migrate(conn) == [name for name, _ in db.sql.migrations()]
        assert await db.roles.whoami(conn) == db.roles.Identity(owner, superuser=False, owns_schema=True)
        cursor = await conn.execute("SELECT has_table_privilege(%s, 'kubetask_attempts', 'SELECT')",
                                    (db.roles.READER,))
        assert (await cursor.fetchone()) == (True,)
        # Granting again (every start does) changes nothing and fails nothing.
        assert await db.roles.ensure(conn) == [db.roles.WORKER, db.roles.READER]


def _worker_env(dsn: str) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "KUBETASK_HANDLERS": "kubetask.demo", "POD_NAME": "roles-worker",
            "KUBETASK_DATABASE_WAIT_SECONDS": "20", "KUBETASK_LOG_FORMAT": "text", "KUBETASK_LOG_LEVEL": "INFO",
            "KUBETASK_METRICS_PORT": "0", "KUBETASK_HEALTH_PORT": "0"}


async def test_a_worker_started_before_the_migration_waits_for_it_then_runs_as_its_role(
        pg_server: PostgresServer, empty_dsn: str, start_worker_process, sigterm_when, new_task) -> None:
    role = f"early_worker_{next(_numbers)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            psycopg.sql.Identifier(role), psycopg.sql.Identifier(db.roles.WORKER)))
    worker = await start_worker_process(_worker_env(_as_role(empty_dsn, role)))
    async with await db.connection.connect(empty_dsn) as conn:
        await db.schema.migrate(conn)  # the operator, arriving after the worker
        task = new_task(type="echo", payload={"role": role})
        await db.queue.admit(conn, [task])

        async def succeeded() -> bool:
            row = await db.reads.get_task(conn, task.uid)
            return row is not None and row.state == "succeeded"

        code, output = await sigterm_when(worker, succeeded, "the early worker to run the task")
    text = output.decode()
    assert code == 0, text
    assert "connects to PostgreSQL as" not in text, "a worker in kubetask_worker is not warned about"


async def test_a_worker_whose_role_is_in_no_kubetask_group_exits_1_naming_the_grant(
        pg_server: PostgresServer, dsn: str) -> None:
    role = f"lost_worker_{next(_numbers)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(psycopg.sql.Identifier(role)))
    env = {**os.environ, **_worker_env(_as_role(dsn, role)), "KUBETASK_DATABASE_WAIT_SECONDS": "1"}
    done = await asyncio.to_thread(subprocess.run, WORKER_PROCESS, env=env, capture_output=True, text=True,
                                   timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"GRANT {db.roles.WORKER} TO {role};" in output and "Traceback" not in output


async def test_a_worker_with_the_owners_credential_is_warned(dsn: str, start_worker_process, sigterm_when) -> None:
    worker = await start_worker_process(_worker_env(dsn))
    seen = bytearray()

    async def warned() -> bool:
        assert worker.stdout is not None
        try:
            seen.extend(await asyncio.wait_for(worker.stdout.read(4096), 0.5))
        except TimeoutError:
            pass
        # Then serving (its SIGTERM handler installed): the warning comes before it.
        return b"could alter or delete every task" in seen and b"serves queue" in seen

    code, _ = await sigterm_when(worker, warned, "the worker's warning about its superuser credential")
    assert code == 0 and b"a superuser" in seen


async def test_the_worker_role_claims_from_a_limited_queue_but_cannot_lift_its_limits(
        conn: db.connection.Conn, login: Login, new_task) -> None:
    await conn.execute("INSERT INTO kubetask_queues (name, max_running, rate_tasks, rate_period_seconds) "
                       "VALUES ('default', 1, 10, 1)")
    await db.queue.admit(conn, [new_task(name="a"), new_task(name="b")])
    worker = await login(db.roles.WORKER)
    claimed = await db.queue.claim(worker, "default", "pod/1", "pod", 5, 30)
    assert [t.name for t in claimed] == ["a"], "maxRunning 1 holds for the worker role too"
    for statement in ("UPDATE kubetask_queues SET max_running = NULL", "UPDATE kubetask_queues SET paused = false",
                      "DELETE FROM kubetask_queues", "INSERT INTO kubetask_queues (name) VALUES ('mine')"):
        await _refused(worker, statement)
