"""Migrations: numbered ``.sql`` files in ``migrations/``, applied once each, in order.

A test builds the schema from the migrations and compares it with the one the
code expects (``tests/engine/test_migrations.py``). A migration never edits an
earlier file: a new file changes what is there. The ledger records names only
(no checksums), so an applied file is never read again.

Two kinds of migration:

* By default a migration runs in one transaction with its ledger row: all of
  it or none of it. A plain ``CREATE INDEX`` in one holds a SHARE lock on its
  table until commit, blocking every write to it (the workers' heartbeats
  among them) for the whole build, and longer when it first waits behind a
  long transaction.
* A migration whose first line is ``-- kubetask: no-transaction`` runs one
  statement at a time, each committing by itself, so it may hold
  ``CREATE INDEX CONCURRENTLY``, which lets writes go on while it builds. Its
  ledger row is written after its last statement, so a crash part-way runs
  the whole file again: every statement must be safe to rerun (``IF NOT
  EXISTS``). A concurrent build that failed or was interrupted leaves its
  index behind INVALID, which ``IF NOT EXISTS`` would then skip for ever:
  before each ``CREATE INDEX CONCURRENTLY IF NOT EXISTS name`` an invalid
  ``name`` is dropped (concurrently) and built again. Statements end with
  ``;`` at the end of a line; lines starting with ``--`` are comments.

Two processes never migrate at once: the migrating one holds a session-level
advisory lock across all of it (the same key the earlier releases took per
transaction, so old and new releases exclude each other too). A process that
finds it taken polls for it, with short statements, instead of blocking in
``pg_advisory_lock``: a blocked call keeps a snapshot open, and a concurrent
index build waits for every older snapshot to end, so the two would deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

import psycopg.sql

from kubetask import supervise
from kubetask.db import roles, sql
from kubetask.db.connection import Conn

QUERIES = sql.load("schema")
NO_TRANSACTION = "-- kubetask: no-transaction"
"""First line of a migration that runs outside a transaction, one statement at a time."""

_CONCURRENT_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)
_CREATE_INDEX = re.compile(r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\b(?P<rest>[^;]*)", re.IGNORECASE)
log = logging.getLogger("kubetask.db")


def outside_transaction(text: str) -> bool:
    """Whether a migration is marked to run outside a transaction (its first line)."""
    return text.lstrip().startswith(NO_TRANSACTION)


def statements(text: str) -> list[str]:
    """The statements of a no-transaction migration: comment lines dropped, split at ``;`` ending a line."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [part.strip() for part in re.split(r";\s*$", body, flags=re.MULTILINE) if part.strip()]


def index_problems(text: str) -> list[str]:
    """What keeps a migration's ``CREATE INDEX`` statements from leaving writes unblocked and rerunnable."""
    problems = []
    for match in _CREATE_INDEX.finditer(text):
        statement = " ".join(match.group(0).split())
        if not re.match(r"\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s", match.group("rest"), re.IGNORECASE):
            problems.append(f"not CONCURRENTLY IF NOT EXISTS: {statement}")
        elif not outside_transaction(text):
            problems.append(f"CONCURRENTLY needs the {NO_TRANSACTION!r} first line: {statement}")
    return problems


async def migrate(conn: Conn, migrations: Sequence[tuple[str, str]] | None = None,
                  lock_delays: supervise.Delays | None = None) -> list[str]:
    """Apply pending migrations in order, under the migration lock; return their names.

    Then, still under the lock, the worker's and reader's privileges are granted
    (``roles.ensure``), so they follow every migration.
    ``conn`` must be in autocommit mode (``connection.connect``).
    ``migrations``: (name, text) pairs, ``sql.migrations()`` by default.
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    pending = sql.migrations() if migrations is None else migrations
    await _lock(conn, lock_delays or supervise.Delays(first=0.05, cap=1.0))
    try:
        await conn.execute(QUERIES["create_schema_version"])
        cursor = await conn.execute(QUERIES["applied_migrations"])
        applied = {row[0] for row in await cursor.fetchall()}
        applied_now: list[str] = []
        for name, text in pending:
            if name in applied:
                continue
            if outside_transaction(text):
                await _apply_outside_transaction(conn, name, text)
            else:
                async with conn.transaction():
                    await conn.execute(sql.trusted(text))
                    await conn.execute(QUERIES["record_migration"], {"name": name})
            applied_now.append(name)
        await roles.ensure(conn)
        return applied_now
    finally:
        if not conn.closed:  # a lost connection has released its session's locks already
            await conn.execute(QUERIES["migrate_unlock"])


async def _lock(conn: Conn, delays: supervise.Delays) -> None:
    told = False
    while True:
        cursor = await conn.execute(QUERIES["migrate_try_lock"])
        row = await cursor.fetchone()
        if row is not None and row[0]:
            return
        if not told:
            log.info("another process is applying migrations; waiting for it to finish")
            told = True
        await asyncio.sleep(delays.next())


async def _apply_outside_transaction(conn: Conn, name: str, text: str) -> None:
    for statement in statements(text):
        index = _CONCURRENT_INDEX.match(statement)
        if index is not None:
            cursor = await conn.execute(QUERIES["index_is_valid"], {"name": index.group(1)})
            row = await cursor.fetchone()
            if row is not None and not row[0]:
                log.warning("migration %s: index %s is INVALID (an interrupted concurrent build); rebuilding it",
                            name, index.group(1))
                await conn.execute(psycopg.sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    psycopg.sql.Identifier(index.group(1))))
        await conn.execute(sql.trusted(statement))
    await conn.execute(QUERIES["record_migration"], {"name": name})
