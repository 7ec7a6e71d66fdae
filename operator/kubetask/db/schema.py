"""Migrations: numbered ``.sql`` files in ``migrations/``, applied once each, in order.

A test builds the schema from the migrations and compares it with the one the
code expects (``tests/engine/test_migrations.py``). A migration never edits an
earlier file: a new file changes what is there.
"""

from __future__ import annotations

from kubetask.db import sql
from kubetask.db.connection import Conn

QUERIES = sql.load("schema")


async def migrate(conn: Conn) -> list[str]:
    """Apply pending migrations in order, under an advisory lock; return their names."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute(QUERIES["migrate_lock"])
        await conn.execute(QUERIES["create_schema_version"])
        cursor = await conn.execute(QUERIES["applied_migrations"])
        applied = {row[0] for row in await cursor.fetchall()}
        for name, text in sql.migrations():
            if name in applied:
                continue
            await conn.execute(text)
            await conn.execute(QUERIES["record_migration"], {"name": name})
            applied_now.append(name)
    return applied_now
