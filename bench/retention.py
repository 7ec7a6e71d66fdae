"""Retention figure: how fast the operator's history retention deletes finished tasks at a million rows.

No Kubernetes, no peers. A fresh database with kubetask's schema gets a
history of finished tasks (1,000,000; ``--quick`` 100,000), each with one
attempt, inserted with ``INSERT … SELECT generate_series``; they finished
over the last 20 days, 3 % of them dead-lettered, all mirrored. Then a
retention pass with a 10-day retention deletes the older half exactly as the
operator's cleaner does it (``db.upkeep.history_cutoff``, then
``db.upkeep.delete_history`` in batches of the default
``KUBETASK_HISTORY_RETENTION_BATCH_SIZE`` until a batch comes back short).

* ``retention_delete_rows_per_s``: tasks deleted (each with its attempt) per
  second of the pass, on a freshly vacuumed table;
* ``retention_batch_p50_ms`` / ``retention_batch_max_ms``: one batch's
  statement, which is also how long it holds its row locks;
* ``retention_cutoff_ms``: computing the cutoff for ``keep_last`` = half the
  rows (a backward scan of that many index entries).
"""

from __future__ import annotations

import asyncio
import pathlib
import tempfile
import time
from typing import Any

import psycopg

from bench import common

CMD = "python -m bench.run --only retention"
RETENTION_DAYS = 10
SPREAD_DAYS = 20

HISTORY_SQL = """
INSERT INTO kubetask_tasks (uid, namespace, name, type, payload, state, attempts, run_at, worker_pod,
                            result, last_error, created_at, started_at, finished_at, version,
                            mirrored_version, mirrored_state)
SELECT gen_random_uuid(), 'history', 'old-' || i, 'noop', '{}',
       CASE WHEN i % 33 = 0 THEN 'dead_letter' ELSE 'succeeded' END, 1, f, 'old-worker',
       CASE WHEN i % 33 = 0 THEN NULL ELSE '{"ok": true}'::jsonb END,
       CASE WHEN i % 33 = 0 THEN '{"type": "PermanentError", "message": "no", "attempt": 1}'::jsonb END,
       f, f, f, 3, 3, CASE WHEN i % 33 = 0 THEN 'dead_letter' ELSE 'succeeded' END
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT now() - make_interval(secs => i * %(spread)s::float8 / %(rows)s)) AS t (f);
INSERT INTO kubetask_attempts (task_id, number, worker_pod, lease_owner, started_at, finished_at, outcome,
                               error_type, error_message, traceback, result)
SELECT id, 1, 'old-worker', 'old-worker/0', started_at, finished_at,
       CASE WHEN state = 'dead_letter' THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN state = 'dead_letter' THEN 'PermanentError' END,
       CASE WHEN state = 'dead_letter' THEN 'no' END,
       CASE WHEN state = 'dead_letter' THEN 'Traceback (most recent call last): …' END,
       result
FROM kubetask_tasks;
"""


async def measure_async(quick: bool, report: common.Report, *, rows: int | None = None,
                        server: Any = None) -> dict[str, float]:
    """The retention figures; ``rows`` overrides the count (the smoke test); ``server``: a running PostgresServer."""
    from kubetask_dev.postgres import PostgresServer

    from kubetask import db, settings

    rows = rows or (100_000 if quick else 1_000_000)
    batch = settings.OperatorSettings.model_fields["history_retention_batch_size"].default
    command = CMD + (" --quick" if quick else "")
    with tempfile.TemporaryDirectory(prefix="kubetask-bench-") as tmp:
        own = server is None
        if own:
            server = await asyncio.to_thread(PostgresServer.start, pathlib.Path(tmp) / "data")
        try:
            dsn = server.create_database(f"bench_retention_{time.monotonic_ns()}")
            async with await db.connection.connect(dsn) as conn:
                await db.schema.migrate(conn)
                began = time.monotonic()
                await conn.execute(HISTORY_SQL.replace("%(rows)s", str(int(rows)))
                                   .replace("%(spread)s", str(SPREAD_DAYS * 86400)))
                await conn.execute("VACUUM ANALYZE")
                inserted_in = time.monotonic() - began

                began = time.perf_counter()
                await db.upkeep.history_cutoff(conn, retention_days=None, keep_last=rows // 2)
                cutoff_ms = (time.perf_counter() - began) * 1000
                cutoff = await db.upkeep.history_cutoff(conn, retention_days=RETENTION_DAYS, keep_last=None)
                assert cutoff is not None
                batches: list[float] = []
                deleted = 0
                began = time.perf_counter()
                while True:
                    started = time.perf_counter()
                    n = await db.upkeep.delete_history(conn, cutoff, batch)
                    batches.append((time.perf_counter() - started) * 1000)
                    deleted += n
                    if n < batch:
                        break
                seconds = time.perf_counter() - began
                left = (await (await conn.execute("SELECT count(*) FROM kubetask_tasks")).fetchall())[0][0]
                attempts = (await (await conn.execute("SELECT count(*) FROM kubetask_attempts")).fetchall())[0][0]
        finally:
            if own:
                await asyncio.to_thread(server.stop)
    if deleted + left != rows or attempts != left:
        raise AssertionError(f"retention left {left} tasks and {attempts} attempts after deleting {deleted} of {rows}")
    keys = {
        "retention_rows": float(rows),
        "retention_deleted": float(deleted),
        "retention_delete_rows_per_s": deleted / seconds,
        "retention_batch_p50_ms": common.median(batches),
        "retention_batch_max_ms": max(batches),
        "retention_cutoff_ms": cutoff_ms,
    }
    report(common.Figure(
        name=f"history retention with {rows:,} finished tasks", unit="tasks deleted/s",
        ours=keys["retention_delete_rows_per_s"], peers={},
        note=(f"deleted the {deleted:,} tasks (+ as many attempts) older than {RETENTION_DAYS} days of {rows:,} "
              f"finished over {SPREAD_DAYS} days, in {len(batches)} statements of at most {batch:,} "
              f"(p50 {keys['retention_batch_p50_ms']:.0f} ms, max {keys['retention_batch_max_ms']:.0f} ms each) "
              f"in {seconds:.1f} s; cutoff for keep_last={rows // 2:,}: {cutoff_ms:.0f} ms; history inserted "
              f"in {inserted_in:.1f} s with INSERT … SELECT generate_series, then VACUUM ANALYZE"),
        command=command))
    return keys


def measure(quick: bool, report: common.Report) -> dict[str, float]:
    """Retention figures (see the module docstring); returns the keys for latest.json."""
    return asyncio.run(measure_async(quick, report))
