"""A Queue's limits hold in the claim, in PostgreSQL, across every claimer: paused, maxRunning,
concurrencyKeyLimit, rateLimit and the namespaces it admits."""

from __future__ import annotations

import asyncio
import datetime

from kubetask import db

QUEUE = "default"


async def limit(conn: db.connection.Conn, **row: object) -> None:
    await db.queues.upsert(conn, db.queues.QueueRow(name=QUEUE, **row))  # type: ignore[arg-type]


async def claim(conn: db.connection.Conn, n: int, owner: str = "pod/1") -> list[db.queue.ClaimedTask]:
    return await db.queue.claim(conn, QUEUE, owner, owner.split("/")[0], n, 30)


async def finish(conn: db.connection.Conn, tasks: list[db.queue.ClaimedTask]) -> None:
    for task in tasks:
        assert await db.queue.complete(conn, task.id, task.lease_owner, task.attempt, None)


async def running(conn: db.connection.Conn) -> int:
    row = await (await conn.execute(
        "SELECT count(*) FROM kubetask_tasks WHERE queue = %s AND state = 'running'", [QUEUE])).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_queue_without_a_row_is_unlimited(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task() for _ in range(5)])
    assert len(await claim(conn, 10)) == 5


async def test_a_paused_queue_claims_nothing_and_resumes(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task() for _ in range(3)])
    await limit(conn, paused=True)
    assert await claim(conn, 10) == []
    await limit(conn, paused=True, max_running=5)
    assert await claim(conn, 10) == [], "paused wins over any limit"
    await limit(conn, paused=False)
    assert len(await claim(conn, 10)) == 3


async def test_running_tasks_of_a_paused_queue_finish(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task() for _ in range(2)])
    [held] = await claim(conn, 1)
    await limit(conn, paused=True)
    await finish(conn, [held])
    assert await claim(conn, 10) == []


async def test_deleting_the_queue_row_lifts_its_limits(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task() for _ in range(3)])
    await limit(conn, paused=True)
    assert await db.queues.delete(conn, QUEUE)
    assert await db.queues.get(conn, QUEUE) is None
    assert len(await claim(conn, 10)) == 3


async def test_max_running_caps_what_runs_at_once(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task() for _ in range(10)])
    await limit(conn, max_running=3)
    first = await claim(conn, 10)
    assert len(first) == 3
    assert await claim(conn, 10) == []
    await finish(conn, first[:2])
    assert len(await claim(conn, 10)) == 2
    assert await running(conn) == 3


async def test_other_queues_are_not_limited_by_this_one(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task(queue="other") for _ in range(4)])
    await limit(conn, paused=True, max_running=1)
    assert len(await db.queue.claim(conn, "other", "pod/1", "pod", 10, 30)) == 4


async def test_concurrent_claimers_never_exceed_max_running(connect, new_task) -> None:
    """Eight claimers on their own connections drain 120 tasks; running is sampled after every claim."""
    conns = [await connect() for _ in range(8)]
    sampler = await connect()
    await db.queue.admit(conns[0], [new_task() for _ in range(120)])
    await limit(conns[0], max_running=3)
    seen: list[int] = []
    done: list[int] = []

    async def work(conn: db.connection.Conn, owner: str) -> None:
        while len(done) < 120:
            batch = await db.queue.claim(conn, QUEUE, owner, owner, 2, 30)
            seen.append(await running(sampler))
            await asyncio.sleep(0)  # let the others claim while this one holds its tasks
            await finish(conn, batch)
            done.extend(t.id for t in batch)

    async with asyncio.timeout(60):
        await asyncio.gather(*(work(conn, f"w{i}") for i, conn in enumerate(conns)))
    assert len(done) == len(set(done)) == 120
    assert max(seen) <= 3, f"{max(seen)} ran at once"
    assert max(seen) == 3, "the limit was reached, not just respected by accident"


