"""The database figures of the operator's metrics, read by the leader when it is scraped.

Never in a loop of its own: at most one refresh per ``metrics.REFRESH_SECONDS``,
from queries that read only unfinished or unmirrored rows. A standby reports
none (the leader does), and a failed refresh leaves none rather than stale
ones; the scrape answers either way.
"""

from __future__ import annotations

import asyncio
import time

from kubetask import db, metrics
from kubetask.operator.runtime import Runtime

QUERY_TIMEOUT_SECONDS = 3.0
"""Longest a scrape waits for the database figures (Prometheus gives up on a scrape after 10 s by default)."""


async def refresh(rt: Runtime) -> None:
    meters = rt.meters
    if not rt.leading:
        meters.database, meters.refreshed_at = None, None
        return
    if meters.refreshed_at is not None and time.monotonic() - meters.refreshed_at < metrics.REFRESH_SECONDS:
        return
    meters.database = None

    async def read(conn: db.connection.Conn) -> metrics.DatabaseFacts:
        depths = await db.reads.queue_depths(conn)
        backlog, lag = await db.reads.mirror_lag(conn)
        limits = await db.queues.rows(conn)
        return metrics.DatabaseFacts(list(depths.values()), backlog, lag, list(limits.values()))

    try:
        async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
            meters.database = await rt.metrics_db.run(read, "reading the metrics", patience=0)
    except BaseException:
        await rt.metrics_db.close()  # a query cut short leaves the connection in doubt
        raise
    meters.refreshed_at = time.monotonic()
