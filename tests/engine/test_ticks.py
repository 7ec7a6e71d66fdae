"""TaskSchedule ticks in PostgreSQL: each (schedule, tick) is recorded once, whoever gets there first."""

from __future__ import annotations

import asyncio
import datetime
import re
import uuid

import psycopg
import pytest

from kubetask import db, states
from kubetask.states import TickOutcome

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)
MINUTE = datetime.timedelta(minutes=1)


def test_tick_outcomes_match_the_check_constraint() -> None:
    text = dict(db.sql.migrations())["0005_schedules"]
    listed = re.search(r"CHECK \(outcome IN \(([^)]*)\)\)", text)
    assert listed and set(re.findall(r"'(\w+)'", listed.group(1))) == {str(o) for o in states.TickOutcome}


async def claim(conn: db.connection.Conn, uid: str, at: datetime.datetime, name: str = "s-1") -> bool:
    return await db.ticks.record(conn, uid=uid, at=at, namespace="ns", schedule="s", outcome=TickOutcome.CLAIMED,
                                 task_name=name)


async def test_concurrent_claims_of_one_tick_have_one_winner(connect) -> None:
    uid = str(uuid.uuid4())
    conns = [await connect() for _ in range(4)]
    won = await asyncio.gather(*(claim(conn, uid, T0) for conn in conns))
    assert sorted(won) == [False, False, False, True]
    # Recording it as not run afterwards changes nothing either: the tick was decided.
    assert not await db.ticks.record(conns[0], uid=uid, at=T0, namespace="ns", schedule="s",
                                     outcome=TickOutcome.MISSED)
    assert (await db.ticks.latest(conns[0], [uid]))[uid].outcome == TickOutcome.CLAIMED


async def test_latest_is_the_newest_tick_of_each_schedule_and_settle_ends_a_claim(conn: db.connection.Conn) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert await claim(conn, first, T0)
    assert await db.ticks.record(conn, uid=first, at=T0 + MINUTE, namespace="ns", schedule="s",
                                 outcome=TickOutcome.SKIPPED)
    assert await claim(conn, second, T0)
    assert await db.ticks.settle(conn, second, T0, TickOutcome.CREATED)
    assert not await db.ticks.settle(conn, second, T0, TickOutcome.MISSED), "settled once"
    latest = await db.ticks.latest(conn, [first, second, str(uuid.uuid4())])
    assert {uid: (tick.at, tick.outcome, tick.task_name) for uid, tick in latest.items()} == {
        first: (T0 + MINUTE, TickOutcome.SKIPPED, None), second: (T0, TickOutcome.CREATED, "s-1")}


async def test_a_claim_settled_missed_forgets_its_task_name(conn: db.connection.Conn) -> None:
    uid = str(uuid.uuid4())
    await claim(conn, uid, T0)
    assert await db.ticks.settle(conn, uid, T0, TickOutcome.MISSED)
    assert (await db.ticks.latest(conn, [uid]))[uid].task_name is None


@pytest.mark.parametrize(("outcome", "task_name", "constraint"), [
    ("later", None, "kubetask_schedule_ticks_outcome_valid"),
    ("created", None, "kubetask_schedule_ticks_run_has_task"),
    ("missed", "s-1", "kubetask_schedule_ticks_run_has_task"),
])
async def test_named_constraints_keep_tick_rows_consistent(conn: db.connection.Conn, outcome: str,
                                                           task_name: str | None, constraint: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        await db.ticks.record(conn, uid=str(uuid.uuid4()), at=T0, namespace="ns", schedule="s",
                              outcome=outcome, task_name=task_name)  # type: ignore[arg-type]


async def test_prune_keeps_the_newest_of_each_live_schedule_and_claims(conn: db.connection.Conn) -> None:
    live, gone, recent = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for minute in range(15):
        await db.ticks.record(conn, uid=live, at=T0 + minute * MINUTE, namespace="ns", schedule="s",
                              outcome=TickOutcome.MISSED)
    await claim(conn, live, T0 - MINUTE)  # an old claim whose Task was never confirmed: kept
    await db.ticks.record(conn, uid=gone, at=T0, namespace="ns", schedule="g", outcome=TickOutcome.MISSED)
    listed_before = await db.upkeep.clock(conn)
    await db.ticks.record(conn, uid=recent, at=T0, namespace="ns", schedule="r", outcome=TickOutcome.MISSED)
    assert await db.ticks.prune(conn, [live], listed_before, keep=10) == 5 + 1
    cursor = await conn.execute("SELECT schedule_uid::text, count(*), min(tick_at) FROM kubetask_schedule_ticks "
                                "GROUP BY 1")
    rows = {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}
    assert rows == {live: (11, T0 - MINUTE), recent: (1, T0)}, "a schedule newer than the LIST is not judged by it"
    latest = await db.ticks.latest(conn, [live])
    assert latest[live].at == T0 + 14 * MINUTE, "the newest row, where the next pass starts, stays"
