"""The engine benchmark runs end to end on tiny counts and yields every key as a number.

Real PostgreSQL (the session's server), real worker processes of kubetask,
PGQueuer and procrastinate. No timing is asserted: only that the figures
exist, are finite numbers, and are written as JSON and PNG.
"""

from __future__ import annotations

import json
import math
import pathlib

from kubetask_dev.postgres import PostgresServer

from bench import common, engine

KEYS = {
    "engine_tasks_per_s", "engine_vs_pgqueuer", "engine_vs_procrastinate", "engine_steady_tasks_per_s",
    "pickup_p50_ms", "pickup_p99_ms", "pickup_polling_1s_p50_ms", "claim_latency_ratio_1m_vs_empty",
    "claim_p50_ms_empty", "claim_p50_ms_history", "burn_down_ratio_1m_vs_empty",
    "burn_down_kubetask_default_concurrency_2p_tasks_per_s", "burn_down_queue_limits_tasks_per_s",
    "burn_down_queue_limits_ratio", "engine_vs_pgqueuer_1p", "engine_vs_procrastinate_1p",
}


async def test_engine_benchmark_yields_every_key(pg_server: PostgresServer, tmp_path: pathlib.Path) -> None:
    figures: list[common.Figure] = []
    keys = await engine.measure_async(False, figures.append, tiny=True, server=pg_server)

    assert KEYS <= set(keys), f"missing: {KEYS - set(keys)}"
    for name, value in keys.items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
    assert {"burn-down, 1 process", "pickup latency p50 (idle worker)"} <= {f.name for f in figures}
    burn = next(f for f in figures if f.name == "burn-down, 1 process")
    assert set(burn.peers) == {"pgqueuer", "procrastinate"} and burn.met is not None
    limited = next(f for f in figures if f.name == "burn-down, 2 processes, a Queue with limits that do not bind")
    assert set(limited.peers) == {"no Queue"} and limited.met is not None

    common.write_json(tmp_path / "latest.json", keys, figures, {"quick": False})
    written = json.loads((tmp_path / "latest.json").read_text())
    assert all(isinstance(written[key], float) for key in KEYS)
    assert len(written["figures"]) == len(figures)
    common.write_png(tmp_path / "latest.png", figures, "smoke")
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
    assert "burn-down, 1 process" in common.table(figures, ["pgqueuer", "procrastinate", "polling-1s"])
