"""The release that owns the database: one database serves one kubetask release.

An operator records its identity (``KUBETASK_MANAGED_BY`` and its namespace)
when it starts, unless another release already has; then it refuses to start,
naming both and the fix. Replicas and restarts of the owner share it.
"""

from __future__ import annotations

import dataclasses
import datetime

from kubetask.db import sql
from kubetask.db.connection import Conn, one

QUERIES = sql.load("release")


@dataclasses.dataclass(frozen=True)
class Release:
    managed_by: str
    namespace: str
    claimed_at: datetime.datetime

    def __str__(self) -> str:
        return f"{self.managed_by} in namespace {self.namespace or '(none)'}"


class DatabaseInUse(RuntimeError):
    """The database belongs to another release."""


async def claim(conn: Conn, managed_by: str, namespace: str) -> Release:
    """Make this release the database's owner, or find it already is; ``DatabaseInUse`` if another is."""
    await conn.execute(QUERIES["claim"], {"managed_by": managed_by, "namespace": namespace})
    owner = Release(*await one(conn, QUERIES["owner"], {}))
    if (owner.managed_by, owner.namespace) != (managed_by, namespace):
        me = Release(managed_by, namespace, owner.claimed_at)
        raise DatabaseInUse(
            f"this database belongs to the kubetask release {owner} (since {owner.claimed_at:%Y-%m-%d %H:%M:%S %Z}); "
            f"this operator is {me}. Two releases sharing one database would cancel, rescue and run each other's "
            "tasks, so it refuses to start: give each release a database of its own (another database on the same "
            "server will do; a schema of its own does not, the leadership lock is per database). If that release "
            "is gone for good and this one takes its place, run DELETE FROM kubetask_release; in this database "
            "and restart.")
    return owner
