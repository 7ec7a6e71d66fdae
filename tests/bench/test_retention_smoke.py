"""The retention benchmark runs on a small history and yields every key as a finite number (no timing asserted)."""

from __future__ import annotations

import math

from kubetask_dev.postgres import PostgresServer

from bench import common, retention


async def test_retention_benchmark_deletes_the_older_half_and_yields_every_key(pg_server: PostgresServer) -> None:
    figures: list[common.Figure] = []
    keys = await retention.measure_async(False, figures.append, rows=12_000, server=pg_server)
    assert keys["retention_rows"] == 12_000 and 5_500 <= keys["retention_deleted"] <= 6_500
    for name in ("retention_delete_rows_per_s", "retention_batch_p50_ms", "retention_batch_max_ms",
                 "retention_cutoff_ms"):
        assert math.isfinite(keys[name]) and keys[name] > 0, name
    [figure] = figures
    assert figure.name == "history retention with 12,000 finished tasks" and figure.unit == "tasks deleted/s"


def test_a_partial_run_keeps_the_other_parts_figures_and_says_it_was_partial(tmp_path) -> None:
    from bench import run

    old = common.Figure(name="burn-down, 1 process", unit="tasks/s", ours=4000.0, peers={"pgqueuer": 2000.0})
    stale = common.Figure(name="history retention with 1,000,000 finished tasks", unit="tasks/s", ours=1.0, peers={})
    common.write_json(tmp_path / "latest.json", {"engine_tasks_per_s": 4000.0, "retention_delete_rows_per_s": 1.0},
                      [old, stale], {"command": "python -m bench.run", "revision": "abc"})
    new = common.Figure(name=stale.name, unit="tasks/s", ours=50_000.0, peers={})
    meta = {"command": "python -m bench.run --only retention", "revision": "def", "started_at": "now",
            "quick": False, "failed_parts": [], "machine": {"load_average_at_start": "1.00"}}
    keys, figures, merged = run._merge_previous(tmp_path / "latest.json", {"retention_delete_rows_per_s": 50_000.0},
                                                [new], meta)
    assert keys == {"engine_tasks_per_s": 4000.0, "retention_delete_rows_per_s": 50_000.0}
    assert [(f.name, f.ours) for f in figures] == [(old.name, 4000.0), (new.name, 50_000.0)]
    assert merged["revision"] == "abc" and merged["partial_runs"][0]["revision"] == "def"