async def test_concurrent_claimers_in_open_transactions_wait_their_turn(connect, new_task, wait_until) -> None:
    """A claimer whose transaction is still open holds the queue's lock: the next one waits for it, then
    counts what it claimed."""
    first, second, probe = await connect(), await connect(), await connect()
    await db.queue.admit(first, [new_task() for _ in range(6)])
    await limit(first, max_running=4)
    async with first.transaction():
        mine = await claim(first, 3, "a/1")
        theirs = asyncio.ensure_future(claim(second, 3, "b/1"))
        pid = second.info.backend_pid

        async def blocked() -> bool:
            row = await (await probe.execute(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid])).fetchone()
            return bool(row and row[0])

        await wait_until(blocked, what="the second claimer to wait for the queue's lock")
        assert not theirs.done()
    async with asyncio.timeout(5):
        assert len(mine) == 3 and len(await theirs) == 1


async def test_a_concurrency_key_runs_at_most_its_limit(conn: db.connection.Conn, new_task) -> None:
    now = datetime.datetime.now(datetime.UTC)
    tasks = [new_task(name=f"a{i}", concurrency_key="customer-a", run_at=now - datetime.timedelta(seconds=10 - i))
             for i in range(3)]
    tasks += [new_task(name="b0", concurrency_key="customer-b"), new_task(name="none0"), new_task(name="none1")]
    await db.queue.admit(conn, tasks)
    await limit(conn, concurrency_key_limit=1)
    first = await claim(conn, 10)
    assert sorted(t.name for t in first) == ["a0", "b0", "none0", "none1"], "one a, one b, every keyless one"
    assert await claim(conn, 10) == []
    await finish(conn, [t for t in first if t.name == "a0"])
    [second] = await claim(conn, 10)
    assert second.name == "a1"
    [row] = [r for r in [await db.reads.get_task(conn, tasks[2].uid)] if r]
    assert (row.state, row.attempts) == ("queued", 0), "a task waiting for its key spends no attempt"


async def test_concurrent_claimers_never_run_two_of_a_key(connect, new_task) -> None:
    conns = [await connect() for _ in range(4)]
    sampler = await connect()
    await db.queue.admit(conns[0], [new_task(concurrency_key=f"k{i % 3}") for i in range(30)])
    await limit(conns[0], concurrency_key_limit=1)
    worst: list[int] = []
    done: list[int] = []

    async def work(conn: db.connection.Conn, owner: str) -> None:
        while len(done) < 30:
            batch = await db.queue.claim(conn, QUEUE, owner, owner, 3, 30)
            row = await (await sampler.execute(
                "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM kubetask_tasks"
                " WHERE state = 'running' GROUP BY concurrency_key) AS k")).fetchone()
            assert row is not None
            worst.append(int(row[0]))
            await asyncio.sleep(0)
            await finish(conn, batch)
            done.extend(t.id for t in batch)

    async with asyncio.timeout(60):
        await asyncio.gather(*(work(conn, f"w{i}") for i, conn in enumerate(conns)))
    assert len(done) == 30 and max(worst) == 1


async def test_the_rate_limit_is_a_token_bucket_on_the_database_clock(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task() for _ in range(20)])
    await limit(conn, rate_tasks=5, rate_period_seconds=3600)
    first = await claim(conn, 10)
    assert len(first) == 5, "a full bucket is one period's worth"
    await finish(conn, first)
    assert await claim(conn, 10) == [], "the bucket is empty"
    # An hour later by the bucket's clock (its state moved back, as if an hour had passed): full again.
    await conn.execute("UPDATE kubetask_queues SET tokens_at = tokens_at - interval '1 hour'")
    assert len(await claim(conn, 10)) == 5
    # A quarter of the period refills a quarter of the bucket (rounded down to whole tasks).
    await conn.execute("UPDATE kubetask_queues SET tokens_at = tokens_at - interval '45 minutes'")
    assert len(await claim(conn, 10)) == 3


