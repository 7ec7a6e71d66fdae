"""The baseline for pickup latency: the worker loop a course would write.

Claim one job with ``SELECT … FOR UPDATE SKIP LOCKED``; when there is none,
sleep 1 s and look again. No LISTEN/NOTIFY. Only used for latency.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

NAME = "polling-1s"
SETTINGS = "a loop: claim one job with SELECT … FOR UPDATE SKIP LOCKED, sleep 1 s when none"


def version() -> str:
    return "-"


SCHEMA = """
CREATE TABLE IF NOT EXISTS polling_jobs (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'queued'
);
CREATE INDEX IF NOT EXISTS polling_jobs_queued ON polling_jobs (id) WHERE state = 'queued';
"""

CLAIM = """
UPDATE polling_jobs SET state = 'done'
WHERE id = (SELECT id FROM polling_jobs WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING payload
"""


class Client:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, dsn: str) -> Client:
        return cls(await psycopg.AsyncConnection.connect(dsn, autocommit=True))

    async def close(self) -> None:
        await self.conn.close()

    async def install(self) -> None:
        await self.conn.execute(SCHEMA)

    async def enqueue_stamp(self, ident: int) -> None:
        await self.conn.execute("INSERT INTO polling_jobs (payload) VALUES (%s::jsonb)", [f'{{"id": {ident}}}'])


def preload() -> None:
    pass


async def serve(dsn: str, concurrency: int, probe: Any) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            row = await (await conn.execute(CLAIM)).fetchone()
            if row is None:
                await asyncio.sleep(1.0)
                continue
            probe.stamp(row[0]["id"])
