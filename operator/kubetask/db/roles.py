"""Roles: who may do what in the database, so a credential holds only what its process needs.

Three credentials, never the superuser's:

``owner``            the operator's: owns the tables, runs the migrations,
                     admits Tasks, mirrors statuses, sweeps, deletes history.
``kubetask_worker``  the workers' (they run tenant code): the statements of a
                     task's life and nothing else (``sql/roles.sql`` lists them).
``kubetask_reader``  ``kubetask history``/``stats`` and dashboards: read only.

The two are group roles (``NOLOGIN``). The operator creates them when its
role may (``CREATEROLE``) and grants their privileges after every migration,
under the migration lock, so they follow the schema. A login role gets them by
membership (``CREATE ROLE app_worker LOGIN PASSWORD '…' IN ROLE
kubetask_worker``); the chart's bundled PostgreSQL makes the two roles
themselves able to log in. Where neither exists, and the operator may not
create them, it says so and carries on: a deployment that gives every process
the owner's URL works as before, with one credential that can do everything.
"""

from __future__ import annotations

import dataclasses
import logging

from kubetask.db import sql
from kubetask.db.connection import Conn, one

QUERIES = sql.load("roles")
WORKER = "kubetask_worker"
READER = "kubetask_reader"
GRANTS = {WORKER: "grant_worker", READER: "grant_reader"}
OWNER_ONLY = frozenset({"kubetask_release", "kubetask_schema_version", "kubetask_schedule_ticks"})
"""Tables only the owner touches: the release lock, the migration ledger, and the TaskSchedules' ticks
(the operator's leader claims them; no worker or reader has a use for them)."""

log = logging.getLogger("kubetask.db")


@dataclasses.dataclass(frozen=True)
class Identity:
    role: str
    superuser: bool
    owns_schema: bool


async def ensure(conn: Conn) -> list[str]:
    """Create the missing roles where allowed, grant their privileges; return the roles granted.

    Call under the migration lock (``schema.migrate`` does): concurrent GRANTs on one
    table fail with "tuple concurrently updated".
    """
    existing, may_create = await one(conn, QUERIES["existing_roles"], {"names": list(GRANTS)})
    granted = []
    for role, grant in GRANTS.items():
        if role not in existing:
            if not may_create:
                log.warning(
                    "the database role %s does not exist and this operator's role may not create it (no "
                    "CREATEROLE); its privileges are not granted. Create it as an administrator (CREATE ROLE %s "
                    "NOLOGIN;) and restart the operator, which grants them", role, role)
                continue
            # The name is a constant of this module, never input.
            await conn.execute(sql.trusted(f"CREATE ROLE {role} NOLOGIN"))
            log.info("created the database role %s", role)
        await conn.execute(QUERIES[grant])
        granted.append(role)
    return granted


async def tables(conn: Conn) -> list[str]:
    """The kubetask tables of the current schema."""
    cursor = await conn.execute(QUERIES["tables"])
    return [row[0] for row in await cursor.fetchall()]


async def whoami(conn: Conn) -> Identity:
    """The connected role: whether it is a superuser and whether it owns the queue table."""
    return Identity(*await one(conn, QUERIES["whoami"], {}))


async def may_work(conn: Conn) -> bool:
    """Whether the schema exists and this role may run a worker's statements."""
    return bool((await one(conn, QUERIES["may_work"], {}))[0])
