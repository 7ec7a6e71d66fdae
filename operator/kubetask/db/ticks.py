"""The ticks of TaskSchedules: each (schedule uid, tick time) recorded once, whoever gets there first.

The scheduler (``kubetask.operator.schedules``) decides what a tick is (run, skipped, missed,
suspended; ``kubetask.cron``); this slice only records it. ``record`` is the claim: of two
replicas (or a pass re-run after a restart) deciding on the same tick, one insert wins and the
other learns it lost, so a tick's Task is created by one pass only.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection

from kubetask.db import sql
from kubetask.db.connection import Conn
from kubetask.states import TickOutcome

QUERIES = sql.load("ticks")
KEEP = 10
"""Tick rows kept per schedule: the newest is all a pass needs; a few more help whoever debugs it."""


@dataclasses.dataclass(frozen=True)
class Tick:
    """A schedule's tick as recorded."""

    schedule_uid: str
    at: datetime.datetime
    outcome: TickOutcome
    task_name: str | None


async def latest(conn: Conn, uids: Collection[str]) -> dict[str, Tick]:
    """The newest recorded tick of each of these schedules (by uid); none for a schedule never ticked."""
    cursor = await conn.execute(QUERIES["latest"], {"uids": list(uids)})
    return {row[0]: Tick(row[0], row[1], TickOutcome(row[2]), row[3]) for row in await cursor.fetchall()}


async def record(conn: Conn, *, uid: str, at: datetime.datetime, namespace: str, schedule: str,
                 outcome: TickOutcome, task_name: str | None = None, passed_over: int = 0) -> bool:
    """Record a tick (claim it, with ``TickOutcome.CLAIMED``); False when it was recorded already."""
    cursor = await conn.execute(QUERIES["record"], {
        "uid": uid, "tick_at": at, "namespace": namespace, "schedule": schedule, "outcome": outcome,
        "task_name": task_name, "passed_over": passed_over})
    return await cursor.fetchone() is not None


async def settle(conn: Conn, uid: str, at: datetime.datetime, outcome: TickOutcome) -> bool:
    """End a claimed tick (``CREATED`` or ``MISSED``); False if it was not claimed (settled meanwhile)."""
    cursor = await conn.execute(QUERIES["settle"], {"uid": uid, "tick_at": at, "outcome": outcome})
    return cursor.rowcount == 1


async def prune(conn: Conn, live: Collection[str], listed_before: datetime.datetime, keep: int = KEEP) -> int:
    """Forget ticks no pass can reach again (see ``sql/ticks.sql``); how many rows went."""
    cursor = await conn.execute(QUERIES["prune"], {"live": list(live), "listed_before": listed_before,
                                                   "keep": keep})
    return cursor.rowcount
