"""Claim: priority then due time, only what is due, a batch per statement, never a row twice."""

import asyncio
import datetime

from psycopg.types.json import Jsonb

from kubetask import db


async def test_claim_orders_by_priority_then_run_at_then_id(conn: db.connection.Conn, new_task) -> None:
    now = datetime.datetime.now(datetime.UTC)
    earlier, later = now - datetime.timedelta(minutes=2), now - datetime.timedelta(minutes=1)
    tasks = [
        new_task(name="low", priority=0, run_at=earlier),
        new_task(name="high-later", priority=5, run_at=later),
        new_task(name="high-earlier", priority=5, run_at=earlier),
        new_task(name="mid-a", priority=1, run_at=later),
        new_task(name="mid-b", priority=1, run_at=later),
    ]
    await db.queue.admit(conn, tasks)
    first = await db.queue.claim(conn, "default", "pod/1", "pod", 3, 30)
    assert [t.name for t in first] == ["high-earlier", "high-later", "mid-a"]
    rest = await db.queue.claim(conn, "default", "pod/1", "pod", 10, 30)
    assert [t.name for t in rest] == ["mid-b", "low"]


async def test_future_tasks_and_other_queues_are_not_claimed(conn: db.connection.Conn, new_task) -> None:
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    await db.queue.admit(conn, [new_task(run_at=future), new_task(queue="other"), new_task(name="due")])
    claimed = await db.queue.claim(conn, "default", "pod/1", "pod", 10, 30)
    assert [t.name for t in claimed] == ["due"]
    depths = await db.reads.queue_depths(conn)
    assert depths["default"] == db.reads.QueueDepth("default", queued=1, retrying=0, due=0, scheduled=1, running=1,
                                                  oldest_due_seconds=0.0, busy_pods={"pod": 1})
    other = depths["other"]
    assert (other.queued, other.retrying, other.due, other.scheduled, other.running, other.busy_pods) == (
        1, 0, 1, 0, 0, {})
    assert other.oldest_due_seconds >= 0


async def test_claim_starts_an_attempt(conn: db.connection.Conn, new_task) -> None:
    task = new_task(payload={"k": "v"}, timeout_seconds=5)
    await db.queue.admit(conn, [task])
    [claimed] = await db.queue.claim(conn, "default", "pod-a/abc", "pod-a", 1, 30)
    assert (claimed.uid, claimed.attempt, claimed.attempt_in_budget, claimed.timeout_seconds) == (task.uid, 1, 1, 5)
    assert claimed.payload == {"k": "v"} and claimed.lease_owner == "pod-a/abc"
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None
    assert (row.state, row.attempts, row.worker_pod, row.lease_owner, row.version) == (
        "running", 1, "pod-a", "pod-a/abc", 2)
    assert row.lease_expires_at is not None and row.started_at is not None
    assert 29 < (row.lease_expires_at - row.started_at).total_seconds() <= 30
    [attempt] = await db.reads.task_history(conn, task.uid)
    assert (attempt.number, attempt.outcome, attempt.worker_pod, attempt.lease_owner) == (
        1, "running", "pod-a", "pod-a/abc")
    assert await db.queue.claim(conn, "default", "pod-a/abc", "pod-a", 1, 30) == []
    assert await db.queue.claim(conn, "default", "pod-a/abc", "pod-a", 0, 30) == []


async def test_skip_locked_gives_concurrent_claimers_disjoint_rows(connect, new_task) -> None:
    first, second = await connect(), await connect()
    await db.queue.admit(first, [new_task() for _ in range(6)])
    async with first.transaction():
        # The first claimer's transaction is still open: its rows stay locked.
        mine = await db.queue.claim(first, "default", "a/1", "a", 4, 30)
        async with asyncio.timeout(5):
            theirs = await db.queue.claim(second, "default", "b/1", "b", 4, 30)
    assert len(mine) == 4 and len(theirs) == 2
    assert not {t.id for t in mine} & {t.id for t in theirs}