async def test_a_fast_rate_limit_holds_over_a_second(connect, new_task) -> None:
    """10 per second, two claimers hammering: about 10 in the first second, never a burst past the bucket."""
    conns = [await connect() for _ in range(2)]
    await db.queue.admit(conns[0], [new_task() for _ in range(100)])
    await limit(conns[0], rate_tasks=10, rate_period_seconds=1)
    claimed: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def work(conn: db.connection.Conn, owner: str) -> None:
        while loop.time() - start < 1.5:
            batch = await db.queue.claim(conn, QUEUE, owner, owner, 4, 30)
            claimed.extend(loop.time() - start for _ in batch)
            await finish(conn, batch)
            await asyncio.sleep(0.005)

    await asyncio.gather(*(work(conn, f"w{i}") for i, conn in enumerate(conns)))
    # A full bucket (10) at once, then 10 a second: at most 10 + 15 in 1.5 s (and a little slack for the
    # clock of this test, which is not the database's).
    assert 15 <= len(claimed) <= 26, len(claimed)
    assert sum(1 for t in claimed if t < 0.5) <= 16


async def test_a_changed_rate_refills_the_bucket(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task() for _ in range(10)])
    await limit(conn, rate_tasks=2, rate_period_seconds=3600)
    assert len(await claim(conn, 10)) == 2
    await limit(conn, rate_tasks=3, rate_period_seconds=3600)
    assert len(await claim(conn, 10)) == 3


async def test_tasks_of_namespaces_the_queue_does_not_admit_are_never_claimed(conn: db.connection.Conn,
                                                                              new_task) -> None:
    await db.queue.admit(conn, [new_task(namespace="team-a", name="a"), new_task(namespace="team-b", name="b")])
    await limit(conn, allowed_namespaces=("team-a",))
    assert [t.name for t in await claim(conn, 10)] == ["a"]
    assert await claim(conn, 10) == []


async def test_a_throttled_claim_says_when_the_next_token_comes(conn: db.connection.Conn, new_task) -> None:
    await db.queue.admit(conn, [new_task() for _ in range(10)])
    await limit(conn, rate_tasks=4, rate_period_seconds=3600)
    result = await db.queue.complete_and_claim(conn, "pod/1", [], queue=QUEUE, worker_pod="pod", limit=10,
                                               lease_seconds=30)
    assert len(result.claimed) == 4
    assert result.throttled_seconds is not None and 899 < result.throttled_seconds <= 900, \
        "one token in a quarter of an hour"
    await limit(conn, rate_tasks=None, rate_period_seconds=None, max_running=100)
    unthrottled = await db.queue.complete_and_claim(conn, "pod/1", [], queue=QUEUE, worker_pod="pod", limit=2,
                                                    lease_seconds=30)
    assert len(unthrottled.claimed) == 2 and unthrottled.throttled_seconds is None


async def test_worker_processes_keep_to_the_rate_not_to_their_poll(dsn: str, conn: db.connection.Conn, new_task,
                                                                   start_worker_process, sigterm_when) -> None:
    """Two real workers polling every 5 s drain 30 tasks at 10/s: they look again when the next token comes
    (a poll would waste the refill), and never faster than the bucket allows."""
    await limit(conn, rate_tasks=10, rate_period_seconds=1)
    await db.queue.admit(conn, [new_task() for _ in range(30)])
    env = {"DATABASE_URL": dsn, "KUBETASK_POLL_INTERVAL_SECONDS": "5", "KUBETASK_LIVENESS_STALL_SECONDS": "30",
           "KUBETASK_CONCURRENCY": "4", "KUBETASK_HANDLERS": "kubetask.demo"}
    workers = [await start_worker_process({**env, "POD_NAME": f"rate-{i}"}) for i in range(2)]

    async def drained() -> bool:
        row = await (await conn.execute(
            "SELECT count(*) FROM kubetask_tasks WHERE state = 'succeeded'")).fetchone()
        return row is not None and row[0] == 30

    try:
        code, output = await sigterm_when(workers[0], drained, "30 tasks through the rate limit", timeout=30)
        assert code == 0, output.decode()
    finally:
        for process in workers[1:]:
            process.terminate()
            await process.wait()
    row = await (await conn.execute(
        "SELECT extract(epoch FROM max(started_at) - min(started_at))::float8 FROM kubetask_tasks")).fetchone()
    assert row is not None
    # A full bucket (10) at once, then 20 more at 10/s: the last starts about 2 s after the first.
    assert 1.7 <= row[0] <= 3.0, f"the 30th task started {row[0]:.2f} s after the first"
