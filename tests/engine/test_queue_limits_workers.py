"""A Queue's limits with real worker processes, measured from PostgreSQL while they run: maxRunning never
exceeded at any instant, and a rate limit held over half a minute."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kubetask import db

QUEUE = "default"


async def scalar(conn: db.connection.Conn, query: Any, params: Any = None) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return row[0]


@contextlib.asynccontextmanager
async def workers(start_worker_process: Callable[[dict[str, str]], Awaitable[asyncio.subprocess.Process]],
                  dsn: str, count: int, concurrency: int) -> AsyncIterator[None]:
    env = {"DATABASE_URL": dsn, "KUBETASK_CONCURRENCY": str(concurrency), "KUBETASK_HANDLERS": "kubetask.demo",
           "KUBETASK_POLL_INTERVAL_SECONDS": "1", "KUBETASK_LIVENESS_STALL_SECONDS": "60"}
    processes = [await start_worker_process({**env, "POD_NAME": f"limited-{i}"}) for i in range(count)]
    try:
        yield
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            await process.wait()


@pytest.mark.timeout(180)
async def test_200_tasks_through_max_running_3_on_3_workers_never_run_4_at_once(
        dsn: str, conn: db.connection.Conn, connect, new_task, start_worker_process) -> None:
    """Three worker processes with 4 slots each (12 without the Queue); running is sampled throughout."""
    await db.queues.upsert(conn, db.queues.QueueRow(QUEUE, max_running=3))
    await db.queue.admit(conn, [new_task(type="sleep", payload={"seconds": 0.02}) for _ in range(200)])
    sampler = await connect()
    samples: list[int] = []
    async with workers(start_worker_process, dsn, count=3, concurrency=4):
        async with asyncio.timeout(150):
            while await scalar(sampler, "SELECT count(*) FROM kubetask_tasks WHERE state = 'succeeded'") < 200:
                samples.append(await scalar(
                    sampler, "SELECT count(*) FROM kubetask_tasks WHERE queue = %s AND state = 'running'", [QUEUE]))
                await asyncio.sleep(0.005)  # a sampling interval, not a wait for anything
    attempts = await scalar(conn, "SELECT count(*) FROM kubetask_attempts")
    pods = await scalar(conn, "SELECT count(DISTINCT worker_pod) FROM kubetask_attempts")
    assert attempts == 200, "each task ran once"
    assert len(samples) > 100, f"only {len(samples)} samples"
    assert max(samples) <= 3, f"{max(samples)} ran at once"
    assert max(samples) == 3, "the limit was reached, not respected by accident"
    assert pods == 3, "every worker claimed: the limit is shared, not one worker's"


@pytest.mark.timeout(180)
async def test_a_rate_of_20_per_second_holds_within_10_percent_over_30_seconds_with_4_workers(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, wait_until) -> None:
    await db.queues.upsert(conn, db.queues.QueueRow(QUEUE, rate_tasks=20, rate_period_seconds=1))
    await db.queue.admit(conn, [new_task() for _ in range(1000)])  # more than 30 s can take at 20/s
    span = "SELECT extract(epoch FROM max(started_at) - min(started_at))::float8 FROM kubetask_attempts"

    async def spanned() -> bool:
        return bool((await scalar(conn, span) or 0) >= 31.5)

    async with workers(start_worker_process, dsn, count=4, concurrency=8):
        await wait_until(spanned, timeout=90, interval=0.5, what="31.5 s of claims")
    # The first second holds the full bucket's burst (20); the 30 s after it, the steady rate.
    steady = await scalar(conn, """
        SELECT count(*) FROM kubetask_attempts
        WHERE started_at > (SELECT min(started_at) FROM kubetask_attempts) + interval '1 second'
          AND started_at <= (SELECT min(started_at) FROM kubetask_attempts) + interval '31 seconds'""")
    pods = await scalar(conn, "SELECT count(DISTINCT worker_pod) FROM kubetask_attempts")
    assert 540 <= steady <= 660, f"{steady} claims in 30 s at 20/s"
    assert pods == 4, "the bucket is shared by every worker"


@pytest.mark.timeout(120)
async def test_pausing_stops_claims_within_a_second_and_resuming_restarts_them_within_one(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, wait_until) -> None:
    await db.queue.admit(conn, [new_task(type="sleep", payload={"seconds": 0.05}) for _ in range(2000)])
    started = "SELECT count(*) FROM kubetask_attempts"
    async with workers(start_worker_process, dsn, count=2, concurrency=2):
        await wait_until(lambda: scalar(conn, started), timeout=30, what="the workers to start claiming")
        paused_at = await scalar(conn, "SELECT now()")
        await db.queues.upsert(conn, db.queues.QueueRow(QUEUE, paused=True))
        # Watch for 3 s (an observation window, not a wait): nothing may start more than 1 s after the pause.
        loop = asyncio.get_running_loop()
        until = loop.time() + 3
        while loop.time() < until:
            late = await scalar(conn, "SELECT count(*) FROM kubetask_attempts WHERE started_at > %s + interval '1 second'",
                                [paused_at])
            assert late == 0, f"{late} claims more than 1 s after the pause"
            await asyncio.sleep(0.05)
        resumed_at = await scalar(conn, "SELECT now()")
        await db.queues.upsert(conn, db.queues.QueueRow(QUEUE, paused=False))

        async def claimed_again() -> Any:
            return await scalar(conn, "SELECT min(started_at) FROM kubetask_attempts WHERE started_at > %s",
                                [resumed_at])

        first = await wait_until(claimed_again, timeout=10, what="a claim after resuming")
    assert (first - resumed_at).total_seconds() <= 1.0, f"resumed after {(first - resumed_at).total_seconds():.2f} s"