async def test_many_concurrent_claimers_claim_each_task_once(connect, new_task) -> None:
    conns = [await connect() for _ in range(4)]
    await db.queue.admit(conns[0], [new_task() for _ in range(100)])

    async def drain(conn: db.connection.Conn, owner: str) -> list[int]:
        ids: list[int] = []
        while batch := await db.queue.claim(conn, "default", owner, owner, 3, 30):
            ids.extend(t.id for t in batch)
        return ids

    results = await asyncio.gather(*(drain(conn, f"w{i}") for i, conn in enumerate(conns)))
    everything = [task_id for ids in results for task_id in ids]
    assert len(everything) == len(set(everything)) == 100


async def plan(conn: db.connection.Conn, query: str, params: dict[str, object]) -> str:
    async with conn.transaction():
        # Tiny test tables make a sequential scan cheapest; ask whether the index *can* serve the query.
        await conn.execute("SET LOCAL enable_seqscan = off")
        cursor = await conn.execute("EXPLAIN " + query, params)  # type: ignore[operator]
        return "\n".join(row[0] for row in await cursor.fetchall())


async def test_queries_are_served_by_their_partial_indexes(conn: db.connection.Conn) -> None:
    params = {"queue": "q", "lease_owner": "o", "worker_pod": "p", "lease_seconds": 30,
              "done_id": [], "done_attempt": [], "done_results": Jsonb([])}
    for containers, index in ((False, "kubetask_tasks_claim"), (True, "kubetask_tasks_container_claim")):
        claim = await plan(conn, db.queue._with_limit("complete_and_claim", 5, containers), params)
        picking = claim.split("CTE picked")[1].split("CTE claimed")[0]
        assert f"Index Scan using {index} " in picking, (containers, picking)
        assert "Sort" not in picking, "the index yields the claim's order: no sort"
    assert "kubetask_tasks_lease_expiry" in await plan(conn, db.upkeep.QUERIES["expired_leases"], {"limit": 5})
    assert "kubetask_tasks_unmirrored" in await plan(conn, db.outbox.QUERIES["pending_status"], {"limit": 5, "history": 10})



async def test_a_big_history_does_not_make_every_claim_replan(conn: db.connection.Conn, new_task) -> None:
    """The claim is planned once per connection (a generic plan), however many finished rows there are.

    With the LIMIT bound as a parameter, the plan cache judged the generic plan
    too costly on a big table and replanned every claim (the latency grew with
    the history, see bench figure 5); the limit is now part of the text.
    """
    await conn.execute(
        """INSERT INTO kubetask_tasks (uid, namespace, name, type, payload, state, attempts, run_at,
                                       worker_pod, result, started_at, finished_at)
           SELECT gen_random_uuid(), 'history', 'old-' || i, 'echo', '{}', 'succeeded', 1,
                  now() - interval '2 days', 'old', 'null', now() - interval '2 days', now() - interval '2 days'
           FROM generate_series(1, 200000) AS i""")
    await db.queue.admit(conn, [new_task() for _ in range(5000)])
    await conn.execute("VACUUM ANALYZE kubetask_tasks")
    for _ in range(20):
        [claimed] = await db.queue.claim(conn, "default", "pod/1", "pod", 1, 30)
        await db.queue.complete_many(conn, "pod/1", [(claimed.id, claimed.attempt, None)])
    # psycopg prepares a statement on its 5th use; PostgreSQL then tries 5 custom plans before it
    # may settle on the generic one.
    [(statements, generic, custom)] = await (await conn.execute(
        "SELECT count(*), sum(generic_plans), sum(custom_plans) FROM pg_prepared_statements"
        " WHERE statement LIKE '%FOR UPDATE SKIP LOCKED%'")).fetchall()
    assert statements >= 1 and generic >= 20 and custom <= 5 * statements, \
        f"the claim was replanned: {generic} generic, {custom} custom plans"
