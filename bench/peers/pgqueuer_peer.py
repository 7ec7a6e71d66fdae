"""PGQueuer: its ``QueueManager`` over asyncpg, the driver its documentation leads with.

Run as its CLI (``pgq run``) runs it: on uvloop, ``QueueManager.run`` with no
global concurrency cap (its default), default durability (logged tables),
``dequeue_timeout`` 30 s (its default; NOTIFY wakes it). The benchmark tries
``batch_size`` 10 (its default) and the batch kubetask is given, and keeps
PGQueuer's better result. Completions are buffered and written in batches by
PGQueuer itself (``JobStatusLogBuffer``).
"""

from __future__ import annotations

from typing import Any

from bench import common

NAME = "pgqueuer"
SETTINGS = ("pgqueuer QueueManager.run(batch_size={concurrency}, defaults otherwise) over one asyncpg "
            "connection per process, on uvloop as `pgq run` does")
LOOP = "uvloop"
"""``pgq run`` runs on uvloop when it is installed, and PGQueuer depends on it."""


def version() -> str:
    return common.package_version("pgqueuer")


class Client:
    def __init__(self, conn: Any) -> None:
        from pgqueuer import Queries
        from pgqueuer.db import AsyncpgDriver

        self.conn = conn
        self.queries = Queries(AsyncpgDriver(conn))

    @classmethod
    async def open(cls, dsn: str) -> Client:
        import asyncpg

        return cls(await asyncpg.connect(dsn))

    async def close(self) -> None:
        await self.conn.close()

    async def install(self) -> None:
        await self.queries.install()

    async def enqueue_backlog(self, n: int, start: int = 0) -> None:
        # One call, one statement: the whole backlog commits at once.
        await self.queries.enqueue(["noop"] * n, [None] * n, [0] * n)

    async def produce(self, n: int, start: int) -> None:
        await self.queries.enqueue(["noop"] * n, [None] * n, [0] * n)

    async def enqueue_stamp(self, ident: int) -> None:
        await self.queries.enqueue("stamp", str(ident).encode())

    async def unfinished(self) -> bool:
        # Finished jobs leave the queue table (moved to pgqueuer_log).
        return bool(await self.conn.fetchval("SELECT EXISTS (SELECT FROM pgqueuer)"))

    async def succeeded(self) -> int:
        return int(await self.conn.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"))


def preload() -> None:
    import asyncpg  # noqa: F401
    import pgqueuer  # noqa: F401


async def serve(dsn: str, concurrency: int, probe: Any) -> None:
    import asyncpg
    from pgqueuer import Queries, QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        probe.hit()

    @qm.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        assert job.payload is not None
        probe.stamp(job.payload.decode())

    await qm.run(batch_size=concurrency)
