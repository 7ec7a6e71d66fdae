"""kubetask in the benchmarks: the client side (schema, enqueue, progress) and the worker side.

The worker side is the real ``kubetask.worker.run`` with the production
settings except the handlers (``noop``, ``stamp``) and the concurrency.
Enqueueing for latency and for the steady run goes through ``db.queue.admit``
(the operator's path: one INSERT for a batch, plus NOTIFY); the pre-inserted
backlog of a burn-down is written with ``INSERT … SELECT generate_series``
since admission speed is not what a burn-down measures.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from bench import common
from kubetask import db

NAME = "kubetask"
LOOP = "kubetask"
"""The loop ``kubetask worker`` runs on (``worker.run_loop``: uvloop when installed)."""
SETTINGS = ("kubetask worker (one connection + one listener per process), KUBETASK_CONCURRENCY={concurrency}, "
            "on uvloop (`kubetask worker` runs on it; a dependency of kubetask)")


def version() -> str:
    return common.package_version("kubetask")


class Client:
    def __init__(self, conn: db.connection.Conn) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, dsn: str) -> Client:
        return cls(await db.connection.connect(dsn, "kubetask-bench"))

    async def close(self) -> None:
        await self.conn.close()

    async def install(self) -> None:
        await db.schema.migrate(self.conn)

    async def set_queue_limits(self, limits: dict[str, int]) -> None:
        """The row the operator's leader writes for a Queue object named ``default``."""
        await db.queues.upsert(self.conn, db.queues.QueueRow("default", **limits))

    async def enqueue_backlog(self, n: int, start: int = 0) -> None:
        """One transaction: the rows, and the NOTIFY that wakes the workers when they commit."""
        async with self.conn.transaction():
            await self.conn.execute(
                """INSERT INTO kubetask_tasks (uid, namespace, name, type, payload)
                   SELECT gen_random_uuid(), 'bench', 'noop-' || i, 'noop', '{}'
                   FROM generate_series(%(start)s::bigint, %(end)s::bigint) AS i""",
                {"start": start, "end": start + n - 1})
            await self.conn.execute("SELECT pg_notify(%s, 'default')", [db.connection.QUEUE_CHANNEL])

    async def produce(self, n: int, start: int) -> None:
        await db.queue.admit(self.conn, [
            db.queue.NewTask(uid=str(uuid.uuid4()), namespace="bench", name=f"steady-{start + i}", type="noop",
                          payload={})
            for i in range(n)
        ])

    async def enqueue_stamp(self, ident: int) -> None:
        await db.queue.admit(self.conn, [db.queue.NewTask(uid=str(uuid.uuid4()), namespace="bench",
                                                    name=f"stamp-{ident}", type="stamp",
                                                    payload={"id": ident})])

    async def unfinished(self) -> bool:
        cursor = await self.conn.execute(
            """SELECT EXISTS (SELECT FROM kubetask_tasks WHERE state IN ('queued', 'retrying'))
                   OR EXISTS (SELECT FROM kubetask_tasks WHERE state = 'running')""")
        row = await cursor.fetchone()
        assert row is not None
        return bool(row[0])

    async def succeeded(self) -> int:
        cursor = await self.conn.execute("SELECT count(*) FROM kubetask_tasks WHERE state = 'succeeded'")
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def check_exactly_once(self, n: int) -> str:
        """Every task succeeded on its first attempt, with exactly one attempt row recorded as such."""
        cursor = await self.conn.execute(
            """SELECT (SELECT count(*) FROM kubetask_tasks WHERE state = 'succeeded' AND attempts = 1),
                      (SELECT count(*) FROM kubetask_tasks),
                      (SELECT count(*) FROM kubetask_attempts WHERE outcome = 'succeeded'),
                      (SELECT count(*) FROM kubetask_attempts)""")
        row = await cursor.fetchone()
        assert row is not None
        ok_tasks, tasks, ok_attempts, attempts = (int(x) for x in row)
        if not (ok_tasks == tasks == ok_attempts == attempts >= n):
            raise AssertionError(f"kubetask exactly-once check failed: {ok_tasks} of {tasks} tasks succeeded "
                                 f"once, {ok_attempts} of {attempts} attempts succeeded (expected {n})")
        return f"{tasks} tasks, {attempts} attempts, each recorded once"


def preload() -> None:
    """Import what ``serve`` needs before the process says READY."""
    from kubetask import handlers, settings, worker  # noqa: F401


async def serve(dsn: str, concurrency: int, probe: Any) -> None:
    from kubetask import handlers, settings, worker

    registry = handlers.registry.copy()

    async def noop(payload: dict[str, Any], ctx: handlers.Context) -> None:
        probe.hit()

    async def stamp(payload: dict[str, Any], ctx: handlers.Context) -> None:
        probe.stamp(payload["id"])

    registry.add("noop", noop)
    registry.add("stamp", stamp)
    config = settings.WorkerSettings(concurrency=concurrency, pod_name=f"bench-{id(probe):x}")
    await worker.run(config, settings.DatabaseSettings(url=dsn), asyncio.Event(), registry=registry)

